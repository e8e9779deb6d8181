//! `tp-bench stream`: reading a file while it downloads (DESIGN §8, §5).
//!
//! Two figures, each beside its anchor in the same run:
//! - **first MiB at an offset**: a torrent downloads from a seeder limited to `rate_kib` KiB/s;
//!   once data flows, a reader opens a stream near the file's end and reads one MiB. The
//!   target is 1 s plus that MiB's transfer time at the seeder's rate; the anchor is the time
//!   the whole torrent needs from the same seeder.
//! - **in-order read throughput**: a reader streams a whole file from the start while it
//!   downloads from an unthrottled seeder, beside the plain download of the same torrent.

use crate::download::write_payload;
use crate::swarm::Seeder;
use anyhow::{bail, Context};
use patron_client::{ConnectOptions, Created, Patron, Stream};
use proto::{CreateNewTorrent, Event, TorrentId, TorrentRef, TorrentSource};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `tp-bench stream` needs.
#[derive(clap::Args)]
pub struct StreamBench {
    /// A running broker's state directory (its download roots must include `work`)
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Scratch folder (inside the broker's download roots)
    #[arg(long)]
    pub work: PathBuf,
    /// Size of the rate-limited torrent
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// The seeder's upload limit for the first-MiB figure
    #[arg(long, default_value_t = 4096)]
    pub rate_kib: u32,
    /// Size of the unthrottled torrent read in order
    #[arg(long, default_value_t = 256)]
    pub read_mib: u64,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

const MIB: u64 = 1 << 20;

pub fn run(bench: StreamBench) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let connect = ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        ..Default::default()
    };
    let mut patron = Patron::connect_with(&connect)?;

    // First MiB at an offset, from a rate-limited seeder.
    let (limited, limited_seeder) = seed(
        &runtime,
        &bench.work,
        "limited",
        bench.size_mib,
        Some(bench.rate_kib),
    )?;
    let size = bench.size_mib * MIB;
    let offset = size - 2 * MIB;
    let whole = whole_download(
        &mut patron,
        &limited,
        &bench.work,
        "stream-whole",
        limited_seeder.addr,
    )?;
    let mut first_mib = Vec::new();
    for round in 0..bench.rounds {
        let folder = fresh(&bench.work, &format!("stream-offset-{round}"))?;
        let id = add(&mut patron, &limited, &folder, limited_seeder.addr)?;
        // A reader that seeks once the download runs: the requests already out to the
        // seeder are in its way, as they would be for a player's seek.
        wait_flowing(&mut patron, id)?;
        let started = Instant::now();
        let mut stream = Stream::open(&connect, TorrentRef::Id(id), None, offset)?;
        let mut buf = vec![0u8; MIB as usize];
        stream.read_exact(&mut buf)?;
        first_mib.push(started.elapsed().as_secs_f64() * 1e3);
        if buf != read_at(&bench.work.join("limited/payload.bin"), offset, MIB)? {
            bail!("the stream's first MiB differs from the file's");
        }
        drop(stream);
        patron.close(TorrentRef::Id(id), true, true)?;
    }
    drop(limited_seeder);

    // In-order read throughput from an unthrottled seeder, beside the plain download.
    let (fast, fast_seeder) = seed(&runtime, &bench.work, "fast", bench.read_mib, None)?;
    let mut plain = Vec::new();
    let mut streamed = Vec::new();
    for round in 0..bench.rounds {
        for streaming in [round % 2 == 0, round % 2 != 0] {
            let folder = fresh(&bench.work, &format!("stream-read-{round}-{streaming}"))?;
            let started = Instant::now();
            let id = add(&mut patron, &fast, &folder, fast_seeder.addr)?;
            if streaming {
                let mut stream = Stream::open(&connect, TorrentRef::Id(id), None, 0)?;
                let copied = std::io::copy(&mut stream, &mut std::io::sink())?;
                if copied != bench.read_mib * MIB {
                    bail!("the stream ended after {copied} bytes");
                }
                streamed.push(started.elapsed().as_secs_f64() * 1e3);
            } else {
                wait_complete(&mut patron, id)?;
                plain.push(started.elapsed().as_secs_f64() * 1e3);
            }
            patron.close(TorrentRef::Id(id), true, true)?;
        }
    }
    drop(fast_seeder);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        json!({
            "bench": "stream",
            "rate_kib": bench.rate_kib,
            "size_mib": bench.size_mib,
            "offset": offset,
            "whole_ms": whole.as_secs_f64() * 1e3,
            "first_mib_ms": first_mib.clone(),
            "first_mib_median_ms": median(first_mib),
            "mib_transfer_ms": 1e3 * 1024.0 / f64::from(bench.rate_kib),
            "read_mib": bench.read_mib,
            "plain_ms": plain.clone(),
            "streamed_ms": streamed.clone(),
            "plain_median_ms": median(plain),
            "streamed_median_ms": median(streamed),
            "rounds": bench.rounds,
        })
    );
    Ok(())
}

/// A payload of `mib` MiB under `work/name`, its .torrent, and a seeder of it.
pub(crate) fn seed(
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    name: &str,
    mib: u64,
    rate_kib: Option<u32>,
) -> anyhow::Result<(Vec<u8>, Seeder)> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let payload = dir.join("payload.bin");
    write_payload(&payload, mib * MIB)?;
    let made = torrent_broker::torrent_file::make_torrent(&payload, None, &[], true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seeder = runtime.block_on(Seeder::start(
        &made.bytes,
        &dir,
        rate_kib.map(|k| k.saturating_mul(1024)),
    ))?;
    Ok((made.bytes, seeder))
}

/// How long `torrent` takes to download whole from `seeder` (the anchor of the rows that
/// read a MiB near its end), into a fresh folder `name`; then closed with its data.
pub(crate) fn whole_download(
    patron: &mut Patron,
    torrent: &[u8],
    work: &Path,
    name: &str,
    seeder: std::net::SocketAddr,
) -> anyhow::Result<Duration> {
    let folder = fresh(work, name)?;
    let started = Instant::now();
    let id = add(patron, torrent, &folder, seeder)?;
    wait_complete(patron, id)?;
    let took = started.elapsed();
    patron.close(TorrentRef::Id(id), true, true)?;
    Ok(took)
}

pub(crate) fn fresh(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let folder = work.join(name);
    std::fs::create_dir_all(&folder)?;
    Ok(folder)
}

pub(crate) fn add(
    patron: &mut Patron,
    torrent: &[u8],
    folder: &Path,
    seeder: std::net::SocketAddr,
) -> anyhow::Result<TorrentId> {
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent.to_vec()));
    create.output = Some(folder.display().to_string());
    create.peers = vec![seeder.to_string()];
    match patron.create(create)? {
        Created::New(info) | Created::Queued(info) => Ok(info.id),
        Created::AlreadyDownloading(..) => bail!("the broker already ran the bench torrent"),
    }
}

/// Until the torrent's completion reaches this patron (pushed at once).
pub(crate) fn wait_complete(patron: &mut Patron, id: TorrentId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match patron.next_event_timeout(left)? {
            Some(Event::TorrentStatusUpdate(s)) if s.id == id && s.complete => return Ok(()),
            Some(_) => {}
            None => bail!("the download did not finish in 10 minutes"),
        }
    }
}

/// Until some of the torrent has arrived.
pub(crate) fn wait_flowing(patron: &mut Patron, id: TorrentId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while patron.status(TorrentRef::Id(id))?.bytes_done == 0 {
        if Instant::now() > deadline {
            bail!("no byte arrived in a minute");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub(crate) fn read_at(path: &Path, offset: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
