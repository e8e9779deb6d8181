//! The engine reaches a torrent's files only through the broker's storage (DESIGN §4):
//! beneath the download root, never through a symlink planted at any instant, and with a
//! bounded pool of open files. Each test here is an attack that worked before that storage:
//! a folder swapped for a link to a folder outside every root between the add and a
//! recheck, a delete or a restore, and a torrent of thousands of files holding a descriptor
//! each.

use e2e::{
    client_json, make_and_seed, run, status_json as status, wait_for, Sandbox, STEP_TIMEOUT,
};
use std::path::Path;

fn wait_seeding(sandbox: &Sandbox, state: &Path, id: &str) {
    wait_for("the torrent to seed", STEP_TIMEOUT, || {
        let s = status(sandbox, state, id);
        s["complete"] == true && s["state"] == "seeding"
    });
}

/// A folder outside the sandbox (so outside every download root) holding a user's file of
/// the name the torrent's first file has.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::Builder::new()
            .prefix("tp-outside-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("a.bin"), b"the user's own file").expect("write");
        Outside { dir }
    }

    /// Fails if anything in it changed.
    fn assert_untouched(&self, after: &str) {
        let a = self.dir.path().join("a.bin");
        let now =
            std::fs::read(&a).unwrap_or_else(|e| panic!("{after}: the user's file is gone: {e}"));
        assert!(
            now == b"the user's own file",
            "{after}: the user's file outside the roots was changed (now {} bytes)",
            now.len()
        );
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("read outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "{after}: files were created outside the roots: {names:?}"
        );
    }
}

/// Downloads a two-file folder torrent `pack` into `data` (its data the broker's own, which
/// `--delete-data` may delete), then swaps its folder for a symlink to a folder outside
/// every root. Returns the torrent's id.
fn seed_then_swap(sandbox: &Sandbox, state: &Path, outside: &Outside) -> String {
    let source = sandbox.folder("seed/pack");
    sandbox.random_file("seed/pack/a.bin", 200 * 1024);
    sandbox.random_file("seed/pack/b.bin", 70 * 1024);
    let seeder = e2e::Seeder::start(sandbox, "seeder", &source, 16 * 1024, &[]);
    let data = sandbox.folder("data");
    let mut add = sandbox.add_command(state, &seeder.torrent, &data, Some(&seeder.broker.peer()));
    add.arg("--wait");
    let id = run(add).expect_code(0).json_lines()[0]["id"].to_string();
    wait_seeding(sandbox, state, &id);
    std::fs::rename(sandbox.path("data/pack"), sandbox.path("data/pack.real")).expect("rename");
    std::os::unix::fs::symlink(outside.dir.path(), sandbox.path("data/pack")).expect("symlink");
    id
}

#[test]
fn recheck_through_a_swapped_folder_writes_nothing_outside_the_roots() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("recheck-swap");
    let _broker = sandbox.broker(&state, &[]);
    let outside = Outside::new();
    let id = seed_then_swap(&sandbox, &state, &outside);

    let (code, lines) = client_json(&sandbox, &state, &["recheck", &id]);
    // The recheck is refused or the torrent fails, naming the link; either way nothing
    // outside is written (before: the user's file was extended to the torrent's size and
    // b.bin was created beside it).
    // Whatever the engine does with it ends before the torrent leaves `checking` (before:
    // the check extended the user's file).
    wait_for("the recheck to settle", STEP_TIMEOUT, || {
        let (_, listed) = client_json(&sandbox, &state, &["list"]);
        listed.iter().any(|t| {
            t["id"].as_u64().is_some_and(|n| n.to_string() == id) && t["state"] != "checking"
        })
    });
    outside.assert_untouched("after recheck");
    assert_ne!(
        code, 0,
        "a recheck through a symlinked folder must fail: {lines:?}"
    );
    let text = lines[0].to_string();
    assert!(
        text.contains("symbolic link"),
        "the refusal names the link: {text}"
    );
}

#[test]
fn delete_through_a_swapped_folder_removes_nothing_outside_the_roots() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("delete-swap");
    let _broker = sandbox.broker(&state, &[]);
    let outside = Outside::new();
    let id = seed_then_swap(&sandbox, &state, &outside);

    let (code, lines) = client_json(&sandbox, &state, &["close", &id, "--delete-data"]);
    outside.assert_untouched("after close --delete-data");
    assert_eq!(code, 0, "the torrent is closed all the same: {lines:?}");
    // The torrent's real data, moved aside by the attacker, is not the torrent's path any
    // more: it stays too.
    assert!(sandbox.path("data/pack.real/a.bin").exists());
}

#[test]
fn delete_data_keeps_the_folder_a_single_file_was_saved_into() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("delete-keeps-folder");
    let _broker = sandbox.broker(&state, &[]);
    // Downloaded into q1, a folder the user made: the data is the broker's to delete.
    let source = sandbox.random_file("seed/one.bin", 100 * 1024);
    let seeder = e2e::Seeder::start(&sandbox, "seeder", &source, 16 * 1024, &[]);
    let q1 = sandbox.folder("q1");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &q1, Some(&seeder.broker.peer()));
    add.arg("--wait");
    let id = run(add).expect_code(0).json_lines()[0]["id"].to_string();
    let file = q1.join("one.bin");
    wait_seeding(&sandbox, &state, &id);

    let (code, lines) = client_json(&sandbox, &state, &["close", &id, "--delete-data"]);
    assert_eq!(code, 0, "{lines:?}");
    assert!(!file.exists(), "the torrent's file is deleted");
    assert!(
        sandbox.path("q1").is_dir(),
        "the folder the user saved into stays, even empty"
    );
}

#[test]
fn a_torrent_of_thousands_of_files_holds_at_most_the_pool_open() {
    const FILES: usize = 3_000;
    const POOL: usize = 64;
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("many-files");
    let broker = sandbox.broker_with_env(
        &state,
        &[],
        &[("TORRENT_PATRON_OPEN_FILES", std::ffi::OsStr::new("64"))],
    );
    let idle = broker.fd_count();
    let folder = sandbox.folder("data/many");
    for i in 0..FILES {
        std::fs::write(folder.join(format!("{i:05}.txt")), format!("{i}\n")).expect("write");
    }
    let mut patron = sandbox.patron(&state);
    let id = make_and_seed(&mut patron, &folder).to_string();
    wait_seeding(&sandbox, &state, &id);
    let held = broker.fd_count();
    // Before: every file of the torrent stayed open (3,000 descriptors).
    assert!(
        held <= idle + POOL + 16,
        "the broker holds {held} descriptors seeding {FILES} files (idle: {idle}, pool: {POOL})"
    );
    // `broker status` shows the budget's use.
    let (code, lines) = client_json(&sandbox, &state, &["broker", "status"]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["open_files_limit"], POOL, "{lines:?}");
    assert!(
        lines[0]["open_files"]
            .as_u64()
            .is_some_and(|n| n as usize <= POOL),
        "{lines:?}"
    );
    // And every file is still served: a recheck reads them all through the pool.
    let (code, lines) = client_json(&sandbox, &state, &["recheck", &id]);
    assert_eq!(code, 0, "{lines:?}");
    wait_seeding(&sandbox, &state, &id);
    assert!(broker.fd_count() <= idle + POOL + 16);
}

#[test]
fn a_file_of_a_running_torrent_is_never_another_torrents_overwrite_or_not() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("one-owner");
    let _broker = sandbox.broker(&state, &[]);
    // Torrent A seeds data/a/movie.bin.
    let movie = sandbox.random_file("data/a/movie.bin", 120 * 1024);
    let before = std::fs::read(&movie).expect("read");
    let mut patron = sandbox.patron(&state);
    let a = make_and_seed(&mut patron, &movie).to_string();
    wait_seeding(&sandbox, &state, &a);
    // Torrent B has a file of the same name, with other bytes.
    let other = sandbox.random_file("other/movie.bin", 120 * 1024);
    let b_torrent = sandbox.path("b.torrent");
    sandbox.make_torrent(&state, &other, &b_torrent);

    for overwrite in [true, false] {
        let mut add = sandbox.add_command(&state, &b_torrent, &sandbox.path("data/a"), None);
        if overwrite {
            add.arg("--overwrite");
        }
        let out = run(add);
        // Before: with --overwrite, B was added over A's file (and, once its swarm sent the
        // bytes, A said "seeding, complete" while serving B's bytes).
        assert_ne!(
            out.code(),
            0,
            "B was added over A's file (--overwrite: {overwrite})"
        );
        let lines = out.json_lines();
        assert_eq!(lines[0]["kind"], "file-owned", "{lines:?}");
        let message = lines[0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("torrent {a}")),
            "names the owner: {message}"
        );
    }
    assert!(
        std::fs::read(&movie).expect("read") == before,
        "A's file was changed"
    );
    // Elsewhere, B is welcome.
    let elsewhere = sandbox.folder("data/b");
    run(sandbox.add_command(&state, &b_torrent, &elsewhere, None)).expect_code(0);
}

#[test]
fn a_fifo_planted_at_a_data_files_path_is_refused_and_hangs_nobody() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("fifo-data");
    let _broker = sandbox.broker(&state, &[]);
    let file = sandbox.random_file("data/f/one.bin", 100 * 1024);
    let mut patron = sandbox.patron(&state);
    let id = make_and_seed(&mut patron, &file).to_string();
    drop(patron);
    wait_seeding(&sandbox, &state, &id);
    std::fs::remove_file(&file).expect("unlink");
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");

    // The engine opens its files again at a recheck: a FIFO there is refused at once, named
    // (never opened as data, never waited on), and the broker serves on.
    let (code, lines) = client_json(&sandbox, &state, &["recheck", &id]);
    assert_ne!(code, 0, "{lines:?}");
    assert!(
        lines[0].to_string().contains("not a regular file"),
        "{lines:?}"
    );
    let (code, lines) = client_json(&sandbox, &state, &["list"]);
    assert_eq!(code, 0, "{lines:?}");
}
