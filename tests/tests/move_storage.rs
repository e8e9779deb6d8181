//! Moving a torrent's data (DESIGN §13): `move ID DEST` renames on one disk, copies and
//! verifies across two, and leaves exactly one complete copy, the one the record names,
//! whatever kills the broker and at whichever step; a full disk or a folder swapped for a
//! link undoes the move, and the torrent seeds on from where it was.

use e2e::{
    client_json, is_stopped, ok_json, run, sha256, tree, wait_for, wait_status, Sandbox, Tmpfs,
};
use e2e::{BrokerProcess, Running, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A broker on `name` seeding folder `seed-NAME/Album` (two files, one in a subfolder), as
/// torrent 0 once it seeds: the broker, its state dir and the folder.
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

/// `list --json`'s line for torrent 0.
fn listed(sandbox: &Sandbox, state: &Path) -> Value {
    let (code, lines) = client_json(sandbox, state, &["list"]);
    assert_eq!(code, 0, "{lines:?}");
    lines
        .into_iter()
        .find(|l| l["id"] == 0)
        .unwrap_or_else(|| panic!("torrent 0 is not listed"))
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A fresh broker downloads `state`'s torrent 0 from `seeder`: the downloaded tree.
fn download_from(
    sandbox: &Sandbox,
    name: &str,
    seeder: &BrokerProcess,
) -> BTreeMap<String, String> {
    let state = sandbox.state_dir(name);
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder(&format!("{name}-out"));
    let torrent = sandbox.path("album.torrent");
    let mut add = sandbox.add_command(&state, &torrent, &out, Some(&seeder.peer()));
    add.arg("--wait");
    Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    tree(&out.join("Album"))
}

#[test]
fn a_move_on_one_disk_renames_and_the_torrent_seeds_from_there_across_a_kill() {
    let sandbox = Sandbox::new();
    let (mut broker, state, album) = seeding_album(&sandbox, "album", &[]);
    let before = tree(&album);
    assert_eq!(before.len(), 2);
    let ino = std::fs::metadata(album.join("a.bin")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let dest = sandbox.folder("done");
    let moved = ok_json(&sandbox, &state, &["move", "0", text(&dest)]);
    assert_eq!(moved["state"], "seeding", "{moved}");
    assert_eq!(moved["save_folder"], text(&dest), "{moved}");
    assert_eq!(
        tree(&dest.join("Album")),
        before,
        "every byte at the new place"
    );
    assert!(!album.exists(), "the old folder goes once empty");
    let renamed = std::fs::metadata(dest.join("Album/a.bin")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(renamed.ok(), ino.ok(), "one disk: a rename, not a copy");
    assert_eq!(listed(&sandbox, &state)["save_folder"], text(&dest));
    assert!(
        !broker.log().contains("hashed again"),
        "the files it verified are not hashed again after a rename:\n{}",
        broker.log()
    );
    // Recorded: a SIGKILL brings it back from the new place, seeding.
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let broker = sandbox.broker(&state, &[]);
    wait_status(&sandbox, &state, "0", "seeding after the kill", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(listed(&sandbox, &state)["save_folder"], text(&dest));
    // And a peer gets the data from there.
    assert_eq!(download_from(&sandbox, "peer", &broker), before);
}

#[test]
fn a_move_across_disks_copies_verifies_deletes_the_originals_and_a_peer_downloads_from_there() {
    if !e2e::have_root("mounting a tmpfs: a second file system") {
        return;
    }
    let sandbox = Sandbox::new();
    let (broker, state, album) = seeding_album(&sandbox, "album", &[]);
    let before = tree(&album);
    let disk = sandbox.folder("other-disk");
    let _tmpfs = Tmpfs::mount(&disk, "16m");
    let dest = disk.join("done");
    let moved = ok_json(&sandbox, &state, &["move", "0", text(&dest)]);
    assert_eq!(moved["state"], "seeding", "{moved}");
    assert_eq!(
        tree(&dest.join("Album")),
        before,
        "every byte on the other disk"
    );
    assert!(
        !album.exists(),
        "the originals go once the copy is verified and recorded"
    );
    assert!(
        !broker.log().contains("hashed again"),
        "a copy verified by hash is not hashed again:\n{}",
        broker.log()
    );
    assert_eq!(download_from(&sandbox, "peer", &broker), before);
}

#[test]
fn a_full_disk_undoes_the_move_and_the_torrent_seeds_on_from_where_it_was() {
    if !e2e::have_root("mounting a small tmpfs: a disk that fills") {
        return;
    }
    let sandbox = Sandbox::new();
    let (_broker, state, album) = seeding_album(&sandbox, "album", &[]);
    let before = tree(&album);
    let disk = sandbox.folder("small-disk");
    let _tmpfs = Tmpfs::mount(&disk, "200k");
    let (code, lines) = client_json(&sandbox, &state, &["move", "0", text(&disk)]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "no-space", "{lines:?}");
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("as before"),
        "{lines:?}"
    );
    assert_eq!(tree(&disk), BTreeMap::new(), "nothing of the copy is left");
    assert_eq!(tree(&album), before, "the data is whole where it was");
    let status = wait_status(&sandbox, &state, "0", "seeding again", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(status["progress"], 1.0, "{status}");
    assert_eq!(
        listed(&sandbox, &state)["save_folder"],
        text(album.parent().unwrap())
    );
    assert!(
        !e2e::records_text(&state).contains("\"moving\""),
        "the journal is gone"
    );
}

#[test]
fn a_kill_at_every_step_of_a_move_leaves_one_complete_copy_that_the_record_names() {
    if !e2e::have_root("mounting a tmpfs: a second file system, for the copy's steps") {
        return;
    }
    let sandbox = Sandbox::new();
    let disk = sandbox.folder("other-disk");
    let _tmpfs = Tmpfs::mount(&disk, "16m");
    for (n, (step, across)) in [
        ("stopped", false),
        ("moved", false),
        ("committed", false),
        ("running", false),
        ("stopped", true),
        ("copied", true),
        ("moved", true),
        ("committed", true),
        ("running", true),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("kill{n}");
        let stop_at = std::ffi::OsString::from(format!("move:{step}"));
        let (mut broker, state, album) = seeding_album(
            &sandbox,
            &name,
            &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
        );
        let before = tree(&album);
        let dest = if across {
            disk.join(&name)
        } else {
            sandbox.folder(&format!("{name}-done"))
        };
        let mut mover = sandbox.client(&state);
        mover.args(["--json", "move", "0", text(&dest)]);
        let mover = Running::start(mover);
        wait_for(
            &format!("the broker to stop at {step}"),
            STEP_TIMEOUT,
            || is_stopped(broker.pid),
        );
        broker.signal(Signal::SIGKILL);
        broker.wait_exit(STEP_TIMEOUT);
        let _ = mover.finish(STEP_TIMEOUT);
        let _broker = sandbox.broker(&state, &[]);
        wait_status(&sandbox, &state, "0", "seeding after the kill", |s| {
            s["state"] == "seeding"
        });
        // Before the record names the new place the move is undone, except when every
        // file was renamed, or every copy was whole, verified and being given its name:
        // then it is finished (both are one complete copy).
        let (kept, gone) = match step {
            "stopped" | "copied" => (album.clone(), dest.join("Album")),
            _ => (dest.join("Album"), album.clone()),
        };
        let what = format!("killed at {step}, across disks: {across}");
        assert_eq!(tree(&kept), before, "{what}: the one complete copy");
        if across {
            let left = tree(&disk);
            assert!(
                left.keys().all(|k| !k.contains(".tp-move")),
                "{what}: no copy left under its move's name: {left:?}"
            );
        }
        assert_eq!(
            tree(&gone),
            BTreeMap::new(),
            "{what}: nothing at the other place"
        );
        assert_eq!(
            listed(&sandbox, &state)["save_folder"],
            text(kept.parent().unwrap()),
            "{what}: the record names it"
        );
        assert!(
            !e2e::records_text(&state).contains("\"moving\""),
            "{what}: the journal is gone once finished or undone"
        );
    }
}

#[test]
fn a_move_is_refused_onto_anything_that_exists_outside_the_roots_or_through_a_swapped_link() {
    let sandbox = Sandbox::new();
    let stop_at = std::ffi::OsString::from("move:stopped");
    let (broker, state, album) = seeding_album(
        &sandbox,
        "album",
        &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
    );
    let before = tree(&album);
    let refused = |dest: &Path, kind: &str| {
        let (code, lines) = client_json(&sandbox, &state, &["move", "0", text(dest)]);
        assert_eq!(code, 1, "{}: {lines:?}", dest.display());
        assert_eq!(lines[0]["kind"], kind, "{}: {lines:?}", dest.display());
        assert_eq!(tree(&album), before);
    };
    // Outside the roots, directly or through a link.
    let outside = tempfile::tempdir().expect("tempdir");
    refused(outside.path(), "path-not-allowed");
    let link = sandbox.path("link");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    refused(&link, "path-not-allowed");
    // Onto a folder of the same name: never mixed, never written over.
    let taken = sandbox.folder("taken/Album");
    std::fs::write(taken.join("a.bin"), b"the user's").expect("write");
    refused(taken.parent().unwrap(), "file-exists");
    assert_eq!(
        std::fs::read(taken.join("a.bin")).ok(),
        Some(b"the user's".to_vec())
    );
    // Into its own folder.
    refused(&album.join("sub"), "path-not-allowed");
    // A folder swapped for a link while the move runs (the broker stopped just before its
    // files move): the move fails, nothing is written outside, it seeds on from its place.
    let dest = sandbox.folder("swapped");
    let mut mover = sandbox.client(&state);
    mover.args(["--json", "move", "0", text(&dest)]);
    let mover = Running::start(mover);
    wait_for(
        "the broker to stop before the files move",
        STEP_TIMEOUT,
        || is_stopped(broker.pid),
    );
    std::fs::remove_dir(&dest).expect("rmdir");
    std::os::unix::fs::symlink(outside.path(), &dest).expect("symlink");
    broker.signal(Signal::SIGCONT);
    let out = mover.finish(STEP_TIMEOUT);
    assert_eq!(out.code(), 1, "{:?}", out.json_lines());
    let error = &out.json_lines()[0];
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("symbolic link"),
        "{error}"
    );
    assert_eq!(
        tree(outside.path()),
        BTreeMap::new(),
        "nothing written outside"
    );
    assert_eq!(tree(&album), before);
    wait_status(&sandbox, &state, "0", "seeding on", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(
        listed(&sandbox, &state)["save_folder"],
        text(album.parent().unwrap())
    );
}

#[test]
fn a_completed_download_moves_to_its_own_folder_or_the_brokers() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/film.bin", 700 << 10);
    let seeder = e2e::Seeder::start(&sandbox, "seeder", &data, 16384, &[]);
    let finished = sandbox.folder("finished");
    let own = sandbox.folder("own-choice");
    let state = sandbox.state_dir("leecher");
    let broker = sandbox.broker(&state, &["--move-completed-to", text(&finished)]);
    // The broker's folder.
    let first = sandbox.folder("incoming");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &first, Some(&seeder.broker.peer()));
    add.arg("--wait");
    Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while listed(&sandbox, &state)["save_folder"] != text(&finished) {
        assert!(
            std::time::Instant::now() < deadline,
            "not moved: {}\n{}",
            listed(&sandbox, &state),
            broker.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The record names the new folder before the engine takes the torrent back, so it may
    // show "checking" for a moment: its stamps moved with it, so the check hashes nothing.
    wait_status(&sandbox, &state, "0", "seeding at the new place", |s| {
        s["state"] == "seeding"
    });
    assert!(
        !broker.log().contains("every piece is hashed again"),
        "a move kept its files as verified: {}",
        broker.log()
    );
    assert_eq!(sha256(&finished.join("film.bin")), sha256(&data));
    assert!(!first.join("film.bin").exists(), "moved, not copied");
    // Its own folder wins: closed and added again elsewhere.
    ok_json(&sandbox, &state, &["close", "0", "--delete-data"]);
    let second = sandbox.folder("incoming-2");
    let mut add = sandbox.add_command(
        &state,
        &seeder.torrent,
        &second,
        Some(&seeder.broker.peer()),
    );
    add.args(["--wait", "--move-completed-to"]).arg(&own);
    let lines = Running::start(add)
        .finish(STEP_TIMEOUT)
        .expect_code(0)
        .json_lines();
    let id = lines[0]["id"].to_string();
    wait_for("the second to move to its own folder", STEP_TIMEOUT, || {
        own.join("film.bin").exists() && !second.join("film.bin").exists()
    });
    wait_status(&sandbox, &state, &id, "seeding from its own folder", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(sha256(&own.join("film.bin")), sha256(&data));
}
