//! Only the broker's own user may use it.

use e2e::{run, Sandbox};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_patron_of_another_user_is_refused_with_a_clear_error() {
    if !e2e::have_root("running a patron as another user") {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("owner");
    let _broker = sandbox.broker(&state, &[]);
    // Let the other user reach the state dir itself (the broker keeps its socket folder
    // owner-only, which is the point).
    let root = state.parent().unwrap();
    for dir in [root, state.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let mut as_nobody = Command::new("setpriv");
    sandbox.apply_env(&mut as_nobody);
    as_nobody
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(e2e::bin("patron-client"))
        .arg("--state-dir")
        .arg(&state)
        .arg("list");
    let out = run(as_nobody).expect_code(5);
    assert!(
        out.stderr.contains("belongs to another user"),
        "the refusal must say why: {}",
        out.stderr
    );
    // And it did not start a broker of its own on that state dir.
    assert_eq!(e2e::brokers_on(&state).len(), 1);
}

#[test]
fn the_broker_refuses_another_users_connection_before_reading_a_byte_of_it() {
    use e2e::patron_client::proto::paths;
    if !e2e::have_root("running a connector as another user") {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("refuser");
    let broker = sandbox.broker(&state, &[]);
    // Open every folder on the way and the socket itself, as a careless admin might: the
    // broker's own uid check is then all that stands in the way.
    let socket = paths::socket_path(&state);
    let mut dir = socket.parent().map(std::path::Path::to_path_buf);
    while let Some(d) = dir {
        if d == std::path::Path::new("/") || d == std::path::Path::new("/tmp") {
            break;
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir = d.parent().map(std::path::Path::to_path_buf);
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();

    // As nobody: connect, send a hello naming a server with a NUL, and see the broker hang up.
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(5)
s.connect(sys.argv[1])
payload = b"\x00\x01\x0d/tmp/evil\x00name"
try:
    s.send(struct.pack("=QQ", 16 + len(payload), len(payload)) + payload)
except OSError:
    pass
try:
    print("closed" if s.recv(64) == b"" else "answered")
except ConnectionResetError:
    print("closed")
"#;
    let mut as_nobody = Command::new("setpriv");
    sandbox.apply_env(&mut as_nobody);
    as_nobody
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        // Debian's python3: a per-user one (pyenv) is not readable by nobody.
        .args(["/usr/bin/python3", "-c", script])
        .arg(&socket);
    let out = run(as_nobody).expect_code(0);
    assert_eq!(out.stdout.trim(), "closed", "{}", out.stderr);
    let log = broker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused a connector") && l.contains("serves uid")),
        "the broker's uid check must refuse it: {log}"
    );
    assert!(
        !log.contains("NUL"),
        "the broker read the other user's hello: {log}"
    );
}
