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

#[test]
fn a_patron_that_reads_late_loses_no_reply_and_slows_nobody() {
    use e2e::patron_client::proto::{Event, RequestId};
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/late.bin", 4 * 1024 * 1024);
    let seeder = e2e::Seeder::start(
        &sandbox,
        "seeder",
        &data,
        64 * 1024,
        &["--max-upload-rate", "2000000"],
    );
    let state = sandbox.state_dir("late");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");

    // It holds a torrent whose status changes all the time, asks 2,000 things, and does
    // not read for a while: more than its socket buffer holds, fewer than the cut-off.
    let mut late = sandbox.patron(&state);
    let request = seeder.create_request(&downloads);
    let torrent = late.create(request).expect("create").info().id;
    let first = late.send(RequestBody::List).expect("send").0;
    for _ in 1..2000 {
        late.send(RequestBody::List).expect("send");
    }

    // Meanwhile everyone else is served at once.
    let mut honest = sandbox.patron(&state);
    for _ in 0..20 {
        let started = Instant::now();
        honest.list().expect("list");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every reply arrives, in order; status arrives too, coalesced rather than queued up.
    let mut expected = first;
    let mut statuses = 0;
    while expected < first + 2000 {
        match late.next_event_timeout(STEP_TIMEOUT).expect("event") {
            Some(Event::TorrentList { request, .. }) => {
                assert_eq!(request, RequestId(expected), "replies in request order");
                expected += 1;
            }
            Some(Event::TorrentStatusUpdate(status)) => {
                assert_eq!(status.id, torrent);
                statuses += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(statuses >= 1, "status kept coming");
}

fn count_entries(dir: String) -> usize {
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

#[test]
fn a_cut_off_patron_costs_the_broker_nothing_while_its_process_lives_on() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("cut-off");
    let broker = sandbox.broker(&state, &[]);
    let fds = || count_entries(format!("/proc/{}/fd", broker.pid));
    let threads = || count_entries(format!("/proc/{}/task", broker.pid));
    // Warm up every lazily started part of the broker with an honest patron.
    sandbox.patron(&state).list().expect("list");
    let (fd_baseline, thread_baseline) = (fds(), threads());

    let mut slow = sandbox.patron(&state);
    for _ in 0..10_000 {
        if slow.send(RequestBody::List).is_err() {
            break;
        }
    }
    wait_for("the slow patron to be cut off", STEP_TIMEOUT, || {
        broker.log().contains("cut off")
    });
    // `slow` is still alive and holds its ends open: the broker must have let go of its own.
    wait_for(
        "the broker to release the cut-off patron's sockets and threads",
        Duration::from_secs(10),
        || fds() <= fd_baseline && threads() <= thread_baseline,
    );
    drop(slow);
}
