//! The rendezvous: wrong versions and garbage get a clear refusal, and nobody else notices.

use e2e::patron_client::proto::{paths, PROTOCOL_VERSION};
use e2e::{run, Sandbox};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Writes `bytes` on a fresh connection to the broker's socket and returns its answer line.
fn exchange(state: &std::path::Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(paths::socket_path(state)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).expect("write");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read reply");
    line
}

#[test]
fn wrong_versions_and_garbage_are_refused_clearly_and_honest_patrons_still_served() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("handshake");
    let mut broker = sandbox.broker(&state, &[]);

    let future = exchange(
        &state,
        format!("TIPC {} /tmp/nowhere\n", PROTOCOL_VERSION + 1).as_bytes(),
    );
    assert!(future.starts_with("ERR version "), "{future}");
    assert!(future.contains("protocol version mismatch"), "{future}");

    let garbage = exchange(&state, b"GET / HTTP/1.1\r\n\r\n");
    assert!(garbage.starts_with("ERR bad-hello "), "{garbage}");

    let binary = exchange(&state, &[0xff, 0x00, 0x13, b'\n']);
    assert!(binary.starts_with("ERR bad-hello "), "{binary}");

    let no_server = exchange(
        &state,
        format!("TIPC {PROTOCOL_VERSION} /tmp/no-such-one-shot-server\n").as_bytes(),
    );
    assert!(no_server.starts_with("ERR bad-hello "), "{no_server}");

    // A connector that says nothing does not hold up the next patron.
    let _staller = UnixStream::connect(paths::socket_path(&state)).expect("connect");
    let mut list = sandbox.client(&state);
    list.args(["list"]);
    run(list).expect_code(0);
    assert!(broker.is_running());
    for refusal in ["protocol version mismatch", "not a TIPC hello"] {
        assert!(
            broker.log().contains(refusal),
            "refusal {refusal:?} not logged"
        );
    }
}
