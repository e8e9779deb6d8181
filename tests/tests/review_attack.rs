//! An adversarial review of issue 18's storage, ownership, fast-resume and state-file work.
//! Every test here FAILS on the code it was written against: each is a promise of DESIGN §4
//! (or of the README's threat model) that an attack still broke.

use e2e::{client_json, wait_for, wait_status, Sandbox, Seeder, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use std::os::unix::fs::FileExt;

/// What librqbit logs when it hashes a torrent's every piece.
const FULL_CHECK: &str = "Doing initial checksum validation";

// DEFECT (verified means verified): the clean stop stamps every torrent's files as they are
// *then* (`broker.rs` `stop` → `Service::stamp_verified`), whatever happened to them since
// their pieces were hashed. A piece edited while the broker runs (the README's known limit
// says "only the next start's stamps catch that") is therefore vouched for by the stamps
// the clean stop writes: the next start trusts the old bitfield, never hashes the file, and
// claims (and seeds, and `cat`s) the edited piece as verified.
#[test]
fn a_piece_edited_while_the_broker_runs_is_not_vouched_for_by_the_clean_stop() {
    let sandbox = Sandbox::new();
    let (seeder, data, piece) = e2e::seeding_many_pieces(&sandbox);
    let state = seeder.broker.state.clone();
    // The completion's stamps are written (a blocking task after the completion).
    let stamps = state.join("engine/fastresume/0.stamps");
    wait_for("the completion's stamps", STEP_TIMEOUT, || stamps.exists());

    // 16 bytes of piece 130 changed while the broker runs and seeds it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .expect("open");
    file.write_all_at(&[0xAB; 16], 130 * piece as u64 + 100)
        .expect("edit");
    drop(file);

    let mut broker = seeder.broker;
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);

    let broker = sandbox.broker(&state, &[]);
    let after = wait_status(&sandbox, &state, "0", "the start after the stop", |s| {
        s["state"] != "checking"
    });
    // Before: "seeding", complete, 256 pieces claimed; the log shows no full check.
    assert_eq!(
        after["complete"],
        false,
        "the edited piece is claimed verified after the restart: {after}\n{}",
        broker.log()
    );
    assert!(broker.log().contains(FULL_CHECK), "{}", broker.log());
}

// DEFECT (state is read as state): only the last component of a state file's path is
// opened with O_NOFOLLOW. The state dir's `torrents` folder replaced by a symlink is
// followed: the broker starts, and its sweep of ".torrent files no record names"
// (`Service::restore`, `std::fs::read_dir(torrents_dir)` + `remove_file`) deletes every
// `*.torrent` in the folder the link points to (a user's ~/Downloads, say). The `engine`
// folder is refused as a symlink (fast_resume.rs); `torrents` should be too: a refused start
// naming it, nothing deleted.
#[test]
fn a_symlink_in_place_of_the_torrents_folder_refuses_the_start_and_deletes_nothing() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let outside = tempfile::Builder::new()
        .prefix("tp-review-outside-")
        .tempdir()
        .expect("tempdir");
    let users = outside.path().join("ubuntu.iso.torrent");
    std::fs::write(&users, b"d4:infod4:name3:isoee").expect("write");
    std::fs::write(outside.path().join("7.torrent"), b"kept").expect("write");
    std::os::unix::fs::symlink(outside.path(), state.join("torrents")).expect("symlink");

    let log = state.with_extension("review.log");
    let mut cmd = std::process::Command::new(e2e::bin("torrent-broker"));
    sandbox.apply_env(&mut cmd);
    cmd.arg("--state-dir")
        .arg(&state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut child = cmd.spawn().expect("spawn broker");
    // Refused (exit), or ready (its sweep ran before it serves).
    let mut exit = None;
    wait_for("the broker to start or refuse", STEP_TIMEOUT, || {
        exit = child.try_wait().expect("try_wait");
        exit.is_some()
            || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("broker ready")
    });
    let code = match exit {
        Some(status) => status.code(),
        None => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                Signal::SIGTERM,
            )
            .expect("SIGTERM");
            let _ = child.wait();
            None
        }
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        users.exists() && outside.path().join("7.torrent").exists(),
        "the broker deleted the user's .torrent files through a symlinked `torrents` folder (exit {code:?}):\n{text}"
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "the broker started through a symlinked state folder:\n{text}"
    );
    assert!(text.contains("torrents"), "{text}");
}

// DEFECT (resume from an error goes through the storage, storage.rs's module doc): a torrent
// added without --overwrite keeps `allow_overwrite = false` for its life, and librqbit's
// resume from an error state calls `create_and_init` again, whose `BeneathStorage::init`
// opens every file O_CREAT|O_EXCL. Its own files exist, so once a torrent has failed (a
// full disk, a file that could not be opened), `resume` fails forever with "exists already
// and the torrent was not allowed to overwrite it" (only `recheck` brings it back).
#[test]
fn a_torrent_that_failed_can_be_resumed_once_the_cause_is_gone() {
    failed_torrent_resumes(&[]);
}

/// The same with a queue: a torrent in error is outside the queue (it holds no slot), and
/// a resume puts it back in its place. (Before: with a queue limit, `resume` of a failed
/// torrent answered its status, exit 0, and left it in error.)
#[test]
fn a_failed_torrent_resumes_in_its_turn_when_the_broker_queues() {
    failed_torrent_resumes(&["--max-active-downloads", "2", "--stalled-after", "never"]);
}

fn failed_torrent_resumes(queue: &[&str]) {
    let sandbox = Sandbox::new();
    sandbox.random_file("seed/pack/a.bin", 2 * 1024 * 1024);
    sandbox.random_file("seed/pack/b.bin", 2 * 1024 * 1024);
    // Slow enough for the attack to land mid-download.
    let seeder = Seeder::start(
        &sandbox,
        "seeder",
        &sandbox.path("seed/pack"),
        64 * 1024,
        &["--max-upload-rate", "400000"],
    );
    // One open file at a time: every switch between a.bin and b.bin reopens by path.
    let mut flags = vec!["--open-files", "1"];
    flags.extend_from_slice(queue);
    let (broker, state, downloads) = e2e::leech_with(&sandbox, &seeder, &flags);
    wait_status(&sandbox, &state, "0", "some progress", |s| {
        s["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    // A FIFO where b.bin was: its next open is refused (not a regular file), the torrent
    // fails. (a.bin, being written, may stay open in the pool: it is left alone.)
    let b = downloads.join("pack/b.bin");
    std::fs::remove_file(&b).expect("rm b.bin");
    nix::unistd::mkfifo(&b, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let failed = wait_status(&sandbox, &state, "0", "the torrent to fail", |s| {
        s["state"] == "error" || s["complete"] == true
    });
    assert_eq!(failed["state"], "error", "{failed}");

    // The cause goes; the torrent is resumed.
    std::fs::remove_file(&b).expect("rm the FIFO");
    let (code, lines) = client_json(&sandbox, &state, &["resume", "0"]);
    // Before: exit 1, "…/pack/a.bin exists already and the torrent was not allowed to
    // overwrite it".
    assert_eq!(
        code,
        0,
        "resume after the error: {lines:?}\n{}",
        broker.log()
    );
    let done = wait_status(&sandbox, &state, "0", "the download to end", |s| {
        s["complete"] == true || s["state"] == "error"
    });
    assert_eq!(done["complete"], true, "{done}");
}
