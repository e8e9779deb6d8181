//! A crash storm: hundreds of patrons at once, some killed at random moments.

use e2e::{run, wait_for, BrokerProcess, Output, Running, Sandbox, Seeder, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TORRENTS: usize = 4;
const SIZE: usize = 2 * 1024 * 1024;

struct Usage {
    fds: usize,
    rss_kib: u64,
}

fn usage(broker: &BrokerProcess) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", broker.pid))
        .expect("fds")
        .count();
    Usage {
        fds,
        rss_kib: broker.rss_kib(),
    }
}

fn connected_patrons(sandbox: &Sandbox, state: &Path) -> u64 {
    let mut status = sandbox.client(state);
    status.args(["--json", "broker", "status"]);
    run(status).expect_code(0).json_lines()[0]["patrons"]
        .as_u64()
        .expect("patrons")
}

/// Starts `count` `add --wait` patrons over the torrents and kills `kills` of them at random
/// moments: right away (mid-handshake), soon (mid-request) or later (mid-download).
/// Returns the survivors' outputs.
fn storm(
    sandbox: &Sandbox,
    state: &Path,
    torrents: &[PathBuf],
    peer: &str,
    count: usize,
    kills: usize,
    seed: u64,
) -> Vec<Output> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let downloads = sandbox.folder("downloads");
    let mut victims: Vec<usize> = (0..count).collect();
    for i in 0..kills {
        let j = rng.gen_range(i..count);
        victims.swap(i, j);
    }
    victims.truncate(kills);
    let mut running = Vec::with_capacity(count);
    let mut schedule = Vec::new();
    for n in 0..count {
        let torrent = &torrents[n % torrents.len()];
        let mut add = sandbox.add_command(state, torrent, &downloads, Some(peer));
        add.arg("--wait");
        let started = Running::start(add);
        if victims.contains(&n) {
            let delay = match n % 3 {
                0 => Duration::from_millis(rng.gen_range(0..5)),
                1 => Duration::from_millis(rng.gen_range(5..100)),
                _ => Duration::from_millis(rng.gen_range(200..1500)),
            };
            schedule.push((Instant::now() + delay, started.pid()));
        }
        running.push((n, started));
    }
    schedule.sort();
    for (when, pid) in schedule {
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        // It may have finished already; that is fine.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let mut survivors = Vec::new();
    for (n, process) in running {
        let out = process.finish(STEP_TIMEOUT);
        if victims.contains(&n) && out.status.code().is_none() {
            continue; // killed, as planned
        }
        survivors.push(out);
    }
    survivors
}

#[test]
fn a_crash_storm_leaves_every_survivor_served_and_nothing_leaked() {
    let sandbox = Sandbox::new();
    let files: Vec<PathBuf> = (0..TORRENTS)
        .map(|i| sandbox.random_file(&format!("seed/storm-{i}.bin"), SIZE))
        .collect();
    // One seeder broker serving all four, slowly enough that downloads take a while.
    let seeder = Seeder::start(
        &sandbox,
        "seeder",
        &files[0],
        64 * 1024,
        &["--max-upload-rate", "8000000"],
    );
    let mut torrents = vec![seeder.torrent.clone()];
    for (i, file) in files.iter().enumerate().skip(1) {
        let torrent = sandbox.path(&format!("storm-{i}.torrent"));
        let mut make = sandbox.client(&seeder.broker.state);
        make.arg("make")
            .arg(file)
            .arg("--seed")
            .arg("--piece-size")
            .arg("65536");
        make.arg("--output").arg(&torrent);
        run(make).expect_code(0);
        torrents.push(torrent);
    }
    let state = sandbox.state_dir("leecher");
    let broker = sandbox.broker(&state, &[]);
    let peer = seeder.broker.peer();

    // The storm proper: 200 patrons, 20 killed.
    let survivors = storm(&sandbox, &state, &torrents, &peer, 200, 20, 1);
    assert!(survivors.len() >= 180, "{} survivors", survivors.len());
    for out in &survivors {
        let code = out.code();
        assert!(code == 0 || code == 4, "a survivor failed: {out:?}");
        let last = out.json_lines().pop().expect("output");
        assert_eq!(
            last["complete"], true,
            "a survivor did not complete: {out:?}"
        );
    }
    for (i, file) in files.iter().enumerate() {
        let got = sandbox.path(&format!("downloads/storm-{i}.bin"));
        assert_eq!(e2e::sha256(&got), e2e::sha256(file));
    }
    wait_for(
        "the patron count to drop to the survivors (none left)",
        STEP_TIMEOUT,
        || connected_patrons(&sandbox, &state) == 0,
    );

    // Now nothing may grow: another storm of the same size (all joins of complete torrents)
    // must leave descriptors and memory where they were.
    let before = usage(&broker);
    let survivors = storm(&sandbox, &state, &torrents, &peer, 200, 20, 2);
    assert!(
        survivors.iter().all(|o| o.code() == 4),
        "every patron joins a running torrent"
    );
    wait_for("the patron count to drop to zero", STEP_TIMEOUT, || {
        connected_patrons(&sandbox, &state) == 0
    });
    let after = usage(&broker);
    assert!(
        after.fds <= before.fds + 2,
        "descriptors grew from {} to {}",
        before.fds,
        after.fds
    );
    assert!(
        after.rss_kib <= before.rss_kib + 16 * 1024,
        "RSS grew from {} KiB to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    eprintln!(
        "broker after two storms: {} fds, RSS {} KiB (before the second: {} fds, {} KiB)",
        after.fds, after.rss_kib, before.fds, before.rss_kib
    );
}
