//! Streaming while downloading (DESIGN §8): `patron-client cat`, `Patron::stream`, and the
//! pipe's `cat`, against a rate-limited seeder, through the real binaries.

use e2e::patron_client::proto::{
    ErrorKind, Event, FileRef, RequestBody, StreamAt, TorrentId, TorrentRef,
};
use e2e::patron_client::Stream;
use e2e::{
    leech, pipe_session, run, streams_open, wait_for, CatProcess as Cat, Sandbox, Seeder,
    STEP_TIMEOUT,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

const MIB: usize = 1024 * 1024;
const PIECE: u64 = 64 * 1024;

fn bytes_done(sandbox: &Sandbox, state: &Path) -> u64 {
    let mut patron = sandbox.patron(state);
    patron
        .status(TorrentRef::Id(TorrentId(0)))
        .expect("status")
        .bytes_done
}

#[test]
fn cat_at_an_offset_gets_its_bytes_long_before_the_rest() {
    let sandbox = Sandbox::new();
    // 8 MiB at 1 MB/s: the whole file needs 8 s.
    let size = 8 * MIB;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "1000000");
    let (_broker, state, _) = leech(&sandbox, &seeder);

    let offset = size - MIB;
    let cat = Cat::start(
        &sandbox,
        &state,
        &["0", "--offset", &offset.to_string()],
        &sandbox.path("tail.bin"),
    );
    let (code, stderr, bytes) = cat.finish();
    // Read as soon as `cat` ended: how much of the torrent had arrived by then.
    let done = bytes_done(&sandbox, &state);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "cat said: {stderr}");
    let expected = &std::fs::read(&data).expect("data")[offset..];
    assert!(bytes == expected, "the last MiB differs from the file's");
    // Without its window first, the last MiB would come last: after all 8 MiB.
    assert!(
        done <= (size / 2) as u64,
        "{done} bytes of {size} had arrived when the last MiB was read"
    );
}

#[test]
fn cat_writes_the_whole_file_while_it_downloads() {
    let sandbox = Sandbox::new();
    let size = 3 * MIB + 12345;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "2000000");
    let (_broker, state, _) = leech(&sandbox, &seeder);

    // By index, and a second reader by path (the torrent's one file).
    let by_index = Cat::start(&sandbox, &state, &["0", "0"], &sandbox.path("a.bin"));
    let by_path = Cat::start(&sandbox, &state, &["0", "slow.bin"], &sandbox.path("b.bin"));
    let expected = std::fs::read(&data).expect("data");
    for cat in [by_index, by_path] {
        let (code, stderr, bytes) = cat.finish();
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.is_empty(), "cat said: {stderr}");
        assert_eq!(bytes.len(), expected.len());
        assert!(bytes == expected, "cat's bytes differ from the file's");
    }
    // Both streams are gone with their readers.
    wait_for("no stream open", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
}

#[test]
fn two_readers_at_different_offsets_each_get_their_bytes() {
    let sandbox = Sandbox::new();
    let size = 6 * MIB;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "1500000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let expected = std::fs::read(&data).expect("data");

    let middle = 3 * MIB + 100;
    let near_end = size - MIB / 2;
    let a = Cat::start(
        &sandbox,
        &state,
        &["0", "--offset", &middle.to_string()],
        &sandbox.path("a.bin"),
    );
    let b = Cat::start(
        &sandbox,
        &state,
        &["0", "--offset", &near_end.to_string()],
        &sandbox.path("b.bin"),
    );
    wait_for("two streams open", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 2
    });
    let (code, stderr, bytes) = b.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        bytes == expected[near_end..],
        "the reader near the end got other bytes"
    );
    let (code, stderr, bytes) = a.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        bytes == expected[middle..],
        "the reader in the middle got other bytes"
    );
}

#[test]
fn cat_into_head_ends_quietly_and_a_killed_cat_releases_its_window() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 4 * MIB, "300000");
    let (_broker, state, _) = leech(&sandbox, &seeder);

    // `cat | head -c 1`: head takes one byte and goes; cat ends quietly, exit 0.
    // pipefail: the pipeline fails if cat does.
    let client = e2e::bin("patron-client");
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(r#"set -o pipefail; "$0" --state-dir "$1" cat 0 2>"$3" | head -c 1 > "$2""#)
        .arg(&client)
        .arg(&state)
        .arg(sandbox.path("one.bin"))
        .arg(sandbox.path("cat.err"));
    let out = run(bash);
    assert_eq!(out.code(), 0, "cat | head: {out:?}");
    assert_eq!(
        std::fs::read(sandbox.path("one.bin"))
            .expect("head output")
            .len(),
        1
    );
    let said = std::fs::read_to_string(sandbox.path("cat.err")).unwrap_or_default();
    assert!(said.is_empty(), "cat said: {said}");

    // A cat waiting on the slow seeder, SIGKILLed: its window leaves the engine at once.
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("all.bin"));
    wait_for("the cat's stream open", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 1
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(cat.pid()), Signal::SIGKILL).expect("kill");
    let (code, _, _) = cat.finish();
    assert_eq!(code, -1, "killed by the signal");
    wait_for("the killed cat's stream closed", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
}

#[test]
fn the_library_stream_reads_and_seeks() {
    let sandbox = Sandbox::new();
    let size = 2 * MIB + 777;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "2000000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let expected = std::fs::read(&data).expect("data");

    let patron = sandbox.patron(&state);
    let mut stream = patron
        .stream(TorrentRef::Id(TorrentId(0)), None)
        .expect("stream");
    assert_eq!(stream.len(), size as u64);
    assert_eq!(stream.over_channel(), None, "the file itself is read");
    // The end first, then the start: each read waits for its own bytes.
    let tail_at = size as u64 - 1000;
    assert_eq!(stream.seek(SeekFrom::End(-1000)).expect("seek"), tail_at);
    let mut tail = Vec::new();
    stream.read_to_end(&mut tail).expect("read the tail");
    assert!(tail == expected[tail_at as usize..]);
    stream.seek(SeekFrom::Start(0)).expect("seek to start");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read all");
    assert!(all == expected, "the whole file differs");
    assert!(stream.seek(SeekFrom::Current(-(size as i64) - 1)).is_err());

    // Bytes over the channel are the same bytes.
    let mut over = Stream::open(
        &sandbox.connect_options(&state),
        TorrentRef::Id(TorrentId(0)),
        Some(FileRef::Path("slow.bin".into())),
        PIECE + 5,
    )
    .expect("stream");
    over.read_over_channel();
    let mut rest = Vec::new();
    over.read_to_end(&mut rest).expect("read over the channel");
    assert!(rest == expected[PIECE as usize + 5..]);
}

#[test]
fn a_file_the_reader_cannot_open_comes_over_the_channel() {
    if !e2e::have_root("a reader in a mount namespace of its own") {
        return;
    }
    let sandbox = Sandbox::new();
    let size = 2 * MIB;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "2000000");
    let (_broker, state, downloads) = leech(&sandbox, &seeder);
    wait_for("the engine's file", STEP_TIMEOUT, || {
        downloads.join("slow.bin").exists()
    });

    // The reader sees another folder where the broker's downloads are (an empty tmpfs
    // mounted over it in a mount namespace of its own): it cannot open the file.
    let cat = Cat::in_namespace(
        &sandbox,
        &state,
        &downloads,
        r#"mount -t tmpfs tmpfs "$1""#,
        &["0"],
        &sandbox.path("all.bin"),
    );
    let (code, stderr, bytes) = cat.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("over the broker's channel"),
        "cat should say why: {stderr}"
    );
    assert!(bytes == std::fs::read(&data).expect("data"));
}

#[test]
fn bad_streams_are_refused_clearly() {
    let sandbox = Sandbox::new();
    let folder = sandbox.folder("seed/pair");
    sandbox.random_file("seed/pair/a.bin", 100_000);
    sandbox.random_file("seed/pair/b.bin", 200_000);
    let seeder = Seeder::start(&sandbox, "seeder", &folder, PIECE, &[]);
    let state = seeder.broker.state.clone();

    let refused = |args: &[&str], says: &str| {
        let cat = Cat::start(&sandbox, &state, args, &sandbox.path("out.bin"));
        let (code, stderr, bytes) = cat.finish();
        assert_eq!(code, 1, "cat {args:?}: {stderr}");
        assert!(stderr.contains(says), "cat {args:?} said: {stderr}");
        assert!(bytes.is_empty());
    };
    refused(&["0"], "has 2 files");
    refused(&["0", "7"], "no file 7");
    refused(&["0", "pair/c.bin"], "no file");
    refused(&["0", "0", "--offset", "1M"], "past the end");
    refused(&["9"], "no torrent 9");

    // Seeding, so verified: a file by its path inside the torrent.
    let cat = Cat::start(&sandbox, &state, &["0", "b.bin"], &sandbox.path("b.bin"));
    let (code, stderr, bytes) = cat.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(bytes == std::fs::read(folder.join("b.bin")).expect("b"));

    // A patron cannot move or read another's stream.
    let options = sandbox.connect_options(&state);
    let stream = Stream::open(
        &options,
        TorrentRef::Id(TorrentId(0)),
        Some(FileRef::Index(0)),
        0,
    )
    .expect("stream");
    let mut other = sandbox.patron(&state);
    let reply = other
        .request(RequestBody::StreamAt(StreamAt {
            stream: stream.info().id,
            position: 0,
        }))
        .expect("reply");
    match reply {
        Event::Error { error, .. } => assert_eq!(error.kind, ErrorKind::BadRequest, "{error}"),
        other => panic!("another patron's stream moved: {other:?}"),
    }
    drop(stream);
}

#[test]
fn a_closed_torrent_ends_cat_with_its_own_exit_code() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 4 * MIB, "200000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("all.bin"));
    wait_for("the cat's stream open", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 1
    });
    let mut close = sandbox.client(&state);
    close.args(["close", "0", "--force"]);
    run(close).expect_code(0);
    let (code, stderr, bytes) = cat.finish();
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("closed"), "{stderr}");
    assert!(bytes.len() < 4 * MIB);
}

#[test]
fn pipe_mode_streams_into_a_fifo() {
    let sandbox = Sandbox::new();
    let size = 2 * MIB + 3;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "2000000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let fifo = sandbox.path("player.fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    let player = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("read the fifo"))
    };
    let line = serde_json::json!({"cmd": "cat", "torrent": "0", "to": fifo, "request": "play"});
    let lines = pipe_session(&sandbox, &state, &[line.to_string()], true);
    let done: Vec<&Value> = lines.iter().filter(|l| l["request"] == "play").collect();
    assert_eq!(done.len(), 1, "{lines:?}");
    assert_eq!(done[0]["event"], "cat-done", "{lines:?}");
    assert_eq!(done[0]["bytes"], size as u64, "{lines:?}");
    let played = player.join().expect("player");
    assert!(played == std::fs::read(&data).expect("data"));

    // An existing regular file is never written over.
    let taken = sandbox.path("taken.bin");
    std::fs::write(&taken, b"mine").expect("write");
    let line = serde_json::json!({"cmd": "cat", "torrent": "0", "to": taken, "request": 2});
    let lines = pipe_session(&sandbox, &state, &[line.to_string()], true);
    let reply = lines.iter().find(|l| l["request"] == 2).expect("a reply");
    assert_eq!(reply["event"], "error", "{lines:?}");
    assert_eq!(std::fs::read(&taken).expect("read"), b"mine");
}

#[test]
fn many_readers_at_once_neither_stall_the_engine_nor_each_other() {
    let sandbox = Sandbox::new();
    let size = 4 * MIB;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "4000000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let expected = std::sync::Arc::new(std::fs::read(&data).expect("data"));

    // More readers than the engine's eight blocking permits: each held one before.
    let readers = 12;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for k in 0..readers {
        let options = sandbox.connect_options(&state);
        let (done, expected) = (done.clone(), expected.clone());
        let offset = (size / readers) * k + k;
        std::thread::spawn(move || {
            let mut stream =
                Stream::open(&options, TorrentRef::Id(TorrentId(0)), None, offset as u64)
                    .expect("stream");
            let mut bytes = Vec::new();
            stream.read_to_end(&mut bytes).expect("read");
            assert!(bytes == expected[offset..], "reader {k} got other bytes");
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    wait_for("every reader at its end", STEP_TIMEOUT, || {
        done.load(std::sync::atomic::Ordering::SeqCst) == readers
    });

    // One patron may hold 16 streams at once; the 17th is refused, and says why.
    let mut patron = sandbox.patron(&state);
    let open = || {
        RequestBody::OpenStream(e2e::patron_client::proto::OpenStream {
            torrent: TorrentRef::Id(TorrentId(0)),
            file: None,
            position: 0,
        })
    };
    for _ in 0..16 {
        let reply = patron.request(open()).expect("reply");
        assert!(matches!(reply, Event::StreamOpened { .. }), "{reply:?}");
    }
    match patron.request(open()).expect("reply") {
        Event::Error { error, .. } => assert_eq!(error.kind, ErrorKind::LimitReached, "{error}"),
        other => panic!("a 17th stream: {other:?}"),
    }
    drop(patron);
    wait_for("the patron's 16 streams closed", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
}
