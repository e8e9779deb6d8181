//! Attacks on streaming (DESIGN §4, §8): hostile requests, floods, pause/recheck/delete/stop
//! during a cat, multi-file torrents with files not aligned to pieces, empty files, pipe cat.
//! Each test asserts what the contract wants; a failure is a finding.

use e2e::patron_client::proto::{
    Event, FileRef, OpenStream, RequestBody, RequestId, StreamAt, StreamId, StreamRead, TorrentId,
    TorrentRef,
};
use e2e::{
    leech, pipe_session, streams_open, wait_for, CatProcess as Cat, Running, Sandbox, Seeder,
    SilentPeer, STEP_TIMEOUT,
};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
const T0: TorrentRef = TorrentRef::Id(TorrentId(0));

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Share of one core the broker used over `span` (percent).
fn cpu_percent(pid: i32, span: Duration) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    let after = cpu_ticks(pid);
    (after - before) as f64 / hz / span.as_secs_f64() * 100.0
}

fn open_body(position: u64, file: Option<FileRef>) -> RequestBody {
    RequestBody::OpenStream(OpenStream {
        torrent: T0,
        file,
        position,
    })
}

/// Pauses torrent 0 once its first pieces are in, and says where the bytes verified in a
/// row from byte 0 end (a reader there waits for good).
fn stall_after_first_pieces(sandbox: &Sandbox, state: &Path) -> u64 {
    let mut patron = sandbox.patron(state);
    wait_for("first pieces", STEP_TIMEOUT, || {
        patron.status(T0).expect("status").bytes_done >= 256 * 1024
    });
    patron.pause(T0).expect("pause");
    let verified_to = match patron.request(open_body(0, None)).expect("open") {
        Event::StreamOpened { stream, .. } => stream.verified_to,
        other => panic!("{other:?}"),
    };
    assert!(
        verified_to > 10 && verified_to < 4 * MIB as u64,
        "{verified_to}"
    );
    verified_to
}

/// A multi-file torrent whose files do not line up with its 32 KiB pieces, one of them
/// empty: every file streams exactly (from the file and over the channel), from 0 and from
/// an offset that is not on a piece boundary, while it downloads.
#[test]
fn multi_file_unaligned_and_empty_files_stream_exactly() {
    let sandbox = Sandbox::new();
    let folder = sandbox.folder("seed/multi");
    let files = [
        ("a.bin", 100_001usize),
        ("b.bin", 0),
        ("c.bin", 300_007),
        ("d.bin", 7),
        ("e.bin", 65_536),
        ("z.bin", 0),
    ];
    for (name, size) in files {
        sandbox.random_file(&format!("seed/multi/{name}"), size);
    }
    let seeder = Seeder::start(
        &sandbox,
        "seeder",
        &folder,
        32 * 1024,
        &["--max-upload-rate", "150000"],
    );
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let mut cats = Vec::new();
    for (name, size) in files {
        let expected = std::fs::read(folder.join(name)).unwrap();
        cats.push((
            format!("{name} file"),
            Cat::start(
                &sandbox,
                &state,
                &["0", name],
                &sandbox.path(&format!("{name}.f")),
            ),
            expected.clone(),
        ));
        cats.push((
            format!("{name} channel"),
            Cat::start(
                &sandbox,
                &state,
                &["0", name, "--over-channel"],
                &sandbox.path(&format!("{name}.c")),
            ),
            expected.clone(),
        ));
        if size > 3 {
            let off = size / 3 + 1;
            cats.push((
                format!("{name} at {off}"),
                Cat::start(
                    &sandbox,
                    &state,
                    &["0", name, "--offset", &off.to_string()],
                    &sandbox.path(&format!("{name}.o")),
                ),
                expected[off..].to_vec(),
            ));
        }
        // At the very end: nothing to write, exit 0.
        cats.push((
            format!("{name} at its end"),
            Cat::start(
                &sandbox,
                &state,
                &["0", name, "--offset", &size.to_string()],
                &sandbox.path(&format!("{name}.e")),
            ),
            Vec::new(),
        ));
    }
    let mut bad = Vec::new();
    for (what, cat, expected) in cats {
        let (code, stderr, bytes) = cat.finish_within(STEP_TIMEOUT);
        if code != 0 || bytes != expected {
            bad.push(format!(
                "{what}: exit {code}, {} bytes (want {}), stderr {stderr:?}",
                bytes.len(),
                expected.len()
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Every hostile stream request gets exactly one reply, and the broker stays up.
#[test]
fn hostile_stream_requests_each_get_exactly_one_reply() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 3 * MIB + 11);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let size = (3 * MIB + 11) as u64;

    let mut patron = sandbox.patron(&state);
    let id = match patron.request(open_body(0, None)).expect("open") {
        Event::StreamOpened { stream, .. } => stream.id,
        other => panic!("{other:?}"),
    };
    let bodies = vec![
        RequestBody::StreamAt(StreamAt {
            stream: id,
            position: u64::MAX,
        }),
        RequestBody::StreamAt(StreamAt {
            stream: id,
            position: size,
        }),
        RequestBody::StreamAt(StreamAt {
            stream: id,
            position: size - 1,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: id,
            position: u64::MAX,
            length: u32::MAX,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: id,
            position: 0,
            length: u32::MAX,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: id,
            position: 0,
            length: 0,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: id,
            position: size,
            length: 10,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: id,
            position: size - 1,
            length: u32::MAX,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: StreamId(u64::MAX),
            position: 0,
            length: 1,
        }),
        RequestBody::StreamAt(StreamAt {
            stream: StreamId(0),
            position: 0,
        }),
        open_body(u64::MAX, None),
        open_body(size, None),
        open_body(0, Some(FileRef::Index(u32::MAX))),
        open_body(0, Some(FileRef::Path("../../../../etc/passwd".into()))),
        open_body(0, Some(FileRef::Path(String::new()))),
        open_body(0, Some(FileRef::Path("a\0b".into()))),
        RequestBody::OpenStream(OpenStream {
            torrent: TorrentRef::Id(TorrentId(u64::MAX)),
            file: None,
            position: 0,
        }),
        RequestBody::CloseStream(StreamId(u64::MAX)),
        RequestBody::CloseStream(id),
        RequestBody::CloseStream(id),
        RequestBody::StreamAt(StreamAt {
            stream: id,
            position: 0,
        }),
        RequestBody::StreamRead(StreamRead {
            stream: id,
            position: 0,
            length: 1,
        }),
    ];
    let mut sent: Vec<(RequestId, String)> = Vec::new();
    for body in bodies {
        let what = format!("{body:?}");
        sent.push((patron.send(body).expect("send"), what));
    }
    let mut replies: HashMap<RequestId, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while replies.len() < sent.len() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = patron.next_event_timeout(left).expect("event") else {
            break;
        };
        if let Some(request) = event.request() {
            let short = format!("{event:?}");
            replies
                .entry(request)
                .or_default()
                .push(short.chars().take(160).collect());
        }
    }
    // Any late duplicates?
    while let Ok(Some(event)) = patron.next_event_timeout(Duration::from_millis(500)) {
        if let Some(request) = event.request() {
            replies
                .entry(request)
                .or_default()
                .push(format!("{event:?}").chars().take(160).collect());
        }
    }
    for (request, what) in &sent {
        let got = replies.get(request).cloned().unwrap_or_default();
        eprintln!("{what}\n   -> {got:?}");
        assert_eq!(got.len(), 1, "{what}: {got:?}");
    }
    // Still serving.
    let mut other = sandbox.patron(&state);
    other.broker_info().expect("the broker still answers");
    drop(seeder);
}

/// Patrons that pipeline 1 MiB StreamReads and never read their socket: each is cut off,
/// the broker's memory stays bounded, and others are still served.
#[test]
fn stream_read_flood_without_reading_is_bounded() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 4 * MIB);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let pid = seeder.broker.pid;
    let rss = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    let before = rss(pid);
    let floods: usize = std::env::var("FLOODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut peak = before;
    for _ in 0..floods {
        let mut patron = sandbox.patron(&state);
        let id = match patron.request(open_body(0, None)).expect("open") {
            Event::StreamOpened { stream, .. } => stream.id,
            other => panic!("{other:?}"),
        };
        std::thread::spawn(move || {
            for k in 0..3000u64 {
                let read = StreamRead {
                    stream: id,
                    position: (k % 4) * MIB as u64,
                    length: MIB as u32,
                };
                if patron.send(RequestBody::StreamRead(read)).is_err() {
                    break;
                }
            }
            // Hold the connection without reading.
            std::thread::sleep(Duration::from_secs(6));
            drop(patron);
        });
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = seeder.broker.log();
    eprintln!(
        "cut off: {} times; now RSS {} KiB",
        log.matches("cut off").count(),
        rss(pid)
    );
    let t = Instant::now();
    let mut other = sandbox.patron(&state);
    other.broker_info().expect("still serving");
    let took = t.elapsed();
    eprintln!(
        "RSS before {before} KiB, peak {peak} KiB (+{} MiB for {floods} flooding patrons); info took {took:?}",
        (peak - before) / 1024
    );
    // Stream bytes stop once two reads' worth wait unread (then each read is refused with
    // a small error), so a flooding patron costs a few MiB, not its whole outbox (16 MiB
    // queued + 8 MiB of regions: 28 MiB each before).
    assert!(
        peak - before < 8 * 1024 * floods as u64,
        "broker grew by {} MiB for {floods} flooding patrons",
        (peak - before) / 1024
    );
    wait_for("the cut-off patrons' streams closed", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
}

/// Pause during a cat: the cat waits without the broker spinning, and finishes after resume.
#[test]
fn pause_during_cat_waits_quietly_and_resume_finishes_it() {
    let sandbox = Sandbox::new();
    let size = 3 * MIB;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "400000");
    let (broker, state, _) = leech(&sandbox, &seeder);
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("all.bin"));
    wait_for("some bytes", STEP_TIMEOUT, || cat.written() > 0);
    let mut patron = sandbox.patron(&state);
    patron.pause(T0).expect("pause");
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_percent(broker.pid, Duration::from_secs(3));
    let written = cat.written();
    eprintln!("broker CPU while paused with a waiting cat: {cpu:.1}%; {written} bytes out");
    assert_eq!(
        streams_open(&sandbox, &state),
        1,
        "the stream survives a pause"
    );
    patron.resume(T0).expect("resume");
    let (code, stderr, bytes) = cat.finish_within(STEP_TIMEOUT);
    assert_eq!(code, 0, "{stderr}");
    assert!(bytes == std::fs::read(&data).unwrap(), "bytes differ");
    assert!(cpu < 20.0, "broker spins while paused: {cpu:.1}%");
}

/// Recheck during a cat: the cat ends (exit 6) promptly, the window goes, and a new cat
/// after the check reads the whole file.
#[test]
fn recheck_during_cat() {
    let sandbox = Sandbox::new();
    let size = 3 * MIB;
    let (seeder, data) = e2e::slow_seeder(&sandbox, size, "400000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("all.bin"));
    wait_for("some bytes", STEP_TIMEOUT, || cat.written() > 0);
    let mut patron = sandbox.patron(&state);
    patron.recheck(T0).expect("recheck");
    let t = Instant::now();
    let (code, stderr, bytes) = cat.finish_within(Duration::from_secs(20));
    eprintln!(
        "cat after recheck: exit {code} in {:?}: {stderr}",
        t.elapsed()
    );
    assert_eq!(code, 6, "{stderr}");
    assert!(
        bytes == std::fs::read(&data).unwrap()[..bytes.len()],
        "prefix differs"
    );
    wait_for("no stream", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
    // A cat started during the check waits for it, and works.
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("again.bin"));
    let (code, stderr, bytes) = cat.finish_within(STEP_TIMEOUT);
    assert_eq!(code, 0, "{stderr}");
    assert!(bytes == std::fs::read(&data).unwrap());
}

/// `close --delete` during a cat: exit 6, the broker fine.
#[test]
fn close_delete_during_cat() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 3 * MIB, "300000");
    let (mut broker, state, downloads) = leech(&sandbox, &seeder);
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("all.bin"));
    let reader = Cat::start(
        &sandbox,
        &state,
        &["0", "--over-channel"],
        &sandbox.path("chan.bin"),
    );
    wait_for("some bytes", STEP_TIMEOUT, || {
        cat.written() > 0 && reader.written() > 0
    });
    let mut patron = sandbox.patron(&state);
    patron.close(T0, true, true).expect("close --delete");
    for c in [cat, reader] {
        let (code, stderr, _) = c.finish_within(Duration::from_secs(20));
        assert_eq!(code, 6, "{stderr}");
    }
    assert!(!downloads.join("slow.bin").exists(), "data deleted");
    assert!(broker.is_running());
    wait_for("no stream", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
}

/// SIGTERM to the broker while a cat waits: the cat ends at once (not a hang), the broker
/// exits 0 in bounded time.
#[test]
fn broker_stop_while_cat_waits() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 3 * MIB, "200000");
    let (mut broker, state, _) = leech(&sandbox, &seeder);
    let mut patron = sandbox.patron(&state);
    // Paused: the cat waits with nothing coming.
    let cat = Cat::start(
        &sandbox,
        &state,
        &["0", "--offset", "2M"],
        &sandbox.path("x.bin"),
    );
    wait_for("stream open", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 1
    });
    patron.pause(T0).expect("pause");
    drop(patron);
    let t = Instant::now();
    broker.signal(Signal::SIGTERM);
    let status = broker.wait_exit(Duration::from_secs(20));
    eprintln!("broker exited {status:?} in {:?}", t.elapsed());
    let (code, stderr, _) = cat.finish_within(Duration::from_secs(10));
    eprintln!("cat: exit {code}: {stderr}");
    assert_eq!(status.code(), Some(0));
    assert!(code == 5 || code == 6, "cat exit {code}: {stderr}");
}

/// A cat of a magnet whose metadata has not come: a clear, prompt error, not a hang.
#[test]
fn cat_of_unresolved_magnet_is_refused_promptly() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("b");
    let _broker = sandbox.broker(&state, &[]);
    let silent = SilentPeer::start();
    let mut add = sandbox.client(&state);
    add.arg("add")
        .arg(silent.magnet("ab", Some("never")))
        .arg("--output")
        .arg(sandbox.folder("dl"));
    let adding = Running::start(add);
    let mut patron = sandbox.patron(&state);
    wait_for("the magnet listed", STEP_TIMEOUT, || {
        !patron.list().expect("list").is_empty()
    });
    let t = Instant::now();
    let cat = Cat::start(&sandbox, &state, &["0"], &sandbox.path("m.bin"));
    let (code, stderr, bytes) = cat.finish_within(Duration::from_secs(15));
    eprintln!(
        "cat of unresolved magnet: exit {code} in {:?}: {stderr}",
        t.elapsed()
    );
    assert_ne!(code, 0);
    assert!(bytes.is_empty());
    let cat = Cat::start(
        &sandbox,
        &state,
        &["abababababababababababababababababababab"],
        &sandbox.path("m2.bin"),
    );
    let (code, stderr, _) = cat.finish_within(Duration::from_secs(15));
    eprintln!("cat by info hash: exit {code}: {stderr}");
    assert_ne!(code, 0);
    adding.signal(Signal::SIGKILL);
    let _ = adding.finish(Duration::from_secs(5));
}

/// Streams that sit (at the end of a complete file; waiting on a paused torrent) cost the
/// broker next to nothing.
#[test]
fn idle_streams_do_not_spin() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 2 * MIB + 5);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let mut holders = Vec::new();
    for position in [(2 * MIB + 5) as u64, 0, 100_000] {
        let mut patron = sandbox.patron(&state);
        for _ in 0..16 {
            let reply = patron.request(open_body(position, None)).expect("open");
            assert!(matches!(reply, Event::StreamOpened { .. }), "{reply:?}");
        }
        holders.push(patron);
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = cpu_percent(seeder.broker.pid, Duration::from_secs(3));
    eprintln!("broker CPU with 48 idle streams on a complete torrent: {idle:.1}%");
    assert!(idle < 15.0, "{idle:.1}%");

    // A leecher, paused, with 16 streams waiting.
    let (seeder2, _) = {
        let sandbox2 = &sandbox;
        let data = sandbox2.random_file("seed2/slow.bin", 3 * MIB);
        let s = Seeder::start(
            sandbox2,
            "seeder2",
            &data,
            64 * 1024,
            &["--max-upload-rate", "200000"],
        );
        (s, data)
    };
    let (broker, lstate, _) = leech(&sandbox, &seeder2);
    let mut patron = sandbox.patron(&lstate);
    for k in 0..16u64 {
        let reply = patron.request(open_body(k * 100_000, None)).expect("open");
        assert!(matches!(reply, Event::StreamOpened { .. }), "{reply:?}");
    }
    let mut control = sandbox.patron(&lstate);
    control.pause(T0).expect("pause");
    std::thread::sleep(Duration::from_millis(500));
    let paused = cpu_percent(broker.pid, Duration::from_secs(3));
    eprintln!("leecher CPU paused with 16 waiting streams: {paused:.1}%");
    assert!(paused < 15.0, "{paused:.1}%");
}

/// `cat | head -c 1` while the torrent is stalled (paused): head has gone, so cat should go
/// too and its window leave the engine (DESIGN §8: "a reader that goes releases its window
/// at once").
#[test]
fn head_leaving_a_stalled_cat_releases_the_window() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 4 * MIB, "300000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let verified_to = stall_after_first_pieces(&sandbox, &state);
    // Ten verified bytes, then a wait that never ends: head takes one byte and goes.
    let mut bash = Command::new("bash");
    sandbox.apply_env(&mut bash);
    bash.arg("-c")
        .arg(r#""$0" --state-dir "$1" cat 0 --offset "$2" | head -c 1 > /dev/null"#)
        .arg(e2e::bin("patron-client"))
        .arg(&state)
        .arg((verified_to - 10).to_string());
    let out = Running::start(bash).finish(STEP_TIMEOUT);
    assert_eq!(out.code(), 0, "{out:?}");
    wait_for("the cat's window released", STEP_TIMEOUT, || {
        streams_open(&sandbox, &state) == 0
    });
}

/// Pipe `cat` to a FIFO nobody opens: EOF on the pipe's stdin must still end the session
/// (a bounded wait), not hang forever.
#[test]
fn pipe_cat_to_an_unread_fifo_does_not_hang_the_session() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 100_000);
    let _seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let fifo = sandbox.path("nobody.fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    let mut pipe = sandbox.client(&state);
    let mut child = pipe
        .arg("pipe")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            r#"{{"cmd":"cat","torrent":"0","to":{:?},"request":1}}"#,
            fifo.display().to_string()
        )
        .unwrap();
        writeln!(stdin, r#"{{"cmd":"shutdown"}}"#).unwrap();
    }
    let running = Running::from_child(child);
    // Bounded: the cat gives up on the FIFO as the session shuts down.
    wait_for("the session finished", STEP_TIMEOUT, || {
        running.stdout_so_far().contains("finished")
    });
    let out = running.finish(STEP_TIMEOUT);
    assert!(!out.stdout.contains("cat-done"), "{}", out.stdout);
}

/// Pipe `cat` whose `to` is a symlink to an existing file, or a dangling symlink: refused, the
/// file untouched, nothing created through the link.
#[test]
fn pipe_cat_never_writes_through_a_symlink() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 100_000);
    let _seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let victim = sandbox.path("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let link = sandbox.path("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let dangling_target = sandbox.path("created-through-link");
    let dangling = sandbox.path("dangling");
    std::os::unix::fs::symlink(&dangling_target, &dangling).unwrap();
    let lines = [
        serde_json::json!({"cmd":"cat","torrent":"0","to":link,"request":1}).to_string(),
        serde_json::json!({"cmd":"cat","torrent":"0","to":dangling,"request":2}).to_string(),
        serde_json::json!({"cmd":"cat","torrent":"0","to":"/dev/null","request":3}).to_string(),
    ];
    let out = pipe_session(&sandbox, &state, &lines, true);
    eprintln!("{out:#?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        !dangling_target.exists(),
        "created a file through a dangling symlink"
    );
    for r in 1..=3 {
        let n = out.iter().filter(|l| l["request"] == r).count();
        assert_eq!(n, 1, "request {r}: {out:#?}");
    }
}

/// Verified bytes reach cat's consumer as soon as they are verified: with the torrent
/// stalled, the last verified bytes before the stall must not sit in cat's stdout buffer.
#[test]
fn cat_flushes_what_is_verified_before_waiting() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 4 * MIB, "300000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let verified_to = stall_after_first_pieces(&sandbox, &state);
    // Ten bytes just before the unverified piece, whatever they are (a newline or not).
    let offset = verified_to - 10;
    let cat = Cat::start(
        &sandbox,
        &state,
        &["0", "--offset", &offset.to_string()],
        &sandbox.path("tail.bin"),
    );
    wait_for("the 10 verified bytes written", STEP_TIMEOUT, || {
        cat.written() == 10
    });
    drop(cat); // it would wait for ever: killed
    let bytes = std::fs::read(sandbox.path("tail.bin")).expect("output");
    let data = std::fs::read(data).expect("data");
    assert!(bytes == data[offset as usize..verified_to as usize]);
}

/// The bytes cat writes are the torrent's: a folder of the torrent swapped for a symlink
/// to other files (after the engine opened its own) must not make cat write those files.
#[test]
fn cat_does_not_read_a_file_planted_through_a_symlinked_folder() {
    let sandbox = Sandbox::new();
    let folder = sandbox.folder("seed/multi");
    sandbox.random_file("seed/multi/a.bin", 200_000);
    sandbox.random_file("seed/multi/b.bin", 10_000);
    let _seeder = Seeder::start(&sandbox, "seeder", &folder, 32 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let real = std::fs::read(folder.join("a.bin")).unwrap();
    // Swap the torrent's folder for a symlink to a folder of other bytes.
    let evil = sandbox.folder("evil");
    std::fs::write(evil.join("a.bin"), vec![b'X'; 200_000]).unwrap();
    std::fs::rename(&folder, sandbox.path("seed/multi.real")).unwrap();
    std::os::unix::fs::symlink(&evil, &folder).unwrap();
    let cat = Cat::start(&sandbox, &state, &["0", "a.bin"], &sandbox.path("a.out"));
    let (code, stderr, bytes) = cat.finish_within(Duration::from_secs(30));
    let xs = bytes.iter().filter(|b| **b == b'X').count();
    eprintln!(
        "cat: exit {code}, {} bytes, {xs} of them planted 'X': {stderr}",
        bytes.len()
    );
    assert!(
        code != 0 || bytes == real,
        "cat wrote bytes that are not the torrent's ({xs} planted bytes)"
    );
}

/// Many patrons opening streams at once cannot push past the broker's limit of 256.
#[test]
fn the_global_stream_limit_holds_under_concurrent_opens() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", MIB);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(24));
    let mut threads = Vec::new();
    for _ in 0..24 {
        let options = sandbox.connect_options(&state);
        let barrier = barrier.clone();
        threads.push(std::thread::spawn(move || {
            let mut patron = e2e::patron_client::Patron::connect_with(&options).expect("connect");
            barrier.wait();
            let mut ids = Vec::new();
            for _ in 0..16 {
                ids.push(patron.send(open_body(0, None)).expect("send"));
            }
            let mut opened = 0;
            let mut replies = 0;
            while replies < ids.len() {
                match patron.next_event_timeout(STEP_TIMEOUT).expect("event") {
                    Some(Event::StreamOpened { .. }) => {
                        opened += 1;
                        replies += 1
                    }
                    Some(Event::Error { .. }) => replies += 1,
                    Some(_) => {}
                    None => panic!("no reply"),
                }
            }
            (opened, patron)
        }));
    }
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let opened: usize = results.iter().map(|(n, _)| n).sum();
    let open = streams_open(&sandbox, &state);
    eprintln!("opened {opened}; broker says {open} open");
    drop(results);
    drop(seeder);
    assert!(
        opened <= 256,
        "{opened} streams opened past the limit of 256"
    );
}

/// A file deselected while cat reads it: cat either finishes or ends with a clear error,
/// never waits forever.
#[test]
fn deselecting_the_file_during_cat() {
    let sandbox = Sandbox::new();
    let folder = sandbox.folder("seed/pair");
    sandbox.random_file("seed/pair/a.bin", 2 * MIB);
    sandbox.random_file("seed/pair/b.bin", 64 * 1024);
    let seeder = Seeder::start(
        &sandbox,
        "seeder",
        &folder,
        64 * 1024,
        &["--max-upload-rate", "300000"],
    );
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let cat = Cat::start(&sandbox, &state, &["0", "a.bin"], &sandbox.path("a.out"));
    wait_for("some bytes", STEP_TIMEOUT, || cat.written() > 0);
    let mut patron = sandbox.patron(&state);
    let b = e2e::patron_client::proto::FileRef::Path("b.bin".into());
    patron.select_files(T0, vec![b]).expect("select b only");
    let t = Instant::now();
    let (code, stderr, bytes) = cat.finish_within(Duration::from_secs(40));
    eprintln!(
        "cat after deselect: exit {code} after {:?}, {} bytes: {stderr}",
        t.elapsed(),
        bytes.len()
    );
    assert!(code == 0 || !stderr.is_empty());
}

/// A channel reader with verified bytes ahead asks for them back to back; closing the torrent
/// under it must end it with 6 (its stream ended), never 1 with the engine's own words.
/// Several rounds, since the gap it could fall into is short.
#[test]
fn closing_under_a_channel_reader_ends_it_with_six() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 3 * MIB, "3000000");
    let (_broker, state, _) = leech(&sandbox, &seeder);
    let mut patron = sandbox.patron(&state);
    let torrent = std::fs::read(&seeder.torrent).expect("torrent");
    let mut id = TorrentId(0);
    for round in 0..5u64 {
        wait_for("the download complete", STEP_TIMEOUT, || {
            patron
                .status(TorrentRef::Id(id))
                .map(|s| s.complete)
                .unwrap_or(false)
        });
        // Slowed by its own consumer: the reader always has verified bytes to ask for.
        let err = sandbox.path(&format!("err{round}"));
        let mut shell = Command::new("bash");
        shell
            .arg("-c")
            .arg(concat!(
                r#""$0" --state-dir "$1" cat "$2" --over-channel 2>"$3" | "#,
                r#"python3 -c 'import sys, time; r = sys.stdin.buffer"#,
                r#"
while r.read(65536): time.sleep(0.02)'; exit ${PIPESTATUS[0]}"#
            ))
            .arg(e2e::bin("patron-client"))
            .arg(&state)
            .arg(id.to_string())
            .arg(&err);
        let cat = Running::start(shell);
        wait_for("its stream", STEP_TIMEOUT, || {
            streams_open(&sandbox, &state) == 1
        });
        std::thread::sleep(Duration::from_millis(100 * round));
        patron
            .close(TorrentRef::Id(id), false, true)
            .expect("close");
        let out = cat.finish(STEP_TIMEOUT);
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        assert_eq!(out.code(), 6, "round {round}: {said}");
        // Added again (the same data, verified again) for the next round.
        let mut create = e2e::patron_client::proto::CreateNewTorrent::new(
            e2e::patron_client::proto::TorrentSource::TorrentFile(torrent.clone()),
        );
        create.output = Some(sandbox.folder("downloads").display().to_string());
        create.overwrite = true;
        id = patron.create(create).expect("add again").info().id;
    }
}

/// `shutdown` stops a pipe `cat` whose FIFO reader opened it and never reads (a paused
/// player): the session finishes, the cat says it was stopped.
#[test]
fn pipe_shutdown_stops_a_cat_whose_reader_does_not_read() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/big.bin", 4 * MIB);
    let _seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("seeder");
    let fifo = sandbox.path("paused.fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    // Opened for reading, never read: the writer fills the FIFO's buffer and waits.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(fifo).expect("open the fifo");
            let _ = released.recv_timeout(STEP_TIMEOUT);
            drop(file);
        })
    };
    let lines = [
        serde_json::json!({"cmd": "cat", "torrent": "0", "to": fifo, "request": "play"})
            .to_string(),
        serde_json::json!({"cmd": "list", "request": "wait"}).to_string(),
        r#"{"cmd":"shutdown"}"#.to_string(),
    ];
    let mut pipe = sandbox.client(&state);
    let mut child = pipe
        .arg("pipe")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pipe");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", lines[0]).expect("write");
        // The shutdown comes while the cat copies (into a FIFO that soon fills).
        wait_for("the cat's stream", STEP_TIMEOUT, || {
            streams_open(&sandbox, &state) == 1
        });
        writeln!(stdin, "{}", lines[1]).expect("write");
        writeln!(stdin, "{}", lines[2]).expect("write");
    }
    let out = Running::from_child(child).finish(Duration::from_secs(15));
    let lines = out.json_lines();
    let play = lines
        .iter()
        .find(|l| l["request"] == "play")
        .expect("cat's reply");
    assert_eq!(play["event"], "error", "{lines:?}");
    assert_eq!(play["kind"], "shutting-down", "{lines:?}");
    assert!(lines.iter().any(|l| l["event"] == "finished"), "{lines:?}");
    drop(release);
    holder.join().expect("holder");
}

/// A FIFO planted where the file is must not hang the reader's open: it reads over the
/// channel instead, the right bytes.
#[test]
fn a_fifo_planted_at_the_files_path_does_not_hang_the_reader() {
    if !e2e::have_root("a reader in a mount namespace of its own") {
        return;
    }
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 2 * MIB, "2000000");
    let (_broker, state, downloads) = leech(&sandbox, &seeder);
    let path = downloads.join("slow.bin");
    wait_for("the engine's file", STEP_TIMEOUT, || path.exists());
    // Where the reader looks (in a mount namespace of its own, over the downloads), a FIFO
    // nobody writes has the file's name; the engine keeps the real file.
    let cat = Cat::in_namespace(
        &sandbox,
        &state,
        &downloads,
        r#"mount -t tmpfs tmpfs "$1" && mkfifo "$1/slow.bin""#,
        &["0"],
        &sandbox.path("all.bin"),
    );
    let (code, stderr, bytes) = cat.finish_within(STEP_TIMEOUT);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("over the broker's channel"), "{stderr}");
    assert!(bytes == std::fs::read(&data).expect("data"));
}
