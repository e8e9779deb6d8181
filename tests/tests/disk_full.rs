//! A full disk stops one torrent with a clear error; nothing else notices.

use e2e::patron_client::proto::{TorrentRef, TorrentState};
use e2e::{run, script, sha256, wait_for, Sandbox, Seeder, Tmpfs, STEP_TIMEOUT};
use std::time::Instant;

#[test]
fn a_full_disk_puts_the_torrent_in_error_and_others_carry_on() {
    if !e2e::have_root("mounting a small tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let (slow, _) = three_slow_mebibytes(&sandbox);
    let small = sandbox.random_file("seed/small.bin", 500_000);
    let other = Seeder::start(&sandbox, "other-seeder", &small, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let full = sandbox.folder("full");
    let _tmpfs = Tmpfs::mount(&full, "4m");

    let mut patron = sandbox.patron(&state);
    let request = slow.create_request(&full);
    let id = patron
        .create(request)
        .expect("it fits when added")
        .info()
        .id;
    // Now something else fills the disk while the torrent downloads.
    let _ = std::fs::write(full.join("filler"), vec![1u8; 3 * 1024 * 1024]);

    let deadline = Instant::now() + STEP_TIMEOUT;
    let message = loop {
        assert!(
            Instant::now() < deadline,
            "the torrent never reported the full disk"
        );
        let status = e2e::next_status(&mut patron, Some(id));
        assert!(!status.complete, "it cannot complete on a full disk");
        if let TorrentState::Error(message) = status.state {
            break message;
        }
    };
    assert!(
        message.to_lowercase().contains("space"),
        "the error should say the disk is full: {message}"
    );
    // The broker and another torrent carry on.
    let downloads = sandbox.folder("downloads");
    let mut add = sandbox.add_command(
        &state,
        &other.torrent,
        &downloads,
        Some(&other.broker.peer()),
    );
    add.arg("--wait");
    run(add).expect_code(0);
    assert_eq!(sha256(&downloads.join("small.bin")), sha256(&small));
    wait_for("the failed torrent to stay listed", STEP_TIMEOUT, || {
        patron.status(TorrentRef::Id(id)).is_ok()
    });
}

/// A download the full disk stopped, resumed once there is room, completes as any other:
/// its completion hook runs (the broker's watch on its completion outlived the error; it
/// gave up at the error before, and the resumed download completed with no hook, no move
/// to `--move-completed-to` and no stamps for fast resume).
#[test]
fn a_download_resumed_after_a_full_disk_runs_its_completion_hook() {
    if !e2e::have_root("mounting a small tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let (seeder, big) = three_slow_mebibytes(&sandbox);
    let seen = sandbox.folder("seen");
    let hook = script(
        &sandbox.path("hook.sh"),
        &format!("touch \"{}/$TP_EVENT-$TP_TORRENT_ID\"", seen.display()),
    );
    let state = sandbox.state_dir("leecher");
    let hook = hook.to_str().expect("utf-8");
    let _broker = sandbox.broker(&state, &["--on-completed", hook]);
    let full = sandbox.folder("full");
    let _tmpfs = Tmpfs::mount(&full, "4m");
    let mut patron = sandbox.patron(&state);
    let id = patron
        .create(seeder.create_request(&full))
        .expect("it fits when added")
        .info()
        .id;
    let filler = full.join("filler");
    let _ = std::fs::write(&filler, vec![1u8; 3 * 1024 * 1024]);
    wait_for("the full disk to stop it", STEP_TIMEOUT, || {
        matches!(
            patron.status(TorrentRef::Id(id)).map(|s| s.state),
            Ok(TorrentState::Error(_))
        )
    });

    std::fs::remove_file(&filler).expect("make room");
    patron.resume(TorrentRef::Id(id)).expect("resume it");
    wait_for("it to complete", STEP_TIMEOUT, || {
        patron.status(TorrentRef::Id(id)).is_ok_and(|s| s.complete)
    });
    assert_eq!(sha256(&full.join("big.bin")), sha256(&big));
    wait_for("its completion hook", STEP_TIMEOUT, || {
        seen.join(format!("completed-{}", id.0)).exists()
    });
}

/// A seeder of 3 MiB (`seed/big.bin`) at 1 MB/s: a disk can fill while it downloads.
fn three_slow_mebibytes(sandbox: &Sandbox) -> (Seeder, std::path::PathBuf) {
    let big = sandbox.random_file("seed/big.bin", 3 * 1024 * 1024);
    let seeder = Seeder::start(
        sandbox,
        "seeder",
        &big,
        64 * 1024,
        &["--max-upload-rate", "1000000"],
    );
    (seeder, big)
}
