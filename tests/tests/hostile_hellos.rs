//! The front door under attack (DESIGN §4, §10): hellos whose server name holds a NUL, names a
//! socket that does not exist or never accepts, connectors that never speak, and datagrams
//! carrying more descriptors than the broker takes. None of them may lock honest patrons out
//! or leak a broker descriptor.
//!
//! Each attack is sent over a raw SOCK_SEQPACKET connection, as any process of the user can.

use e2e::patron_client::proto::{Hello, ToBroker, PROTOCOL_VERSION};
use e2e::{raw, run, wait_for, BrokerProcess, Sandbox, STEP_TIMEOUT};
use nix::sys::socket::{bind, connect, listen, Backlog, SockFlag, UnixAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// More than the broker's old limit of concurrent handshakes (256).
const ATTACKERS: usize = 300;

fn hello_naming(server_name: &str) -> ToBroker {
    ToBroker::Hello(Hello {
        version: PROTOCOL_VERSION,
        server_name: server_name.to_owned(),
    })
}

/// An honest `patron-client list` is served, and soon.
fn honest_list_is_served(sandbox: &Sandbox, state: &Path) {
    let started = Instant::now();
    let mut list = sandbox.client(state);
    list.arg("list");
    run(list).expect_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an honest patron waited {:?} behind hostile connectors",
        started.elapsed()
    );
}

/// Twenty descriptors to attach to a datagram (more than the 16 the broker once had room for),
/// and the pipe they are, which must outlive the sends.
fn twenty_descriptors() -> ((OwnedFd, OwnedFd), Vec<i32>) {
    let (a, b) = nix::unistd::pipe().expect("pipe");
    let many = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                a.as_raw_fd()
            } else {
                b.as_raw_fd()
            }
        })
        .collect();
    ((a, b), many)
}

fn wait_fds_back(broker: &BrokerProcess, baseline: usize) {
    wait_for(
        "the broker's descriptors to return to their baseline",
        Duration::from_secs(20),
        || broker.fd_count() <= baseline + 2,
    );
}

#[test]
fn hellos_whose_server_name_holds_a_nul_lock_nobody_out() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("nul");
    let mut broker = sandbox.broker(&state, &[]);
    honest_list_is_served(&sandbox, &state);
    let baseline = broker.fd_count();

    for _ in 0..ATTACKERS {
        let fd = raw::connect(&state);
        raw::send_message(&fd, &hello_naming("/tmp/evil\0name"), &[]);
    }
    honest_list_is_served(&sandbox, &state);
    assert!(broker.is_running());
    wait_for("the refusal to be logged", STEP_TIMEOUT, || {
        broker.log().contains("NUL")
    });
    wait_fds_back(&broker, baseline);
}

#[test]
fn hellos_naming_missing_sockets_leak_no_descriptor() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("missing");
    let mut broker = sandbox.broker(&state, &[]);
    honest_list_is_served(&sandbox, &state);
    let baseline = broker.fd_count();

    let missing = sandbox.path("no-such-dir/socket");
    for _ in 0..1000 {
        let fd = raw::connect(&state);
        raw::send_message(&fd, &hello_naming(&missing.display().to_string()), &[]);
    }
    honest_list_is_served(&sandbox, &state);
    wait_fds_back(&broker, baseline);
    assert!(broker.is_running());
}

#[test]
fn hellos_naming_a_listener_that_never_accepts_lock_nobody_out() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("backlog");
    let mut broker = sandbox.broker(&state, &[]);
    honest_list_is_served(&sandbox, &state);
    let baseline = broker.fd_count();

    // A listener that never accepts, its backlog filled so that any connect(2) to it blocks.
    let path = sandbox.path("never-accepts.sock");
    let listener = raw::seqpacket(SockFlag::empty());
    bind(listener.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
    listen(&listener, Backlog::new(0).expect("backlog")).expect("listen");
    let mut fillers = Vec::new();
    loop {
        let fd = raw::seqpacket(SockFlag::SOCK_NONBLOCK);
        match connect(fd.as_raw_fd(), &UnixAddr::new(&path).expect("addr")) {
            Ok(()) => fillers.push(fd),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }

    for _ in 0..ATTACKERS {
        let fd = raw::connect(&state);
        raw::send_message(&fd, &hello_naming(&path.display().to_string()), &[]);
    }
    honest_list_is_served(&sandbox, &state);
    assert!(broker.is_running());
    drop(fillers);
    drop(listener);
    wait_fds_back(&broker, baseline);
}

#[test]
fn connectors_that_never_speak_lock_nobody_out() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("silent");
    let mut broker = sandbox.broker(&state, &[]);
    honest_list_is_served(&sandbox, &state);
    let baseline = broker.fd_count();

    // More silent connectors than the broker keeps waiting (1,024): the oldest make room.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise our fd limit");
    let silent: Vec<OwnedFd> = (0..1300).map(|_| raw::connect(&state)).collect();
    honest_list_is_served(&sandbox, &state);
    // And a second flood while the first is still open.
    let more: Vec<OwnedFd> = (0..ATTACKERS).map(|_| raw::connect(&state)).collect();
    honest_list_is_served(&sandbox, &state);
    assert!(broker.is_running());
    drop(silent);
    drop(more);
    wait_fds_back(&broker, baseline);
}

#[test]
fn hellos_with_more_than_sixteen_descriptors_leak_none() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("rights");
    let mut broker = sandbox.broker(&state, &[]);
    honest_list_is_served(&sandbox, &state);
    let baseline = broker.fd_count();

    let (_pipe, many) = twenty_descriptors();
    for _ in 0..50 {
        let fd = raw::connect(&state);
        raw::send_message(&fd, &hello_naming("/tmp/whatever"), &many);
    }
    honest_list_is_served(&sandbox, &state);
    wait_fds_back(&broker, baseline);
    assert!(broker.is_running());
}

#[test]
fn an_admitted_patron_sending_many_descriptors_leaks_none() {
    use e2e::patron_client::proto::Welcome;
    use ipc_channel::ipc::IpcOneShotServer;

    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("rights-admitted");
    let mut broker = sandbox.broker(&state, &[]);
    honest_list_is_served(&sandbox, &state);
    let baseline = broker.fd_count();

    let channel = raw::connect(&state);
    let (server, name) = IpcOneShotServer::<Welcome>::new().expect("one-shot");
    raw::send_message(&channel, &hello_naming(&name), &[]);
    let Welcome::Accepted { events, .. } = server.accept().expect("welcome").1 else {
        panic!("an honest hello is accepted");
    };
    let (_pipe, many) = twenty_descriptors();
    for _ in 0..50 {
        raw::send_message(&channel, &hello_naming("/tmp/whatever"), &many);
    }
    // Every one of them is answered (a protocol error), and nothing is kept.
    for _ in 0..50 {
        events
            .try_recv_timeout(STEP_TIMEOUT)
            .expect("a protocol error for each datagram");
    }
    honest_list_is_served(&sandbox, &state);
    assert!(
        broker.fd_count() <= baseline + 6,
        "the broker kept descriptors: {} now, {baseline} before",
        broker.fd_count()
    );
    drop(channel);
    drop(events);
    wait_fds_back(&broker, baseline);
    assert!(broker.is_running());
}
