//! The move row: a torrent's data moved across file systems by the broker (`move`: copied,
//! synced, read back and compared by SHA-1, the originals deleted, the torrent running from
//! the copy), beside `cp` + `sync` + `sha1sum` of the same file between the same two file
//! systems, in the same run.

use anyhow::{bail, Context};
use patron_client::proto::{MakeTorrent, TorrentRef, TorrentState};
use patron_client::{ConnectOptions, Patron};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct MoveBench {
    /// The broker, its download roots `from` and `to`.
    pub state_dir: PathBuf,
    /// Where the data is made (one file system).
    pub from: PathBuf,
    /// Where it moves to (another).
    pub to: PathBuf,
    pub size_mib: u64,
    pub rounds: usize,
}

fn device(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .dev())
}

/// Runs `program args` and fails if it fails.
fn sh(program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} failed: {status}");
    }
    Ok(())
}

pub fn run(bench: MoveBench) -> anyhow::Result<()> {
    std::fs::create_dir_all(&bench.from)?;
    std::fs::create_dir_all(&bench.to)?;
    if device(&bench.from)? == device(&bench.to)? {
        bail!(
            "{} and {} are on one file system: the row needs two",
            bench.from.display(),
            bench.to.display()
        );
    }
    let data = bench.from.join("move.bin");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&data).context("the data file")?;
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for n in 0..bench.size_mib {
            let mut block = chunk.clone();
            block[..8].copy_from_slice(&n.to_le_bytes());
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let mut patron = Patron::connect_with(&ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        timeout: Duration::from_secs(600),
        ..ConnectOptions::default()
    })?;
    let made = patron.make(MakeTorrent {
        path: data.display().to_string(),
        piece_size: None,
        trackers: Vec::new(),
        seed: true,
    })?;
    let id = made.seeding.context("the broker did not seed it")?.id;
    let checked = Instant::now();
    while patron.status(TorrentRef::Id(id))?.state != TorrentState::Seeding {
        if checked.elapsed() > Duration::from_secs(600) {
            bail!("the torrent did not seed within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Rounds of the anchor (the same bytes copied to the same file system, synced, and
    // hashed), then the move there, then the move back (not measured): medians of each.
    let mut anchors = Vec::new();
    let mut moves = Vec::new();
    for _ in 0..bench.rounds.max(1) {
        let copy = bench.to.join("anchor-copy.bin");
        let started = Instant::now();
        sh("cp", &[data.as_os_str(), copy.as_os_str()])?;
        sh("sync", &[])?;
        sh("sha1sum", &[copy.as_os_str()])?;
        anchors.push(started.elapsed());
        std::fs::remove_file(&copy)?;
        sh("sync", &[])?;
        let dest = bench.to.join("moved");
        let started = Instant::now();
        let status = patron.move_storage(TorrentRef::Id(id), dest.display().to_string())?;
        moves.push(started.elapsed());
        if status.state != TorrentState::Seeding {
            bail!("after the move it is {}, not seeding", status.state);
        }
        let size = std::fs::metadata(dest.join("move.bin"))
            .context("the moved file")?
            .len();
        if size != bench.size_mib << 20 || data.exists() {
            bail!("the move did not leave one whole copy at the new place");
        }
        patron.move_storage(TorrentRef::Id(id), bench.from.display().to_string())?;
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (moved, anchor) = (median(moves), median(anchors));
    println!(
        "{}",
        json!({
            "size_mib": bench.size_mib,
            "move_ms": moved,
            "anchor_ms": anchor,
            "rounds": bench.rounds.max(1),
        })
    );
    Ok(())
}
