//! Idle torrents cost nothing, and miss nothing (issue 23): a torrent with no peer that
//! nothing changes falls asleep (the status loop stops looking at it, the engine's
//! per-torrent tasks stop ticking), and whatever then happens to it reaches the board as
//! soon as it did when every torrent was looked at ten times a second: a peer arriving, its
//! upload, a download completing. The cost itself is measured by `tp-bench many-seeds`.

use e2e::{make_seed, ok_json, run, wait_status, Sandbox, STEP_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longer than a torrent stays awake after its last change (3 s), so that what follows
/// happens to torrents asleep.
const FALL_ASLEEP: Duration = Duration::from_secs(5);

/// What "at once" allows here (debug builds, a loaded machine), well below the status
/// loop's 30 s sweep that would otherwise be the first to see a missed change.
const AT_ONCE: Duration = Duration::from_secs(8);

/// Waits for `condition` on torrent `id`'s status (read from the board) and says how long
/// it took.
fn time_until(
    sandbox: &Sandbox,
    state: &Path,
    id: &str,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    wait_status(sandbox, state, id, what, condition);
    started.elapsed()
}

/// A seed asleep among others shows a leecher's download of it at once, even with a status
/// interval of 5 s: the engine wakes it when the peer goes live.
#[test]
fn an_asleep_seed_shows_a_peer_and_its_upload_at_once() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&state, &["--status-interval", "5000"]);
    let size = 256 << 10;
    let mut torrents = Vec::new();
    for i in 0..8 {
        torrents.push(make_seed(&sandbox, &state, &format!("s{i}.bin"), size));
    }
    for id in 0..8 {
        wait_status(&sandbox, &state, &id.to_string(), "seeding", |s| {
            s["state"] == "seeding"
        });
    }
    std::thread::sleep(FALL_ASLEEP);
    // A leecher takes torrent 5 (and stays, so the seed keeps its peer for a while).
    let leecher_state = sandbox.state_dir("leecher");
    let _leecher = sandbox.broker(&leecher_state, &[]);
    let out = sandbox.folder("leecher-out");
    let mut add = sandbox.add_command(&leecher_state, &torrents[5], &out, Some(&seeder.peer()));
    add.arg("--wait");
    e2e::Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    let took = time_until(&sandbox, &state, "5", "the upload shown", |s| {
        s["uploaded"].as_u64().unwrap_or(0) >= size as u64
    });
    assert!(
        took < AT_ONCE,
        "the seed's upload reached its board {took:?} after the leecher had it all"
    );
    // The others moved nothing and show nothing.
    let other = e2e::status_json(&sandbox, &state, "4");
    assert_eq!(other["uploaded"], 0, "{other}");
    assert_eq!(other["state"], "seeding", "{other}");
}

/// A download asleep with no peer completes on the board at once when a peer is added,
/// whatever the status interval.
#[test]
fn an_asleep_download_completes_on_the_board_at_once_when_a_peer_comes() {
    let sandbox = Sandbox::new();
    let seeder_state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&seeder_state, &[]);
    let torrent = make_seed(&sandbox, &seeder_state, "late.bin", 512 << 10);
    let state = sandbox.state_dir("leecher");
    let _leecher = sandbox.broker(&state, &["--status-interval", "5000"]);
    let out = sandbox.folder("out");
    // Added with no peer: it waits at 0 %, asleep.
    run(sandbox.add_command(&state, &torrent, &out, None)).expect_code(0);
    wait_status(&sandbox, &state, "0", "downloading", |s| {
        s["state"] == "downloading"
    });
    std::thread::sleep(FALL_ASLEEP);
    let waiting = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(waiting["bytes_done"], 0, "nothing to fetch from: {waiting}");
    ok_json(&sandbox, &state, &["peers", "0", "--add", &seeder.peer()]);
    let took = time_until(&sandbox, &state, "0", "complete, seeding", |s| {
        s["state"] == "seeding" && s["complete"] == true
    });
    assert!(
        took < AT_ONCE,
        "the completion reached the board after {took:?}"
    );
}

/// An idle seed holds no task for its speeds (they stop once nothing moves); a peer going
/// live starts them again. Twice, each on a seed that fell idle first: its upload rate and
/// its leecher's download rate show while the data moves, and fall back to zero after.
#[test]
fn an_idle_seeds_speeds_come_back_with_each_new_peer() {
    let sandbox = Sandbox::new();
    // 256 KiB at 64 KiB/s: about 4 s of moving data to see a rate in.
    let (seeder, _) = e2e::slow_seeder(&sandbox, 256 << 10, "65536");
    let seeder_state = seeder.broker.state.clone();
    let rate = |s: &serde_json::Value, key: &str| s[key].as_u64().unwrap_or(0);
    for round in 0..2 {
        std::thread::sleep(FALL_ASLEEP);
        let idle = e2e::status_json(&sandbox, &seeder_state, "0");
        assert_eq!(rate(&idle, "upload_rate"), 0, "round {round}: {idle}");
        let leecher_state = sandbox.state_dir(&format!("leecher-{round}"));
        let leecher = sandbox.broker(&leecher_state, &[]);
        let out = sandbox.folder(&format!("out-{round}"));
        run(sandbox.add_command(
            &leecher_state,
            &seeder.torrent,
            &out,
            Some(&seeder.broker.peer()),
        ))
        .expect_code(0);
        wait_status(&sandbox, &seeder_state, "0", "an upload rate", |s| {
            rate(s, "upload_rate") > 0
        });
        wait_status(&sandbox, &leecher_state, "0", "a download rate", |s| {
            rate(s, "download_rate") > 0 || s["complete"] == true
        });
        wait_status(&sandbox, &leecher_state, "0", "complete", |s| {
            s["complete"] == true
        });
        leecher.stop();
        wait_status(
            &sandbox,
            &seeder_state,
            "0",
            "its upload rate back to zero",
            |s| rate(s, "upload_rate") == 0 && s["peers"] == 0,
        );
    }
}

/// A seed idle for `--sleep-seeds-after` leaves the engine, shown seeding as before; a
/// leecher's connection for its info hash wakes it (a resume vouched for: nothing hashed
/// again) and gets every byte; a request that needs the engine (a recheck) wakes another.
#[test]
fn an_idle_seed_leaves_the_engine_and_a_peer_or_a_request_wakes_it() {
    let sandbox = Sandbox::new();
    let size = 256 << 10;
    let (state, seeder, torrents) = dormant_seeds(&sandbox, 2, size);
    for id in ["0", "1"] {
        let status = e2e::status_json(&sandbox, &state, id);
        assert_eq!(
            status["state"], "seeding",
            "dormant, shown as before: {status}"
        );
        assert_eq!(status["progress"], 1.0, "{status}");
        assert_eq!(status["bytes_done"], size as u64, "{status}");
    }
    // A leecher dials it: the engine asks the broker, which wakes it.
    leech_whole(&sandbox, &torrents[1], &seeder, "s1.bin");
    // Listing a dormant seed's peers wakes nothing: it has none.
    let peers = ok_json(&sandbox, &state, &["peers", "0"]);
    assert_eq!(peers["peers"], serde_json::json!([]), "{peers}");
    // The other one answers as a seed in the engine would: its files complete (read from
    // its .torrent), and a recheck (which wakes it) taken at once.
    let files = ok_json(&sandbox, &state, &["files", "0"]);
    assert_eq!(files["files"][0]["bytes_done"], size as u64, "{files}");
    ok_json(&sandbox, &state, &["recheck", "0"]);
    wait_status(&sandbox, &state, "0", "seeding after its recheck", |s| {
        s["state"] == "seeding"
    });
    assert!(
        !seeder.log().contains("every piece is hashed again"),
        "a wake reads nothing: {}",
        seeder.log()
    );
}

/// A broker that puts seeds to sleep after 2 s, with `count` seeds of `size` bytes
/// (`seed/s<i>.bin`, torrent i), once all of them are out of the engine: its state dir, the
/// broker and the .torrents.
fn dormant_seeds(
    sandbox: &Sandbox,
    count: usize,
    size: usize,
) -> (PathBuf, e2e::BrokerProcess, Vec<PathBuf>) {
    let state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&state, &["--sleep-seeds-after", "2s"]);
    let torrents: Vec<_> = (0..count)
        .map(|i| make_seed(sandbox, &state, &format!("s{i}.bin"), size))
        .collect();
    for id in 0..count {
        wait_status(sandbox, &state, &id.to_string(), "seeding", |s| {
            s["state"] == "seeding"
        });
    }
    e2e::wait_for("the seeds out of the engine", STEP_TIMEOUT, || {
        slept(&seeder.log()) >= count as u64
    });
    (state, seeder, torrents)
}

/// Changes byte `at` of `seed/NAME` (same size; its stamp no longer matches: a later
/// timestamp than its last write).
fn flip_a_byte(sandbox: &Sandbox, name: &str, at: usize) {
    let path = sandbox.path(&format!("seed/{name}"));
    let mut bytes = std::fs::read(&path).expect("the seed's file");
    bytes[at] ^= 0xff;
    // Past the file system's timestamp granularity since the last write.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, &bytes).expect("edited");
}

/// A leecher of its own downloads `torrent` whole from `seeder`, and its file `name` is the
/// seed's byte for byte.
fn leech_whole(sandbox: &Sandbox, torrent: &Path, seeder: &e2e::BrokerProcess, name: &str) {
    let leecher_state = sandbox.state_dir("leecher");
    let _leecher = sandbox.broker(&leecher_state, &[]);
    let out = sandbox.folder("leecher-out");
    let mut add = sandbox.add_command(&leecher_state, torrent, &out, Some(&seeder.peer()));
    add.arg("--wait");
    e2e::Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    assert_eq!(
        std::fs::read(out.join(name)).expect("downloaded"),
        std::fs::read(sandbox.path(&format!("seed/{name}"))).expect("seeded"),
    );
}

/// What each of the sleeper's looks says it did (`key` = `slept` or `woken`), in order,
/// looks that did none of it left out.
fn per_look(log: &str, key: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("idle seeds out of the engine"))
        .filter_map(|line| {
            line.split(&format!("{key}="))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .filter(|&count| count > 0)
        .collect()
}

/// How many seeds the broker's log says left the engine.
fn slept(log: &str) -> u64 {
    per_look(log, "slept").iter().sum()
}

/// Verified means verified (DESIGN §4), for a seed that slept: a file edited while it was
/// out of the engine is hashed again when it wakes, and the edited piece is no longer
/// counted complete nor served.
#[test]
fn a_file_edited_while_its_seed_slept_is_hashed_again_when_it_wakes() {
    let sandbox = Sandbox::new();
    let size = 256 << 10;
    let (state, seeder, _) = dormant_seeds(&sandbox, 1, size);
    flip_a_byte(&sandbox, "s0.bin", size / 2);
    // A request that needs the engine wakes it (a file selection; listing them does not).
    ok_json(&sandbox, &state, &["files", "0", "--only", "0"]);
    let status = wait_status(&sandbox, &state, "0", "the check's verdict", |s| {
        s["state"] != "checking" && s["complete"] == false
    });
    assert!(
        status["bytes_done"].as_u64().unwrap_or(u64::MAX) < size as u64,
        "the edited piece is not counted: {status}"
    );
    assert!(
        seeder.log().contains("every piece is hashed again"),
        "{}",
        seeder.log()
    );
}

/// What only changes a dormant seed's record changes it out of the engine, where it stays:
/// a user's pause, a seeding limit reached, the queue holding it back (a wake for each of
/// thousands of sleeping seeds would be a storm). Only what makes it run again wakes it:
/// a resume, its turn in the queue.
#[test]
fn a_dormant_seed_is_paused_or_queued_by_its_record_without_waking() {
    let sandbox = Sandbox::new();
    let (state, seeder, _) = dormant_seeds(&sandbox, 3, 64 << 10);
    // A user's pause.
    let paused = ok_json(&sandbox, &state, &["pause", "0"]);
    assert_eq!(paused["state"], "paused", "{paused}");
    // A seeding limit its seeding time already passed.
    ok_json(&sandbox, &state, &["set", "1", "--seed-time", "1s"]);
    wait_status(&sandbox, &state, "1", "paused by its limit", |s| {
        s["state"] == "paused"
    });
    // The queue: no seed may run.
    ok_json(&sandbox, &state, &["queue", "--seeds", "0"]);
    wait_status(&sandbox, &state, "2", "queued", |s| s["state"] == "queued");
    let status = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["progress"], 1.0, "{status}");
    assert_eq!(woken(&seeder.log()), 0, "nothing woken: {}", seeder.log());
    // A resume while the queue holds every seed: it waits for its turn, queued.
    let resumed = ok_json(&sandbox, &state, &["resume", "0"]);
    assert_eq!(resumed["state"], "queued", "{resumed}");
    // The queue's turn: seeding again, by their records, still out of the engine.
    ok_json(&sandbox, &state, &["queue", "--seeds", "none"]);
    for id in ["0", "2"] {
        wait_status(&sandbox, &state, id, "seeding again", |s| {
            s["state"] == "seeding" && s["complete"] == true
        });
    }
    // Listing a dormant seed's files reads its .torrent: every file complete, no wake.
    let files = ok_json(&sandbox, &state, &["files", "2"]);
    assert_eq!(files["files"][0]["bytes_done"], 64 << 10, "{files}");
    assert_eq!(woken(&seeder.log()), 0, "nothing woken: {}", seeder.log());
    let status = e2e::status_json(&sandbox, &state, "1");
    assert_eq!(
        status["state"], "paused",
        "still held by its limit: {status}"
    );
    // A leecher's connection wakes the resumed one, which serves every byte.
    leech_whole(&sandbox, &sandbox.path("s0.bin.torrent"), &seeder, "s0.bin");
    assert_eq!(woken(&seeder.log()), 1, "{}", seeder.log());
    assert!(
        !seeder.log().contains("every piece is hashed again"),
        "a wake reads nothing: {}",
        seeder.log()
    );
}

/// How many wakes the broker's log tells of.
fn woken(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("woken: back in the engine"))
        .count()
}

/// A restart brings back the seeds whose fast resume vouches for every piece out of the
/// engine (nothing to add, nothing read): shown seeding, or paused, at once; a leecher's
/// connection wakes one as it would a seed that slept. One whose file was edited while the
/// broker was down goes into the engine and is hashed again (DESIGN §4).
#[test]
fn a_restart_brings_back_vouched_seeds_out_of_the_engine() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let mut seeder = sandbox.broker(&state, &[]);
    let size = 256 << 10;
    let torrents: Vec<_> = (0..3)
        .map(|i| make_seed(&sandbox, &state, &format!("s{i}.bin"), size))
        .collect();
    for id in ["0", "1", "2"] {
        wait_status(&sandbox, &state, id, "seeding", |s| s["state"] == "seeding");
    }
    ok_json(&sandbox, &state, &["pause", "2"]);
    seeder.stop_cleanly();
    // Seed 1's file changes while no broker runs.
    flip_a_byte(&sandbox, "s1.bin", size / 2);

    let seeder = sandbox.broker(&state, &[]);
    let restored = seeder
        .log()
        .lines()
        .find(|line| line.contains("restored the recorded torrents"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        restored.contains("out_of_the_engine=2"),
        "seeds 0 and 2 out of the engine: {}",
        seeder.log()
    );
    let status = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(status["state"], "seeding", "{status}");
    assert_eq!(status["bytes_done"], size as u64, "{status}");
    let status = e2e::status_json(&sandbox, &state, "2");
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["complete"], true, "{status}");
    let status = wait_status(&sandbox, &state, "1", "the edited seed checked", |s| {
        s["state"] != "checking"
    });
    assert_eq!(
        status["complete"], false,
        "the edited piece is not counted: {status}"
    );
    let hashed: Vec<&str> = seeder
        .log()
        .lines()
        .filter(|line| line.contains("every piece is hashed again"))
        .map(|line| {
            if line.contains("torrent=1") {
                "1"
            } else {
                "another"
            }
        })
        .collect();
    assert_eq!(
        hashed,
        ["1"],
        "only the edited one is hashed: {}",
        seeder.log()
    );
    // A leecher gets every byte of seed 0, its connection waking it.
    leech_whole(&sandbox, &torrents[0], &seeder, "s0.bin");
    assert_eq!(woken(&seeder.log()), 1, "{}", seeder.log());
}

/// A download stopped part way (its bitfield not full, its files stamped) comes back into
/// the engine at a restart, as the download it is: never shown as a complete seed.
#[test]
fn a_restart_brings_back_a_part_download_into_the_engine() {
    let sandbox = Sandbox::new();
    let size = 4 << 20;
    let (seeder, _data) = e2e::slow_seeder(&sandbox, size, "400000");
    let state = sandbox.state_dir("leecher");
    let mut leecher = sandbox.broker(&state, &[]);
    let out = sandbox.folder("leecher-out");
    let add = sandbox.add_command(&state, &seeder.torrent, &out, Some(&seeder.broker.peer()));
    e2e::Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    wait_status(&sandbox, &state, "0", "a part downloaded", |s| {
        s["bytes_done"].as_u64().unwrap_or(0) >= 256 << 10
    });
    let paused = ok_json(&sandbox, &state, &["pause", "0"]);
    assert_eq!(paused["complete"], false, "{paused}");
    leecher.stop_cleanly();

    let leecher = sandbox.broker(&state, &[]);
    assert!(
        leecher.log().contains("out_of_the_engine=0"),
        "{}",
        leecher.log()
    );
    let status = wait_status(&sandbox, &state, "0", "checked", |s| {
        s["state"] != "checking"
    });
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["complete"], false, "{status}");
    assert!(
        status["bytes_done"].as_u64().unwrap_or(u64::MAX) < size as u64,
        "{status}"
    );
}

/// A seed with a tracker keeps its tracker session while idle (the engine review's first
/// three findings): it stays in the engine and announces when its tracker asks, once
/// `started`; a leecher that finds it through the tracker alone gets every byte; and what it
/// uploaded reaches the tracker in its next announce. Asleep, it announced every 30 minutes
/// whatever its tracker asked (a tracker that forgets peers sooner stopped naming it), each
/// wake began a new session (`started`, uploaded 0), and what it uploaded awake was never
/// reported.
#[test]
fn a_seed_with_a_tracker_stays_in_its_tracker_session_while_idle() {
    let sandbox = Sandbox::new();
    let tracker = e2e::Tracker::start(1);
    let state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&state, &["--sleep-seeds-after", "2s"]);
    let size = 256 << 10;
    let (data, torrent) = make_tracked_seed(&sandbox, &state, "tracked.bin", size, &tracker.url());
    // Another seed, with no tracker, falls asleep meanwhile: the sleeper ran.
    make_seed(&sandbox, &state, "untracked.bin", size);
    let port = seeder.port;
    let from_seed = |tracker: &e2e::Tracker| -> Vec<e2e::Announce> {
        tracker
            .announces()
            .into_iter()
            .filter(|a| a.port == port)
            .collect()
    };
    e2e::wait_for("the untracked seed asleep", STEP_TIMEOUT, || {
        slept(&seeder.log()) >= 1
    });
    std::thread::sleep(FALL_ASLEEP);
    let before = from_seed(&tracker).len();
    std::thread::sleep(Duration::from_secs(4));
    let idle = from_seed(&tracker).len() - before;
    assert!(
        idle >= 2,
        "an idle seed announced {idle} times in 4 s to a tracker asking every second"
    );
    assert_eq!(slept(&seeder.log()), 1, "only the untracked seed sleeps");

    // A leecher that knows only the tracker.
    let leecher_state = sandbox.state_dir("leecher");
    let _leecher = sandbox.broker(&leecher_state, &[]);
    let out = sandbox.folder("leecher-out");
    let mut add = sandbox.add_command(&leecher_state, &torrent, &out, None);
    add.arg("--wait");
    e2e::Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    assert_eq!(
        std::fs::read(out.join("tracked.bin")).expect("downloaded"),
        std::fs::read(&data).expect("seeded")
    );
    e2e::wait_for("its upload reported to the tracker", STEP_TIMEOUT, || {
        from_seed(&tracker)
            .iter()
            .any(|a| a.uploaded >= size as u64)
    });
    let started = from_seed(&tracker)
        .iter()
        .filter(|a| a.event == "started")
        .count();
    assert_eq!(started, 1, "one tracker session: {:?}", from_seed(&tracker));

    // Restarted, it comes back into the engine (not out of it, as a seed with no tracker
    // whose pieces are vouched for does), and announces on while idle.
    // The untracked seed only: the tracked one is not restored out (and woken at once).
    let seeder = restarted_sleeper(&sandbox, &state, seeder, 1);
    let port = seeder.port;
    let from_seed = || -> usize {
        tracker
            .announces()
            .iter()
            .filter(|a| a.port == port)
            .count()
    };
    std::thread::sleep(FALL_ASLEEP);
    let before = from_seed();
    std::thread::sleep(Duration::from_secs(4));
    let idle = from_seed() - before;
    assert!(
        idle >= 2,
        "restarted, an idle seed announced {idle} times in 4 s"
    );
}

/// The wakes each of the sleeper's looks made, in order (looks that woke none left out).
fn wakes_per_look(log: &str) -> Vec<u64> {
    per_look(log, "woken")
}

/// Seeds with a tracker that slept while the queue held them, and that the queue lets go
/// together, are back in their tracker sessions together: all woken at the sleeper's next
/// look, not a few a look as seeds that wake only to announce on DHT are (64 a look: ten
/// thousand resumed waited some thirteen minutes for their tracker).
#[test]
fn seeds_with_a_tracker_let_go_together_wake_together() {
    // More than the 64 a look of announce-only wakes, few enough for one look's budget in
    // a debug build.
    const SEEDS: usize = 70;
    let sandbox = Sandbox::new();
    let tracker = e2e::Tracker::start(60);
    let state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&state, &["--sleep-seeds-after", "2s"]);
    ok_json(&sandbox, &state, &["queue", "--seeds", "0"]);
    let mut patron = sandbox.patron(&state);
    for i in 0..SEEDS {
        let data = sandbox.random_file(&format!("seed/t{i}.bin"), 1000 + i);
        let made = patron
            .make(patron_client::proto::MakeTorrent {
                path: data.display().to_string(),
                piece_size: None,
                trackers: vec![tracker.url()],
                seed: true,
            })
            .expect("make and seed");
        assert!(made.seeding.is_some(), "seeding {i}");
    }
    e2e::wait_for("the queued seeds out of the engine", STEP_TIMEOUT, || {
        slept(&seeder.log()) >= SEEDS as u64
    });
    assert_eq!(
        wakes_per_look(&seeder.log()),
        Vec::<u64>::new(),
        "held, none wakes"
    );
    let released = Instant::now();
    ok_json(&sandbox, &state, &["queue", "--seeds", "none"]);
    e2e::wait_for("every seed woken", STEP_TIMEOUT, || {
        wakes_per_look(&seeder.log()).iter().sum::<u64>() >= SEEDS as u64
    });
    assert_eq!(
        wakes_per_look(&seeder.log()),
        vec![SEEDS as u64],
        "one look woke them all"
    );
    // Each in its tracker session again.
    let port = seeder.port;
    e2e::wait_for("each seed announced", STEP_TIMEOUT, || {
        let announced: std::collections::HashSet<String> = tracker
            .announces()
            .into_iter()
            .filter(|a| a.port == port && a.at >= released)
            .map(|a| a.info_hash)
            .collect();
        announced.len() >= SEEDS
    });
}

/// A seed whose only tracker the engine cannot announce to (`wss://`: librqbit announces
/// over http, https and udp) has no tracker session to keep: it sleeps as a seed with no
/// tracker does, and a restart brings it back asleep (the restore and the sleeper ask the
/// same question of its trackers).
#[test]
fn a_seed_whose_tracker_the_engine_cannot_announce_to_sleeps_as_one_without() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&state, &["--sleep-seeds-after", "2s"]);
    make_tracked_seed(
        &sandbox,
        &state,
        "websocket.bin",
        64 << 10,
        "wss://127.0.0.1:9/announce",
    );
    e2e::wait_for("the seed asleep", STEP_TIMEOUT, || {
        slept(&seeder.log()) >= 1
    });
    restarted_sleeper(&sandbox, &state, seeder, 1);
}

/// `patron-client make DATA --seed --tracker URL` (16 KiB pieces) of `size` random bytes at
/// `seed/NAME` on `state`'s broker: the data's path and the .torrent's.
fn make_tracked_seed(
    sandbox: &Sandbox,
    state: &Path,
    name: &str,
    size: usize,
    tracker: &str,
) -> (PathBuf, PathBuf) {
    let data = sandbox.random_file(&format!("seed/{name}"), size);
    let torrent = sandbox.path(&format!("{name}.torrent"));
    let mut make = sandbox.client(state);
    make.args([
        "make",
        "--seed",
        "--piece-size",
        "16384",
        "--tracker",
        tracker,
    ])
    .arg("--output")
    .arg(&torrent)
    .arg(&data);
    run(make).expect_code(0);
    (data, torrent)
}

/// Stops `seeder` and starts it again (seeds sleep after 2 s): torrent 0 seeds again, and
/// the restore brought back `out_of_the_engine` of the seeds out of the engine.
fn restarted_sleeper(
    sandbox: &Sandbox,
    state: &Path,
    seeder: e2e::BrokerProcess,
    out_of_the_engine: usize,
) -> e2e::BrokerProcess {
    drop(seeder);
    let seeder = sandbox.broker(state, &["--sleep-seeds-after", "2s"]);
    wait_status(sandbox, state, "0", "seeding again", |s| {
        s["state"] == "seeding"
    });
    assert!(
        seeder
            .log()
            .contains(&format!("out_of_the_engine={out_of_the_engine} ")),
        "{}",
        seeder.log()
    );
    seeder
}
