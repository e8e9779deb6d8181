//! The shared status board (DESIGN §7) through the real binaries: what patrons read without
//! asking, how fast they hear of changes, what a hostile reader can do to it, and what
//! happens where it cannot be had.

use e2e::{make_and_seed, run, sha256, wait_for, Running, Sandbox, Seeder, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use patron_client::proto::{BoardHello, ToBroker, TorrentRef, TorrentState, PROTOCOL_VERSION};
use patron_client::{Board, Error};
use serde_json::Value;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// The old broker told holders of completion only at its next status tick. With ticks a
/// minute apart, `add --wait` must still return as soon as the data is verified.
#[test]
fn completion_reaches_add_wait_at_once_whatever_the_status_interval() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/quick.bin", 4 * MIB);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 256 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _leecher = sandbox.broker(&state, &["--status-interval", "60000"]);
    let downloads = sandbox.folder("downloads");
    let peer = seeder.broker.peer();
    let mut add = sandbox.add_command(&state, &seeder.torrent, &downloads, Some(&peer));
    add.arg("--wait");
    // Well under the minute: the old broker would still be waiting for its tick.
    let out = Running::start(add)
        .finish(Duration::from_secs(30))
        .expect_code(0);
    let lines = out.json_lines();
    let last = lines.last().expect("status lines");
    assert_eq!(last["complete"], true, "{}", out.stdout);
    assert_eq!(sha256(&downloads.join("quick.bin")), sha256(&data));
}

/// A library patron's board shows what the broker runs, as `list` says it, and a reader
/// asleep on it wakes when a torrent comes or goes, long before any status tick.
#[test]
fn the_board_shows_what_the_broker_runs_and_wakes_its_readers() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--status-interval", "60000"]);
    let mut patron = sandbox.patron(&state);
    let mut board = patron.board().expect("map the board");
    assert_eq!(board.list(), Vec::new());
    assert_eq!(board.header().broker_pid, patron.broker_pid());

    let file = sandbox.random_file("local/shown.bin", 300_000);
    let waiter = std::thread::spawn(move || {
        let changed = board.wait_for_change(STEP_TIMEOUT).expect("wait");
        (changed, Instant::now(), board)
    });
    let id = make_and_seed(&mut patron, &file);
    let replied = Instant::now();
    let (changed, woke, mut board) = waiter.join().expect("waiter");
    assert!(changed, "the board did not change");
    // The add nudges the board: the reader wakes about when the reply arrives, not at a tick.
    let late = woke.saturating_duration_since(replied);
    assert!(
        late < Duration::from_secs(5),
        "woke {late:?} after the reply"
    );

    // Checked and seeding, with no status tick in between: the pulse put it there.
    wait_for("the board to show it seeding", STEP_TIMEOUT, || {
        let _ = board.wait_for_change(Duration::from_millis(200));
        board
            .get(TorrentRef::Id(id))
            .is_some_and(|s| s.state == TorrentState::Seeding && s.complete)
    });
    let asked = patron.list().expect("list");
    let read = board.list();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].info, asked[0].info);
    assert_eq!(read[0].holders, asked[0].holders);
    assert_eq!(read[0].status.bytes_done, asked[0].status.bytes_done);
    assert_eq!(read[0].status.state, asked[0].status.state);
    let hash = TorrentRef::InfoHash(read[0].info.info_hash);
    assert_eq!(board.get(hash).map(|s| s.id), Some(id));

    patron
        .close(TorrentRef::Id(id), false, true)
        .expect("close");
    wait_for("the board to drop it", STEP_TIMEOUT, || {
        let _ = board.wait_for_change(Duration::from_millis(200));
        !board.contains(id)
    });
}

/// A reply that adds or closes a torrent is sent only once the board says so: a patron that
/// acts on the reply never reads the board from before it (whatever the status loop is doing).
#[test]
fn the_board_agrees_with_every_reply_as_soon_as_it_arrives() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let board = patron.board().expect("map the board");
    for round in 0..40 {
        let file = sandbox.random_file(&format!("local/r{round}.bin"), 20_000 + round);
        let id = make_and_seed(&mut patron, &file);
        assert!(
            board.contains(id),
            "round {round}: added, yet not on the board"
        );
        // A pause and a resume too (before: shown at the status loop's next look, up to
        // 100 ms after the reply). Not while the first check runs: it applies after it.
        if round % 8 == 0 {
            wait_for("it to seed", STEP_TIMEOUT, || {
                board
                    .get(TorrentRef::Id(id))
                    .is_some_and(|s| s.state == TorrentState::Seeding)
            });
            patron.pause(TorrentRef::Id(id)).expect("pause");
            let shown = board.get(TorrentRef::Id(id)).map(|s| s.state);
            assert_eq!(shown, Some(TorrentState::Paused), "round {round}: paused");
            patron.resume(TorrentRef::Id(id)).expect("resume");
            let shown = board.get(TorrentRef::Id(id)).map(|s| s.state);
            assert_eq!(shown, Some(TorrentState::Seeding), "round {round}: resumed");
        }
        patron
            .close(TorrentRef::Id(id), false, true)
            .expect("close");
        assert!(
            !board.contains(id),
            "round {round}: closed, yet on the board"
        );
    }
}

/// A reader left running follows the broker to a larger board, hears that it stopped, and
/// notices a broker killed without a word.
#[test]
fn a_long_running_reader_follows_growth_and_restarts() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &["--board-slots", "2"]);
    let mut patron = sandbox.patron(&state);
    let mut board = patron.board().expect("map the board");
    let first = board.header();
    assert_eq!(first.capacity, 2);
    for i in 0..3 {
        let file = sandbox.random_file(&format!("local/{i}.bin"), 10_000 + i);
        make_and_seed(&mut patron, &file);
    }
    wait_for("the reader to see three torrents", STEP_TIMEOUT, || {
        let _ = board.wait_for_change(Duration::from_millis(200));
        board.list().len() == 3
    });
    let grown = board.header();
    assert_eq!(grown.capacity, 4);
    assert_ne!(grown.generation, first.generation);

    // A clean stop marks the board: the waiting reader is told at once.
    broker.signal(Signal::SIGTERM);
    wait_until_stopped(&mut board);
    broker.wait_exit(STEP_TIMEOUT);

    // The next broker publishes a new board, with the torrents it restored.
    let broker = sandbox.broker(&state, &[]);
    let mut board = Board::open(&sandbox.connect_options(&state)).expect("new board");
    assert_ne!(board.header().generation, grown.generation);
    wait_for(
        "the restored torrents on the new board",
        STEP_TIMEOUT,
        || {
            let _ = board.wait_for_change(Duration::from_millis(200));
            board.list().len() == 3
        },
    );

    // SIGKILL marks nothing; the reader notices the broker is gone.
    broker.signal(Signal::SIGKILL);
    wait_until_stopped(&mut board);
}

/// Waits on `board` (changes may still come first) until it reports its broker stopped.
fn wait_until_stopped(board: &mut Board) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match board.wait_for_change(Duration::from_secs(10)) {
            Err(Error::BrokerStopped(_)) => return,
            Ok(_) if Instant::now() < deadline => continue,
            other => panic!("expected BrokerStopped within 10 s, got {other:?}"),
        }
    }
}

/// A patron that gets the board and tries every way to write to it fails, alone: the broker
/// and every other reader go on as before.
#[test]
fn a_hostile_board_reader_fails_alone() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let file = sandbox.random_file("local/kept.bin", 100_000);
    let id = make_and_seed(&mut patron, &file);
    let mut board = patron.board().expect("map the board");
    wait_for("the board to show it seeding", STEP_TIMEOUT, || {
        let _ = board.wait_for_change(Duration::from_millis(200));
        board
            .get(TorrentRef::Id(id))
            .is_some_and(|s| s.state == TorrentState::Seeding)
    });
    let before = board.summary(TorrentRef::Id(id));

    let request = patron_client::proto::wire::encode_frames(&ToBroker::Board(BoardHello {
        version: PROTOCOL_VERSION,
    }))
    .expect("encode")
    .first;
    let socket = patron_client::proto::paths::socket_path(&state);
    let mut attack = std::process::Command::new("python3");
    attack
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/board_attacker.py"
        ))
        .arg(&socket)
        .arg(hex::encode(&request));
    let out = run(attack).expect_code(0);
    let results: Value = serde_json::from_str(out.stdout.trim()).expect(&out.stdout);
    let results = results.as_object().expect("an object");
    assert!(results.len() >= 7, "{results:?}");
    for (attempt, result) in results {
        if attempt.contains("private copy") {
            continue;
        }
        assert!(
            result.is_number(),
            "{attempt}: {result} (every write must be refused)"
        );
    }
    // Nothing changed for anyone: the broker serves, this reader and a new one read the same.
    assert!(broker.fd_count() > 0);
    assert_eq!(board.summary(TorrentRef::Id(id)), before);
    let fresh = patron.board().expect("a new reader");
    assert_eq!(fresh.summary(TorrentRef::Id(id)), before);
    assert_eq!(patron.status(TorrentRef::Id(id)).expect("status").id, id);
}

/// Where the board cannot be had, `status`, `list` and `watch` ask the broker instead and
/// print the same; with the board they do not even connect as patrons.
#[test]
fn without_the_board_status_list_and_watch_still_work() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let file = sandbox.random_file("local/both.bin", 100_000);
    let mut make = sandbox.client(&state);
    make.arg("make").arg(&file).arg("--seed");
    make.arg("--output").arg(sandbox.path("both.torrent"));
    run(make).expect_code(0);
    let connections = || broker.log().matches("patron connected").count();
    let cli = |board: bool, args: &[&str]| {
        let mut cmd = sandbox.client(&state);
        if !board {
            cmd.env(patron_client::BOARD_ENV, "0");
        }
        cmd.arg("--json").args(args);
        run(cmd).expect_code(0).json_lines()
    };
    let seeding = |lines: &Vec<Value>| lines.iter().all(|l| l["state"] == "seeding");
    wait_for("the torrent to seed", STEP_TIMEOUT, || {
        seeding(&cli(true, &["list"]))
    });

    let connected = connections();
    let from_board = (cli(true, &["list"]), cli(true, &["status", "0"]));
    assert_eq!(
        connections(),
        connected,
        "read the board without connecting"
    );
    let asked = (cli(false, &["list"]), cli(false, &["status", "0"]));
    assert_eq!(connections(), connected + 2, "asked the broker");
    assert_eq!(from_board, asked);
    assert_eq!(from_board.0.len(), 1);
    assert_eq!(from_board.0[0]["name"], "both.bin");

    // watch without the board follows the torrent and hears it close.
    let mut watch = sandbox.client(&state);
    watch
        .env(patron_client::BOARD_ENV, "0")
        .args(["watch", "0"]);
    let watching = Running::start(watch);
    wait_for("watch to show the torrent", STEP_TIMEOUT, || {
        watching.stdout_so_far().contains("both.bin")
    });
    let mut close = sandbox.client(&state);
    close.args(["close", "0", "--force"]);
    run(close).expect_code(0);
    let out = watching.finish(STEP_TIMEOUT).expect_code(0);
    assert!(out.stdout.contains("closed:"), "{}", out.stdout);
}

/// A reader can `FUTEX_CMP_REQUEUE` every sleeper of the board's shared futex word onto a word
/// of its own (read access is enough): they then slept until their 500 ms slice ended. A
/// reader that waits gives the broker an eventfd of its own, which no other reader can touch.
#[test]
fn a_reader_abusing_the_futex_word_cannot_delay_another_readers_wake() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let data = sandbox.random_file("seed/toggled.bin", 64 * 1024);
    let id = make_and_seed(&mut patron, &data);
    // Its first check done: a pause during it would apply only once it ends.
    wait_for("the torrent to seed", STEP_TIMEOUT, || {
        patron
            .status(TorrentRef::Id(id))
            .is_ok_and(|s| s.state == TorrentState::Seeding)
    });

    // The victim: a board reader asleep until the board changes, saying when it woke.
    let (woke, wakes) = std::sync::mpsc::channel();
    let options = sandbox.connect_options(&state);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let victim = std::thread::spawn(move || {
        let mut board = Board::open(&options).expect("map the board");
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            if board.wait_for_change(Duration::from_secs(2)).expect("wait") {
                let _ = woke.send(Instant::now());
            }
        }
    });
    // The abuser, for the whole test.
    let request = patron_client::proto::wire::encode_frames(&ToBroker::Board(BoardHello {
        version: PROTOCOL_VERSION,
    }))
    .expect("encode")
    .first;
    let socket = patron_client::proto::paths::socket_path(&state);
    let mut abuse = std::process::Command::new("python3");
    abuse
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/futex_requeuer.py"
        ))
        .arg(&socket)
        .arg(hex::encode(&request))
        .arg("8");
    let abuser = Running::start(abuse);
    std::thread::sleep(Duration::from_millis(300));

    let mut delays = Vec::new();
    for round in 0..10 {
        while wakes.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(150)); // the victim is asleep again
        let changed = Instant::now();
        if round % 2 == 0 {
            patron.pause(TorrentRef::Id(id)).expect("pause");
        } else {
            patron.resume(TorrentRef::Id(id)).expect("resume");
        }
        let woke_at = wakes
            .recv_timeout(Duration::from_secs(3))
            .expect("the victim woke");
        delays.push(woke_at.saturating_duration_since(changed));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved = abuser.finish(Duration::from_secs(20)).expect_code(0);
    victim.join().expect("victim");
    // Before: each wake waited for the end of the victim's 500 ms slice (the abuser had moved
    // it off the futex word): half of them came later than 250 ms. The median is what a
    // loaded machine cannot fake.
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "changes reached the sleeping reader late: {delays:?} (the abuser moved {} sleepers)",
        moved.stdout.trim()
    );
}

/// A reader that waited on a quiet board and then died (SIGKILL) leaves nothing behind: its
/// waiter (a connection and an eventfd, two descriptors) is let go within moments, though
/// no change wakes the board.
#[test]
fn a_reader_gone_from_a_quiet_board_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("quiet");
    let broker = sandbox.broker(&state, &[]);
    let waiters = || {
        let line = e2e::ok_json(&sandbox, &state, &["broker", "status"]);
        line["board_waiters"].as_u64().expect("board_waiters")
    };
    let baseline = broker.fd_count();
    let mut watch = sandbox.client(&state);
    watch.arg("watch");
    let watching = Running::start(watch);
    wait_for("the reader to wait on the board", STEP_TIMEOUT, || {
        waiters() == 1
    });
    watching.signal(Signal::SIGKILL);
    let _ = watching.finish(STEP_TIMEOUT);
    wait_for(
        "the gone reader's waiter to go",
        Duration::from_secs(5),
        || waiters() == 0,
    );
    wait_for("its descriptors to close", Duration::from_secs(5), || {
        broker.fd_count() <= baseline
    });
}
