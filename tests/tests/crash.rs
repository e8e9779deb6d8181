//! Crashes and stops: a killed patron hurts nobody; a stopped broker resumes where it was.

use e2e::patron_client::proto::{Event, TorrentRef, TorrentStatus};
use e2e::patron_client::Patron;
use e2e::{
    next_status, run, sha256, wait_complete, wait_for, Running, Sandbox, Seeder, STEP_TIMEOUT,
};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const SIZE: usize = 6 * 1024 * 1024;
/// The three-kill test's file, seeded at 1 MB/s: librqbit's upload limiter (governor,
/// per-second quota) lets a second's worth through at once after the seeder idled, as it does
/// while the leecher restarts, and a test thread may lag under load; each 10% round must
/// still stop mid-way.
const BIG_SIZE: usize = 16 * 1024 * 1024;
/// The seeder uploads at most this, so a download takes a few seconds: long enough to act
/// in the middle of it.
const SEED_RATE: &str = "2000000";

/// Waits until at least `fraction` of the torrent is verified (but not all of it).
fn wait_until_done(patron: &mut Patron, fraction: f64) -> TorrentStatus {
    loop {
        let status = next_status(patron, None);
        assert!(
            !status.complete,
            "finished before the test could interrupt it"
        );
        // While a restarted torrent's data is hashed again (a kill leaves no record of what
        // its files were), its progress is the check's.
        let checking = status.state == e2e::patron_client::proto::TorrentState::Checking;
        if !checking && status.bytes_done > 0 && status.progress >= fraction {
            return status;
        }
    }
}

fn start_add(
    sandbox: &Sandbox,
    state: &std::path::Path,
    seeder: &Seeder,
    extra: &[&str],
) -> Running {
    let downloads = sandbox.folder("downloads");
    let peer = seeder.broker.peer();
    let mut add = sandbox.add_command(state, &seeder.torrent, &downloads, Some(&peer));
    add.arg("--wait").args(extra);
    Running::start(add)
}

/// A library patron following the (only) torrent of `state`, once it runs.
fn follow_the_torrent(sandbox: &Sandbox, state: &std::path::Path) -> Patron {
    let mut watcher = sandbox.patron(state);
    let mut running = Vec::new();
    wait_for("the torrent to run", STEP_TIMEOUT, || {
        running = watcher.list().unwrap_or_default();
        !running.is_empty()
    });
    watcher
        .follow(TorrentRef::Id(running[0].info.id))
        .expect("follow");
    watcher
}

#[test]
fn sigkill_of_a_patron_mid_download_leaves_the_broker_and_other_patrons_going() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, SIZE, SEED_RATE);
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);

    let adder = start_add(&sandbox, &state, &seeder, &[]);
    let mut watcher = follow_the_torrent(&sandbox, &state);
    let before = wait_until_done(&mut watcher, 0.0);

    adder.signal(Signal::SIGKILL);
    let killed = adder.finish(STEP_TIMEOUT);
    assert_eq!(killed.status.code(), None, "the patron was killed");

    // The broker lives on, the other patron keeps getting status, the torrent completes.
    assert!(broker.is_running());
    let done = wait_complete(&mut watcher, None);
    assert!(done.bytes_done >= before.bytes_done);
    assert_eq!(sha256(&sandbox.path("downloads/slow.bin")), sha256(&data));
    assert_eq!(
        watcher.list().expect("list").len(),
        1,
        "a non-ephemeral torrent stays"
    );
}

#[test]
fn sigkill_of_the_only_holder_of_an_ephemeral_torrent_closes_it() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, SIZE, SEED_RATE);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);

    let adder = start_add(&sandbox, &state, &seeder, &["--ephemeral"]);
    let mut observer = sandbox.patron(&state);
    wait_for("the torrent to start downloading", STEP_TIMEOUT, || {
        observer
            .list()
            .map(|l| {
                l.first()
                    .is_some_and(|t| t.status.bytes_done > 0 && t.ephemeral)
            })
            .unwrap_or(false)
    });
    adder.signal(Signal::SIGKILL);
    adder.finish(STEP_TIMEOUT);
    wait_for("the ephemeral torrent to close", STEP_TIMEOUT, || {
        observer.list().map(|l| l.is_empty()).unwrap_or(false)
    });
}

#[test]
fn sigterm_tells_patrons_and_a_restarted_broker_resumes_without_refetching() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, SIZE, SEED_RATE);
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);

    let adder = start_add(&sandbox, &state, &seeder, &[]);
    let mut watcher = follow_the_torrent(&sandbox, &state);
    // Far enough that fetching it all again would break the 1.1× bound below.
    let before = wait_until_done(&mut watcher, 0.3);

    broker.signal(Signal::SIGTERM);
    let started = Instant::now();
    assert!(
        broker.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        broker.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );

    // Connected patrons were told, clearly.
    let out = adder.finish(STEP_TIMEOUT).expect_code(5);
    assert!(
        out.stderr.contains("broker stopped: received SIGTERM"),
        "{}",
        out.stderr
    );
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match watcher.next_event_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(Event::BrokerStopping { reason })) => {
                assert!(reason.contains("SIGTERM"));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no BrokerStopping event: {other:?}"),
        }
    }
    drop(watcher);

    // A new broker resumes it (no --peer this time: the broker remembered it) and completes.
    let _restarted = sandbox.broker(&state, &[]);
    let mut watcher = follow_the_torrent(&sandbox, &state);
    assert_eq!(
        watcher.list().expect("list").len(),
        1,
        "the torrent is restored"
    );
    wait_complete(&mut watcher, None);
    assert_eq!(sha256(&sandbox.path("downloads/slow.bin")), sha256(&data));

    // Verified data was not fetched again: the seeder sent about one copy in all.
    let mut seeder_status = sandbox.client(&seeder.broker.state);
    seeder_status.args(["--json", "status", &seeder.info_hash]);
    let uploaded = run(seeder_status).expect_code(0).json_lines()[0]["uploaded"]
        .as_u64()
        .expect("uploaded");
    assert!(before.progress >= 0.3);
    assert!(
        uploaded as f64 <= 1.1 * SIZE as f64,
        "the seeder uploaded {uploaded} bytes for a {SIZE}-byte file"
    );
}

#[test]
fn a_broker_killed_three_times_mid_download_resumes_each_time_without_refetching() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, BIG_SIZE, "1000000");
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");

    let mut broker = sandbox.broker(&state, &[]);
    let mut adder = sandbox.patron(&state);
    let request = seeder.create_request(&downloads);
    adder.create(request).expect("create");
    drop(adder);

    let mut reached = 0.0;
    for round in 1..=3 {
        let mut watcher = follow_the_torrent(&sandbox, &state);
        // Make real progress in every round: at least another 10% of the file (so fetching
        // it again after each kill would break the 1.1× bound below).
        let status = wait_until_done(&mut watcher, reached + 0.1);
        assert!(
            status.progress >= reached,
            "round {round}: progress went back from {reached} to {}",
            status.progress
        );
        reached = status.progress;
        broker.signal(Signal::SIGKILL);
        broker.wait_exit(STEP_TIMEOUT);
        drop(watcher);
        broker = sandbox.broker(&state, &[]);
    }
    let mut watcher = follow_the_torrent(&sandbox, &state);
    wait_complete(&mut watcher, None);
    assert_eq!(sha256(&downloads.join("slow.bin")), sha256(&data));
    let mut seeder_status = sandbox.client(&seeder.broker.state);
    seeder_status.args(["--json", "status", &seeder.info_hash]);
    let uploaded = run(seeder_status).expect_code(0).json_lines()[0]["uploaded"]
        .as_u64()
        .expect("uploaded");
    assert!(
        uploaded as f64 <= 1.1 * BIG_SIZE as f64,
        "the seeder uploaded {uploaded} bytes for a {BIG_SIZE}-byte file over three kills"
    );
}
