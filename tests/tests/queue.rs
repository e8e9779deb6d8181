//! The broker's queue (DESIGN §13): at most N downloads and M seeds run at once; the others
//! wait, `queued`, and start in the queue's order as slots free; moves, stalls, changes at
//! run time and a SIGKILL all keep that.

use e2e::{listed, ok_json, run, wait_for, Sandbox, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A broker seeding `count` files of `size` bytes (`seed/N.bin`), each made into
/// `seed-N.torrent`, sending at most `rate` a second in all.
fn seeding(
    sandbox: &Sandbox,
    count: usize,
    size: usize,
    rate: &str,
) -> (e2e::BrokerProcess, Vec<PathBuf>) {
    let state = sandbox.state_dir("seeder");
    let broker = sandbox.broker(&state, &["--max-upload-rate", rate]);
    let torrents = (0..count)
        .map(|n| {
            let data = sandbox.random_file(&format!("seed/{n}.bin"), size);
            let torrent = sandbox.path(&format!("seed-{n}.torrent"));
            let mut make = sandbox.client(&state);
            make.args(["make", "--seed", "--piece-size", "16384", "--output"])
                .arg(&torrent)
                .arg(&data);
            run(make).expect_code(0);
            torrent
        })
        .collect();
    (broker, torrents)
}

fn state_of(lines: &[Value], id: u64) -> String {
    lines
        .iter()
        .find(|t| t["id"] == id)
        .and_then(|t| t["state"].as_str())
        .unwrap_or("gone")
        .to_owned()
}

/// How many of `lines` take a download slot (running and unfinished).
fn downloading(lines: &[Value]) -> usize {
    lines
        .iter()
        .filter(|t| matches!(t["state"].as_str(), Some("downloading" | "checking")))
        .count()
}

/// `patron-client --json add TORRENT` against `state`, dialling `peer`: its one line.
fn add(sandbox: &Sandbox, state: &Path, torrent: &Path, out: &Path, peer: &str) -> Value {
    let cmd = sandbox.add_command(state, torrent, out, Some(peer));
    let lines = run(cmd).expect_code(0).json_lines();
    lines.into_iter().next().expect("a line")
}

#[test]
fn a_full_queue_starts_the_next_in_order_follows_moves_and_outlives_a_kill() {
    let sandbox = Sandbox::new();
    // Four torrents of 1 MiB from a seeder sending 256 KiB/s: each download takes about
    // four seconds, one at a time.
    let (seeder, torrents) = seeding(&sandbox, 4, 1 << 20, "256K");
    let state = sandbox.state_dir("leecher");
    let flags = ["--max-active-downloads", "1", "--stalled-after", "never"];
    let mut broker = sandbox.broker(&state, &flags);
    let out = sandbox.folder("downloads");
    let peer = seeder.peer();
    let added: Vec<Value> = torrents
        .iter()
        .map(|torrent| add(&sandbox, &state, torrent, &out, &peer))
        .collect();
    // The first runs; the others say they wait.
    assert_eq!(added[0]["queued"], false, "{:?}", added[0]);
    for line in &added[1..] {
        assert_eq!(line["queued"], true, "{line}");
    }
    // A second add of a waiting torrent joins it, and says it waits.
    let again = sandbox.add_command(&state, &torrents[2], &out, Some(&peer));
    let joined = run(again).expect_code(4).json_lines();
    assert_eq!(joined[0]["event"], "already-downloading", "{joined:?}");
    assert_eq!(joined[0]["queued"], true, "{joined:?}");
    let list = listed(&sandbox, &state);
    for (n, id) in [(1, 1), (2, 2), (3, 3)] {
        assert_eq!(state_of(&list, id), "queued", "{list:?}");
        let line = list.iter().find(|t| t["id"] == id).expect("listed");
        assert_eq!(line["queue_position"], n + 1, "{line}");
    }
    // The last moves to the top: it takes the slot at once, and the one running waits.
    let moved = ok_json(&sandbox, &state, &["queue", "3", "top"]);
    assert_eq!(moved["queue_position"], 1, "{moved}");
    let now = listed(&sandbox, &state);
    if !now.iter().any(|t| t["id"] == 0 && t["complete"] == true) {
        assert_eq!(state_of(&now, 0), "queued", "{now:?}");
    }
    assert_ne!(state_of(&now, 3), "queued", "{now:?}");
    // Completions in the queue's order, never two downloads at once, and a SIGKILL half
    // way: the restarted broker keeps the queue (its waiting torrents are not started).
    let mut completed: Vec<u64> = Vec::new();
    let mut killed = false;
    wait_for(
        "every torrent complete, one at a time",
        Duration::from_secs(240),
        || {
            let list = listed(&sandbox, &state);
            assert!(downloading(&list) <= 1, "two downloads at once: {list:?}");
            for line in &list {
                let id = line["id"].as_u64().expect("id");
                if line["complete"] == true && !completed.contains(&id) {
                    completed.push(id);
                }
            }
            if completed.len() == 2 && !killed {
                killed = true;
                broker.signal(Signal::SIGKILL);
                broker.wait_exit(STEP_TIMEOUT);
                broker = sandbox.broker(&state, &flags);
                let list = listed(&sandbox, &state);
                assert!(downloading(&list) <= 1, "after the restart: {list:?}");
                let waiting = list.iter().filter(|t| t["state"] == "queued").count();
                assert!(waiting >= 1, "the queue is kept: {list:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
            completed.len() == 4
        },
    );
    assert_eq!(
        completed[0], 3,
        "the one moved to the top first: {completed:?}"
    );
    let rest: Vec<u64> = completed[1..].to_vec();
    let mut in_order = rest.clone();
    in_order.sort_unstable();
    assert_eq!(rest, in_order, "then in their order: {completed:?}");
    for n in 0..4 {
        assert_eq!(
            e2e::sha256(&out.join(format!("{n}.bin"))),
            e2e::sha256(&sandbox.path(&format!("seed/{n}.bin")))
        );
    }
    drop(broker);
}

#[test]
fn a_stalled_download_stops_counting_and_the_next_one_runs() {
    let sandbox = Sandbox::new();
    let (seeder, torrents) = seeding(&sandbox, 2, 256 << 10, "4M");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(
        &state,
        &["--max-active-downloads", "1", "--stalled-after", "2s"],
    );
    let out = sandbox.folder("downloads");
    // The first has nobody to download from (no peer named, no DHT on loopback).
    let lonely = sandbox.add_command(&state, &torrents[0], &out, None);
    let first = run(lonely).expect_code(0).json_lines();
    assert_eq!(first[0]["queued"], false, "{first:?}");
    let second = add(&sandbox, &state, &torrents[1], &out, &seeder.peer());
    assert_eq!(second["queued"], true, "{second}");
    // Two seconds on, the first is stalled: it keeps running, and the second starts.
    let done = e2e::wait_status(&sandbox, &state, "1", "the second to complete", |s| {
        s["complete"] == true
    });
    assert_eq!(done["state"], "seeding", "{done}");
    let first = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(
        first["state"], "downloading",
        "a stalled torrent keeps running: {first}"
    );
}

#[test]
fn the_queues_limits_change_while_running_are_recorded_and_a_flag_wins() {
    let sandbox = Sandbox::new();
    // Three downloads kept slow (64 KiB/s in all), and two seeds.
    let (seeder, torrents) = seeding(&sandbox, 3, 1 << 20, "64K");
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    for torrent in &torrents {
        let line = add(&sandbox, &state, torrent, &out, &seeder.peer());
        assert_eq!(line["queued"], false, "no queue yet: {line}");
    }
    let queue = ok_json(&sandbox, &state, &["queue"]);
    assert_eq!(queue["max_active_downloads"], Value::Null, "{queue}");
    assert_eq!(queue["stalled_after_secs"], 1800, "{queue}");
    // One at a time from now: the last two in the queue wait at once.
    let queue = ok_json(
        &sandbox,
        &state,
        &["queue", "--downloads", "1", "--stalled-after", "never"],
    );
    assert_eq!(queue["max_active_downloads"], 1, "{queue}");
    assert_eq!(queue["stalled_after_secs"], Value::Null, "{queue}");
    wait_for("two torrents queued", STEP_TIMEOUT, || {
        let list = listed(&sandbox, &state);
        state_of(&list, 1) == "queued" && state_of(&list, 2) == "queued"
    });
    assert_eq!(downloading(&listed(&sandbox, &state)), 1);
    // Kept across a SIGKILL; the record beats nothing given at the start.
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    broker = sandbox.broker(&state, &[]);
    let queue = ok_json(&sandbox, &state, &["queue"]);
    assert_eq!(queue["max_active_downloads"], 1, "{queue}");
    let list = listed(&sandbox, &state);
    assert_eq!(state_of(&list, 2), "queued", "{list:?}");
    assert!(downloading(&list) <= 1, "{list:?}");
    // Pipe mode changes it too; lifted, every queued torrent runs.
    let replies = e2e::pipe_session(
        &sandbox,
        &state,
        &[
            r#"{"cmd":"queue","max_active_downloads":"none","max_active_seeds":2}"#.into(),
            r#"{"cmd":"queue-move","torrent":2,"to":"up"}"#.into(),
            r#"{"cmd":"queue-move","torrent":2,"to":"sideways"}"#.into(),
        ],
        true,
    );
    let reply = |n: u64| {
        replies
            .iter()
            .find(|r| r["request"] == n)
            .unwrap_or_else(|| panic!("no reply to line {n}: {replies:?}"))
    };
    assert_eq!(reply(1)["event"], "queue", "{replies:?}");
    assert_eq!(reply(1)["max_active_downloads"], Value::Null, "{replies:?}");
    assert_eq!(reply(1)["max_active_seeds"], 2, "{replies:?}");
    assert_eq!(reply(2)["queue_position"], 2, "{replies:?}");
    assert_eq!(reply(3)["event"], "error", "{replies:?}");
    wait_for("every download running", STEP_TIMEOUT, || {
        downloading(&listed(&sandbox, &state)) == 3
    });
    // A flag given at a start wins over the record.
    drop(broker);
    let _broker = sandbox.broker(&state, &["--max-active-downloads", "2"]);
    let queue = ok_json(&sandbox, &state, &["queue"]);
    assert_eq!(queue["max_active_downloads"], 2, "{queue}");
    assert_eq!(queue["max_active_seeds"], 2, "{queue}");
}

#[test]
fn seeds_past_their_limit_wait_queued_and_a_pause_frees_a_slot() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let _broker = sandbox.broker(&state, &["--max-active-seeds", "1"]);
    let made: Vec<Value> = (0..2)
        .map(|n| {
            let data = sandbox.random_file(&format!("mine/{n}.bin"), 100_000);
            let torrent = sandbox.path(&format!("mine-{n}.torrent"));
            let data = data.to_str().expect("utf-8");
            let torrent = torrent.to_str().expect("utf-8");
            ok_json(
                &sandbox,
                &state,
                &["make", "--seed", data, "--output", torrent],
            )
        })
        .collect();
    assert_eq!(made.len(), 2);
    let first = e2e::wait_status(&sandbox, &state, "0", "the first to seed", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(first["queue_position"], 1, "{first}");
    let second = e2e::wait_status(&sandbox, &state, "1", "the second queued", |s| {
        s["state"] == "queued"
    });
    assert_eq!(
        second["complete"], true,
        "a queued seed is complete: {second}"
    );
    // Paused, the first is outside the queue: the second seeds.
    ok_json(&sandbox, &state, &["pause", "0"]);
    e2e::wait_status(&sandbox, &state, "1", "the second to seed", |s| {
        s["state"] == "seeding"
    });
    // Resumed, the first takes its turn: it is first in the queue, so the second waits.
    let resumed = ok_json(&sandbox, &state, &["resume", "0"]);
    assert_eq!(resumed["state"], "seeding", "{resumed}");
    e2e::wait_status(&sandbox, &state, "1", "the second queued again", |s| {
        s["state"] == "queued"
    });
}

/// A seed checking its data again is not counted as a download (transmission counts no
/// verifying torrent): the download holding the one slot runs on meanwhile. (Before: the
/// checking seed took the slot and the download was queued for the whole check.)
#[test]
fn a_seed_checking_its_data_takes_no_download_slot() {
    let sandbox = Sandbox::new();
    let (seeder, torrents) = seeding(&sandbox, 1, 1 << 20, "64K");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(
        &state,
        &["--max-active-downloads", "1", "--stalled-after", "never"],
    );
    let big = sandbox.random_file("mine/big.bin", 96 << 20);
    let made = sandbox.path("big.torrent");
    let mut make = sandbox.client(&state);
    make.args(["make", "--seed", "--output"])
        .arg(&made)
        .arg(&big);
    run(make).expect_code(0);
    e2e::wait_status(&sandbox, &state, "0", "the big seed", |s| {
        s["state"] == "seeding"
    });
    let out = sandbox.folder("downloads");
    let line = add(&sandbox, &state, &torrents[0], &out, &seeder.peer());
    assert_eq!(line["queued"], false, "{line}");
    e2e::wait_status(&sandbox, &state, "1", "downloading", |s| {
        s["state"] == "downloading"
    });
    ok_json(&sandbox, &state, &["recheck", "0"]);
    let mut saw_check = false;
    wait_for("the seed's check to end", STEP_TIMEOUT, || {
        let list = listed(&sandbox, &state);
        let seed = state_of(&list, 0);
        saw_check |= seed == "checking";
        assert_ne!(
            state_of(&list, 1),
            "queued",
            "the download kept its slot: {list:?}"
        );
        seed == "seeding"
    });
    assert!(saw_check, "the seed was seen checking");
}

/// Bytes received count as moving: a download whose large pieces take long to complete is
/// not stalled. (Before: only verified bytes counted, and a torrent receiving data between
/// two 4 MiB pieces was called stalled.)
#[test]
fn a_download_receiving_a_large_piece_is_not_stalled() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let seeder = sandbox.broker(&state, &["--max-upload-rate", "64K"]);
    let torrents: Vec<PathBuf> = (0..2)
        .map(|n| {
            let data = sandbox.random_file(&format!("seed/{n}.bin"), 8 << 20);
            let torrent = sandbox.path(&format!("large-{n}.torrent"));
            let mut make = sandbox.client(&state);
            make.args(["make", "--seed", "--piece-size", "4194304", "--output"])
                .arg(&torrent)
                .arg(&data);
            run(make).expect_code(0);
            torrent
        })
        .collect();
    let leecher = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(
        &leecher,
        &["--max-active-downloads", "1", "--stalled-after", "3s"],
    );
    let out = sandbox.folder("downloads");
    assert_eq!(
        add(&sandbox, &leecher, &torrents[0], &out, &seeder.peer())["queued"],
        false
    );
    assert_eq!(
        add(&sandbox, &leecher, &torrents[1], &out, &seeder.peer())["queued"],
        true
    );
    // 4 MiB at 64 KiB/s: a minute per piece. Eight seconds on, the first still receives
    // (not stalled), and the second still waits.
    std::thread::sleep(Duration::from_secs(8));
    let list = listed(&sandbox, &leecher);
    assert_eq!(state_of(&list, 1), "queued", "{list:?}");
    assert_eq!(state_of(&list, 0), "downloading", "{list:?}");
}
