//! Several patrons on one broker: joining, failures that leave the session usable, closing.

use e2e::patron_client::proto::{ErrorKind, Event, TorrentRef, TorrentSource};
use e2e::patron_client::{Created, Error};
use e2e::{run, Sandbox, Seeder, STEP_TIMEOUT};
use std::path::Path;
use std::time::Instant;

#[test]
fn a_second_patron_adding_the_same_torrent_joins_it_and_both_get_status() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/shared.bin", 2_000_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 64 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");

    let mut first = sandbox.patron(&state);
    let mut second = sandbox.patron(&state);
    let request = seeder.create_request(&out);
    let created = first.create(request.clone()).expect("first create");
    let joined = second.create(request).expect("second create");
    let Created::New(created) = created else {
        panic!("first patron should create: {created:?}");
    };
    let Created::AlreadyDownloading(joined, _) = joined else {
        panic!("second patron should join: {joined:?}");
    };
    assert_eq!(joined.id, created.id);
    assert_eq!(joined.info_hash, created.info_hash);

    // Both hold it, so both hear about it, through to completion.
    for patron in [&mut first, &mut second] {
        let status = e2e::wait_complete(patron, Some(created.id));
        assert_eq!(status.bytes_done, 2_000_000);
    }
}

#[test]
fn a_joiners_options_that_cannot_apply_are_named_not_dropped() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/joined.bin", 200_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let elsewhere = sandbox.folder("elsewhere");
    run(sandbox.add_command(&state, &seeder.torrent, &out, None)).expect_code(0);

    // Same torrent, another folder, paused, ephemeral, other files: it runs as it was. (A
    // peer it names is dialled for the running torrent: see controls.rs.)
    let mut join = sandbox.add_command(&state, &seeder.torrent, &elsewhere, Some("127.0.0.1:9"));
    join.args(["--paused", "--only", "0", "--max-download-rate", "1K"]);
    let joined = run(join).expect_code(4).json_lines();
    let not_applied = joined[0]["not_applied"].clone();
    for option in ["output", "paused", "only_files", "max_download_rate"] {
        assert!(
            not_applied
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o == option)),
            "{option} is not named in {not_applied}"
        );
    }
    assert!(
        !not_applied
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o == "peers")),
        "the peer is dialled, so not listed: {not_applied}"
    );
    // A plain join has nothing to report; a person is told in words.
    let plain = run(sandbox.add_command(&state, &seeder.torrent, &out, None)).expect_code(4);
    assert_eq!(
        plain.json_lines()[0]["not_applied"],
        e2e::serde_json::json!([])
    );
    let mut human = sandbox.client(&state);
    human
        .arg("add")
        .arg(&seeder.torrent)
        .arg("-o")
        .arg(&elsewhere)
        .arg("--paused");
    let said = run(human).expect_code(4).stdout;
    assert!(said.contains("not applied: --output, --paused"), "{said}");
    // Ephemeral, from a library patron (the CLI takes it only with --wait).
    let mut patron = sandbox.patron(&state);
    let mut request = seeder.create_request(&elsewhere);
    request.ephemeral = true;
    match patron.create(request).expect("join") {
        e2e::patron_client::Created::AlreadyDownloading(_, not_applied) => {
            assert!(
                not_applied.iter().any(|o| o == "ephemeral"),
                "{not_applied:?}"
            )
        }
        other => panic!("not joined: {other:?}"),
    }
}

#[test]
fn a_corrupt_torrent_fails_with_a_reason_and_the_next_request_is_answered_right() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/ok.bin", 300_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);

    // Truncated .torrent bytes, then garbage, then a valid torrent: each gets its own reply.
    let valid = std::fs::read(&seeder.torrent).unwrap();
    for corrupt in [valid[..valid.len() / 2].to_vec(), b"d4:infoi3ee".to_vec()] {
        let mut request = seeder.create_request(&out);
        request.source = TorrentSource::TorrentFile(corrupt);
        match patron.create(request) {
            Err(Error::StartFailed(e)) => {
                assert_eq!(e.kind, ErrorKind::InvalidTorrent);
                assert!(!e.message.is_empty());
            }
            other => panic!("corrupt torrent must fail to start: {other:?}"),
        }
    }
    let created = patron
        .create(seeder.create_request(&out))
        .expect("valid torrent");
    assert!(
        matches!(created, Created::New(ref info) if info.info_hash.to_string() == seeder.info_hash)
    );

    // The CLI reports the same failure with its exit code and the reason on stderr.
    let bad = sandbox.path("bad.torrent");
    e2e::write_file(&bad, b"this is not bencode");
    let add = sandbox.add_command(&state, &bad, &out, None);
    let failed = run(add).expect_code(3);
    assert!(
        failed.stderr.contains("not a valid .torrent"),
        "{}",
        failed.stderr
    );
}

#[test]
fn close_releases_holds_stops_torrents_and_deletes_data_only_when_asked() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/c.bin", 500_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");

    let mut holder = sandbox.patron(&state);
    let mut other = sandbox.patron(&state);
    let request = seeder.create_request(&out);
    let id = holder.create(request.clone()).expect("create").info().id;
    other.create(request).expect("join");
    e2e::wait_complete(&mut holder, Some(id));

    // Someone else still holds it: only the caller's hold goes.
    let closed = holder
        .close(TorrentRef::Id(id), false, false)
        .expect("close");
    assert!(!closed.stopped);
    assert_eq!(other.list().expect("list").len(), 1);

    // Someone else's torrent: a patron that does not hold it cannot close it without
    // --force; it is told so (not-holder), and the torrent runs on.
    let mut close = sandbox.client(&state);
    close.args(["--json", "close", &id.to_string()]);
    let out_json = run(close).expect_code(1).json_lines();
    assert_eq!(out_json[0]["kind"], "not-holder", "{out_json:?}");
    assert_eq!(other.list().expect("list").len(), 1);

    // --force stops it for everyone; the remaining holder is told.
    let mut close = sandbox.client(&state);
    close.args(["--json", "close", &seeder.info_hash, "--force"]);
    let out_json = run(close).expect_code(0).json_lines();
    assert_eq!(out_json[0]["stopped"], true);
    assert_eq!(out_json[0]["data_deleted"], false);
    assert!(
        out.join("c.bin").exists(),
        "data must be kept without --delete-data"
    );
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match other
            .next_event_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("event")
        {
            Some(Event::TorrentGone { id: gone, .. }) if gone == id => break,
            Some(_) => {}
            None => panic!("holder was not told the torrent was closed"),
        }
    }

    // Unknown ids are an error (exit 1 from the CLI).
    let mut close = sandbox.client(&state);
    close.args(["close", &id.to_string()]);
    let failed = run(close).expect_code(1);
    assert!(failed.stderr.contains("no torrent"), "{}", failed.stderr);
    match holder.close(TorrentRef::Id(id), false, false) {
        Err(Error::Request(e)) => assert_eq!(e.kind, ErrorKind::UnknownTorrent),
        other => panic!("closing an unknown torrent must fail: {other:?}"),
    }

    // Add it again (reusing the complete file), then close with --delete-data.
    let mut add = sandbox.add_command(&state, &seeder.torrent, &out, None);
    add.arg("--overwrite");
    let again = run(add).expect_code(0).json_lines();
    let new_id = again[0]["id"].as_u64().expect("id").to_string();
    let mut close = sandbox.client(&state);
    close.args(["--json", "close", &new_id, "--delete-data"]);
    let out_json = run(close).expect_code(0).json_lines();
    assert_eq!(out_json[0]["data_deleted"], true);
    e2e::wait_for("data deleted", STEP_TIMEOUT, || !out.join("c.bin").exists());
}

#[test]
fn an_existing_file_is_not_overwritten_unless_asked() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/mine.bin", 100_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let out = sandbox.folder("downloads");
    e2e::write_file(&out.join("mine.bin"), b"the user's own precious file");

    let add = sandbox.add_command(&state, &seeder.torrent, &out, Some(&seeder.broker.peer()));
    let failed = run(add).expect_code(3);
    assert!(
        failed.stderr.contains("already exists"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        std::fs::read(out.join("mine.bin")).unwrap(),
        b"the user's own precious file"
    );

    // Outside the download roots is refused too.
    let add = sandbox.add_command(&state, &seeder.torrent, Path::new("/"), None);
    let failed = run(add).expect_code(3);
    assert!(
        failed
            .stderr
            .contains("outside the broker's download roots"),
        "{}",
        failed.stderr
    );
}

#[test]
fn twenty_patrons_adding_one_torrent_at_once_get_one_created_and_nineteen_joined() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/race.bin", 1_000_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let request = seeder.create_request(&out);
    let patrons: Vec<_> = (0..20).map(|_| sandbox.patron(&state)).collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(patrons.len()));
    let adds: Vec<_> = patrons
        .into_iter()
        .map(|mut patron| {
            let (request, start) = (request.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                patron.create(request)
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for add in adds {
        match add.join().expect("thread") {
            Ok(Created::New(info) | Created::Queued(info)) => {
                created += 1;
                ids.insert(info.id);
            }
            Ok(Created::AlreadyDownloading(info, _)) => {
                ids.insert(info.id);
            }
            Err(e) => panic!("every patron must get the torrent, one got: {e}"),
        }
    }
    assert_eq!(created, 1, "exactly one patron creates it");
    assert_eq!(ids.len(), 1, "all hold the same torrent: {ids:?}");
}

/// Quick requests are answered straight from the broker's reader thread, but never ahead of
/// an earlier request of the same patron that is still being served.
#[test]
fn a_quick_request_sent_behind_a_slow_one_is_answered_after_it() {
    use e2e::patron_client::proto::{CreateNewTorrent, RequestBody};
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--magnet-timeout", "2"]);
    let mut patron = sandbox.patron(&state);

    // A magnet whose only peer accepts and then says nothing holds its request until the
    // 2 s magnet timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{}", "ab".repeat(20));
    let mut slow = CreateNewTorrent::new(TorrentSource::Magnet(magnet));
    slow.output = Some(sandbox.folder("downloads").display().to_string());
    slow.peers = vec![silent.local_addr().unwrap().to_string()];
    let started = Instant::now();
    let first = patron.send(RequestBody::CreateNewTorrent(slow)).unwrap();
    let second = patron.send(RequestBody::BrokerInfo).unwrap();
    let third = patron.send(RequestBody::List).unwrap();

    let mut order = Vec::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while order.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = patron
            .next_event_timeout(left)
            .unwrap()
            .expect("three replies in time");
        if let Some(request) = event.request() {
            if request == first {
                assert!(matches!(event, Event::TorrentStartFail { .. }), "{event:?}");
            }
            order.push(request);
        }
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "the magnet must have been slow for this test to mean anything"
    );
    assert_eq!(order, [first, second, third]);
}

#[test]
fn a_close_racing_an_add_of_the_same_torrent_leaves_no_ghost() {
    use e2e::patron_client::proto::CreateNewTorrent;
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("mine/raced.bin", 40_000);
    let torrent = sandbox.path("raced.torrent");
    sandbox.make_torrent(&sandbox.state_dir("maker"), &data, &torrent);
    let bytes = std::fs::read(&torrent).expect("torrent");
    let state = sandbox.state_dir("racer");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let request = || {
        let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(bytes.clone()));
        create.output = Some(out.display().to_string());
        create.overwrite = true;
        create
    };
    let mut closer = sandbox.patron(&state);
    let adder = std::sync::Mutex::new(sandbox.patron(&state));
    for round in 0..150 {
        let id = closer.create(request()).expect("create").info().id;
        // The close and an add of the same torrent, at the same instant.
        let added = std::thread::scope(|s| {
            let add = s.spawn(|| adder.lock().unwrap().create(request()));
            closer
                .close(TorrentRef::Id(id), false, true)
                .expect("the forced close");
            add.join().expect("adder")
        });
        let Ok(added) = added else {
            panic!("round {round}: the add failed: {added:?}");
        };
        // Whatever the add got, the torrent it was told about must really run: closing it
        // works (or it is already gone), never 'the engine does not have it'.
        match adder
            .lock()
            .unwrap()
            .close(TorrentRef::Id(added.info().id), false, true)
        {
            Ok(_) => {}
            Err(Error::Request(e)) if e.kind == ErrorKind::UnknownTorrent => {}
            Err(e) => panic!("round {round}: a ghost torrent: {e:?}"),
        }
    }
}

#[test]
fn a_refused_add_leaves_no_save_folder_behind() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let garbage = sandbox.path("garbage.torrent");
    std::fs::write(&garbage, b"d4:infoi3ee").expect("write");
    let folder = sandbox.path("never/made");
    let out = run(sandbox.add_command(&state, &garbage, &folder, None));
    assert_eq!(out.code(), 3, "{out:?}");
    // Before: the folder (and its parent) were made before the .torrent was read.
    assert!(
        !sandbox.path("never").exists(),
        "a refused add made its save folder"
    );

    // An accepted add makes it, beneath the root.
    let data = sandbox.random_file("seed/made.bin", 50_000);
    let torrent = sandbox.path("made.torrent");
    sandbox.make_torrent(&state, &data, &torrent);
    run(sandbox.add_command(&state, &torrent, &folder, None)).expect_code(0);
    e2e::wait_for("the file to be made", STEP_TIMEOUT, || {
        folder.join("made.bin").exists()
    });
}
