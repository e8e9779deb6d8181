//! Large messages (DESIGN §7): a big .torrent and a big reply cross as one shared memory
//! region beside a small datagram, not as a train of fragments; and a patron that lies about
//! its region (not memory, too large, garbage, the wrong message) gets a protocol error, alone.

use e2e::patron_client::proto::wire::{self, HEADER_BYTES};
use e2e::patron_client::proto::{
    CreateNewTorrent, Event, FileRef, MakeTorrent, OpenStream, Request, RequestBody, RequestId,
    SharedBytes, ToBroker, TorrentId, TorrentRef, TorrentSource, Welcome, LARGE_MESSAGE_BYTES,
    PROTOCOL_VERSION,
};
use e2e::patron_client::Created;
use e2e::{raw, Sandbox, STEP_TIMEOUT};
use ipc_channel::ipc::IpcReceiver;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

#[test]
fn a_big_torrent_and_a_big_reply_cross_as_shared_memory() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let debug = OsStr::new("info,torrent_broker::dispatch=debug,torrent_broker::patron=debug");
    let broker = sandbox.broker_with_env(&state, &[], &[("RUST_LOG", debug)]);
    let mut patron = sandbox.patron(&state);
    // 64 MiB of holes in 16 KiB pieces: a .torrent of 4,096 piece hashes, ~80 KiB.
    let data = sandbox.path("local/sparse.bin");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::File::create(&data)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let made = patron
        .make(MakeTorrent {
            path: data.display().to_string(),
            piece_size: Some(16 * 1024),
            trackers: Vec::new(),
            seed: false,
        })
        .expect("make");
    assert!(
        made.torrent_file.len() > LARGE_MESSAGE_BYTES,
        "{}",
        made.torrent_file.len()
    );
    assert!(
        broker.log().contains("a large event, in shared memory"),
        "{}",
        broker.log()
    );

    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.torrent_file));
    create.output = Some(sandbox.folder("downloads").display().to_string());
    create.paused = true;
    let Created::New(info) = patron.create(create).expect("create") else {
        panic!("a new torrent");
    };
    assert_eq!(info.total_bytes, 64 << 20);
    assert!(
        broker.log().contains("a large request, in shared memory"),
        "{}",
        broker.log()
    );
}

fn next_event(events: &IpcReceiver<Event>) -> Event {
    events
        .try_recv_timeout(STEP_TIMEOUT)
        .expect("an event within the step timeout")
}

/// A memfd holding `bytes`, `extra` bytes longer (a hole).
fn memfd(bytes: &[u8], extra: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(
        c"test-region",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .expect("memfd");
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file.set_len(bytes.len() as u64 + extra).unwrap();
    OwnedFd::from(file)
}

/// Sends `message` as one datagram with `region` beside it, as a patron's ipc-channel would
/// send a large message.
fn send_with_region(channel: &OwnedFd, message: &ToBroker, region: &OwnedFd) {
    let payload = wire::encode_payload(message).unwrap();
    raw::send_frame(
        channel,
        HEADER_BYTES + payload.len(),
        payload.len(),
        &payload,
        &[region.as_raw_fd()],
    );
}

fn request(id: u64) -> Vec<u8> {
    wire::encode_payload(&ToBroker::Request(Request {
        id: RequestId(id),
        body: RequestBody::List,
    }))
    .unwrap()
}

#[test]
fn a_patron_lying_about_its_region_fails_alone() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let channel = raw::connect(&state);
    let Welcome::Accepted { events, .. } = raw::hello(&channel, PROTOCOL_VERSION) else {
        panic!("an honest hello is accepted");
    };
    let large = ToBroker::Large(SharedBytes::region(0));
    let fds_before = broker.fd_count();
    let rss_before = broker.rss_kib();

    // Not memory: a pipe (reading could wait forever) and a file on disk.
    let (pipe, _writer) = nix::unistd::pipe().unwrap();
    send_with_region(&channel, &large, &pipe);
    let on_disk = sandbox.path("region-on-disk");
    std::fs::write(&on_disk, request(1)).unwrap();
    send_with_region(
        &channel,
        &large,
        &OwnedFd::from(std::fs::File::open(&on_disk).unwrap()),
    );
    // Larger than any request may be: refused before anything is allocated.
    send_with_region(&channel, &large, &memfd(&request(2), 64 << 20));
    // Too small to need a region: it must come in the datagram.
    send_with_region(&channel, &large, &memfd(&request(4), 0));
    // Garbage; a hello inside; a small request padded out; a region beside a message that
    // is not a large one; a request that is never large.
    let big = LARGE_MESSAGE_BYTES + 1000;
    send_with_region(&channel, &large, &memfd(&vec![0xff; big], 0));
    let hello = wire::encode_payload(&ToBroker::Hello(e2e::patron_client::proto::Hello {
        version: PROTOCOL_VERSION,
        server_name: "x".repeat(big),
    }))
    .unwrap();
    send_with_region(&channel, &large, &memfd(&hello, 0));
    let mut padded = request(5);
    padded.resize(big, 0);
    send_with_region(&channel, &large, &memfd(&padded, 0));
    let plain = ToBroker::Request(Request {
        id: RequestId(6),
        body: RequestBody::List,
    });
    send_with_region(&channel, &plain, &memfd(&vec![0; big], 0));
    // (A stream's file named by a path as long as a large message: no file has one.)
    let open = wire::encode_payload(&ToBroker::Request(Request {
        id: RequestId(7),
        body: RequestBody::OpenStream(OpenStream {
            torrent: TorrentRef::Id(TorrentId(0)),
            file: Some(FileRef::Path("x".repeat(big))),
            position: 0,
        }),
    }))
    .unwrap();
    send_with_region(&channel, &large, &memfd(&open, 0));
    let mut errors = Vec::new();
    for _ in 0..9 {
        match next_event(&events) {
            Event::ProtocolError { message } => errors.push(message),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }
    let all = errors.join(" | ");
    assert_eq!(all.matches("not memory").count(), 2, "{all}");
    assert!(all.contains("exceeds the limit"), "{all}");
    assert!(all.contains("is not large"), "{all}");
    assert!(all.contains("cannot decode"), "{all}");
    assert!(all.contains("must hold a request"), "{all}");
    assert!(all.contains("bytes after the message"), "{all}");
    assert!(all.contains("not a large one"), "{all}");
    assert!(all.contains("request is never large"), "{all}");
    assert!(
        broker.rss_kib() < rss_before + 32 * 1024,
        "the broker allocated what a region claimed"
    );
    // An honest large message on the same connection is served, in order: a .torrent of
    // 100 KiB of garbage, refused for what it is, not for how it came.
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(vec![b'x'; 100 * 1024]));
    create.output = Some(sandbox.folder("downloads").display().to_string());
    let honest = wire::encode_payload(&ToBroker::Request(Request {
        id: RequestId(9),
        body: RequestBody::CreateNewTorrent(create),
    }))
    .unwrap();
    send_with_region(&channel, &large, &memfd(&honest, 0));
    match next_event(&events) {
        Event::TorrentStartFail { request, error } => {
            assert_eq!(request, RequestId(9));
            assert!(error.message.contains("not a valid .torrent"), "{error:?}");
        }
        other => panic!("expected the create's reply, got {other:?}"),
    }
    // Every region it was handed is closed again.
    assert!(
        broker.fd_count() <= fds_before,
        "{} fds, {fds_before} before",
        broker.fd_count()
    );
}

/// A patron sending large messages as fast as it can (each naming the same 16 MiB region
/// it never wrote: free for it, 16 MiB to copy for the broker) gets them read one at a time
/// on its own task: the reader every patron shares goes on answering the others at once.
#[test]
fn a_flood_of_large_messages_does_not_slow_other_patrons() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let channel = raw::connect(&state);
    let Welcome::Accepted { events, .. } = raw::hello(&channel, PROTOCOL_VERSION) else {
        panic!("an honest hello is accepted");
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Its errors are read as they come, so it is never cut off for not reading.
            let drain = std::thread::spawn(move || while events.recv().is_ok() {});
            let region = memfd(&[], 16 << 20);
            let large = ToBroker::Large(SharedBytes::region(0));
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send_with_region(&channel, &large, &region);
                sent += 1;
            }
            drop(channel);
            let _ = drain.join();
            sent
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut patron = sandbox.patron(&state);
    let mut times = Vec::new();
    for _ in 0..100 {
        let started = std::time::Instant::now();
        patron.broker_info().expect("info");
        times.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = attacker.join().expect("attacker");
    times.sort();
    // Before, each of those messages cost the shared reader a 16 MiB copy: ~90 ms here.
    assert!(
        times[50] < std::time::Duration::from_millis(25),
        "p50 {:?} while a patron sent {sent} large messages",
        times[50]
    );
}

/// A raw patron: its request channel and its events.
fn raw_patron(state: &std::path::Path) -> (OwnedFd, IpcReceiver<Event>) {
    let channel = raw::connect(state);
    let Welcome::Accepted { events, .. } = raw::hello(&channel, PROTOCOL_VERSION) else {
        panic!("an honest hello is accepted");
    };
    (channel, events)
}

/// An honest large request: a create whose .torrent is 70 KiB of garbage.
fn large_create(sandbox: &Sandbox, id: u64) -> OwnedFd {
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(vec![b'x'; 70 * 1024]));
    create.output = Some(sandbox.folder("downloads").display().to_string());
    let encoded = wire::encode_payload(&ToBroker::Request(Request {
        id: RequestId(id),
        body: RequestBody::CreateNewTorrent(create),
    }))
    .unwrap();
    memfd(&encoded, 0)
}

#[test]
fn large_messages_piled_behind_a_slow_request_hold_two_descriptors_and_a_global_budget() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker_with_env(
        &state,
        &["--max-large-requests", "2"],
        &[("TORRENT_PATRON_MAGNET_TIMEOUT", OsStr::new("60"))],
    );
    let idle = broker.fd_count();
    let large = ToBroker::Large(SharedBytes::region(0));

    // A first request that takes long (a magnet whose only peer never answers), then as many
    // large messages as the socket takes (its sends would block once the broker stops
    // reading: they are sent without waiting, until the socket is full).
    let silent = e2e::SilentPeer::start();
    let (greedy, _greedy_events) = raw_patron(&state);
    let mut magnet = CreateNewTorrent::new(TorrentSource::Magnet(silent.magnet("ef", None)));
    magnet.output = Some(sandbox.folder("downloads").display().to_string());
    raw::send_message(
        &greedy,
        &ToBroker::Request(Request {
            id: RequestId(1),
            body: RequestBody::CreateNewTorrent(magnet),
        }),
        &[],
    );
    let flags = nix::fcntl::fcntl(greedy.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(greedy.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    let payload = wire::encode_payload(&large).unwrap();
    let mut sent = 0;
    for id in 2..200 {
        let region = large_create(&sandbox, id);
        let mut datagram = (HEADER_BYTES + payload.len()).to_ne_bytes().to_vec();
        datagram.extend_from_slice(&payload.len().to_ne_bytes());
        datagram.extend_from_slice(&payload);
        let fds = [region.as_raw_fd()];
        let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        match nix::sys::socket::sendmsg::<()>(
            greedy.as_raw_fd(),
            &[std::io::IoSlice::new(&datagram)],
            &rights,
            nix::sys::socket::MsgFlags::empty(),
            None,
        ) {
            Ok(_) => sent += 1,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("sendmsg: {e}"),
        }
    }
    assert!(sent >= 20, "only {sent} large messages went out");
    // The broker holds two of them (it stopped reading the patron), not all of them.
    let status = || {
        let mut cmd = sandbox.client(&state);
        cmd.args(["--json", "broker", "status"]);
        e2e::run(cmd).expect_code(0).json_lines()[0].clone()
    };
    e2e::wait_for("two large requests held", STEP_TIMEOUT, || {
        status()["large_requests"] == 2
    });
    let held = broker.fd_count();
    assert!(
        held <= idle + 10,
        "{held} descriptors for {sent} large messages behind a slow request (idle: {idle})"
    );
    assert_eq!(status()["large_requests_limit"], 2);

    // The broker's budget is spent: another patron's large message is refused at once, by
    // its own request id, and its region closed.
    let (other, other_events) = raw_patron(&state);
    let region = large_create(&sandbox, 7);
    send_with_region(&other, &large, &region);
    drop(region);
    match next_event(&other_events) {
        Event::Error { request, error } => {
            assert_eq!(request, RequestId(7));
            assert_eq!(error.kind.as_str(), "limit-reached", "{error:?}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    // Another's small requests are served meanwhile.
    raw::send_message(
        &other,
        &ToBroker::Request(Request {
            id: RequestId(8),
            body: RequestBody::List,
        }),
        &[],
    );
    assert!(matches!(
        next_event(&other_events),
        Event::TorrentList { .. }
    ));

    // The greedy patron goes while its slow request still waits: what it held is freed at
    // once, not when the request ends.
    drop(greedy);
    drop(_greedy_events);
    e2e::wait_for("the regions to be closed", Duration::from_secs(5), || {
        status()["large_requests"] == 0 && broker.fd_count() <= idle + 4
    });
}
