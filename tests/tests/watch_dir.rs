//! The watch folder (DESIGN §13): each .torrent or .magnet file put in `--watch-dir` is
//! added once and renamed `.added`, or `.failed` with the reason beside it; links, FIFOs and
//! garbage never hurt the broker; a file being written is not read early; a SIGKILL between
//! the add and the rename neither loses nor doubles a torrent.

use e2e::{listed, wait_for, Sandbox, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A .torrent of `size` fresh bytes named `name` (made by a broker of its own; nobody
/// seeds it).
fn torrent_of(sandbox: &Sandbox, name: &str, size: usize) -> Vec<u8> {
    let data = sandbox.random_file(&format!("made/{name}"), size);
    let state = sandbox.state_dir(&format!("maker-{name}"));
    let torrent = sandbox.path(&format!("made/{name}.torrent"));
    sandbox.make_torrent(&state, &data, &torrent);
    std::fs::read(&torrent).expect("read the .torrent")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the watch folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn wait_renamed(dir: &Path, name: &str, to: &str) -> PathBuf {
    let renamed = dir.join(format!("{name}.{to}"));
    wait_for(&format!("{name} to become .{to}"), STEP_TIMEOUT, || {
        renamed.exists()
    });
    renamed
}

#[test]
fn watched_files_are_added_once_or_failed_with_the_reason_and_no_file_hurts_the_broker() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--watch-dir", watch.to_str().expect("utf-8")]);
    let info = e2e::ok_json(&sandbox, &state, &["broker", "status"]);
    assert_eq!(
        info["watch_dir"],
        watch
            .canonicalize()
            .expect("canonical")
            .to_str()
            .expect("utf-8"),
        "{info}"
    );
    // A good one, and the same torrent again under another name: one torrent.
    let good = torrent_of(&sandbox, "good.bin", 100_000);
    std::fs::write(watch.join("good.torrent"), &good).expect("write");
    wait_renamed(&watch, "good.torrent", "added");
    std::fs::write(watch.join("again.torrent"), &good).expect("write");
    wait_renamed(&watch, "again.torrent", "added");
    assert_eq!(listed(&sandbox, &state).len(), 1, "added once");
    // Garbage, a link to a good .torrent outside, a FIFO, an empty magnet: failed, each with
    // its reason; the link's target is untouched, and nothing waits on the FIFO.
    std::fs::write(watch.join("garbage.torrent"), b"not bencode").expect("write");
    let outside = torrent_of(&sandbox, "outside.bin", 50_000);
    let target = sandbox.path("made/outside-copy.torrent");
    std::fs::write(&target, &outside).expect("write");
    std::os::unix::fs::symlink(&target, watch.join("link.torrent")).expect("symlink");
    nix::unistd::mkfifo(&watch.join("fifo.torrent"), nix::sys::stat::Mode::S_IRWXU)
        .expect("mkfifo");
    std::fs::write(watch.join("empty.magnet"), b"  \n").expect("write");
    for (name, why) in [
        ("garbage.torrent", ""),
        ("link.torrent", "symbolic link"),
        ("fifo.torrent", "not a regular file"),
        ("empty.magnet", "empty"),
    ] {
        let failed = wait_renamed(&watch, name, "failed");
        let reason = std::fs::read_to_string(format!("{}.txt", failed.display()))
            .unwrap_or_else(|e| panic!("{name}: no reason beside it: {e}"));
        assert!(reason.contains(why), "{name}: {reason}");
    }
    assert_eq!(
        std::fs::read(&target).ok(),
        Some(outside),
        "the link's target untouched"
    );
    assert_eq!(listed(&sandbox, &state).len(), 1, "nothing else added");
    // Other names are not ours: left alone.
    std::fs::write(watch.join("notes.txt"), b"mine").expect("write");
    // A file being written is not read early: half of it, a pause, then the rest.
    let slow = torrent_of(&sandbox, "slow.bin", 80_000);
    let mut file = std::fs::File::create(watch.join("slow.torrent")).expect("create");
    file.write_all(&slow[..slow.len() / 2]).expect("write");
    file.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        watch.join("slow.torrent").exists(),
        "read while being written: {:?}",
        names(&watch)
    );
    file.write_all(&slow[slow.len() / 2..]).expect("write");
    drop(file);
    wait_renamed(&watch, "slow.torrent", "added");
    assert_eq!(listed(&sandbox, &state).len(), 2);
    assert!(watch.join("notes.txt").exists());
}

#[test]
fn a_kill_between_the_add_and_the_rename_neither_loses_nor_doubles_the_torrent() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    // Files there before the broker starts are taken at its start.
    let first = torrent_of(&sandbox, "first.bin", 60_000);
    std::fs::write(watch.join("first.torrent"), &first).expect("write");
    // Old enough to have settled.
    std::thread::sleep(Duration::from_millis(2100));
    let state = sandbox.state_dir("broker");
    let stop_at = std::ffi::OsString::from("watch:added");
    let mut broker = sandbox.broker_with_env(
        &state,
        &["--watch-dir", watch.to_str().expect("utf-8")],
        &[("TORRENT_PATRON_TEST_STOP_AT", &stop_at)],
    );
    wait_for("the broker to stop after the add", STEP_TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{}/stat", broker.pid))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
            .unwrap_or(false)
    });
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    assert!(
        watch.join("first.torrent").exists(),
        "not renamed before the kill"
    );
    let _broker = sandbox.broker(&state, &["--watch-dir", watch.to_str().expect("utf-8")]);
    wait_renamed(&watch, "first.torrent", "added");
    let list = listed(&sandbox, &state);
    assert_eq!(list.len(), 1, "one torrent, not two: {list:?}");
}
