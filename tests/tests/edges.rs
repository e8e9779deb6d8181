//! Edges a user meets at the command line (issue 9, item 9).

use e2e::{Sandbox, STEP_TIMEOUT};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with its stdout a pipe whose reader already left, as `cmd | head -0` would.
fn run_into_closed_pipe(mut cmd: Command) -> (Option<i32>, String) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            return (status.code(), stderr);
        }
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn output_into_a_pipe_whose_reader_left_ends_quietly() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("pipe");
    let _broker = sandbox.broker(&state, &[]);
    for args in [
        vec!["list"],
        vec!["--json", "list"],
        vec!["--json", "broker", "status"],
        vec!["broker", "status"],
    ] {
        let mut cmd = sandbox.client(&state);
        cmd.args(&args);
        let (code, stderr) = run_into_closed_pipe(cmd);
        assert!(
            !stderr.contains("panicked"),
            "{args:?} panicked on a closed stdout: {stderr}"
        );
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
}

/// Every socket of `pid` as `ss` prints it: (protocol, local address with any `%device`).
fn sockets_of(pid: i32) -> Vec<(String, String)> {
    let out = Command::new("ss")
        .args(["-H", "-a", "-n", "-p", "-t", "-u"])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[0].to_owned(), fields[4].to_owned())
        })
        .collect()
}

#[test]
fn under_loopback_only_the_broker_has_no_socket_reachable_beyond_loopback() {
    if !e2e::have_program("ss", "iproute2") {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("loopback");
    let broker = sandbox.broker(&state, &[]);
    let sockets = sockets_of(broker.pid);
    assert!(!sockets.is_empty(), "ss shows no socket of the broker");
    for (protocol, local) in &sockets {
        let on_loopback = local.starts_with("127.")
            || local.starts_with("[::1]")
            || local.starts_with("[::ffff:127.")
            // Bound to the loopback device: it can neither receive nor send elsewhere.
            || local.contains("%lo:");
        assert!(
            on_loopback,
            "{protocol} socket on {local} is reachable beyond loopback: {sockets:?}"
        );
    }
}
