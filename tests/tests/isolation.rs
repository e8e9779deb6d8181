//! One patron's misbehaviour is its own problem.

use e2e::patron_client::proto::RequestBody;
use e2e::{run, wait_for, Sandbox, STEP_TIMEOUT};
use std::time::{Duration, Instant};

#[test]
fn a_patron_that_never_reads_is_cut_off_and_nobody_else_notices() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("slow");
    let mut broker = sandbox.broker(&state, &[]);

    // Ten thousand requests, and never a look at the replies: more than the socket buffer
    // plus the broker's bound on unread replies.
    let mut slow = sandbox.patron(&state);
    for _ in 0..10_000 {
        if slow.send(RequestBody::List).is_err() {
            break; // already cut off
        }
    }
    wait_for("the slow patron to be cut off", STEP_TIMEOUT, || {
        broker.log().contains("cut off")
    });

    // Everyone else is served as usual, and quickly.
    let mut honest = sandbox.patron(&state);
    let started = Instant::now();
    assert!(honest.list().expect("list").is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut status = sandbox.client(&state);
    status.args(["--json", "broker", "status"]);
    let info = run(status).expect_code(0).json_lines();
    // The cut-off patron no longer counts.
    assert_eq!(info[0]["patrons"], 1, "{info:?}");
    assert!(broker.is_running());
    drop(slow);
}
