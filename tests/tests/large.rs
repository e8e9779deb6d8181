//! Large messages (DESIGN §7): a big .torrent and a big reply cross as one shared memory
//! region beside a small datagram, not as a train of fragments; and a patron that lies about
//! its region (not memory, too large, garbage, the wrong message) gets a protocol error, alone.

use e2e::patron_client::proto::wire::{self, HEADER_BYTES};
use e2e::patron_client::proto::{
    CreateNewTorrent, Event, MakeTorrent, Request, RequestBody, RequestId, SharedBytes, ToBroker,
    TorrentSource, Welcome, LARGE_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use e2e::patron_client::Created;
use e2e::{raw, Sandbox, STEP_TIMEOUT};
use ipc_channel::ipc::IpcReceiver;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};

#[test]
fn a_big_torrent_and_a_big_reply_cross_as_shared_memory() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let debug = OsStr::new("info,torrent_broker::requests=debug,torrent_broker::patron=debug");
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
    // Garbage; a hello inside; a region beside a message that is not a large one.
    send_with_region(&channel, &large, &memfd(&[0xff; 100], 0));
    let hello = wire::encode_payload(&ToBroker::Board(patron_client::proto::BoardHello {
        version: PROTOCOL_VERSION,
    }))
    .unwrap();
    send_with_region(&channel, &large, &memfd(&hello, 0));
    let plain = ToBroker::Request(Request {
        id: RequestId(3),
        body: RequestBody::List,
    });
    send_with_region(&channel, &plain, &memfd(&request(4), 0));
    let mut errors = Vec::new();
    for _ in 0..6 {
        match next_event(&events) {
            Event::ProtocolError { message } => errors.push(message),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }
    let all = errors.join(" | ");
    assert_eq!(all.matches("not memory").count(), 2, "{all}");
    assert!(all.contains("exceeds the limit"), "{all}");
    assert!(all.contains("must hold a request"), "{all}");
    assert!(all.contains("not a large one"), "{all}");
    assert!(
        broker.rss_kib() < rss_before + 32 * 1024,
        "the broker allocated what a region claimed"
    );

    // An honest large message on the same connection is served, in order.
    send_with_region(&channel, &large, &memfd(&request(5), 0));
    match next_event(&events) {
        Event::TorrentList { request, .. } => assert_eq!(request, RequestId(5)),
        other => panic!("expected the list reply, got {other:?}"),
    }
    // Every region it was handed is closed again.
    assert!(
        broker.fd_count() <= fds_before,
        "{} fds, {fds_before} before",
        broker.fd_count()
    );
}
