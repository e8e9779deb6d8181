//! Hostile review of move storage and hooks: each test states a promise and tries to break it.

use e2e::{
    client_json, is_stopped, ok_json, run, script, sha256, tree, wait_for, wait_status, Sandbox,
    Tmpfs,
};
use e2e::{BrokerProcess, CatProcess, Running, Seeder, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn seeding_album(
    sandbox: &Sandbox,
    name: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (BrokerProcess, PathBuf, PathBuf) {
    let album = sandbox.folder(&format!("seed-{name}/Album"));
    sandbox.random_file(&format!("seed-{name}/Album/a.bin"), 300 << 10);
    sandbox.random_file(&format!("seed-{name}/Album/sub/b.bin"), 100 << 10);
    let state = sandbox.state_dir(name);
    let broker = sandbox.broker_with_env(&state, &[], env);
    let mut make = sandbox.client(&state);
    make.args(["make", "--seed", "--piece-size", "16384", "--output"])
        .arg(sandbox.path(&format!("{name}.torrent")))
        .arg(&album);
    run(make).expect_code(0);
    wait_status(sandbox, &state, "0", "seeding", |s| s["state"] == "seeding");
    (broker, state, album)
}

fn listed(sandbox: &Sandbox, state: &Path) -> Value {
    let (code, lines) = client_json(sandbox, state, &["list"]);
    assert_eq!(code, 0, "{lines:?}");
    lines
        .into_iter()
        .find(|l| l["id"] == 0)
        .unwrap_or_else(|| panic!("torrent 0 is not listed"))
}

/// Verified means verified (DESIGN §4): a file changed while its torrent is out of the
/// engine for a move must not be vouched for at the new place. The broker is stopped (the
/// test hook, then SIGCONT) after it has checked the stamps and before the files move; a
/// byte of a.bin is changed; the move goes on. Then a clean restart: the changed file must
/// be hashed again (progress < 1), not trusted by fast resume.
#[test]
fn review_a_file_edited_during_a_move_is_not_vouched_for_after_a_restart() {
    let sandbox = Sandbox::new();
    let stop_at = std::ffi::OsString::from("move:stopped");
    let (broker, state, album) = seeding_album(
        &sandbox,
        "album",
        &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
    );
    let dest = sandbox.folder("done");
    let mut mover = sandbox.client(&state);
    mover.args(["--json", "move", "0", text(&dest)]);
    let mover = Running::start(mover);
    wait_for("the broker to stop", STEP_TIMEOUT, || {
        is_stopped(broker.pid)
    });
    // An edit in place (same size): 16 bytes in the middle of piece 3.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(album.join("a.bin"))
            .expect("open");
        f.write_all_at(b"TAMPERED-TAMPERD", 3 * 16384 + 100)
            .expect("write");
    }
    let edited = sha256(&album.join("a.bin"));
    broker.signal(Signal::SIGCONT);
    let out = mover.finish(STEP_TIMEOUT);
    eprintln!("move: {:?}", out.json_lines());
    assert_eq!(sha256(&dest.join("Album/a.bin")), edited, "the edit moved");
    // Clean stop, restart.
    let mut broker = broker;
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
    let broker = sandbox.broker(&state, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let status = e2e::status_json(&sandbox, &state, "0");
    eprintln!("after restart: {status}\n{}", broker.log());
    assert!(
        status["progress"].as_f64().unwrap_or(1.0) < 1.0,
        "the edited piece is served as verified after the restart: {status}"
    );
}

/// "No user file is ever overwritten or deleted": a copy (across disks) killed before
/// anything was copied leaves a journal; a file the user puts at the destination path
/// before the next start must survive that start.
#[test]
fn review_a_restart_after_a_killed_copy_never_deletes_the_users_file_at_the_destination() {
    if !e2e::have_root("tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let disk = sandbox.folder("other-disk");
    let _tmpfs = Tmpfs::mount(&disk, "16m");
    let stop_at = std::ffi::OsString::from("move:stopped");
    let (mut broker, state, album) = seeding_album(
        &sandbox,
        "album",
        &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
    );
    let before = tree(&album);
    let dest = disk.join("done");
    let mut mover = sandbox.client(&state);
    mover.args(["--json", "move", "0", text(&dest)]);
    let mover = Running::start(mover);
    wait_for("the broker to stop", STEP_TIMEOUT, || {
        is_stopped(broker.pid)
    });
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let _ = mover.finish(STEP_TIMEOUT);
    // The user's own files, made while no broker runs.
    std::fs::create_dir_all(dest.join("Album/sub")).expect("mkdir");
    std::fs::write(dest.join("Album/a.bin"), b"the user's own a").expect("write");
    std::fs::write(dest.join("Album/sub/b.bin"), b"the user's own b").expect("write");
    let broker = sandbox.broker(&state, &[]);
    wait_status(&sandbox, &state, "0", "seeding after the kill", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(tree(&album), before);
    assert_eq!(
        std::fs::read(dest.join("Album/a.bin")).ok(),
        Some(b"the user's own a".to_vec()),
        "the user's file at the destination was deleted by the restart:\n{}",
        broker.log()
    );
}

/// Same as above, on one disk (a rename journal), with a torrent of which one file was
/// never downloaded (`--only 0`): the user's file at that file's new path must not be
/// taken (renamed into the torrent's folder) by the restart.
#[test]
fn review_a_restart_after_a_killed_rename_never_takes_the_users_file() {
    let sandbox = Sandbox::new();
    // A seeder of the album, and a leecher that wants only a.bin.
    let (seeder, _sstate, album) = seeding_album(&sandbox, "seeder", &[]);
    let torrent = sandbox.path("seeder.torrent");
    let state = sandbox.state_dir("leecher");
    let stop_at = std::ffi::OsString::from("move:stopped");
    let mut broker =
        sandbox.broker_with_env(&state, &[], &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)]);
    let out = sandbox.folder("downloads");
    let mut add = sandbox.add_command(&state, &torrent, &out, Some(&seeder.peer()));
    add.args(["--only", "0", "--wait"]);
    let lines = Running::start(add)
        .finish(STEP_TIMEOUT)
        .expect_code(0)
        .json_lines();
    eprintln!("add: {lines:?}");
    let files = ok_json(&sandbox, &state, &["status", "0"]);
    eprintln!("status: {files}");
    eprintln!("downloaded: {:?}", tree(&out));
    let dest = sandbox.folder("done");
    let mut mover = sandbox.client(&state);
    mover.args(["--json", "move", "0", text(&dest)]);
    let mover = Running::start(mover);
    wait_for("the broker to stop", STEP_TIMEOUT, || {
        is_stopped(broker.pid)
    });
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let _ = mover.finish(STEP_TIMEOUT);
    let present: Vec<String> = tree(&out.join("Album")).into_keys().collect();
    eprintln!("present at the old place: {present:?}");
    // The user makes the files that are not at the old place, at the new place.
    for rel in ["a.bin", "sub/b.bin"] {
        if !out.join("Album").join(rel).exists() {
            let p = dest.join("Album").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"the user's").unwrap();
        }
    }
    let user_files = tree(&dest);
    eprintln!("user files: {user_files:?}");
    let broker = sandbox.broker(&state, &[]);
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("list: {}", listed(&sandbox, &state));
    eprintln!("old: {:?} new: {:?}", tree(&out), tree(&dest));
    assert_eq!(
        tree(&dest),
        user_files,
        "the user's files at dest changed:\n{}",
        broker.log()
    );
    let _ = album;
}

/// A move while the torrent downloads: the download completes at the new place, every
/// byte right, nothing left at the old place. A `cat` open across the move must end with
/// exit 6 or follow, never print a wrong byte. Across disks (a copy), the hardest case.
#[test]
fn review_a_move_while_downloading_and_streaming_across_disks() {
    if !e2e::have_root("tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 3 << 20, "400K");
    let (_broker, state, downloads) = e2e::leech(&sandbox, &seeder);
    let cat_out = sandbox.path("cat.out");
    let cat = CatProcess::start(&sandbox, &state, &["0"], &cat_out);
    wait_for("some bytes", STEP_TIMEOUT, || cat.written() > 300_000);
    let disk = sandbox.folder("other-disk");
    let _tmpfs = Tmpfs::mount(&disk, "32m");
    let dest = disk.join("done");
    let (code, lines) = client_json(&sandbox, &state, &["move", "0", text(&dest)]);
    eprintln!("move: {code} {lines:?}");
    assert_eq!(code, 0, "{lines:?}");
    let (cat_code, err, bytes) = cat.finish_within(Duration::from_secs(120));
    let want = std::fs::read(&data).unwrap();
    eprintln!("cat: {cat_code} {} bytes: {err}", bytes.len());
    assert!(bytes.len() <= want.len());
    let bad = bytes.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        bad, None,
        "cat printed a wrong byte at {bad:?} (exit {cat_code}, {err})"
    );
    assert!(
        cat_code == 6 || (cat_code == 0 && bytes == want),
        "cat exit {cat_code}: {err}"
    );
    let mut patron = sandbox.patron(&state);
    let _ = &mut patron;
    wait_status(&sandbox, &state, "0", "complete at the new place", |s| {
        s["progress"] == 1.0
    });
    assert_eq!(sha256(&dest.join("slow.bin")), sha256(&data));
    assert!(
        !downloads.join("slow.bin").exists(),
        "left at the old place"
    );
}

/// Same on one disk (a rename), for the stream.
#[test]
fn review_a_move_while_downloading_and_streaming_on_one_disk() {
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 3 << 20, "400K");
    let (_broker, state, downloads) = e2e::leech(&sandbox, &seeder);
    let cat_out = sandbox.path("cat.out");
    let cat = CatProcess::start(&sandbox, &state, &["0"], &cat_out);
    wait_for("some bytes", STEP_TIMEOUT, || cat.written() > 300_000);
    let dest = sandbox.folder("done");
    let (code, lines) = client_json(&sandbox, &state, &["move", "0", text(&dest)]);
    eprintln!("move: {code} {lines:?}");
    assert_eq!(code, 0, "{lines:?}");
    let (cat_code, err, bytes) = cat.finish_within(Duration::from_secs(120));
    let want = std::fs::read(&data).unwrap();
    eprintln!("cat: {cat_code} {} bytes: {err}", bytes.len());
    let bad = bytes.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(bad, None, "cat printed a wrong byte at {bad:?}");
    assert!(
        cat_code == 6 || (cat_code == 0 && bytes == want),
        "cat exit {cat_code}: {err}"
    );
    wait_status(&sandbox, &state, "0", "complete at the new place", |s| {
        s["progress"] == 1.0
    });
    assert_eq!(sha256(&dest.join("slow.bin")), sha256(&data));
    assert!(!downloads.join("slow.bin").exists());
}

/// A file in the torrent's own folder that is not the torrent's is neither deleted nor
/// does it block; the move of a `make --seed` torrent across disks.
#[test]
fn review_a_foreign_file_in_the_torrents_folder_survives_a_copy_move() {
    if !e2e::have_root("tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let (_broker, state, album) = seeding_album(&sandbox, "album", &[]);
    std::fs::write(album.join("notes.txt"), b"mine").unwrap();
    std::fs::write(album.join("sub/cover.jpg"), b"mine too").unwrap();
    let disk = sandbox.folder("other-disk");
    let _tmpfs = Tmpfs::mount(&disk, "16m");
    let dest = disk.join("done");
    let (code, lines) = client_json(&sandbox, &state, &["move", "0", text(&dest)]);
    eprintln!("move: {code} {lines:?}");
    assert_eq!(
        std::fs::read(album.join("notes.txt")).ok(),
        Some(b"mine".to_vec())
    );
    assert_eq!(
        std::fs::read(album.join("sub/cover.jpg")).ok(),
        Some(b"mine too".to_vec())
    );
}

fn alive(pid: i32) -> bool {
    // Not a zombie, and there.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, a)| !a.starts_with('Z')))
        .unwrap_or(false)
}

/// A hook that puts work in the background (in its group, or in a session of its own)
/// and exits, or that hangs with a setsid'd child: what it started must not outlive the
/// hook's time limit ("killed with its whole group past --hook-timeout", "a hook that
/// forks never slows the broker", at most 4 running).
#[test]
fn review_what_a_hook_leaves_behind_is_not_killed() {
    let sandbox = Sandbox::new();
    let pids = sandbox.folder("pids");
    let hook = script(
        &sandbox.path("leave.sh"),
        &format!(
            "sleep 300 & echo $! > \"{0}/bg-$TP_TORRENT_ID\"\nsetsid sleep 301 & echo $! > \"{0}/setsid-$TP_TORRENT_ID\"\nexit 0",
            pids.display()
        ),
    );
    let hang = script(
        &sandbox.path("hang.sh"),
        &format!(
            "setsid sleep 302 & echo $! > \"{0}/hang-setsid-$TP_TORRENT_ID\"\nsleep 1000",
            pids.display()
        ),
    );
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &["--on-added", text(&hook), "--hook-timeout", "2"]);
    let state2 = sandbox.state_dir("broker2");
    let mut broker2 = sandbox.broker(&state2, &["--on-added", text(&hang), "--hook-timeout", "2"]);
    let data2 = sandbox.random_file("data2/y.bin", 100_000);
    let mut make2 = sandbox.client(&state2);
    make2
        .args(["make", "--seed", "--output"])
        .arg(sandbox.path("y.torrent"))
        .arg(&data2);
    run(make2).expect_code(0);
    let data = sandbox.random_file("data/x.bin", 100_000);
    let mut make = sandbox.client(&state);
    make.args(["make", "--seed", "--output"])
        .arg(sandbox.path("x.torrent"))
        .arg(&data);
    run(make).expect_code(0);
    let read = |name: &str| -> i32 {
        let path = pids.join(name);
        let mut pid = 0;
        wait_for(name, STEP_TIMEOUT, || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            pid != 0
        });
        pid
    };
    let bg = read("bg-0");
    let setsid = read("setsid-0");
    std::thread::sleep(Duration::from_secs(6));
    let bg_alive = alive(bg);
    let setsid_alive = alive(setsid);
    let hang_setsid = std::fs::read_to_string(pids.join("hang-setsid-0"))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let hang_alive = hang_setsid.map(alive);
    eprintln!("bg {bg} alive {bg_alive}; setsid {setsid} alive {setsid_alive}; hang setsid {hang_setsid:?} alive {hang_alive:?}");
    // Clean up what leaked (by pid, ours).
    for pid in [Some(bg), Some(setsid), hang_setsid].into_iter().flatten() {
        if alive(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    broker.signal(Signal::SIGTERM);
    let _ = broker.wait_exit(STEP_TIMEOUT);
    broker2.signal(Signal::SIGTERM);
    let _ = broker2.wait_exit(STEP_TIMEOUT);
    assert!(
        !bg_alive && !setsid_alive && hang_alive != Some(true),
        "processes a hook started outlive its time limit: bg {bg_alive}, setsid {setsid_alive}, hang's setsid child {hang_alive:?}"
    );
}

/// A seeder of `seedx/Album` with a.bin of exactly 16 pieces and sub/b.bin after it, so that
/// `--only 0` never touches b.bin.
fn aligned_seeder(sandbox: &Sandbox) -> (BrokerProcess, PathBuf) {
    sandbox.random_file("seedx/Album/a.bin", 16 * 16384);
    sandbox.random_file("seedx/Album/sub/b.bin", 100 << 10);
    let state = sandbox.state_dir("seeder");
    let broker = sandbox.broker(&state, &[]);
    let torrent = sandbox.path("aligned.torrent");
    let mut make = sandbox.client(&state);
    make.args(["make", "--seed", "--piece-size", "16384", "--output"])
        .arg(&torrent)
        .arg(sandbox.path("seedx/Album"));
    run(make).expect_code(0);
    wait_status(sandbox, &state, "0", "seeding", |s| s["state"] == "seeding");
    (broker, torrent)
}

/// Rename journal, killed before any file moved, of a torrent with no data yet (added
/// paused). The user then makes a folder of that name at the destination with a file of
/// theirs. The restart must not adopt the user's folder as the torrent's, nor download
/// into the user's file.
#[test]
fn review_a_restart_after_a_killed_rename_never_adopts_the_users_folder() {
    let sandbox = Sandbox::new();
    let (seeder, torrent) = aligned_seeder(&sandbox);
    let state = sandbox.state_dir("leecher");
    let stop_at = std::ffi::OsString::from("move:stopped");
    let mut broker =
        sandbox.broker_with_env(&state, &[], &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)]);
    let out = sandbox.folder("downloads");
    let mut add = sandbox.add_command(&state, &torrent, &out, None);
    add.arg("--paused");
    run(add).expect_code(0);
    eprintln!("old before: {:?}", tree(&out));
    let dest = sandbox.folder("done");
    let mut mover = sandbox.client(&state);
    mover.args(["--json", "move", "0", text(&dest)]);
    let mover = Running::start(mover);
    wait_for("the broker to stop", STEP_TIMEOUT, || {
        is_stopped(broker.pid)
    });
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let _ = mover.finish(STEP_TIMEOUT);
    let mine = dest.join("Album/a.bin");
    std::fs::create_dir_all(mine.parent().unwrap()).unwrap();
    let user_bytes = vec![7u8; 16 * 16384];
    std::fs::write(&mine, &user_bytes).unwrap();
    let _broker = sandbox.broker(&state, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let l = listed(&sandbox, &state);
    eprintln!("list after restart: {l}");
    // Run it: if it adopted the user's folder, it now downloads into the user's file.
    let mut resume = sandbox.client(&state);
    resume.args(["--json", "resume", "0"]);
    eprintln!("resume: {:?}", run(resume).json_lines());
    let mut peer = sandbox.client(&state);
    peer.args(["--json", "peers", "0", "--add", &seeder.peer()]);
    eprintln!("peer add: {:?}", run(peer).json_lines());
    std::thread::sleep(Duration::from_secs(8));
    eprintln!("list: {}", listed(&sandbox, &state));
    eprintln!("old: {:?}\nnew: {:?}", tree(&out), tree(&dest));
    assert_ne!(
        l["save_folder"],
        text(&dest),
        "the record now names the user's folder as the torrent's"
    );
    assert_eq!(
        std::fs::read(&mine).ok(),
        Some(user_bytes),
        "the user's file changed"
    );
}

/// The completion hook and --move-completed-to: the hook must be told where the data is
/// (and find it there), not the place the data is being moved away from meanwhile.
#[test]
fn review_the_completion_hook_is_told_where_the_data_is_after_move_completed_to() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/film.bin", 700 << 10);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16384, &[]);
    let finished = sandbox.folder("finished");
    let seen = sandbox.path("seen.txt");
    let hook = script(
        &sandbox.path("done.sh"),
        &format!(
            "sleep 1; echo \"$TP_SAVE_FOLDER\" > \"{0}.tmp\"; if [ -f \"$TP_SAVE_FOLDER/film.bin\" ]; then echo found >> \"{0}.tmp\"; else echo missing >> \"{0}.tmp\"; fi; mv \"{0}.tmp\" \"{0}\"",
            seen.display()
        ),
    );
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(
        &state,
        &[
            "--move-completed-to",
            text(&finished),
            "--on-completed",
            text(&hook),
        ],
    );
    let first = sandbox.folder("incoming");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &first, Some(&seeder.broker.peer()));
    add.arg("--wait");
    Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    wait_for("the hook", STEP_TIMEOUT, || seen.exists());
    wait_for("the move", STEP_TIMEOUT, || {
        finished.join("film.bin").exists()
    });
    let said = std::fs::read_to_string(&seen).unwrap();
    eprintln!("hook saw: {said}");
    assert_eq!(
        said,
        format!("{}\nfound\n", finished.display()),
        "the completion hook was told a folder its data was leaving"
    );
}

/// --move-completed-to across a SIGKILL: a torrent that completed but whose move was cut
/// (the broker killed as the move began) is moved at the next start, or at some point:
/// the policy is recorded (§13, §4a), not lost.
#[test]
fn review_move_completed_to_survives_a_kill_between_completion_and_move() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/film.bin", 700 << 10);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16384, &[]);
    let finished = sandbox.folder("finished");
    let state = sandbox.state_dir("leecher");
    let stop_at = std::ffi::OsString::from("move:stopped");
    let mut broker = sandbox.broker_with_env(
        &state,
        &["--move-completed-to", text(&finished)],
        &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
    );
    let first = sandbox.folder("incoming");
    let add = sandbox.add_command(&state, &seeder.torrent, &first, Some(&seeder.broker.peer()));
    run(add).expect_code(0);
    wait_for("the broker to stop at the move", STEP_TIMEOUT, || {
        is_stopped(broker.pid)
    });
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let broker = sandbox.broker(&state, &["--move-completed-to", text(&finished)]);
    wait_status(&sandbox, &state, "0", "seeding", |s| {
        s["state"] == "seeding"
    });
    std::thread::sleep(Duration::from_secs(5));
    let l = listed(&sandbox, &state);
    eprintln!("{l}\n{}", broker.log());
    assert_eq!(
        l["save_folder"],
        text(&finished),
        "completed, never moved to --move-completed-to after the restart"
    );
}

/// A copy to another disk, killed once the record names the new place (before the
/// originals went); that disk is not mounted at the next start (a USB disk, a NAS). The
/// start must not delete the only copy it can see: it cannot see the one the record names.
#[test]
fn review_a_restart_with_the_new_disk_unmounted_keeps_the_old_copy() {
    if !e2e::have_root("tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let stop_at = std::ffi::OsString::from("move:committed");
    let (mut broker, state, album) = seeding_album(
        &sandbox,
        "album",
        &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
    );
    let before = tree(&album);
    let disk = sandbox.folder("usb");
    let tmpfs = Tmpfs::mount(&disk, "16m");
    let dest = disk.join("films");
    let mut mover = sandbox.client(&state);
    mover.args(["--json", "move", "0", text(&dest)]);
    let mover = Running::start(mover);
    wait_for("the broker to stop", STEP_TIMEOUT, || {
        is_stopped(broker.pid)
    });
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let _ = mover.finish(STEP_TIMEOUT);
    assert_eq!(
        tree(&dest.join("Album")),
        before,
        "setup: the copy is whole"
    );
    // The disk goes away (keep what it held, as a real disk would).
    let saved = sandbox.folder("usb-contents");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&dest)
        .arg(&saved)
        .status()
        .unwrap();
    drop(tmpfs);
    let broker = sandbox.broker(&state, &[]);
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("list: {}", listed(&sandbox, &state));
    assert_eq!(
        tree(&album),
        before,
        "the start deleted the old copy while the new one is on a disk not mounted:\n{}",
        broker.log()
    );
}
