//! Explicit limits: breaching one is a clear error for that patron alone.

use e2e::patron_client::proto::{
    CreateNewTorrent, ErrorKind, Event, RequestBody, TorrentId, TorrentRef, TorrentSource,
    MAX_REQUEST_BYTES,
};
use e2e::patron_client::{Created, Error, Patron};
use e2e::{Sandbox, Seeder, STEP_TIMEOUT};
use std::time::{Duration, Instant};

#[test]
fn the_patron_past_max_patrons_is_refused_and_the_others_carry_on() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("few");
    let _broker = sandbox.broker(&state, &["--max-patrons", "3"]);
    // Eight at once: the count and the admission are one step, so exactly three get in.
    let options = sandbox.connect_options(&state);
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let options = options.clone();
            std::thread::spawn(move || Patron::connect_with(&options))
        })
        .collect();
    let mut patrons = Vec::new();
    for attempt in attempts {
        match attempt.join().expect("thread") {
            Ok(patron) => patrons.push(patron),
            Err(Error::Refused { kind, message }) => {
                assert_eq!(kind, "limit");
                assert!(message.contains("maximum of 3 patrons"), "{message}");
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(patrons.len(), 3, "exactly the limit is admitted");
    // And a later one too is refused while they stay.
    assert!(matches!(
        Patron::connect_with(&options),
        Err(Error::Refused { .. })
    ));
    for patron in &mut patrons {
        assert!(patron.list().expect("list").is_empty());
    }
    // A place frees up when one leaves.
    patrons.pop();
    e2e::wait_for("a free place", STEP_TIMEOUT, || {
        Patron::connect_with(&sandbox.connect_options(&state)).is_ok()
    });
}

#[test]
fn the_torrent_past_max_torrents_is_refused() {
    let sandbox = Sandbox::new();
    let first = sandbox.random_file("seed/one.bin", 20_000);
    let second = sandbox.random_file("seed/two.bin", 20_000);
    let one = Seeder::start(&sandbox, "seed-one", &first, 16 * 1024, &[]);
    let two = Seeder::start(&sandbox, "seed-two", &second, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &["--max-torrents", "1"]);
    let out = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    patron
        .create(one.create_request(&out))
        .expect("the first fits");
    match patron.create(two.create_request(&out)) {
        Err(Error::StartFailed(e)) => {
            assert_eq!(e.kind, ErrorKind::LimitReached);
            assert!(e.message.contains("maximum of 1 torrents"), "{}", e.message);
        }
        other => panic!("the second must be refused: {other:?}"),
    }
}

#[test]
fn make_and_seed_counts_against_the_torrent_limit_too() {
    let sandbox = Sandbox::new();
    let first = sandbox.random_file("mine/one.bin", 20_000);
    let second = sandbox.random_file("mine/two.bin", 20_000);
    let state = sandbox.state_dir("maker");
    let _broker = sandbox.broker(&state, &["--max-torrents", "1"]);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &first);
    let made = patron.make(e2e::patron_client::proto::MakeTorrent {
        path: second.display().to_string(),
        piece_size: None,
        trackers: Vec::new(),
        seed: true,
    });
    match made {
        Err(Error::Request(e)) => {
            assert_eq!(e.kind, ErrorKind::LimitReached);
            assert!(e.message.contains("maximum of 1 torrents"), "{}", e.message);
        }
        other => panic!("seeding a second torrent must be refused: {other:?}"),
    }
    assert_eq!(patron.list().expect("list").len(), 1);
    // Making the same torrent again joins what already seeds.
    e2e::make_and_seed(&mut patron, &first);
    assert_eq!(patron.list().expect("list").len(), 1);
}

#[test]
fn a_request_over_the_size_limit_is_refused_and_the_session_goes_on() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("big");
    let broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    // The library refuses it before sending (the broker's own refusal of a lying or
    // oversized datagram is tested in `handshake`).
    let too_big = vec![b'd'; MAX_REQUEST_BYTES + 1];
    let sent = patron.send(RequestBody::CreateNewTorrent(CreateNewTorrent::new(
        TorrentSource::TorrentFile(too_big),
    )));
    match sent {
        Err(Error::Request(e)) => {
            assert_eq!(e.kind, ErrorKind::LimitReached);
            assert!(e.message.contains("at most"), "{}", e.message);
        }
        other => panic!("an oversized request must be refused: {other:?}"),
    }
    // Just under the limit travels (fragmented) and gets its reply: not a valid torrent.
    let just_under = vec![b'd'; MAX_REQUEST_BYTES - 1024];
    let id = patron
        .send(RequestBody::CreateNewTorrent(CreateNewTorrent::new(
            TorrentSource::TorrentFile(just_under),
        )))
        .expect("send");
    match patron.next_event_timeout(STEP_TIMEOUT).expect("event") {
        Some(Event::TorrentStartFail { request, error }) => {
            assert_eq!(request, id);
            assert_eq!(error.kind, ErrorKind::InvalidTorrent);
        }
        other => panic!("expected a start failure, got {other:?}"),
    }
    assert!(patron.list().expect("still served").is_empty());

    // The broker raised its own descriptor limit at start (each patron costs two).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid)).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3], fields[4],
        "soft limit raised to the hard one: {line}"
    );
}

/// Downloads `size` fresh bytes from a seeder broker started with `seeder_args` into one
/// started with `leecher_args`, checks them, and says how long it took.
fn download_through(size: usize, seeder_args: &[&str], leecher_args: &[&str]) -> Duration {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/limited.bin", size);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, seeder_args);
    let state = sandbox.state_dir("limited");
    let _broker = sandbox.broker(&state, leecher_args);
    let out = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    let started = Instant::now();
    let id = patron
        .create(seeder.create_request(&out))
        .expect("create")
        .info()
        .id;
    e2e::wait_complete(&mut patron, Some(id));
    let took = started.elapsed();
    assert_eq!(e2e::sha256(&out.join("limited.bin")), e2e::sha256(&data));
    took
}

#[test]
fn max_download_rate_limits_even_a_small_download() {
    // 3 MB at 1 MB/s: the limiter lets about a second's worth through at once, so the
    // rest cannot take less than ~2 s. Unlimited, the same download takes a fraction of that.
    let took = download_through(3_000_000, &[], &["--max-download-rate", "1000000"]);
    assert!(
        took >= Duration::from_millis(1800),
        "3 MB arrived in {took:?} through a 1 MB/s limit"
    );
}

#[test]
fn rate_limits_below_one_chunk_a_second_still_move_data() {
    // The engine's limiter refuses to wait for more than one second's worth at once: a
    // 16 KiB chunk through an 8 KiB/s limit failed every time. The download never moved,
    // and the seeder's upload scheduler stopped for good at its first chunk.
    let took = download_through(
        40_000,
        &["--max-upload-rate", "8K"],
        &["--max-download-rate", "8K"],
    );
    // A chunk at once, then the rest at 8 KiB/s: (40,000 - 16,384) / 8,192 s at least.
    assert!(
        took >= Duration::from_millis(2500),
        "40 KB arrived in {took:?} through 8 KiB/s limits"
    );
}

#[test]
fn file_budgets_hold_per_torrent_and_for_all_torrents_together() {
    use e2e::patron_client::proto::MakeTorrent;
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("files");
    let _broker = sandbox.broker(
        &state,
        &["--max-files-per-torrent", "10", "--max-files", "15"],
    );
    let mut patron = sandbox.patron(&state);
    let folder_of = |name: &str, files: usize| {
        let folder = sandbox.folder(&format!("data/{name}"));
        for n in 0..files {
            std::fs::write(folder.join(format!("{n}.txt")), format!("{name} {n}")).unwrap();
        }
        folder
    };
    let make = |patron: &mut Patron, folder: &std::path::Path, seed: bool| {
        patron.make(MakeTorrent {
            path: folder.display().to_string(),
            piece_size: None,
            trackers: Vec::new(),
            seed,
        })
    };
    let limit = |result: Result<_, Error>| match result {
        Err(Error::Request(error) | Error::StartFailed(error)) => {
            assert_eq!(error.kind, ErrorKind::LimitReached, "{error:?}");
            error.message
        }
        other => panic!("expected limit-reached, got {other:?}"),
    };

    // Twelve files in one torrent: over the per-torrent budget, refused before it runs.
    let twelve = folder_of("twelve", 12);
    let made = make(&mut patron, &twelve, false).expect("make");
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.torrent_file));
    create.output = Some(sandbox.folder("downloads").display().to_string());
    let message = limit(patron.create(create).map(|_| ()));
    assert!(message.contains("--max-files-per-torrent"), "{message}");
    // Eight, then eight more: the second passes the budget of all torrents together.
    let first = folder_of("first", 8);
    make(&mut patron, &first, true).expect("the first eight");
    let second = folder_of("second", 8);
    let message = limit(make(&mut patron, &second, true).map(|_| ()));
    assert!(message.contains("--max-files"), "{message}");
    // broker status shows the budget's use.
    let mut cmd = sandbox.client(&state);
    cmd.args(["--json", "broker", "status"]);
    let status = e2e::run(cmd).expect_code(0).json_lines()[0].clone();
    assert_eq!(status["files"], 8, "{status}");
    assert_eq!(status["files_limit"], 15, "{status}");
}

#[test]
fn global_limits_change_while_running_and_outlive_a_kill() {
    use e2e::{client_json, ok_json, pipe_session, run};
    use nix::sys::signal::Signal;
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/limited.bin", 1 << 20);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);
    let limits = |args: &[&str]| {
        let mut all = vec!["limits"];
        all.extend_from_slice(args);
        ok_json(&sandbox, &state, &all)
    };
    let none = serde_json::json!({
        "event": "limits", "max_download_rate": null, "max_upload_rate": null,
        "alt_download_rate": null, "alt_upload_rate": null, "alt_schedule": null,
        "alt_hours": null, "alt_on": false,
    });
    assert_eq!(limits(&[]), none);

    // Set now: a download that starts after takes the limit's time (a lower bound: a
    // slow machine only makes it longer).
    let set = limits(&["--down", "256K", "--up", "1M"]);
    assert_eq!(set["max_download_rate"], 262_144, "{set}");
    assert_eq!(set["max_upload_rate"], 1_048_576, "{set}");
    let out = sandbox.folder("downloads");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &out, Some(&seeder.broker.peer()));
    add.arg("--wait");
    let started = Instant::now();
    run(add).expect_code(0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "1 MiB at 256 KiB/s took {took:?}"
    );
    assert_eq!(e2e::sha256(&out.join("limited.bin")), e2e::sha256(&data));
    let info = ok_json(&sandbox, &state, &["broker", "status"]);
    assert_eq!(info["max_download_rate"], 262_144, "{info}");

    // Lifting one leaves the other; pipe mode says the same.
    let lines = pipe_session(
        &sandbox,
        &state,
        &[r#"{"cmd":"limits","max_upload_rate":0,"request":1}"#.to_owned()],
        true,
    );
    assert_eq!(lines[0]["max_download_rate"], 262_144, "{lines:?}");
    assert_eq!(
        lines[0]["max_upload_rate"],
        serde_json::Value::Null,
        "{lines:?}"
    );

    // Kept across a SIGKILL; a flag at the next start wins over the record.
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let mut broker = sandbox.broker(&state, &[]);
    assert_eq!(limits(&[])["max_download_rate"], 262_144);
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
    let _broker = sandbox.broker(&state, &["--max-download-rate", "1M"]);
    assert_eq!(limits(&[])["max_download_rate"], 1_048_576);

    // A limit the engine cannot keep: refused, nothing changed.
    let (code, lines) = client_json(&sandbox, &state, &["limits", "--down", "5G"]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "bad-request", "{lines:?}");
    assert_eq!(limits(&[])["max_download_rate"], 1_048_576);
    let (code, _) = client_json(&sandbox, &state, &["limits", "--down", "fast"]);
    assert_eq!(code, 2);
}

#[test]
fn a_damaged_settings_record_stops_the_start_and_names_the_file() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("damaged");
    std::fs::write(
        state.join("settings.json"),
        b"{\"max_download_rate\": \"fast\"}",
    )
    .unwrap();
    let mut start = sandbox.client(&state);
    start.args(["broker", "start"]);
    let out = e2e::run(start);
    assert_ne!(out.code(), 0, "{}", out.stdout);
    assert!(out.stderr.contains("settings.json"), "{}", out.stderr);
}

#[test]
fn a_torrents_own_limits_change_while_it_runs_and_outlive_a_pause_and_a_kill() {
    use e2e::{ok_json, run};
    use nix::sys::signal::Signal;
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/own.bin", 1 << 20);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &out, Some(&seeder.broker.peer()));
    add.arg("--paused");
    run(add).expect_code(0);
    let limits = |args: &[&str]| {
        let mut all = vec!["limits", "0"];
        all.extend_from_slice(args);
        ok_json(&sandbox, &state, &all)
    };
    assert_eq!(limits(&[])["max_download_rate"], serde_json::Value::Null);
    // Set on a paused torrent: the engine used to build its limits anew at each start
    // from the add's options, so a change would not survive the resume.
    assert_eq!(limits(&["--down", "256K"])["max_download_rate"], 262_144);
    assert_eq!(
        ok_json(&sandbox, &state, &["limits"])["max_download_rate"],
        serde_json::Value::Null,
        "the broker's own limit is another"
    );
    let started = Instant::now();
    ok_json(&sandbox, &state, &["resume", "0"]);
    let mut patron = sandbox.patron(&state);
    patron
        .follow(e2e::patron_client::proto::TorrentRef::Id(TorrentId(0)))
        .expect("follow");
    e2e::wait_complete(&mut patron, Some(TorrentId(0)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "1 MiB at its own 256 KiB/s took {took:?}"
    );
    assert_eq!(e2e::sha256(&out.join("own.bin")), e2e::sha256(&data));
    // Recorded with the torrent: a killed broker's successor keeps it.
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let _broker = sandbox.broker(&state, &[]);
    e2e::wait_for("the torrent to be restored", STEP_TIMEOUT, || {
        e2e::client_json(&sandbox, &state, &["limits", "0"]).0 == 0
    });
    assert_eq!(limits(&[])["max_download_rate"], 262_144);
    assert_eq!(
        limits(&["--down", "none"])["max_download_rate"],
        serde_json::Value::Null
    );
    let (code, _) = e2e::client_json(&sandbox, &state, &["limits", "9", "--down", "1M"]);
    assert_eq!(code, 1, "an unknown torrent");
}

/// Minutes after local midnight now, as `date` says (the broker's clock and zone).
fn local_minute() -> u32 {
    let out = std::process::Command::new("date")
        .arg("+%H %M")
        .output()
        .expect("date");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<u32>().expect("a number"));
    let (hours, minutes) = (parts.next().expect("hours"), parts.next().expect("minutes"));
    hours * 60 + minutes
}

#[test]
fn alternative_limits_switch_by_hand_and_by_schedule_and_outlive_a_kill() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/turtle.bin", 2 << 20);
    let seeder = Seeder::start(&sandbox, "turtle-seed", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);
    let limits = |args: &[&str]| {
        let mut all = vec!["limits"];
        all.extend_from_slice(args);
        e2e::ok_json(&sandbox, &state, &all)
    };
    let set = limits(&["--alt-limits", "256K:none"]);
    assert_eq!(set["alt_download_rate"], 256 << 10, "{set}");
    assert_eq!(set["alt_on"], false, "{set}");
    // A schedule around now turns them on by itself within a second or two.
    let now = local_minute();
    let at = |m: u32| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let window = format!("daily {}-{}", at(now + 1439), at(now + 10));
    limits(&["--alt-schedule", &window]);
    e2e::wait_for("the schedule to turn them on", STEP_TIMEOUT, || {
        limits(&[])["alt_on"] == true
    });
    // Off by hand holds until the schedule's next edge, not the next second.
    assert_eq!(limits(&["--alt", "off"])["alt_on"], false);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(limits(&[])["alt_on"], false, "a switch by hand holds");
    // On, and kept across a SIGKILL.
    limits(&["--alt", "on"]);
    broker.signal(nix::sys::signal::Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    broker = sandbox.broker(&state, &[]);
    let kept = limits(&[]);
    assert_eq!(kept["alt_on"], true, "{kept}");
    assert!(
        kept["alt_schedule"]
            .as_str()
            .is_some_and(|s| s.starts_with("daily ")),
        "{kept}"
    );
    // In force: a download crawls at 256 KiB/s (after the limiter's first second), then
    // runs free once they are off.
    limits(&["--alt-schedule", "none"]);
    let out = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    let Created::New(torrent) = patron.create(seeder.create_request(&out)).expect("add") else {
        panic!("a new torrent")
    };
    std::thread::sleep(Duration::from_secs(2));
    let done = patron
        .status(TorrentRef::Id(torrent.id))
        .expect("status")
        .bytes_done;
    assert!(done < 1 << 20, "limited to 256 KiB/s: {done} bytes in 2 s");
    limits(&["--alt", "off"]);
    e2e::wait_complete(&mut patron, Some(torrent.id));
    drop(broker);
}

/// A schedule given with a switch in the same command: the switch holds until the
/// schedule's next edge. (Before: the schedule was looked at afresh a second later and
/// undid the switch.)
#[test]
fn a_switch_given_with_a_schedule_holds() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let set = e2e::ok_json(
        &sandbox,
        &state,
        &[
            "limits",
            "--alt-limits",
            "100K:100K",
            "--alt-schedule",
            "daily 00:00-24:00",
            "--alt",
            "off",
        ],
    );
    assert_eq!(set["alt_on"], false, "{set}");
    std::thread::sleep(Duration::from_millis(2500));
    let now = e2e::ok_json(&sandbox, &state, &["limits"]);
    assert_eq!(now["alt_on"], false, "the switch holds: {now}");
    let replies = e2e::pipe_session(
        &sandbox,
        &state,
        &[r#"{"cmd":"seeding","seed_time_limit_secs":18446744073709551615}"#.into()],
        true,
    );
    assert_eq!(
        replies[0]["event"], "error",
        "a time past a century: {replies:?}"
    );
}
