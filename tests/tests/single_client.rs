//! The single-client rule: one broker per state directory, however patrons race.

use e2e::{brokers_on, run, Running, Sandbox, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn a_second_broker_is_refused_naming_the_owner_and_a_killed_owner_leaves_no_stale_lock() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("single");
    let mut first = sandbox.broker(&state, &[]);

    let mut second = Command::new(e2e::bin("torrent-broker"));
    sandbox.apply_env(&mut second);
    second.arg("--state-dir").arg(&state);
    let refused = run(second).expect_code(3);
    assert!(
        refused.stderr.contains(&format!("pid {}", first.pid)),
        "refusal must name the owner's pid {}: {}",
        first.pid,
        refused.stderr
    );
    assert!(first.is_running());

    first.signal(Signal::SIGKILL);
    first.wait_exit(STEP_TIMEOUT);
    // The lock went with the process; the stale socket is replaced.
    let third = sandbox.broker(&state, &[]);
    let mut status = sandbox.client(&state);
    status.args(["--json", "broker", "status"]);
    let out = run(status).expect_code(0).json_lines();
    assert_eq!(out[0]["pid"], third.pid);
}

#[test]
fn fifty_patrons_started_at_once_with_no_broker_end_with_exactly_one_broker() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("race");
    assert!(brokers_on(&state).is_empty());

    let clients: Vec<Running> = (0..50)
        .map(|_| {
            let mut cmd = sandbox.client(&state);
            cmd.args(["--json", "broker", "start"]);
            Running::start(cmd)
        })
        .collect();
    let mut pids = BTreeSet::new();
    for client in clients {
        let out = client.finish(STEP_TIMEOUT).expect_code(0);
        pids.insert(out.json_lines()[0]["pid"].as_i64().expect("pid"));
    }
    assert_eq!(
        pids.len(),
        1,
        "all 50 patrons must reach the same broker: {pids:?}"
    );
    let brokers = brokers_on(&state);
    assert_eq!(brokers.len(), 1, "exactly one broker process: {brokers:?}");
    assert_eq!(i64::from(brokers[0]), *pids.first().unwrap());

    // And it serves them all afterwards too.
    let mut list = sandbox.client(&state);
    list.args(["list"]);
    run(list).expect_code(0);
}

#[test]
fn broker_stop_stops_it_and_status_then_reports_unreachable() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("stop");
    let mut broker = sandbox.broker(&state, &[]);
    let mut stop = sandbox.client(&state);
    stop.args(["broker", "stop"]);
    run(stop).expect_code(0);
    assert!(broker.wait_exit(STEP_TIMEOUT).success());
    let mut status = sandbox.client(&state);
    status.args(["broker", "status"]);
    let out = run(status).expect_code(5);
    assert!(out.stderr.contains("no broker runs"), "{}", out.stderr);
}
