//! Review of issue 23 ("idle means idle"): an asleep torrent must miss nothing on the board
//! or in its holders' events that the broker showed before the status loop slept.

use e2e::{make_and_seed, make_seed, ok_json, wait_for, wait_status, Sandbox, STEP_TIMEOUT};
use patron_client::proto::{Event, TorrentId, TorrentRef, TorrentStatus};
use std::time::{Duration, Instant};

/// Long enough for any torrent nothing changes to fall asleep (awake 3 s after a change).
const FALL_ASLEEP: Duration = Duration::from_secs(5);

/// The broker's own seeding limits (no torrent named) apply to every torrent without its
/// own: the board showed a change at the next pulse. An asleep seed is not touched by the
/// change (it marks no torrent), so its line keeps the old limit until the 30 s sweep.
#[test]
fn a_broker_wide_seeding_limit_reaches_an_asleep_seeds_line_at_once() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &[]);
    make_seed(&sandbox, &state, "asleep.bin", 64 << 10);
    wait_status(&sandbox, &state, "0", "seeding", |s| {
        s["state"] == "seeding"
    });
    // Two tries at different moments: a 30 s sweep landing just after one change cannot
    // hide the fault twice.
    for ratio in [2.0, 3.0] {
        std::thread::sleep(FALL_ASLEEP);
        ok_json(&sandbox, &state, &["set", "--ratio", &ratio.to_string()]);
        let asked = Instant::now();
        let mut last = serde_json::Value::Null;
        let shown = (|| {
            while asked.elapsed() < Duration::from_secs(3) {
                last = e2e::status_json(&sandbox, &state, "0");
                if last["ratio_limit"] == ratio {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })();
        assert!(
            shown,
            "the broker's ratio {ratio} is not on the asleep seed's line 3 s later: {last}"
        );
    }
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
}

/// The next status update of `id` that `holds` says, within `limit`.
fn status_within(
    patron: &mut patron_client::Patron,
    id: TorrentId,
    limit: Duration,
    holds: impl Fn(&TorrentStatus) -> bool,
) -> Option<(TorrentStatus, Instant)> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match patron.next_event_timeout(left).expect("event") {
            Some(Event::TorrentStatusUpdate(status)) if status.id == id && holds(&status) => {
                return Some((status, Instant::now()))
            }
            Some(_) => {}
            None => return None,
        }
    }
}

/// With `--status-interval 5000` holders hear of a change at the next status tick (at most
/// 5 s later). A torrent the change wakes stays awake 3 s only, and a tick fans out only
/// what it computed: a change made just after a tick is never told to the holders of an
/// asleep (here paused) torrent.
#[test]
fn holders_of_an_asleep_torrent_hear_of_its_new_limit_with_a_long_status_interval() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &["--status-interval", "5000"]);
    let mut patron = sandbox.patron(&state);
    let file = sandbox.random_file("local/held.bin", 64 << 10);
    let id = make_and_seed(&mut patron, &file);
    patron.pause(TorrentRef::Id(id)).expect("pause");
    std::thread::sleep(FALL_ASLEEP);
    // What was queued so far is of no interest.
    drain(&mut patron);
    let tick = Duration::from_millis(5000);
    // First change: heard at the next tick (if that tick still finds it awake).
    ok_json(
        &sandbox,
        &state,
        &["set", &id.0.to_string(), "--ratio", "5"],
    );
    let first = status_within(&mut patron, id, tick + Duration::from_secs(2), |s| {
        s.seed_limits.ratio == Some(5.0)
    });
    let Some((_, heard_at)) = first else {
        panic!("the holder never heard of ratio 5 within a tick and 2 s");
    };
    // `heard_at` is a tick: change again just after the next one, so that the tick after
    // comes more than 3 s after the change.
    let next_tick = heard_at + tick;
    let change_at = next_tick + Duration::from_millis(400);
    std::thread::sleep(change_at.saturating_duration_since(Instant::now()));
    ok_json(
        &sandbox,
        &state,
        &["set", &id.0.to_string(), "--ratio", "7"],
    );
    let second = status_within(&mut patron, id, tick + Duration::from_secs(2), |s| {
        s.seed_limits.ratio == Some(7.0)
    });
    // The board has it (a nudge pass writes it); the holder must too.
    let board = e2e::status_json(&sandbox, &state, &id.0.to_string());
    assert!(
        second.is_some(),
        "the holder never heard of ratio 7 within a tick and 2 s (board: {board})"
    );
    drop(patron);
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
}

/// Drains what `patron` was told so far.
fn drain(patron: &mut patron_client::Patron) {
    while patron
        .next_event_timeout(Duration::from_millis(200))
        .expect("event")
        .is_some()
    {}
}

/// A label's seeding limits apply to its torrents at once: on the board (the change syncs
/// it) and, at the next status tick, to their holders. The change marks no torrent for the
/// status loop, so the holder of an asleep (paused) torrent is never told.
#[test]
fn holders_of_an_asleep_torrent_hear_of_its_labels_new_seeding_limit() {
    use patron_client::proto::{ConfigureLabel, OwnSeedingChange, SeedLimit, SetLabels};
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let file = sandbox.random_file("local/labelled.bin", 64 << 10);
    let id = make_and_seed(&mut patron, &file);
    patron
        .set_labels(SetLabels {
            torrent: TorrentRef::Id(id),
            labels: vec!["tv".into()],
        })
        .expect("label");
    patron.pause(TorrentRef::Id(id)).expect("pause");
    for ratio in [4.0, 6.0] {
        std::thread::sleep(FALL_ASLEEP);
        drain(&mut patron);
        // Another patron changes the label.
        let mut other = sandbox.patron(&state);
        other
            .configure_label(ConfigureLabel {
                name: Some("tv".into()),
                seeding: OwnSeedingChange {
                    ratio: Some(Some(SeedLimit::At(ratio))),
                    ..Default::default()
                },
                ..Default::default()
            })
            .expect("configure the label");
        drop(other);
        let board = e2e::status_json(&sandbox, &state, &id.0.to_string());
        assert_eq!(board["ratio_limit"], ratio, "the board has it: {board}");
        // A status tick is 1 s: 3 s is plenty.
        let heard = status_within(&mut patron, id, Duration::from_secs(3), |s| {
            s.seed_limits.ratio == Some(ratio)
        });
        assert!(
            heard.is_some(),
            "the holder never heard of its label's ratio {ratio} (board: {board})"
        );
    }
    drop(patron);
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
}

/// Control (passes now): with the default 1 s status interval, a torrent's own new limit
/// reaches the holder of an asleep torrent, as the status loop is woken by the change and
/// a tick comes within its 3 s awake. Shows the harness of the tests above is sound.
#[test]
fn control_holders_hear_of_an_own_limit_with_the_default_interval() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let file = sandbox.random_file("local/held.bin", 64 << 10);
    let id = make_and_seed(&mut patron, &file);
    patron.pause(TorrentRef::Id(id)).expect("pause");
    for ratio in [5.0, 7.0] {
        std::thread::sleep(FALL_ASLEEP);
        drain(&mut patron);
        ok_json(
            &sandbox,
            &state,
            &["set", &id.0.to_string(), "--ratio", &ratio.to_string()],
        );
        let heard = status_within(&mut patron, id, Duration::from_secs(3), |s| {
            s.seed_limits.ratio == Some(ratio)
        });
        assert!(heard.is_some(), "the holder never heard of ratio {ratio}");
    }
    drop(patron);
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
}

/// A broker stopped (SIGSTOP) did not seed meanwhile (seeding.rs: "a broker stopped by
/// SIGSTOP, or a machine asleep, did not seed meanwhile"). The gap is taken off the clocks of
/// the torrents awake only: an asleep seed counts the stop as seeding and idle time, and is
/// paused at an idle limit it never reached while the broker ran.
#[test]
fn a_sigstop_does_not_count_as_idle_seeding_for_an_asleep_seed() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &[]);
    make_seed(&sandbox, &state, "stopped.bin", 64 << 10);
    wait_status(&sandbox, &state, "0", "seeding", |s| {
        s["state"] == "seeding"
    });
    let own = ok_json(&sandbox, &state, &["set", "0", "--idle", "20s"]);
    assert_eq!(own["idle_seed_limit_secs"], 20, "{own}");
    let limit_set = Instant::now();
    std::thread::sleep(FALL_ASLEEP);
    broker.signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(20));
    broker.signal(nix::sys::signal::Signal::SIGCONT);
    // Running, it has idled about 5 s (+ the few seconds before the limit was set, + one
    // tick counted of the stop): well under 20 s. Look for 4 s.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let status = e2e::status_json(&sandbox, &state, "0");
        assert_eq!(
            status["state"], "seeding",
            "paused at its idle limit {:?} after the limit was set, 20 s of it SIGSTOPped: {status}\n{}",
            limit_set.elapsed(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
}

/// A download paused midway and resumed completes: its completion hook runs. The status
/// loop's watcher waits on `ManagedTorrent::wait_until_completed`, which once it found the
/// torrent live waits on that live state's own completion: a pause drops that state, and
/// the one the resume makes completes unheard (no hook, no stamp, no move to
/// --move-completed-to), while the old live state is kept alive by the waiter.
#[test]
fn a_download_paused_and_resumed_still_runs_its_completion_hook() {
    let sandbox = Sandbox::new();
    let (seeder, _data) = e2e::slow_seeder(&sandbox, 1 << 20, "256K");
    let seen = sandbox.folder("seen");
    let hook = e2e::script(
        &sandbox.path("hook.sh"),
        &format!("touch \"{}/$TP_EVENT-$TP_TORRENT_ID\"", seen.display()),
    );
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &["--on-completed", hook.to_str().expect("utf-8")]);
    let out = sandbox.folder("downloads");
    let add = sandbox.add_command(&state, &seeder.torrent, &out, Some(&seeder.broker.peer()));
    e2e::run(add).expect_code(0);
    wait_status(&sandbox, &state, "0", "some bytes", |s| {
        s["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    ok_json(&sandbox, &state, &["pause", "0"]);
    std::thread::sleep(Duration::from_millis(500));
    ok_json(&sandbox, &state, &["resume", "0"]);
    let _ = e2e::client_json(
        &sandbox,
        &state,
        &["peers", "0", "--add", &seeder.broker.peer()],
    );
    let done = wait_status(&sandbox, &state, "0", "complete", |s| s["complete"] == true);
    assert_eq!(done["complete"], true);
    let hooked = seen.join("completed-0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hooked.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        hooked.exists(),
        "the completion hook never ran for a download paused and resumed\n{}",
        broker.log()
    );
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
}

/// Held (passes now): an asleep seed that a peer dials wakes (the engine's `peer_went_live`):
/// its upload is on its line soon after the download ends; and an asleep download dialled
/// by `peers --add` completes and shows it at once.
#[test]
fn held_an_asleep_seed_and_an_asleep_download_wake_for_a_peer() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/woken.bin", 256 << 10);
    let seeder = e2e::Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let seeder_state = seeder.broker.state.clone();
    wait_status(&sandbox, &seeder_state, "0", "seeding", |s| {
        s["state"] == "seeding"
    });
    let state = sandbox.state_dir("leecher");
    let mut leecher = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    // Added with no peer: it sits, asleep.
    let add = sandbox.add_command(&state, &seeder.torrent, &out, None);
    e2e::run(add).expect_code(0);
    std::thread::sleep(FALL_ASLEEP);
    let before = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(before["complete"], false, "{before}");
    ok_json(
        &sandbox,
        &state,
        &["peers", "0", "--add", &seeder.broker.peer()],
    );
    wait_status(&sandbox, &state, "0", "complete", |s| s["complete"] == true);
    let done = Instant::now();
    wait_for(
        "the asleep seed's upload on its line",
        Duration::from_secs(3),
        || {
            e2e::status_json(&sandbox, &seeder_state, "0")["uploaded"]
                .as_u64()
                .unwrap_or(0)
                >= 256 << 10
        },
    );
    assert!(done.elapsed() < Duration::from_secs(3));
    leecher.signal(nix::sys::signal::Signal::SIGTERM);
    leecher.wait_exit(STEP_TIMEOUT);
}
