//! A full disk stops one torrent with a clear error; nothing else notices.

use e2e::patron_client::proto::{TorrentRef, TorrentState};
use e2e::{run, sha256, wait_for, Sandbox, Seeder, Tmpfs, STEP_TIMEOUT};
use std::time::Instant;

#[test]
fn a_full_disk_puts_the_torrent_in_error_and_others_carry_on() {
    if !e2e::have_root("mounting a small tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    let big = sandbox.random_file("seed/big.bin", 3 * 1024 * 1024);
    let small = sandbox.random_file("seed/small.bin", 500_000);
    let slow = Seeder::start(
        &sandbox,
        "seeder",
        &big,
        64 * 1024,
        &["--max-upload-rate", "1000000"],
    );
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
