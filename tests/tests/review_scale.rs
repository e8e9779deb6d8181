//! Review of the scale commits (jemalloc, lazy peer machinery, the registry's and the engine's
//! info-hash indexes, stamps not written again, the records journal, trusted fast resume).
//! Each test here attacks one of them the way a hostile user or an unlucky crash would, and
//! failed on the code before its fix.

use e2e::{wait_for, wait_status, BrokerProcess, Sandbox, Seeder, STEP_TIMEOUT};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// DESIGN §4 "verified means verified": fast resume vouches for a file only as it is when
/// the engine would otherwise read it. The broker compared the stamps at the add, but the
/// engine's check (which then trusted the bitfield without reading) runs later, behind
/// `concurrent_init_limit` other checks at a restart of many torrents. A file edited in
/// between (its size and mtime kept) was served and seeded as verified. Here the broker is
/// held (SIGSTOP) just after its comparison, the file is edited, and the broker goes on: the
/// edited piece must not count as verified.
#[test]
fn a_file_edited_after_the_stamps_were_compared_is_not_trusted() {
    let sandbox = Sandbox::new();
    let (state, data) = stopped_seed(&sandbox);

    // Held at the restore (before it is ready), just after the add handed the engine its vouch.
    let mut broker = BrokerProcess::held_at(&sandbox, &state, "add:fast-resume-vouched");
    flip_first_bytes(&data);
    broker.resume_until_ready();

    first_piece_not_verified(&sandbox, &state, &broker.log());
    broker.stop();
}

/// Four pieces of `PIECE`.
const PIECE: u64 = 64 << 10;

/// A seed of four pieces, stopped cleanly (which records the stamps the next start
/// compares): its state dir and its data.
fn stopped_seed(sandbox: &Sandbox) -> (PathBuf, PathBuf) {
    let data = sandbox.random_file("seed/edited.bin", 4 * PIECE as usize);
    let mut seeder = Seeder::start(sandbox, "seeder", &data, PIECE, &[]);
    seeder.broker.stop_cleanly();
    (seeder.broker.state.clone(), data)
}

/// Once its check ends, torrent 0 of `state` (its first piece edited) has three pieces of
/// four: the edited one is not counted verified.
fn first_piece_not_verified(sandbox: &Sandbox, state: &Path, logs: &str) {
    let status = wait_status(sandbox, state, "0", "its check to end", |s| {
        s["state"] == "seeding" || s["state"] == "downloading"
    });
    assert_eq!(
        status["complete"], false,
        "the edited piece is counted verified: {status}\n{logs}"
    );
    assert_eq!(status["bytes_done"], 3 * PIECE, "{status}");
}

/// Edits the first bytes of `path` in place, keeping its size and its mtime (what a
/// careless or hostile writer can do; its ctime moves, which the stamps see).
fn flip_first_bytes(path: &std::path::Path) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut first = [0u8; 16];
    file.read_exact_at(&mut first, 0).unwrap();
    for byte in first.iter_mut() {
        *byte ^= 0xff;
    }
    file.write_all_at(&first, 0).unwrap();
    file.set_modified(mtime).unwrap();
}

/// Every `.bitv` and `.stamps` beneath a state folder, by file name.
fn fast_resume_files(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![state.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "bitv" || e == "stamps")
            {
                found.push(path);
            }
        }
    }
    found
}

/// DESIGN §4 "verified means verified": a resume's stamps are compared only when its check
/// begins, and at a restart of many that check waits behind `concurrent_init_limit` (3)
/// others. A clean stop before the check ended stamped the torrent's files as they are now
/// (edited while the broker was down) beside its old bitfield, which the check never got to
/// drop: the next start vouched for the old bitfield over the edited file, and its broken
/// piece was seeded as verified. Here the broker holds the check at its vouch (a test hold,
/// one blocking thread; the rest of the broker runs on) and is stopped cleanly then.
#[test]
fn a_clean_stop_before_a_resumes_check_does_not_vouch_for_its_old_bitfield() {
    let sandbox = Sandbox::new();
    let (state, data) = stopped_seed(&sandbox);
    assert!(
        fast_resume_files(&state)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "stamps")),
        "a clean stop of a seed stamps its files"
    );
    // Its first piece edited while the broker is down.
    flip_first_bytes(&data);

    // Stopped cleanly while its check is held where it asks its vouch.
    let mut waiting = BrokerProcess::holding_at(&sandbox, &state, "check:vouch-asked", 4000);
    wait_for("the check to reach its vouch", STEP_TIMEOUT, || {
        waiting.log().contains("holding at check:vouch-asked")
    });
    let status = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(status["state"], "checking", "{status}");
    waiting.stop_cleanly();

    let broker = sandbox.broker(&state, &[]);
    let logs = format!("{}\n{}", waiting.log(), broker.log());
    first_piece_not_verified(&sandbox, &state, &logs);
    broker.stop();
}

/// The flusher of a bitfield starts at its first change (ac1f356). A download stopped
/// cleanly, restarted with its bitfield trusted (no flusher yet: nothing changed since the
/// load), that then verifies more and is stopped cleanly again must find at the third start
/// every piece the second run verified, without hashing again.
#[test]
fn pieces_verified_after_a_trusted_resume_are_kept_across_the_next_clean_stop() {
    let sandbox = Sandbox::new();
    let size = 4 << 20;
    let (seeder, _data) = e2e::slow_seeder(&sandbox, size, "500000");
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let mut broker = sandbox.broker(&state, &[]);
    let peer = seeder.broker.peer();
    e2e::run(sandbox.add_command(&state, &seeder.torrent, &downloads, Some(&peer))).expect_code(0);
    let done = |s: &serde_json::Value| s["bytes_done"].as_u64().unwrap_or(0);
    wait_status(&sandbox, &state, "0", "a quarter of it", |s| {
        done(s) >= size as u64 / 4 && s["complete"] == false
    });
    broker.stop_cleanly();

    let mut broker = sandbox.broker(&state, &[]);
    let first = wait_status(&sandbox, &state, "0", "its check to end", |s| {
        s["state"] != "checking"
    });
    let second = wait_status(&sandbox, &state, "0", "more than half of it", |s| {
        done(s) >= done(&first) + size as u64 / 4 && s["complete"] == false
    });
    assert!(
        !broker.log().contains("every piece is hashed again"),
        "the first resume was not trusted: {}",
        broker.log()
    );
    broker.stop_cleanly();

    let broker = sandbox.broker(&state, &[]);
    let third = wait_status(&sandbox, &state, "0", "its check to end", |s| {
        s["state"] != "checking"
    });
    assert!(
        !broker.log().contains("every piece is hashed again"),
        "the second resume was not trusted: {}",
        broker.log()
    );
    assert!(
        done(&third) >= done(&second),
        "pieces verified after a trusted resume were lost: {} at the stop, {} after\n{}",
        done(&second),
        done(&third),
        broker.log()
    );
    broker.stop();
}

/// The engine's blocking work (adds, piece writes, uploads, hashing) shares 8 permits. A
/// vouch stats every file of its torrent: a slow disk (a dead NFS mount) makes it slow. Ten
/// resumes whose vouches hang must not take those permits: the broker becomes ready (a
/// restore's add needs one) and a new torrent is made and seeds, while they still hang.
#[test]
fn slow_vouches_do_not_stop_the_engines_disk_work() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("seeder");
    let mut broker = sandbox.broker(&state, &[]);
    for i in 0..10 {
        e2e::make_seed(&sandbox, &state, &format!("s{i}.bin"), 64 << 10);
    }
    for id in 0..10 {
        wait_status(&sandbox, &state, &id.to_string(), "it to seed", |s| {
            s["state"] == "seeding"
        });
    }
    broker.stop_cleanly();

    // Ready (its restore's adds did not wait for the held vouches), and a new torrent made
    // and seeding, while the vouches are still held: had either waited for the 15 s hold,
    // the first torrent would no longer be checking.
    let broker = BrokerProcess::holding_at(&sandbox, &state, "check:vouch-asked", 15_000);
    e2e::make_seed(&sandbox, &state, "new.bin", 64 << 10);
    wait_status(&sandbox, &state, "10", "the new one to seed", |s| {
        s["state"] == "seeding"
    });
    let held = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(
        held["state"],
        "checking",
        "the new torrent waited for the held vouches: {held}\n{}",
        broker.log()
    );
    broker.stop();
}
