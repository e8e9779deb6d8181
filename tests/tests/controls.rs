//! The controls every torrent daemon has (DESIGN §9): pause and resume, recheck, files,
//! peers, per-torrent rates; each through the CLI, pipe mode and the library, and each kept
//! across a restart where it should be.

use e2e::patron_client::proto::{FileRef, TorrentId, TorrentRef, TorrentState};
use e2e::{
    client_json, ok_json, pipe_session, run, sha256, wait_complete, wait_for, wait_status,
    BrokerProcess, Sandbox, Seeder, STEP_TIMEOUT,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const PIECE: u64 = 64 * 1024;

fn restart(
    sandbox: &Sandbox,
    state: &Path,
    mut broker: BrokerProcess,
    signal: Signal,
) -> BrokerProcess {
    broker.signal(signal);
    broker.wait_exit(STEP_TIMEOUT);
    sandbox.broker(state, &[])
}

#[test]
fn pause_and_resume_are_kept_across_restarts_through_the_cli_pipe_and_library() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/paused.bin", 2 * 1024 * 1024);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);

    // Added paused (the CLI): nothing moves, and a restart keeps it paused.
    let mut add = sandbox.add_command(
        &state,
        &seeder.torrent,
        &downloads,
        Some(&seeder.broker.peer()),
    );
    add.arg("--paused");
    let added = run(add).expect_code(0).json_lines();
    let id = added[0]["id"].as_u64().expect("id").to_string();
    // (It checks what is on disk first, then stays paused.)
    let added = wait_status(&sandbox, &state, &id, "the added torrent", |s| {
        s["state"] != "checking"
    });
    assert_eq!(added["state"], "paused", "{added}");
    let broker = restart(&sandbox, &state, broker, Signal::SIGTERM);
    let after = wait_status(&sandbox, &state, &id, "the restored torrent", |s| {
        s["state"] != "checking"
    });
    assert_eq!(after["state"], "paused", "{after}");
    assert_eq!(after["bytes_done"], 0, "{after}");

    // Resumed (the CLI): it downloads and completes.
    let resumed = ok_json(&sandbox, &state, &["resume", &id]);
    assert_eq!(resumed["event"], "status", "{resumed}");
    assert_ne!(resumed["state"], "paused", "{resumed}");
    let torrent = TorrentRef::Id(TorrentId(id.parse().expect("id")));
    let mut patron = sandbox.patron(&state);
    patron.follow(torrent).expect("follow");
    wait_complete(&mut patron, None);
    assert_eq!(sha256(&downloads.join("paused.bin")), sha256(&data));

    // Paused in pipe mode; kept across a SIGKILL.
    let lines = pipe_session(
        &sandbox,
        &state,
        &[json!({"cmd": "pause", "torrent": id}).to_string()],
        true,
    );
    let reply = lines
        .iter()
        .find(|l| l["request"] == 1)
        .expect("the pause reply");
    assert_eq!(reply["event"], "status", "{lines:?}");
    assert_eq!(reply["state"], "paused", "{lines:?}");
    drop(patron);
    let broker = restart(&sandbox, &state, broker, Signal::SIGKILL);
    let after = wait_status(&sandbox, &state, &id, "the restored torrent", |s| {
        s["state"] != "checking"
    });
    assert_eq!(after["state"], "paused", "{after}");

    // A paused torrent dials nobody: peers --add says so and changes nothing.
    let (code, lines) = client_json(
        &sandbox,
        &state,
        &["peers", &id, "--add", &seeder.broker.peer()],
    );
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "bad-request", "{lines:?}");

    // Resumed by the library; kept across a restart too.
    let mut patron = sandbox.patron(&state);
    let resumed = patron.resume(torrent).expect("resume");
    assert_ne!(resumed.state.as_str(), "paused");
    drop(patron);
    let _broker = restart(&sandbox, &state, broker, Signal::SIGTERM);
    let after = wait_status(&sandbox, &state, &id, "seeding again", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(after["complete"], true, "{after}");

    // Pausing twice is no error; an unknown torrent is, with its kind.
    ok_json(&sandbox, &state, &["pause", &id]);
    ok_json(&sandbox, &state, &["pause", &id]);
    let (code, lines) = client_json(&sandbox, &state, &["pause", "999"]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "unknown-torrent", "{lines:?}");
}

#[test]
fn recheck_hashes_the_data_again_and_finds_a_damaged_piece() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/checked.bin", 16 * PIECE as usize);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = &seeder.broker.state;
    let id = "0";
    wait_status(&sandbox, state, id, "the seeder to seed", |s| {
        s["complete"] == true
    });

    // One byte of piece 3 changes behind the engine's back: only a real check can tell.
    let original = std::fs::read(&data).expect("read");
    let mut damaged = original.clone();
    damaged[3 * PIECE as usize + 100] ^= 0xff;
    std::fs::write(&data, &damaged).expect("damage");
    let rechecking = ok_json(&sandbox, state, &["recheck", id]);
    assert_eq!(rechecking["event"], "status", "{rechecking}");
    let total = original.len() as u64;
    let after = wait_status(&sandbox, state, id, "the check to find the damage", |s| {
        s["state"] != "checking" && s["bytes_done"].as_u64().is_some_and(|d| d < total)
    });
    assert_eq!(after["bytes_done"], total - PIECE, "{after}");
    assert_eq!(after["complete"], false, "{after}");

    // Mended, and rechecked by the library: whole again.
    std::fs::write(&data, &original).expect("mend");
    let mut patron = sandbox.patron(state);
    patron
        .recheck(TorrentRef::Id(TorrentId(0)))
        .expect("recheck");
    let after = wait_status(&sandbox, state, id, "the check to pass", |s| {
        s["complete"] == true
    });
    assert_eq!(after["bytes_done"], total, "{after}");

    // Pipe mode asks the same; a torrent that does not run is an error reply.
    let lines = pipe_session(
        &sandbox,
        state,
        &[
            json!({"cmd": "recheck", "torrent": id}).to_string(),
            json!({"cmd": "recheck", "torrent": "77"}).to_string(),
        ],
        true,
    );
    let first = lines.iter().find(|l| l["request"] == 1).expect("reply 1");
    assert_eq!(first["event"], "status", "{lines:?}");
    let second = lines.iter().find(|l| l["request"] == 2).expect("reply 2");
    assert_eq!(second["kind"], "unknown-torrent", "{lines:?}");
}

/// A folder of three files whose sizes are whole pieces, so that no piece is shared.
fn three_files(sandbox: &Sandbox) -> std::path::PathBuf {
    for (name, pieces) in [("a.bin", 2), ("b.bin", 3), ("c.bin", 4)] {
        sandbox.random_file(&format!("seed/three/{name}"), pieces * PIECE as usize);
    }
    sandbox.path("seed/three")
}

fn selected(files: &Value) -> Vec<bool> {
    files["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["selected"].as_bool().expect("selected"))
        .collect()
}

#[test]
fn files_are_listed_and_chosen_at_add_and_later_and_kept_across_restarts() {
    let sandbox = Sandbox::new();
    let folder = three_files(&sandbox);
    let seeder = Seeder::start(&sandbox, "seeder", &folder, PIECE, &[]);
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);

    // A file the torrent lacks is the request's fault, said before it starts.
    let mut add = sandbox.add_command(&state, &seeder.torrent, &downloads, None);
    add.args(["--only", "7"]);
    let refused = run(add).expect_code(3).json_lines();
    assert_eq!(refused[0]["kind"], "bad-request", "{refused:?}");

    // Only the first file, at add.
    let mut add = sandbox.add_command(
        &state,
        &seeder.torrent,
        &downloads,
        Some(&seeder.broker.peer()),
    );
    // By path, as `files` lists it (`0` would do as well).
    add.args(["--only", "a.bin", "--wait"]);
    let added = run(add).expect_code(0).json_lines();
    assert_eq!(
        added[0]["total_bytes"],
        2 * PIECE,
        "the chosen file's size: {added:?}"
    );
    let files = ok_json(&sandbox, &state, &["files", "0"]);
    assert_eq!(files["event"], "files", "{files}");
    assert_eq!(selected(&files), [true, false, false], "{files}");
    let list = files["files"].as_array().expect("files");
    assert_eq!(list[0]["path"], "a.bin");
    assert_eq!(list[0]["bytes_done"], 2 * PIECE, "{files}");
    assert_eq!(list[1]["bytes_done"], 0, "{files}");
    assert_eq!(list[2]["size"], 4 * PIECE, "{files}");

    // The third file too, in pipe mode, while it runs.
    let lines = pipe_session(
        &sandbox,
        &state,
        &[json!({"cmd": "files", "torrent": "0", "only": [0, "c.bin"]}).to_string()],
        true,
    );
    let reply = lines
        .iter()
        .find(|l| l["request"] == 1)
        .expect("the files reply");
    assert_eq!(selected(reply), [true, false, true], "{lines:?}");
    let mut patron = sandbox.patron(&state);
    let torrent = TorrentRef::Id(TorrentId(0));
    wait_for("the third file", STEP_TIMEOUT, || {
        let list = patron.files(torrent).expect("files");
        list.files[2].bytes_done == list.files[2].size
    });
    drop(patron);
    for name in ["a.bin", "c.bin"] {
        assert_eq!(
            sha256(&downloads.join("three").join(name)),
            sha256(&folder.join(name))
        );
    }

    // Kept across a restart; the second file was never fetched.
    let _broker = restart(&sandbox, &state, broker, Signal::SIGTERM);
    wait_status(&sandbox, &state, "0", "the restored torrent", |s| {
        s["state"] == "seeding"
    });
    let files = ok_json(&sandbox, &state, &["files", "0"]);
    assert_eq!(selected(&files), [true, false, true], "{files}");
    assert_eq!(files["files"][1]["bytes_done"], 0, "{files}");

    // The library chooses too; a file the torrent lacks is a clear error, a bad list a usage one.
    let mut patron = sandbox.patron(&state);
    let every = vec![
        FileRef::Index(0),
        FileRef::Path("b.bin".into()),
        FileRef::Index(2),
    ];
    let list = patron.select_files(torrent, every).expect("select");
    assert!(list.files.iter().all(|f| f.selected), "{list:?}");
    let (code, lines) = client_json(&sandbox, &state, &["files", "0", "--only", "0,7"]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "bad-request", "{lines:?}");
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no file 7"),
        "{lines:?}"
    );
    // A path it lacks: the error lists the files it has.
    let (code, lines) = client_json(&sandbox, &state, &["files", "0", "--only", "0,x.bin"]);
    assert_eq!(code, 1, "{lines:?}");
    let message = lines[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no file \"x.bin\"") && message.contains("1 b.bin"),
        "{lines:?}"
    );
    let (code, _) = client_json(&sandbox, &state, &["files", "0", "--only", "0,,2"]);
    assert_eq!(code, 2);
    // A range of indices; a path as other clients show it, the torrent's name first.
    let files = ok_json(&sandbox, &state, &["files", "0", "--only", "0-1"]);
    assert_eq!(selected(&files), [true, true, false], "{files}");
    let files = ok_json(&sandbox, &state, &["files", "0", "--only", "three/c.bin"]);
    assert_eq!(selected(&files), [false, false, true], "{files}");
}

#[test]
fn peers_are_listed_and_added_to_a_running_torrent_and_remembered() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 3 * 1024 * 1024, "1000000");
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);

    // Added knowing no peer: it can find none (no DHT, no tracker on loopback).
    let add = sandbox.add_command(&state, &seeder.torrent, &downloads, None);
    run(add).expect_code(0);
    let peers = ok_json(&sandbox, &state, &["peers", "0"]);
    assert_eq!(peers["peers"], json!([]), "{peers}");

    // Named while it runs: dialled at once.
    let seeder_peer = seeder.broker.peer();
    let added = ok_json(&sandbox, &state, &["peers", "0", "--add", &seeder_peer]);
    assert_eq!(added["event"], "peers", "{added}");
    assert_eq!(added["dialled"], json!([seeder_peer]), "{added}");
    let mut patron = sandbox.patron(&state);
    let torrent = TorrentRef::Id(TorrentId(0));
    let mut seen = None;
    wait_for("the seeder among the peers", STEP_TIMEOUT, || {
        let list = patron.peers(torrent).expect("peers");
        seen = list.peers.into_iter().find(|p| p.address == seeder_peer);
        seen.as_ref().is_some_and(|p| p.downloaded > 0)
    });
    let peer = seen.expect("seen");
    assert_eq!(peer.progress, Some(1.0), "{peer:?}");
    assert!(
        peer.client.as_deref().is_some_and(|c| c.contains("rqbit")),
        "{peer:?}"
    );
    assert!(!peer.incoming, "{peer:?}");

    // Remembered: after a SIGKILL the torrent finds its seeder again by itself.
    drop(patron);
    let _broker = restart(&sandbox, &state, broker, Signal::SIGKILL);
    wait_status(&sandbox, &state, "0", "the download to complete", |s| {
        s["complete"] == true
    });
    assert_eq!(sha256(&downloads.join("slow.bin")), sha256(&data));

    // Peers the broker may not dial are refused, each with its reason; nothing is dialled.
    for bad in ["nonsense", "8.8.8.8:6881"] {
        let (code, lines) = client_json(&sandbox, &state, &["peers", "0", "--add", bad]);
        assert_eq!(code, 1, "{bad}: {lines:?}");
        assert_eq!(lines[0]["kind"], "invalid-peer", "{bad}: {lines:?}");
    }
    // Pipe mode lists them too.
    let lines = pipe_session(
        &sandbox,
        &state,
        &[json!({"cmd": "peers", "torrent": "0"}).to_string()],
        true,
    );
    let reply = lines
        .iter()
        .find(|l| l["request"] == 1)
        .expect("the peers reply");
    assert_eq!(reply["event"], "peers", "{lines:?}");
}

#[test]
fn a_peer_named_by_a_patron_joining_a_running_torrent_is_dialled() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/joined.bin", 1024 * 1024);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let _broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &seeder.torrent, &downloads, None)).expect_code(0);

    // A second patron adds the same torrent, naming the seeder: it joins (exit 4), and the
    // peer is not among the options left unapplied: the running torrent dials it.
    let mut join = sandbox.add_command(
        &state,
        &seeder.torrent,
        &downloads,
        Some(&seeder.broker.peer()),
    );
    join.arg("--wait");
    let out = run(join).expect_code(4).json_lines();
    assert_eq!(out[0]["event"], "already-downloading", "{out:?}");
    assert_eq!(out[0]["not_applied"], json!([]), "{out:?}");
    assert_eq!(sha256(&downloads.join("joined.bin")), sha256(&data));
}

#[test]
fn a_seeding_broker_dials_a_leecher_named_by_peers_add() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/pushed.bin", 1024 * 1024);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    // The leecher knows no peer and cannot be found: only the seeder's dial brings data.
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let leecher = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &seeder.torrent, &downloads, None)).expect_code(0);

    let dialled = ok_json(
        &sandbox,
        &seeder.broker.state,
        &["peers", "0", "--add", &leecher.peer()],
    );
    assert_eq!(dialled["dialled"], json!([leecher.peer()]), "{dialled}");
    wait_status(&sandbox, &state, "0", "the pushed download", |s| {
        s["complete"] == true
    });
    assert_eq!(sha256(&downloads.join("pushed.bin")), sha256(&data));
}

#[test]
fn a_torrent_keeps_its_own_download_limit() {
    let sandbox = Sandbox::new();
    let size = 1024 * 1024;
    let data = sandbox.random_file("seed/limited.bin", size);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let _broker = sandbox.broker(&state, &[]);

    // 256 KiB/s for 1 MiB: at least 3 s even if the limiter lets its first second's worth
    // through at once (a lower bound: a slow machine only makes it longer).
    let mut add = sandbox.add_command(
        &state,
        &seeder.torrent,
        &downloads,
        Some(&seeder.broker.peer()),
    );
    add.args(["--max-download-rate", "256K", "--wait"]);
    let started = Instant::now();
    run(add).expect_code(0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "1 MiB at 256 KiB/s took {took:?}"
    );
    assert_eq!(sha256(&downloads.join("limited.bin")), sha256(&data));

    // Rates the engine cannot keep: a usage error in the CLI, a refusal from the broker.
    let mut zero = sandbox.add_command(&state, &seeder.torrent, &downloads, None);
    zero.args(["--max-upload-rate", "0"]);
    assert_eq!(run(zero).code(), 2);
    let torrent = seeder.torrent.display().to_string();
    let lines = pipe_session(
        &sandbox,
        &state,
        &[
            json!({"cmd": "add", "torrent": torrent, "max_download_rate": 5_000_000_000u64})
                .to_string(),
        ],
        true,
    );
    let reply = lines
        .iter()
        .find(|l| l["request"] == 1)
        .expect("the add reply");
    assert_eq!(reply["kind"], "bad-request", "{lines:?}");
}

/// A broker seeding `size` random bytes (in pieces of `piece`), stopped cleanly once it seeds
/// and started again, seeding again: the broker, its state dir and the data.
fn seeded_then_restarted(
    sandbox: &Sandbox,
    size: usize,
    piece: u64,
) -> (BrokerProcess, std::path::PathBuf, std::path::PathBuf) {
    let data = sandbox.random_file("seed/resumed.bin", size);
    let seeder = Seeder::start(sandbox, "seeder", &data, piece, &[]);
    let state = seeder.broker.state.clone();
    // `make --seed` answers once the torrent is added, maybe before its first check ends;
    // a broker stopped during that check has verified nothing to keep.
    wait_status(sandbox, &state, "0", "seeding", |s| s["state"] == "seeding");
    let mut broker = seeder.broker;
    broker.stop_cleanly();
    // Into the engine, whose fast resume is tested here (a seed restored out of it reads
    // nothing either: `idle::a_restart_brings_back_vouched_seeds_out_of_the_engine`).
    let broker = sandbox.broker(&state, &["--sleep-seeds-after", "never"]);
    wait_status(sandbox, &state, "0", "seeding again", |s| {
        s["state"] == "seeding"
    });
    (broker, state, data)
}

/// The restarted broker's log says whether librqbit hashed the torrent's data again.
const FULL_CHECK: &str = "Doing initial checksum validation";

#[test]
fn a_restarted_broker_does_not_hash_again_what_it_verified() {
    let sandbox = Sandbox::new();
    let (broker, _, _) = seeded_then_restarted(&sandbox, 4 * 1024 * 1024, PIECE);
    let log = broker.log();
    assert!(log.contains("Initial check results"), "{log}");
    assert!(
        !log.contains(FULL_CHECK),
        "the data was hashed again:\n{log}"
    );
}

/// Bytes the process `pid` has read through read() and pread() so far (sockets aside).
fn bytes_read(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("its /proc io");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("rchar")
}

/// Files the broker vouches for (their size, times and inode as when last verified) are
/// trusted at a restart: not even a piece of them is read (the engine sampled a piece of
/// every file and more: gigabytes at each restart of a real seedbox).
#[test]
fn a_restarted_broker_reads_nothing_of_the_data_it_verified() {
    let sandbox = Sandbox::new();
    let piece = 1 << 20;
    let (broker, state, data) = seeded_then_restarted(&sandbox, 8 * piece as usize, piece);
    let read = bytes_read(broker.pid);
    assert!(
        read < piece / 2,
        "the restarted broker read {read} bytes, a piece is {piece}:\n{}",
        broker.log()
    );
    // A file changed while the broker was stopped is hashed whole again, as before.
    let broker = {
        broker.stop();
        let bytes = std::fs::read(&data).unwrap();
        std::fs::write(&data, &bytes).unwrap();
        sandbox.broker(&state, &[])
    };
    wait_status(&sandbox, &state, "0", "seeding after the check", |s| {
        s["state"] == "seeding"
    });
    assert!(broker.log().contains(FULL_CHECK), "{}", broker.log());
    assert!(bytes_read(broker.pid) >= 8 * piece, "{}", broker.log());
}

#[test]
fn a_broker_killed_mid_download_keeps_what_it_verified() {
    let sandbox = Sandbox::new();
    // 8 s at the seeder's pace: a loaded machine must not let it finish before the kill.
    let size = 8 * 1024 * 1024;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "1000000");
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    patron
        .create(seeder.create_request(&downloads))
        .expect("create");

    let mut before = 0;
    wait_for("a third of the download", STEP_TIMEOUT, || {
        let status = patron.status(TorrentRef::Id(TorrentId(0))).expect("status");
        before = status.bytes_done;
        // While its (empty) files are first checked, the progress shown is the check's.
        status.state != TorrentState::Checking && status.progress >= 0.33
    });
    assert!(before < size as u64, "it finished before the kill");
    drop(patron);
    let broker = restart(&sandbox, &state, broker, Signal::SIGKILL);

    // What was verified before the kill is still there, bar the pieces in flight. The
    // engine hashes the data again to find it: the file changed after anything vouched for
    // it (a kill leaves no record of what the files were), and only what can be proven is
    // trusted (DESIGN §4, as libtorrent and transmission do).
    let after = wait_status(&sandbox, &state, "0", "the restored torrent", |s| {
        s["state"] != "checking"
    });
    let kept = after["bytes_done"].as_u64().expect("bytes done");
    assert!(
        kept + 8 * PIECE >= before,
        "{before} bytes verified before the kill, {kept} after"
    );
    let log = broker.log();
    assert!(
        log.contains(FULL_CHECK),
        "hashed again after the kill:\n{log}"
    );
    wait_status(&sandbox, &state, "0", "the download to complete", |s| {
        s["complete"] == true
    });
    assert_eq!(sha256(&downloads.join("slow.bin")), sha256(&data));
}

#[test]
fn a_peer_that_resets_the_first_handshake_is_dialled_again_within_seconds() {
    use std::net::TcpListener;
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/retry.bin", 256 * 1024);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let peer = listener.local_addr().expect("address").to_string();
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let _broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &seeder.torrent, &downloads, Some(&peer))).expect_code(0);

    // The first connection is reset, as a client still starting up does.
    let (first, _) = listener.accept().expect("the first dial");
    nix::sys::socket::setsockopt(
        &first,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("linger");
    drop(first);
    let reset = Instant::now();
    // librqbit 9.1 waited 10–20 s before the next dial; the broker's engine 1–2 s. The bound
    // sits between the two with room for a loaded machine.
    listener.set_nonblocking(true).expect("nonblocking");
    let limit = Duration::from_secs(8);
    loop {
        match listener.accept() {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    reset.elapsed() < limit,
                    "no second dial within {limit:?} of the reset"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn fast_resume_state_vouches_only_for_the_record_that_wrote_it() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/twice.bin", 16 * PIECE as usize);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = sandbox.state_dir("leecher");
    let first = sandbox.folder("first");
    let second = sandbox.folder("second");
    let peer = seeder.broker.peer();

    // Torrent 0 downloads into `first`; its folder is then gone (a disk not mounted), so
    // the next start keeps it as a record not restored.
    let broker = sandbox.broker(&state, &[]);
    let mut add = sandbox.add_command(&state, &seeder.torrent, &first, Some(&peer));
    add.arg("--wait");
    run(add).expect_code(0);
    // Its files stamped as verified: done just after the completion `--wait` returns at
    // (on a loaded machine, after the folder below went away: nothing then vouched for it).
    let (dir, _) = fast_resume_of(&state, 0);
    e2e::wait_for("torrent 0's files stamped", STEP_TIMEOUT, || {
        dir.join("0.stamps").is_file()
    });
    let away = sandbox.path("first-away");
    std::fs::rename(&first, &away).expect("unmount");
    let broker = restart(&sandbox, &state, broker, Signal::SIGTERM);
    // The same torrent again, elsewhere: torrent 1. The engine's fast-resume state (one per
    // info hash) now describes `second`.
    let mut add = sandbox.add_command(&state, &seeder.torrent, &second, Some(&peer));
    add.arg("--wait");
    run(add).expect_code(0);
    broker.signal(Signal::SIGTERM);
    let mut broker = broker;
    broker.wait_exit(STEP_TIMEOUT);

    // Each record has a bitfield of its own: torrent 1's describes `second`, and torrent 0
    // keeps the one that describes `first` (one per info hash, the old record took the new
    // one's pieces as its own and would have seeded whatever its folder held).
    for id in [0, 1] {
        assert!(
            dir.join(format!("{id}.bitv")).is_file(),
            "no bitfield of torrent {id}"
        );
    }
    // `first` is back: torrent 0 resumes from its own bitfield, without hashing again.
    std::fs::rename(&away, &first).expect("mount");
    let broker = sandbox.broker(&state, &[]);
    wait_status(&sandbox, &state, "0", "torrent 0 restored", |s| {
        s["state"] == "seeding"
    });
    let log = broker.log();
    assert!(
        !log.contains(FULL_CHECK),
        "torrent 0 was hashed again:\n{log}"
    );
}

/// A seeding torrent of a 1 GiB sparse file (zeros): its check takes long enough to send
/// requests in the middle of it, and costs no disk.
fn big_sparse_seed(sandbox: &Sandbox) -> Seeder {
    let data = sandbox.sparse_file("seed/sparse.bin", 1 << 30);
    Seeder::start(sandbox, "sparse", &data, 1 << 20, &[])
}

#[test]
fn pause_and_resume_sent_during_a_check_take_effect_when_it_ends() {
    let sandbox = Sandbox::new();
    let seeder = big_sparse_seed(&sandbox);
    let state = &seeder.broker.state;
    wait_status(&sandbox, state, "0", "the seeder to seed", |s| {
        s["state"] == "seeding"
    });

    // A pause sent while a recheck runs: once the check is done the torrent is paused (the
    // engine would otherwise stop the check for good and show it checking forever).
    let lines = pipe_session(
        &sandbox,
        state,
        &[
            json!({"cmd": "recheck", "torrent": "0"}).to_string(),
            json!({"cmd": "pause", "torrent": "0"}).to_string(),
        ],
        true,
    );
    let paused = lines
        .iter()
        .find(|l| l["request"] == 2)
        .expect("the pause reply");
    assert_eq!(paused["event"], "status", "{lines:?}");
    // (The board may still show it seeding from before the check for a pulse: wait for
    // the pause, which a check left running, or one ended unpaused, never brings.)
    let after = wait_status(&sandbox, state, "0", "the check to end, paused", |s| {
        s["state"] == "paused"
    });
    assert_eq!(after["complete"], true, "{after}");

    // A resume sent while a check runs: once it is done the torrent runs (the engine would
    // otherwise ignore the resume and leave it paused, though the reply said resumed).
    let lines = pipe_session(
        &sandbox,
        state,
        &[
            json!({"cmd": "recheck", "torrent": "0"}).to_string(),
            json!({"cmd": "resume", "torrent": "0"}).to_string(),
        ],
        true,
    );
    let resumed = lines
        .iter()
        .find(|l| l["request"] == 2)
        .expect("the resume reply");
    assert_eq!(resumed["event"], "status", "{lines:?}");
    // Files cannot be chosen mid-check: a clear refusal, not the engine's.
    let lines = pipe_session(
        &sandbox,
        state,
        &[
            json!({"cmd": "recheck", "torrent": "0"}).to_string(),
            json!({"cmd": "files", "torrent": "0", "only": [0]}).to_string(),
        ],
        true,
    );
    let refused = lines
        .iter()
        .find(|l| l["request"] == 2)
        .expect("the files reply");
    assert_eq!(refused["kind"], "bad-request", "{lines:?}");
    // (Between the recheck's stop and its check the board may show it paused for a pulse:
    // wait for where it ends, which a resume lost would never reach.)
    wait_status(&sandbox, state, "0", "the check to end, running", |s| {
        s["state"] == "seeding"
    });
}

/// The engine's fast-resume folder of a state dir, and torrent `id`'s bitfield in it.
fn fast_resume_of(state: &Path, id: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = state.join("engine/fastresume");
    let bitv = dir.join(format!("{id}.bitv"));
    (dir, bitv)
}

#[test]
fn after_an_unclean_end_in_another_boot_every_torrent_is_hashed_again() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/crashed.bin", 8 * PIECE as usize);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = seeder.broker.state.clone();
    let (dir, _) = fast_resume_of(&state, 0);
    wait_status(&sandbox, &state, "0", "the seeder to seed", |s| {
        s["state"] == "seeding"
    });

    // A clean stop syncs the data and says so.
    let mut broker = seeder.broker;
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
    let note: Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).expect("note")).expect("json");
    assert_eq!(note["clean"], true, "{note}");

    // As if the machine had crashed while the broker ran: its data may not be on disk.
    let crashed = json!({"boot_id": "a boot before a power cut", "clean": false});
    std::fs::write(dir.join("run.json"), crashed.to_string()).expect("note");
    let broker = sandbox.broker(&state, &[]);
    wait_status(&sandbox, &state, "0", "seeding again", |s| {
        s["state"] == "seeding"
    });
    let log = broker.log();
    assert!(
        log.contains(FULL_CHECK),
        "the bitfield was trusted after a crash:\n{log}"
    );
}

#[test]
fn a_symlink_in_the_fast_resume_folder_is_never_followed() {
    use std::os::unix::fs::symlink;
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/linked.bin", 8 * PIECE as usize);
    let seeder = Seeder::start(&sandbox, "seeder", &data, PIECE, &[]);
    let state = seeder.broker.state.clone();
    let (dir, bitv) = fast_resume_of(&state, 0);
    wait_status(&sandbox, &state, "0", "the seeder to seed", |s| {
        s["state"] == "seeding"
    });
    let mut broker = seeder.broker;
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);

    // A bitfield replaced by a link to someone's file: the broker neither writes nor reads
    // through it.
    let victim = sandbox.path("victim.txt");
    std::fs::write(&victim, b"precious").expect("victim");
    std::fs::remove_file(&bitv).expect("remove the bitfield");
    symlink(&victim, &bitv).expect("plant a link");
    let mut broker = sandbox.broker(&state, &[]);
    wait_status(&sandbox, &state, "0", "seeding again", |s| {
        s["state"] == "seeding"
    });
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(
        bitv.symlink_metadata().is_ok_and(|m| m.is_file()),
        "the link is gone and the engine wrote its own bitfield"
    );

    // The folder itself replaced by a link to another folder: the broker will not start
    // (and so deletes nothing there).
    let elsewhere = sandbox.folder("elsewhere");
    std::fs::write(elsewhere.join("notes.tmp"), b"mine").expect("a file");
    std::fs::write(elsewhere.join("old.bitv"), b"mine").expect("a file");
    std::fs::remove_dir_all(&dir).expect("remove the folder");
    symlink(&elsewhere, &dir).expect("plant a link");
    let mut start = std::process::Command::new(e2e::bin("torrent-broker"));
    sandbox.apply_env(&mut start);
    start.arg("--state-dir").arg(&state);
    let out = run(start);
    assert_ne!(out.code(), 0, "started on a linked fast-resume folder");
    assert!(out.stderr.contains("fastresume"), "{}", out.stderr);
    assert!(elsewhere.join("notes.tmp").exists() && elsewhere.join("old.bitv").exists());
}

/// A bitfield file touched before its first write (a chmod, a backup tool: its change time
/// moves) is not written, as one replaced is not; that is said once, not at every verified
/// piece after (the engine review's seventh finding), and the download completes.
#[test]
fn a_bitfield_touched_before_its_first_write_is_left_alone_and_said_once() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 3 * 1024 * 1024, "1000000");
    let state = sandbox.state_dir("leecher");
    let leecher = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let peer = seeder.broker.peer();
    let mut add = sandbox.add_command(&state, &seeder.torrent, &downloads, Some(&peer));
    add.arg("--paused");
    run(add).expect_code(0);
    let (_, bitv) = fast_resume_of(&state, 0);
    e2e::wait_for("its bitfield file", STEP_TIMEOUT, || bitv.is_file());
    let before = std::fs::read(&bitv).expect("the bitfield");
    std::fs::set_permissions(&bitv, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ok_json(&sandbox, &state, &["resume", "0"]);
    wait_status(&sandbox, &state, "0", "the download to complete", |s| {
        s["complete"] == true
    });
    assert_eq!(sha256(&downloads.join("slow.bin")), sha256(&data));
    let said = leecher.log().matches("error flushing bitfield").count();
    assert_eq!(said, 1, "said {said} times:\n{}", leecher.log());
    assert_eq!(
        std::fs::read(&bitv).expect("the bitfield"),
        before,
        "written after all"
    );
}

#[test]
fn junk_peers_are_refused_and_cannot_push_out_the_peers_named_at_add() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 3 * 1024 * 1024, "1000000");
    let (leecher, state, downloads) = e2e::leech(&sandbox, &seeder);

    // Port 0 and the broker's own address are refused, each with its reason.
    for bad in ["127.0.0.1:0".to_owned(), leecher.peer()] {
        let (code, lines) = client_json(&sandbox, &state, &["peers", "0", "--add", &bad]);
        assert_eq!(code, 1, "{bad}: {lines:?}");
        assert_eq!(lines[0]["kind"], "invalid-peer", "{bad}: {lines:?}");
    }
    // 256 peers that answer nothing, named after the add, do not make the torrent forget the
    // seeder it was added with: after a kill it still finds it.
    let junk: Vec<String> = (1..=256).map(|port| format!("127.0.0.2:{port}")).collect();
    let mut args = vec!["peers", "0"];
    for peer in &junk {
        args.extend(["--add", peer]);
    }
    ok_json(&sandbox, &state, &args);
    let _leecher = restart(&sandbox, &state, leecher, Signal::SIGKILL);
    wait_status(&sandbox, &state, "0", "the download to complete", |s| {
        s["complete"] == true
    });
    assert_eq!(sha256(&downloads.join("slow.bin")), sha256(&data));
}

/// How many of `pid`'s descriptors are open on files under `dir`.
fn descriptors_under(pid: i32, dir: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        .count()
}

#[test]
fn whole_torrents_hold_no_descriptor_for_their_fast_resume_state() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    for i in 0..20 {
        let data = sandbox.random_file(&format!("seed/many/{i}.bin"), 2 * PIECE as usize);
        e2e::make_and_seed(&mut patron, &data);
    }
    wait_for("every torrent to seed", STEP_TIMEOUT, || {
        let list = patron.list().expect("list");
        list.len() == 20 && list.iter().all(|t| t.status.complete)
    });
    // One descriptor per torrent for a bitfield that no longer changes would cost 10,000
    // torrents 10,000 descriptors (the list-scale bench ran out of them).
    let dir = state.join("engine/fastresume");
    wait_for("the bitfields to be closed", STEP_TIMEOUT, || {
        descriptors_under(broker.pid, &dir) == 0
    });
}

#[test]
fn a_piece_edited_while_the_broker_was_stopped_is_found_even_with_its_mtime_set_back() {
    let sandbox = Sandbox::new();
    let (seeder, data, piece) = e2e::seeding_many_pieces(&sandbox);
    let state = seeder.broker.state.clone();
    let mut broker = seeder.broker;
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);

    // 16 bytes of piece 130 changed, and the file's mtime set back as it was.
    let modified = std::fs::metadata(&data)
        .expect("meta")
        .modified()
        .expect("mtime");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xAB; 16], 130 * piece as u64 + 100)
        .expect("edit");
    file.set_times(std::fs::FileTimes::new().set_modified(modified))
        .expect("set the mtime back");
    drop(file);
    assert_eq!(
        std::fs::metadata(&data)
            .expect("meta")
            .modified()
            .expect("mtime"),
        modified
    );

    // The change time (which no user can set) gave it away: the file is hashed again and
    // the piece is no longer claimed. Before: "seeding, complete", and `cat` printed it.
    let broker = sandbox.broker(&state, &[]);
    let after = wait_status(&sandbox, &state, "0", "the check after the restart", |s| {
        s["state"] != "checking"
    });
    assert_eq!(after["complete"], false, "{after}");
    assert_eq!(
        after["bytes_done"].as_u64(),
        Some(255 * piece as u64),
        "{after}"
    );
    assert!(broker.log().contains(FULL_CHECK), "{}", broker.log());
}

/// A restart with torrents to hash whole (their fast-resume state gone) and one whose files
/// are vouched for: the hashing takes the engine's three check slots, and the vouched one
/// needs none. It seeds at once, not behind them: a seedbox restarted with big torrents to
/// check again serves everything else meanwhile.
#[test]
fn a_vouched_resume_does_not_wait_behind_torrents_being_hashed() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let mut broker = sandbox.broker(&state, &[]);
    for i in 0..3 {
        let data = sandbox.sparse_file(&format!("seed/big{i}.bin"), 1 << 30);
        let mut make = sandbox.client(&state);
        make.args(["make", "--seed", "--piece-size", "4194304", "--output"])
            .arg(sandbox.path(&format!("big{i}.torrent")))
            .arg(&data);
        run(make).expect_code(0);
    }
    e2e::make_seed(&sandbox, &state, "small.bin", 4 * PIECE as usize);
    for id in ["0", "1", "2", "3"] {
        wait_status(&sandbox, &state, id, "it to seed", |s| {
            s["state"] == "seeding"
        });
    }
    broker.stop_cleanly();
    for id in 0..3 {
        std::fs::remove_file(fast_resume_of(&state, id).1).expect("the big ones' bitfields");
    }

    let broker = sandbox.broker(&state, &[]);
    let small = wait_status(&sandbox, &state, "3", "the vouched one to seed", |s| {
        s["state"] == "seeding"
    });
    let big: Vec<Value> = (0..3)
        .map(|id| e2e::status_json(&sandbox, &state, &id.to_string()))
        .collect();
    assert!(
        big.iter().all(|s| s["state"] == "checking"),
        "the vouched one waited for a big one's check to end: {big:?}\n{}",
        broker.log()
    );
    assert_eq!(small["complete"], true, "{small}");
    assert_eq!(
        broker.log().matches(FULL_CHECK).count(),
        3,
        "only the big ones are hashed whole:\n{}",
        broker.log()
    );
    broker.stop();
}
