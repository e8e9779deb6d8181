//! The many-files row: a torrent of thousands of one-byte files added to a broker, and the
//! descriptors the broker then holds. librqbit's own storage held every file open, so a
//! torrent of 20,000 files cost 20,000 descriptors; the broker's storage keeps a pool.

use anyhow::{bail, Context};
use patron_client::proto::{CreateNewTorrent, MakeTorrent, TorrentId, TorrentRef, TorrentSource};
use patron_client::{ConnectOptions, Created, Patron};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls the torrent's status until it is complete, within `limit`.
fn wait_seeding(patron: &mut Patron, id: TorrentId, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if patron.status(TorrentRef::Id(id))?.complete {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the many-files torrent did not seed within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fds_of(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("the broker's descriptors (pid {pid})"))?
        .count())
}

/// Makes `files` one-byte files, a .torrent of them, adds it over its own data (so the
/// broker checks every file), waits until it seeds, and prints the descriptors held.
pub fn many_files(state_dir: PathBuf, work: PathBuf, files: usize) -> anyhow::Result<()> {
    let options = ConnectOptions {
        state_dir: Some(state_dir),
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut patron = Patron::connect_with(&options)?;
    let info = patron.broker_info()?;
    let folder = work.join("many-files");
    std::fs::create_dir_all(&folder)?;
    for n in 0..files {
        std::fs::write(folder.join(format!("{n:06}")), [n as u8])?;
    }
    let made = patron.make(MakeTorrent {
        path: folder.display().to_string(),
        piece_size: None,
        trackers: Vec::new(),
        seed: false,
    })?;
    let idle = fds_of(info.pid)?;
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.torrent_file));
    create.output = Some(work.display().to_string());
    create.overwrite = true;
    let started = Instant::now();
    let Created::New(torrent) = patron.create(create)? else {
        bail!("the many-files torrent already ran");
    };
    let added_ms = started.elapsed().as_secs_f64() * 1e3;
    wait_seeding(&mut patron, torrent.id, Duration::from_secs(300))?;
    let seeding_ms = started.elapsed().as_secs_f64() * 1e3;
    let held = fds_of(info.pid)?;
    let after = patron.broker_info()?;
    patron.close(TorrentRef::Id(torrent.id), false, true)?;
    println!(
        "{}",
        json!({
            "bench": "many-files",
            "files": files,
            "added_ms": added_ms,
            "seeding_ms": seeding_ms,
            "fds_idle": idle,
            "fds_seeding": held,
            "open_files": after.open_files,
            "open_files_limit": after.open_files_limit,
        })
    );
    Ok(())
}
