//! What the broker remembers (DESIGN §4a): no torrent is ever forgotten by accident. A
//! record that cannot be restored is kept and shown, an unreadable state file is never
//! overwritten, and an add the broker could not record is not reported as done.

use e2e::{listed, made_torrent, run, Sandbox, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Mounts a 1 MiB tmpfs on `state` (needs root), unmounted when the guard drops.
fn small_disk(state: &Path) -> impl Drop {
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(state)
        .status()
        .expect("mount");
    assert!(mount.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    Unmount(state.to_path_buf())
}

/// Fills the file system of `folder` to the last byte; returns the filler file.
fn fill(folder: &Path) -> PathBuf {
    use std::io::Write;
    let filler = folder.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let mut chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    chunk.truncate(1);
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    filler
}

#[test]
fn a_record_that_cannot_be_restored_is_kept_shown_and_restored_later() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("keep");
    let mounts = sandbox.folder("mounts");
    let disk = mounts.join("disk");
    let save = disk.join("downloads");
    std::fs::create_dir_all(&save).expect("save folder");
    let torrent = made_torrent(&sandbox, "kept.bin");
    let root = format!("--download-root={}", mounts.display());

    let broker = sandbox.broker(&state, &[&root]);
    let add = sandbox.add_command(&state, &torrent, &save, None);
    let added = run(add).expect_code(0).json_lines();
    let id = added[0]["id"].clone();
    broker.stop();

    // The disk is "not mounted": its folder is gone, and in its place a file.
    let away = sandbox.path("disk-away");
    std::fs::rename(&disk, &away).expect("unmount");
    std::fs::write(&disk, b"not a folder").expect("file in its place");
    let broker = sandbox.broker(&state, &[&root]);
    let torrents = listed(&sandbox, &state);
    assert_eq!(torrents.len(), 1, "the record is kept: {torrents:?}");
    assert_eq!(torrents[0]["id"], id);
    assert_eq!(torrents[0]["state"], "error", "{torrents:?}");
    let why = torrents[0]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("downloads"),
        "the error names the folder: {why}"
    );
    broker.stop();

    // Mounted again: the next start restores it.
    std::fs::remove_file(&disk).expect("remove the file");
    std::fs::rename(&away, &disk).expect("mount");
    let broker = sandbox.broker(&state, &[&root]);
    let torrents = listed(&sandbox, &state);
    assert_eq!(torrents.len(), 1, "{torrents:?}");
    assert_eq!(torrents[0]["id"], id);
    assert_ne!(torrents[0]["state"], "error", "{torrents:?}");
    broker.stop();
}

/// A state dir (`name-state`) recording one torrent saved on a disk that is then gone (its
/// folder removed, as an unmounted disk's would be); returns it and that folder.
fn record_on_an_unmounted_disk(sandbox: &Sandbox, name: &str) -> (PathBuf, PathBuf) {
    let state = sandbox.state_dir(name);
    let disk = sandbox.folder(&format!("mnt/{name}"));
    let torrent = made_torrent(sandbox, &format!("{name}.bin"));
    let broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &torrent, &disk, None)).expect_code(0);
    broker.stop();
    std::fs::remove_dir_all(&disk).expect("unmount");
    (state, disk)
}

#[test]
fn a_missing_save_folder_is_not_created_again_at_restore() {
    let sandbox = Sandbox::new();
    // An unmounted disk leaves an empty mount point, or none: writing there would fill the
    // wrong disk.
    let (state, disk) = record_on_an_unmounted_disk(&sandbox, "unmounted");
    let broker = sandbox.broker(&state, &[]);
    let torrents = listed(&sandbox, &state);
    assert_eq!(torrents.len(), 1, "{torrents:?}");
    assert_eq!(torrents[0]["state"], "error", "{torrents:?}");
    assert!(
        !disk.exists(),
        "the broker created the missing save folder again"
    );
    broker.stop();
}

#[test]
fn an_unreadable_state_file_stops_the_broker_and_is_never_overwritten() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("unreadable");
    let downloads = sandbox.folder("downloads");
    let torrent = made_torrent(&sandbox, "unreadable.bin");
    let broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &torrent, &downloads, None)).expect_code(0);
    broker.stop();
    // One file per torrent (`records/<id>.json`).
    let records = state.join("records/0.json");
    assert!(records.is_file(), "the record of torrent 0");
    let kept: Vec<PathBuf> = std::fs::read_dir(state.join("torrents"))
        .expect("torrents folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1);

    for contents in [&b""[..], &b"{\"1\": {\"save_fol"[..]] {
        std::fs::write(&records, contents).expect("damage the records");
        let mut broker = Command::new(e2e::bin("torrent-broker"));
        sandbox.apply_env(&mut broker);
        broker.arg("--state-dir").arg(&state);
        let out = run(broker);
        assert_ne!(out.code(), 0, "started on a damaged record");
        assert!(
            out.stderr.contains("records/0.json"),
            "the message names the file: {}",
            out.stderr
        );
        assert_eq!(std::fs::read(&records).expect("records"), contents);
        for file in &kept {
            assert!(file.exists(), "{} was deleted", file.display());
        }
    }
}

#[test]
fn an_add_the_broker_cannot_record_fails_and_nothing_is_forgotten() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a tmpfs and needs root (CI runs as root)"
    );
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("full");
    let downloads = sandbox.folder("downloads");
    let first = made_torrent(&sandbox, "first.bin");
    let second = made_torrent(&sandbox, "second.bin");
    let _unmount = small_disk(&state);

    let broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &first, &downloads, None)).expect_code(0);
    // Fill the state filesystem to the last byte.
    let filler = fill(&state);
    let out = run(sandbox.add_command(&state, &second, &downloads, None));
    assert_ne!(out.code(), 0, "an add that could not be recorded succeeded");
    let error = &out.json_lines()[0];
    assert_eq!(error["event"], "error", "{error}");
    let torrents = listed(&sandbox, &state);
    assert_eq!(
        torrents.len(),
        1,
        "only the recorded torrent runs: {torrents:?}"
    );

    // A restart with the disk still full: the broker starts (it needs to write nothing) and
    // runs what it recorded.
    broker.stop();
    let broker = sandbox.broker(&state, &[]);
    let torrents = listed(&sandbox, &state);
    assert_eq!(torrents.len(), 1, "{torrents:?}");
    // Room again; after a restart exactly the recorded torrent is back.
    std::fs::remove_file(&filler).expect("remove filler");
    broker.stop();
    let broker = sandbox.broker(&state, &[]);
    let torrents = listed(&sandbox, &state);
    assert_eq!(torrents.len(), 1, "{torrents:?}");
    broker.stop();
}

#[test]
fn a_record_that_cannot_be_restored_can_be_closed_for_good() {
    let sandbox = Sandbox::new();
    let (state, _) = record_on_an_unmounted_disk(&sandbox, "forget");
    let broker = sandbox.broker(&state, &[]);
    let torrents = listed(&sandbox, &state);
    assert_eq!(torrents[0]["state"], "error", "{torrents:?}");
    let id = torrents[0]["id"].to_string();
    let mut close = sandbox.client(&state);
    close.args(["--json", "close", &id]);
    run(close).expect_code(0);
    assert!(listed(&sandbox, &state).is_empty());
    broker.stop();
    let broker = sandbox.broker(&state, &[]);
    assert!(
        listed(&sandbox, &state).is_empty(),
        "a closed record came back"
    );
    broker.stop();
}

#[test]
fn state_files_are_owner_only_even_in_a_state_dir_that_already_existed() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("open");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let downloads = sandbox.folder("downloads");
    let torrent = made_torrent(&sandbox, "private.bin");
    let broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &torrent, &downloads, None)).expect_code(0);
    broker.stop();

    let mut open = Vec::new();
    let mut stack = vec![state.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.mode() & 0o077 != 0 {
            open.push(format!("{} {:o}", path.display(), meta.mode() & 0o777));
        }
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .expect("dir")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    assert!(open.is_empty(), "readable by others: {open:#?}");
}

#[test]
fn a_shared_folder_given_as_state_dir_is_refused_not_locked_down() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::new();
    let shared = sandbox.folder("shared");
    std::fs::write(shared.join("someone-elses.txt"), b"theirs").expect("file");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let mut broker = std::process::Command::new(e2e::bin("torrent-broker"));
    sandbox.apply_env(&mut broker);
    broker.arg("--state-dir").arg(&shared);
    let out = run(broker);
    assert_ne!(out.code(), 0, "a broker started on a shared folder");
    assert!(out.stderr.contains("a folder of its own"), "{}", out.stderr);
    let mode = std::fs::metadata(&shared).expect("stat").mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the shared folder's mode was changed");
}

/// Starts a broker on `state` expecting it to refuse, within a step (never a hang), with a
/// message naming `named`.
fn refused_start_naming(sandbox: &Sandbox, state: &Path, named: &Path, what: &str) {
    let mut broker = Command::new(e2e::bin("torrent-broker"));
    sandbox.apply_env(&mut broker);
    broker.arg("--state-dir").arg(state);
    // Before: the start opened the FIFO for reading and waited forever, holding the lock.
    let out = run(broker);
    assert_ne!(out.code(), 0, "started with {what}");
    assert!(
        out.stderr.contains(&named.display().to_string()),
        "the refusal names {}: {}",
        named.display(),
        out.stderr
    );
}

#[test]
fn a_fifo_or_link_in_the_state_dir_refuses_the_start_naming_it_never_hangs() {
    use nix::sys::stat::Mode;
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("planted");
    let downloads = sandbox.folder("downloads");
    let torrent = made_torrent(&sandbox, "planted.bin");
    let broker = sandbox.broker(&state, &[]);
    run(sandbox.add_command(&state, &torrent, &downloads, None)).expect_code(0);
    broker.stop();
    let fifo = |path: &Path| {
        nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    };

    // The engine's run note, the torrent's kept .torrent, the config file: each planted as
    // a FIFO nobody writes, then as a link to a file elsewhere.
    let run_note = state.join("engine/fastresume/run.json");
    let record = state.join("torrents/0.torrent");
    let config = state.join("broker.toml");
    let elsewhere = sandbox.path("elsewhere");
    std::fs::write(&elsewhere, b"").expect("write");
    for planted in [&run_note, &record, &config] {
        let kept = planted.with_extension("kept");
        let existed = planted.exists();
        if existed {
            std::fs::rename(planted, &kept).expect("move aside");
        }
        fifo(planted);
        refused_start_naming(&sandbox, &state, planted, "a FIFO in the state dir");
        std::fs::remove_file(planted).expect("remove fifo");
        std::os::unix::fs::symlink(&elsewhere, planted).expect("symlink");
        refused_start_naming(&sandbox, &state, planted, "a symlink in the state dir");
        std::fs::remove_file(planted).expect("remove link");
        if existed {
            std::fs::rename(&kept, planted).expect("put back");
        }
    }
    // Put right, the broker starts and still has its torrent.
    let broker = sandbox.broker(&state, &[]);
    assert_eq!(listed(&sandbox, &state).len(), 1);
    broker.stop();
}

#[test]
fn a_close_that_cannot_be_recorded_keeps_the_torrent_and_the_callers_hold() {
    use e2e::patron_client::proto::{CreateNewTorrent, TorrentSource};
    if !e2e::have_root("a read-only bind mount of the records") {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("readonly-close");
    let downloads = sandbox.folder("downloads");
    let torrent = made_torrent(&sandbox, "kept.bin");
    let broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let mut create =
        CreateNewTorrent::new(TorrentSource::TorrentFile(std::fs::read(&torrent).unwrap()));
    create.output = Some(downloads.display().to_string());
    patron.create(create).expect("add");
    // The records cannot change (removing a record needs no room, so a full disk would
    // not do: the folder is made read-only).
    let records = state.join("records");
    let read_only = ReadOnly::bind(&records);

    // The close cannot be recorded: refused, and nothing changed, the caller's hold
    // included (before: it was dropped, so the patron was told "not closed" and no longer
    // followed its torrent).
    let id = e2e::patron_client::proto::TorrentRef::Id(e2e::patron_client::proto::TorrentId(0));
    let refused = patron.close(id, true, false);
    assert!(refused.is_err(), "{refused:?}");
    let torrents = patron.list().expect("list");
    assert_eq!(torrents.len(), 1, "{torrents:?}");
    assert!(
        torrents[0].held_by_you,
        "the caller no longer holds it: {torrents:?}"
    );
    assert!(downloads.join("kept.bin").exists(), "its data was deleted");

    // Writable again: the same close goes through, data deleted, and a restart does not
    // bring the torrent back.
    drop(read_only);
    patron.close(id, true, false).expect("close");
    assert!(!downloads.join("kept.bin").exists());
    drop(patron);
    broker.stop();
    let broker = sandbox.broker(&state, &[]);
    assert!(listed(&sandbox, &state).is_empty());
    broker.stop();
}

/// A folder made read-only by a bind mount of itself, until dropped. Needs root.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn bind(dir: &Path) -> ReadOnly {
        for args in [
            vec![
                "--bind",
                dir.to_str().expect("utf-8"),
                dir.to_str().expect("utf-8"),
            ],
            vec!["-o", "remount,bind,ro", dir.to_str().expect("utf-8")],
        ] {
            let out = Command::new("mount").args(&args).output().expect("mount");
            assert!(out.status.success(), "mount {args:?}: {out:?}");
        }
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An error message too long for the board's slot is cut there (and marked `…`); `status`,
/// human or `--json`, still says all of it (the broker has it whole).
#[test]
fn status_says_a_long_error_whole() {
    let sandbox = Sandbox::new();
    let (state, _) =
        record_on_an_unmounted_disk(&sandbox, "a-disk-with-a-name-long-enough-to-pass-the-slot");
    let broker = sandbox.broker(&state, &[]);
    let mut human = sandbox.client(&state);
    human.args(["status", "0"]);
    let human = run(human).expect_code(0);
    // (The name column is cut to its width by design; the reason never is.)
    assert!(
        human.stdout.contains("is its disk mounted?"),
        "{}",
        human.stdout
    );
    let mut json = sandbox.client(&state);
    json.args(["--json", "status", "0"]);
    let line = &run(json).expect_code(0).json_lines()[0];
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.len() > 128 && error.contains("is its disk mounted?") && !error.ends_with('…'),
        "{line}"
    );
    // So does watch's line for scripts.
    let mut watch = sandbox.client(&state);
    watch.args(["--json", "watch", "0"]);
    let watching = e2e::Running::start(watch);
    e2e::wait_for("watch's first line", STEP_TIMEOUT, || {
        watching.stdout_so_far().contains("mounted?")
    });
    let first = watching.stdout_so_far();
    watching.signal(Signal::SIGTERM);
    let _ = watching.finish(STEP_TIMEOUT);
    assert!(!first.contains('…'), "{first}");
    broker.stop();
}

/// An id never names two torrents in one state dir: torrents closed (the highest ids) and a
/// broker killed, the next add after the restart gets a new id, not one a script may still
/// hold for a torrent that is gone.
#[test]
fn ids_are_never_handed_out_twice_across_restarts() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("ids");
    let out = sandbox.folder("downloads");
    let mut broker = sandbox.broker(&state, &[]);
    let mut ids = Vec::new();
    for n in 0..4 {
        let torrent = made_torrent(&sandbox, &format!("t{n}.bin"));
        let mut add = sandbox.add_command(&state, &torrent, &out, None);
        add.arg("--paused");
        let line = &run(add).expect_code(0).json_lines()[0];
        ids.push(line["id"].as_u64().expect("id"));
    }
    assert_eq!(ids, [0, 1, 2, 3]);
    for id in ["2", "3"] {
        let mut close = sandbox.client(&state);
        close.args(["close", id]);
        run(close).expect_code(0);
    }
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let broker = sandbox.broker(&state, &[]);
    let torrent = made_torrent(&sandbox, "after.bin");
    let mut add = sandbox.add_command(&state, &torrent, &out, None);
    add.arg("--paused");
    let line = &run(add).expect_code(0).json_lines()[0];
    let id = line["id"].as_u64().expect("id");
    assert!(
        id > 3,
        "id {id} was handed out before, to a torrent now closed"
    );
    broker.stop();
}

/// `broker status` counts the records it keeps but could not restore, as `list` shows them.
#[test]
fn broker_status_counts_kept_records() {
    let sandbox = Sandbox::new();
    let (state, _) = record_on_an_unmounted_disk(&sandbox, "counted");
    let broker = sandbox.broker(&state, &[]);
    let mut status = sandbox.client(&state);
    status.args(["--json", "broker", "status"]);
    let line = &run(status).expect_code(0).json_lines()[0];
    assert_eq!(line["torrents"], 0, "{line}");
    assert_eq!(line["kept"], 1, "{line}");
    let mut human = sandbox.client(&state);
    human.args(["broker", "status"]);
    let human = run(human).expect_code(0).stdout;
    assert!(human.contains("1 kept, not restored"), "{human}");
    broker.stop();
}

#[test]
fn records_in_one_torrents_json_move_to_a_file_each_even_after_a_migration_cut_short() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("migrating");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);
    for name in ["first.bin", "second.bin"] {
        let torrent = made_torrent(&sandbox, name);
        let mut add = sandbox.add_command(&state, &torrent, &downloads, None);
        add.arg("--paused");
        run(add).expect_code(0);
    }
    broker.stop();
    // The records as an earlier release kept them: one torrents.json for all.
    let folder = state.join("records");
    let mut all = serde_json::Map::new();
    for id in ["0", "1"] {
        let bytes = std::fs::read(folder.join(format!("{id}.json"))).expect("a record");
        all.insert(id.into(), serde_json::from_slice(&bytes).expect("json"));
    }
    std::fs::remove_dir_all(&folder).expect("remove the records");
    std::fs::write(state.join("torrents.json"), Value::Object(all).to_string()).expect("write");
    // A migration cut short: its staging folder half written.
    std::fs::create_dir(state.join("records.new")).expect("mkdir");
    std::fs::write(state.join("records.new/0.json"), b"{\"save_fol").expect("write");
    let broker = sandbox.broker(&state, &[]);
    let list = listed(&sandbox, &state);
    assert_eq!(list.len(), 2, "both restored: {list:?}");
    assert!(list.iter().all(|t| t["state"] == "paused"), "{list:?}");
    assert!(
        !state.join("torrents.json").exists(),
        "the old file goes once migrated"
    );
    assert!(!state.join("records.new").exists());
    assert!(
        state.join("torrents.json.migrated").exists(),
        "kept aside, as a backup"
    );
    assert!(folder.join("0.json").is_file() && folder.join("1.json").is_file());
    // A change writes its torrent's record alone.
    let before = std::fs::read(folder.join("0.json")).expect("record 0");
    let mut resume = sandbox.client(&state);
    resume.args(["resume", "1"]);
    run(resume).expect_code(0);
    assert_eq!(
        std::fs::read(folder.join("0.json")).expect("record 0"),
        before
    );
    // Closed: its record goes; the other stays, and a restart brings back only it.
    let mut close = sandbox.client(&state);
    close.args(["close", "0"]);
    run(close).expect_code(0);
    assert!(!folder.join("0.json").exists());
    broker.stop();
    let _broker = sandbox.broker(&state, &[]);
    let list = listed(&sandbox, &state);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], 1);
}
