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

#[test]
fn a_cut_off_patron_costs_the_broker_nothing_while_its_process_lives_on() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("cut-off");
    let broker = sandbox.broker(&state, &[]);
    let fds = || broker.fd_count();
    let threads = || broker.thread_count();
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

#[test]
fn a_patron_pipelining_thousands_of_big_requests_is_held_back_not_buffered() {
    use e2e::patron_client::proto::{CreateNewTorrent, Event, RequestId, TorrentSource};
    const REQUESTS: u64 = 3000;
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("pipeline");
    let broker = sandbox.broker(&state, &["--magnet-timeout", "6"]);
    sandbox.patron(&state).list().expect("warm up");
    let before = broker.rss_kib();

    // A peer that accepts and never speaks: the magnet in front waits for its whole timeout.
    let silent = e2e::SilentPeer::start();
    let mut create = CreateNewTorrent::new(TorrentSource::Magnet(silent.magnet("ab", None)));
    create.output = Some(sandbox.folder("downloads").display().to_string());
    let mut greedy = sandbox.patron(&state);
    let first = greedy
        .send(RequestBody::CreateNewTorrent(create))
        .expect("send the magnet");
    // Then 3,000 requests of 100 KiB each, from a thread: its sends must block once the
    // broker stops reading them (back-pressure), so it cannot be the test's own thread.
    let requester = greedy.requester();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let sender = std::thread::spawn(move || {
        for _ in 0..REQUESTS {
            let junk = CreateNewTorrent::new(TorrentSource::TorrentFile(vec![b'x'; 100 * 1024]));
            if requester.send(RequestBody::CreateNewTorrent(junk)).is_err() {
                return;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Measure once the sender is stuck (held back) or done (nothing held it back).
    let count = || sent.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = (count(), Instant::now());
    wait_for("the sender to stall or finish", STEP_TIMEOUT, || {
        let now = count();
        if now != last.0 {
            last = (now, Instant::now());
        }
        now == REQUESTS || last.1.elapsed() > Duration::from_secs(1)
    });
    assert!(
        count() < REQUESTS,
        "nothing held the pipelining patron back"
    );
    let grown_mib = broker.rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib <= 48,
        "the broker grew by {grown_mib} MiB buffering one patron's requests"
    );
    // Everyone else is served meanwhile.
    let started = Instant::now();
    sandbox.patron(&state).list().expect("an honest list");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Once the magnet gives up, every request is answered, in order.
    let mut expected = first.0;
    while expected <= first.0 + REQUESTS {
        match greedy.next_event_timeout(STEP_TIMEOUT).expect("event") {
            Some(Event::TorrentStartFail { request, .. }) => {
                assert_eq!(request, RequestId(expected), "replies in request order");
                expected += 1;
            }
            other => panic!("expected a start failure, got {other:?}"),
        }
    }
    sender.join().expect("sender");
    drop(silent);
}

#[test]
fn requests_queued_by_a_patron_that_dies_are_not_served() {
    use e2e::patron_client::proto::{CreateNewTorrent, TorrentSource};
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("dead-queue");
    let broker = sandbox.broker(&state, &["--magnet-timeout", "3"]);
    let downloads = sandbox.folder("downloads");
    // A magnet that waits for its whole timeout, then five valid adds queued behind it.
    let silent = e2e::SilentPeer::start();
    let mut doomed = sandbox.patron(&state);
    let mut first = CreateNewTorrent::new(TorrentSource::Magnet(silent.magnet("ef", None)));
    first.output = Some(downloads.display().to_string());
    doomed
        .send(RequestBody::CreateNewTorrent(first))
        .expect("send");
    for n in 0..5 {
        let data = sandbox.random_file(&format!("mine/queued-{n}.bin"), 20_000);
        let torrent = sandbox.path(&format!("queued-{n}.torrent"));
        sandbox.make_torrent(&sandbox.state_dir(&format!("maker-{n}")), &data, &torrent);
        let mut add = CreateNewTorrent::new(TorrentSource::TorrentFile(
            std::fs::read(&torrent).expect("torrent"),
        ));
        add.output = Some(downloads.display().to_string());
        doomed
            .send(RequestBody::CreateNewTorrent(add))
            .expect("send");
    }
    // The patron goes (as a crash would: its channels close) before the magnet gives up.
    drop(doomed);
    // Once the magnet gives up, its task comes to the five: each is dropped, and says so.
    wait_for("the five queued adds to be dropped", STEP_TIMEOUT, || {
        broker.log().matches("not served: its patron left").count() == 5
    });
    let mut list = sandbox.client(&state);
    list.args(["--json", "list"]);
    let torrents = run(list).expect_code(0).json_lines();
    assert!(
        torrents.is_empty(),
        "requests of a patron that is gone were served: {torrents:?}"
    );
    drop(silent);
}

/// Per-patron bounds times thousands of patrons is not a bound: patrons that each stay under
/// their own limit of unread events, but together pass the broker's (`--max-unread-bytes`),
/// are cut off largest first, and a patron that reads is served throughout.
#[test]
fn patrons_that_leave_events_unread_together_are_cut_off_past_the_brokers_bound() {
    use e2e::patron_client::proto::{FilesRequest, TorrentId, TorrentRef};
    let sandbox = Sandbox::new();
    // A torrent of 4,000 files: each `files` reply is ~100 KiB.
    let folder = sandbox.folder("seed/many");
    for n in 0..4000 {
        std::fs::write(folder.join(format!("file-{n:05}.bin")), [n as u8]).expect("write");
    }
    let mut seeder = e2e::Seeder::start(
        &sandbox,
        "seeder",
        &folder,
        16 * 1024,
        &["--max-unread-bytes", "8388608"],
    );
    let state = seeder.broker.state.clone();
    let files = || {
        RequestBody::Files(FilesRequest {
            torrent: TorrentRef::Id(TorrentId(0)),
            only: None,
        })
    };
    // Three patrons each ask for 100 lists of files (~10 MiB, under their own 16 MiB) and
    // never read.
    let mut hogs: Vec<_> = (0..3).map(|_| sandbox.patron(&state)).collect();
    for hog in &mut hogs {
        for _ in 0..100 {
            if hog.send(files()).is_err() {
                break;
            }
        }
    }
    wait_for("a hog to be cut off", STEP_TIMEOUT, || {
        seeder.broker.log().contains("leaves the most")
    });
    // A patron that reads is served as usual.
    let mut honest = sandbox.patron(&state);
    for _ in 0..5 {
        let listed = honest.files(TorrentRef::Id(TorrentId(0))).expect("files");
        assert_eq!(listed.files.len(), 4000);
    }
    let mut status = sandbox.client(&state);
    status.args(["--json", "broker", "status"]);
    let info = run(status).expect_code(0).json_lines();
    let patrons = info[0]["patrons"].as_u64().expect("patrons");
    assert!(patrons < 4, "no hog was cut off: {info:?}");
    assert!(seeder.broker.is_running());
    drop(hogs);
}
