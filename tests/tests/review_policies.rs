//! A hostile review of the watch folder and labels (DESIGN §13, §4, §4a): each test here
//! reproduces a defect found by attacking them, and fails on the code it was written against.

use e2e::{client_json, wait_for, Sandbox, SilentPeer, STEP_TIMEOUT};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A .torrent of `size` fresh bytes named `name` (made by a broker of its own; nobody
/// seeds it).
fn torrent_of(sandbox: &Sandbox, name: &str, size: usize) -> Vec<u8> {
    let data = sandbox.random_file(&format!("made/{name}"), size);
    let state = sandbox.state_dir(&format!("maker-{name}"));
    let torrent = sandbox.path(&format!("made/{name}.torrent"));
    sandbox.make_torrent(&state, &data, &torrent);
    std::fs::read(&torrent).expect("read the .torrent")
}

fn listed(sandbox: &Sandbox, state: &Path) -> Vec<serde_json::Value> {
    let (code, lines) = client_json(sandbox, state, &["list"]);
    assert_eq!(code, 0, "{lines:?}");
    lines
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

fn wait_renamed(dir: &Path, name: &str, to: &str, limit: Duration) -> PathBuf {
    let renamed = dir.join(format!("{name}.{to}"));
    wait_for(&format!("{name} to become .{to}"), limit, || {
        renamed.exists()
    });
    renamed
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A .magnet whose metadata never comes (its only peer accepts and stays silent) holds the
/// watch folder's one thread for the whole --magnet-timeout: a .torrent dropped after it
/// waits that long, and N such magnets stall the folder N times over.
#[test]
fn a_magnet_waiting_for_metadata_does_not_hold_up_the_other_watched_files() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    let state = sandbox.state_dir("broker");
    let silent = SilentPeer::start();
    let _broker = sandbox.broker(
        &state,
        &["--watch-dir", text(&watch), "--magnet-timeout", "40"],
    );
    std::fs::write(watch.join("slow.magnet"), silent.magnet("ab", Some("slow"))).expect("write");
    std::thread::sleep(Duration::from_millis(500));
    let good = torrent_of(&sandbox, "good.bin", 20_000);
    let dropped = Instant::now();
    std::fs::write(watch.join("good.torrent"), &good).expect("write");
    // Give it 10 s, well under the 40 s metadata wait; transmission adds both at once.
    wait_renamed(&watch, "good.torrent", "added", Duration::from_secs(10));
    assert!(dropped.elapsed() < Duration::from_secs(10));
}

/// A file still being written is taken early as soon as two events for *other* files
/// wake the watcher: `look()` runs after every batch of events, and a file unchanged
/// since the previous look (milliseconds ago) counts as settled.
#[test]
fn a_file_being_written_is_not_taken_early_when_other_files_come_and_go() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--watch-dir", text(&watch)]);
    let slow = torrent_of(&sandbox, "slow.bin", 200_000);
    let mut file = std::fs::File::create(watch.join("slow.torrent")).expect("create");
    file.write_all(&slow[..slow.len() / 2]).expect("write");
    file.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(50));
    // Another program writes its own notes beside it (not watched names).
    for n in 0..3 {
        std::fs::write(watch.join(format!("notes{n}.txt")), b"x").expect("write");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        watch.join("slow.torrent").exists(),
        "taken while being written, less than 1 s after its last write: {:?}",
        names(&watch)
    );
    file.write_all(&slow[slow.len() / 2..]).expect("write");
    drop(file);
    wait_renamed(&watch, "slow.torrent", "added", STEP_TIMEOUT);
}

/// When the rename after the add fails (here: `.added` … `.added.100` all taken, as after
/// the same file name dropped 101 times; also any EACCES/EROFS/EPERM), the file stays and
/// is added again every 2 s, forever: a torrent the user removed comes back.
#[test]
fn a_watched_file_that_cannot_be_renamed_is_not_added_again_after_the_user_removes_it() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--watch-dir", text(&watch)]);
    std::fs::write(watch.join("x.torrent.added"), b"").expect("write");
    for n in 2..=100 {
        std::fs::write(watch.join(format!("x.torrent.added.{n}")), b"").expect("write");
    }
    let bytes = torrent_of(&sandbox, "x.bin", 30_000);
    std::fs::write(watch.join("x.torrent"), &bytes).expect("write");
    wait_for("the torrent to be added", STEP_TIMEOUT, || {
        listed(&sandbox, &state).len() == 1
    });
    let id = listed(&sandbox, &state)[0]["id"].to_string();
    let (code, out) = client_json(&sandbox, &state, &["rm", &id, "--delete-data", "--force"]);
    assert_eq!(code, 0, "{out:?}");
    std::thread::sleep(Duration::from_secs(6));
    let list = listed(&sandbox, &state);
    assert!(
        list.is_empty(),
        "the removed torrent came back from the watch folder: {list:?} {:?}",
        names(&watch)
            .into_iter()
            .filter(|n| !n.contains(".added."))
            .collect::<Vec<_>>()
    );
}

/// The watch folder moved away and made again (`rm -rf watch; mkdir watch`, a remount):
/// the watcher keeps its descriptor and inotify watch on the old folder, reads the new one
/// by path but opens its names in the old one (ENOENT: silently skipped). Nothing is added
/// ever again, nothing is logged, and `broker status` still shows the folder as watched.
#[test]
fn a_watch_folder_made_again_is_still_watched_or_said_not_to_be() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &["--watch-dir", text(&watch)]);
    std::fs::rename(&watch, sandbox.path("watch.old")).expect("move away");
    std::fs::create_dir(&watch).expect("make again");
    std::thread::sleep(Duration::from_secs(3));
    let bytes = torrent_of(&sandbox, "late.bin", 30_000);
    std::fs::write(watch.join("late.torrent"), &bytes).expect("write");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !watch.join("late.torrent.added").exists() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let added = watch.join("late.torrent.added").exists();
    let log = broker.log();
    let said = log.contains("not watched any more") || log.contains("watch folder is gone");
    assert!(
        added || said,
        "neither added nor said: {:?}; {} torrents",
        names(&watch),
        listed(&sandbox, &state).len()
    );
}

/// A stale `NAME.failed.txt` (from an earlier file of that name, whose `.failed` the user
/// deleted) makes the next failure's reason vanish: `rename` picks `.failed` by looking
/// only at `.failed`, `write_reason` opens `.failed.txt` O_EXCL and gives up silently.
#[test]
fn the_reason_of_a_failure_is_not_lost_to_a_stale_failed_txt() {
    let sandbox = Sandbox::new();
    let watch = sandbox.folder("watch");
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--watch-dir", text(&watch)]);
    std::fs::write(watch.join("bad.torrent.failed.txt"), b"an old reason\n").expect("write");
    std::fs::write(watch.join("bad.torrent"), b"not bencode").expect("write");
    // `.failed`, or `.failed.N` beside a reason file of its own.
    wait_for("bad.torrent to be failed", STEP_TIMEOUT, || {
        !watch.join("bad.torrent").exists()
            && names(&watch)
                .iter()
                .any(|n| n.starts_with("bad.torrent.failed") && !n.ends_with(".txt"))
    });
    let failed = watch.join("bad.torrent.failed*");
    std::thread::sleep(Duration::from_millis(300));
    let reasons: Vec<String> = names(&watch)
        .into_iter()
        .filter(|n| n.starts_with("bad.torrent.failed") && n.ends_with(".txt"))
        .map(|n| std::fs::read_to_string(watch.join(n)).unwrap_or_default())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("not a valid .torrent")),
        "{} has no reason beside it: {reasons:?}",
        failed.display()
    );
}
