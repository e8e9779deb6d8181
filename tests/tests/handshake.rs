//! The front door and the request path under hostile connectors: wrong versions, garbage,
//! lying sizes, smuggled descriptors, stalls and connect floods. The broker answers what it
//! can, logs every refusal, and keeps serving honest patrons.

use e2e::patron_client::proto::wire::HEADER_BYTES;
use e2e::patron_client::proto::{
    paths, Event, Hello, Request, RequestBody, RequestId, ToBroker, Welcome, PROTOCOL_VERSION,
};
use e2e::{raw, run, wait_for, Sandbox, STEP_TIMEOUT};
use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

fn next_event(events: &IpcReceiver<Event>) -> Event {
    events
        .try_recv_timeout(STEP_TIMEOUT)
        .expect("an event within the step timeout")
}

#[test]
fn a_patron_of_another_version_is_refused_by_name() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("versions");
    let broker = sandbox.broker(&state, &[]);

    // Through ipc-channel itself, as a patron of a future release would.
    let sender = IpcSender::<ToBroker>::connect(paths::socket_path(&state).display().to_string())
        .expect("connect");
    let (server, name) = IpcOneShotServer::<Welcome>::new().expect("one-shot");
    sender
        .send(ToBroker::Hello(Hello {
            version: PROTOCOL_VERSION + 1,
            server_name: name,
        }))
        .expect("send hello");
    match server.accept().expect("answer").1 {
        Welcome::Refused { kind, message } => {
            assert_eq!(kind, "version");
            assert!(message.contains("protocol version mismatch"), "{message}");
        }
        Welcome::Accepted { .. } => panic!("a future version must be refused"),
    }
    assert!(broker.log().contains("protocol version mismatch"));
}

#[test]
fn lying_and_garbage_messages_get_protocol_errors_and_the_session_goes_on() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("hostile");
    let mut broker = sandbox.broker(&state, &[]);
    let channel = raw::connect(&state);
    let Welcome::Accepted { events, .. } = raw::hello(&channel, PROTOCOL_VERSION) else {
        panic!("an honest hello is accepted");
    };

    let (spare, _) = nix::unistd::pipe().expect("pipe");
    let spare = spare.as_raw_fd();
    // A first fragment claiming an enormous message (ipc-channel would reserve all of it).
    raw::send_frame(
        &channel,
        HEADER_BYTES + 4,
        usize::MAX / 2,
        b"abcd",
        &[spare],
    );
    // A fragmented header without the continuation channel (ipc-channel would unwrap None).
    raw::send_frame(&channel, HEADER_BYTES + 4, 1000, b"abcd", &[]);
    // A complete request smuggling descriptors, as a corrupt embedded channel would.
    let list = postcard::to_stdvec(&ToBroker::Request(Request {
        id: RequestId(1),
        body: RequestBody::List,
    }))
    .unwrap();
    raw::send_frame(
        &channel,
        HEADER_BYTES + list.len(),
        list.len(),
        &list,
        &[spare, spare],
    );
    // A header that lies about its own datagram, and undecodable bytes.
    raw::send_frame(&channel, 7, 3, b"xyz", &[]);
    let garbage = [0xffu8; 40];
    raw::send_frame(
        &channel,
        HEADER_BYTES + garbage.len(),
        garbage.len(),
        &garbage,
        &[],
    );

    for _ in 0..5 {
        match next_event(&events) {
            Event::ProtocolError { message } => assert!(!message.is_empty()),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }
    // And the same connection is still served, in order.
    raw::send_message(
        &channel,
        &ToBroker::Request(Request {
            id: RequestId(2),
            body: RequestBody::List,
        }),
        &[],
    );
    match next_event(&events) {
        Event::TorrentList { request, torrents } => {
            assert_eq!(request, RequestId(2));
            assert!(torrents.is_empty());
        }
        other => panic!("expected the list reply, got {other:?}"),
    }
    assert!(broker.is_running());
}

#[test]
fn garbage_stalls_and_connect_floods_do_not_hold_up_honest_patrons() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("flood");
    let mut broker = sandbox.broker(&state, &[]);
    let mut list = sandbox.client(&state);
    list.arg("list");
    run(list).expect_code(0);
    let baseline = broker.fd_count();

    // Garbage as a first message: closed and logged.
    let junk = raw::connect(&state);
    nix::unistd::write(&junk, b"GET / HTTP/1.1\r\n\r\n").expect("write");
    // Connected and silent: must not block anyone.
    let _staller = raw::connect(&state);
    // A thousand connections opened and dropped at once.
    for _ in 0..1000 {
        drop(raw::connect(&state));
    }
    let mut list = sandbox.client(&state);
    list.arg("list");
    run(list).expect_code(0);
    assert!(broker.is_running());
    wait_for("the refusal to be logged", STEP_TIMEOUT, || {
        broker.log().contains("not a TIPC hello")
    });
    // Every dropped connection was closed again (the staller times out too).
    wait_for(
        "the broker's descriptors to return to normal",
        Duration::from_secs(20),
        || broker.fd_count() <= baseline + 1,
    );
}

#[test]
fn a_patron_with_a_group_writable_umask_is_served() {
    // umask 002 (per-user groups: Debian's, Ubuntu's and Fedora's default for users) makes
    // ipc-channel's one-shot server folder 0775.
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("umask");
    let _broker = sandbox.broker(&state, &[]);
    let mut list = Command::new("sh");
    sandbox.apply_env(&mut list);
    list.arg("-c")
        .arg("umask 002; exec \"$0\" --state-dir \"$1\" list")
        .arg(e2e::bin("patron-client"))
        .arg(&state);
    run(list).expect_code(0);
}
