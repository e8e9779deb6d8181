//! Downloads through the broker from a real librqbit seeder over 127.0.0.1.

use e2e::{run, sha256, Output, Sandbox, Seeder, STEP_TIMEOUT};
use std::path::PathBuf;

const MIB: usize = 1024 * 1024;

/// `patron-client add --wait` of the seeder's torrent through a fresh leecher broker (which
/// the patron auto-starts); returns the download folder and the command's output.
fn download_from(sandbox: &Sandbox, seeder: &Seeder) -> (PathBuf, Output) {
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let peer = seeder.broker.peer();
    let mut add = sandbox.add_command(&state, &seeder.torrent, &downloads, Some(&peer));
    add.arg("--wait");
    (downloads, run(add).expect_code(0))
}

#[test]
fn add_wait_downloads_a_multi_mib_file_with_the_same_checksum() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/data.bin", 6 * MIB + 12345);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 256 * 1024, &[]);
    let (downloads, out) = download_from(&sandbox, &seeder);

    let lines = out.json_lines();
    assert_eq!(lines[0]["event"], "created");
    assert_eq!(lines[0]["info_hash"], seeder.info_hash.as_str());
    let last = lines.last().expect("status lines");
    assert_eq!(last["event"], "status");
    assert_eq!(last["complete"], true);
    assert_eq!(last["bytes_done"], (6 * MIB + 12345) as u64);
    assert_eq!(sha256(&downloads.join("data.bin")), sha256(&data));
}

#[test]
fn a_torrent_made_here_from_an_exact_multiple_of_the_piece_size_downloads_completely() {
    let sandbox = Sandbox::new();
    // 64 pieces of 32 KiB exactly: librqbit 9.1's own maker would add a 65th, empty piece.
    let data = sandbox.random_file("seed/exact.bin", 64 * 32 * 1024);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 32 * 1024, &[]);
    let (downloads, _) = download_from(&sandbox, &seeder);
    assert_eq!(sha256(&downloads.join("exact.bin")), sha256(&data));
}

#[test]
fn a_folder_torrent_downloads_into_a_folder_of_its_name() {
    let sandbox = Sandbox::new();
    let a = sandbox.random_file("seed/album/a.bin", 300_000);
    let b = sandbox.random_file("seed/album/sub/b.bin", 100_000);
    let seeder = Seeder::start(
        &sandbox,
        "seeder",
        &sandbox.path("seed/album"),
        16 * 1024,
        &[],
    );
    let (downloads, _) = download_from(&sandbox, &seeder);
    assert_eq!(sha256(&downloads.join("album/a.bin")), sha256(&a));
    assert_eq!(sha256(&downloads.join("album/sub/b.bin")), sha256(&b));
}

#[test]
fn a_magnet_link_fetches_its_metadata_from_the_peer_and_downloads() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/magnet.bin", 700_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");

    // The off-loopback tracker is dropped (loopback-only); the metadata comes from --peer.
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=magnet.bin&tr=http%3A%2F%2Ftracker.example.com%2Fannounce",
        seeder.info_hash
    );
    let mut add = sandbox.add_command(&state, &magnet, &downloads, Some(&seeder.broker.peer()));
    add.arg("--wait");
    let out = run(add).expect_code(0);
    assert_eq!(out.json_lines()[0]["name"], "magnet.bin");
    assert_eq!(sha256(&downloads.join("magnet.bin")), sha256(&data));

    // Without any peer, a magnet cannot resolve on loopback: a clear start failure.
    let mut add = sandbox.client(&sandbox.state_dir("lonely"));
    add.arg("add")
        .arg(format!("magnet:?xt=urn:btih:{}", seeder.info_hash))
        .arg("-o")
        .arg(&downloads);
    let failed = run(add).expect_code(3);
    assert!(failed.stderr.contains("metadata"), "{}", failed.stderr);
    // It did not time out: it had nobody to ask, and says so.
    assert!(failed.stderr.contains("names no peer"), "{}", failed.stderr);
}

#[test]
fn a_magnets_own_peers_are_used() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/xpe.bin", 300_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");

    // No --peer: the seeder is named only in the link (x.pe), as BEP 9 allows.
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=xpe.bin&x.pe={}",
        seeder.info_hash,
        seeder.broker.peer()
    );
    let mut add = sandbox.add_command(&state, &magnet, &downloads, None);
    add.arg("--wait");
    run(add).expect_code(0);
    assert_eq!(sha256(&downloads.join("xpe.bin")), sha256(&data));
}

#[test]
fn a_torrent_file_larger_than_one_datagram_arrives_whole_and_downloads() {
    use e2e::patron_client::proto::{CreateNewTorrent, TorrentSource};
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/big-meta.bin", 200_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");

    // A 1.5 MiB comment makes the .torrent travel as several ipc-channel fragments.
    let torrent = std::fs::read(&seeder.torrent).unwrap();
    let comment = "x".repeat(1_500_000);
    let mut padded = b"d7:comment".to_vec();
    padded.extend_from_slice(format!("{}:{comment}", comment.len()).as_bytes());
    padded.extend_from_slice(&torrent[1..]);

    let mut patron = sandbox.patron(&state);
    let mut request = CreateNewTorrent::new(TorrentSource::TorrentFile(padded));
    request.output = Some(downloads.display().to_string());
    request.peers = vec![seeder.broker.peer()];
    let created = patron
        .create(request)
        .expect("a large .torrent is accepted");
    assert_eq!(created.info().info_hash.to_string(), seeder.info_hash);
    // The next request is answered in order after it.
    assert_eq!(patron.list().expect("list").len(), 1);
    e2e::wait_for("the download", e2e::STEP_TIMEOUT, || {
        patron
            .status(e2e::patron_client::proto::TorrentRef::Id(created.info().id))
            .map(|s| s.complete)
            .unwrap_or(false)
    });
    assert_eq!(sha256(&downloads.join("big-meta.bin")), sha256(&data));
}

#[test]
fn a_magnet_waiting_for_its_metadata_is_listed_as_resolving() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("resolving");
    let _broker = sandbox.broker(&state, &["--magnet-timeout", "4"]);
    let downloads = sandbox.folder("downloads");
    // A peer that accepts and never speaks: the metadata never comes.
    let silent = e2e::SilentPeer::start();
    let magnet = silent.magnet("cd", Some("waiting.iso"));
    let adding = e2e::Running::start(sandbox.add_command(&state, &magnet, &downloads, None));
    let listed = |sandbox: &Sandbox| {
        let mut list = sandbox.client(&state);
        list.args(["--json", "list"]);
        run(list).expect_code(0).json_lines()
    };
    e2e::wait_for("the magnet to be listed", STEP_TIMEOUT, || {
        !listed(&sandbox).is_empty()
    });
    let torrents = listed(&sandbox);
    assert_eq!(torrents[0]["state"], "resolving-metadata", "{torrents:?}");
    assert_eq!(torrents[0]["name"], "waiting.iso");
    let mut status = sandbox.client(&state);
    status.args(["--json", "status", &torrents[0]["id"].to_string()]);
    let status = run(status).expect_code(0).json_lines();
    assert_eq!(status[0]["state"], "resolving-metadata", "{status:?}");
    // It gives up after the timeout, and is listed no more.
    let failed = adding.finish(STEP_TIMEOUT);
    assert_eq!(failed.code(), 3, "{failed:?}");
    assert!(listed(&sandbox).is_empty());
    drop(silent);
}
