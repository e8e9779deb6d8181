//! The download row: one raw librqbit seeder on 127.0.0.1, and in turn (the order rotating
//! each round) a raw librqbit leecher session, the broker (through a patron), aria2c and a
//! python3-libtorrent leecher (TCP only) fetch the same torrent from it. Each time runs from
//! the request to the last piece verified; medians over the rounds are compared, the broker's
//! beside the fastest of the others.

use crate::swarm::{self, Seeder};
use anyhow::{bail, Context};
use patron_client::{Created, Patron};
use proto::{CreateNewTorrent, Event, TorrentRef, TorrentSource};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `tp-bench download` needs.
pub struct DownloadBench {
    /// A running broker's state directory (its download roots must include `work`).
    pub state_dir: PathBuf,
    /// Scratch folder: the payload, the torrents and every leecher's copy.
    pub work: PathBuf,
    pub size_mib: u64,
    pub rounds: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Leecher {
    RawLibrqbit,
    Broker,
    Aria2,
    Libtorrent,
}

impl Leecher {
    fn name(self) -> &'static str {
        match self {
            Leecher::RawLibrqbit => "raw_librqbit",
            Leecher::Broker => "broker",
            Leecher::Aria2 => "aria2c",
            Leecher::Libtorrent => "libtorrent",
        }
    }
}

/// Fills `path` with `size` pseudo-random bytes (xorshift: fast, and not compressible).
pub(crate) fn write_payload(path: &Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x)?;
        let mut m = 0;
        while m < n {
            let got = b.read(&mut y[m..n])?;
            if got == 0 {
                return Ok(false);
            }
            m += got;
        }
        if n == 0 {
            return Ok(b.read(&mut y)? == 0);
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

fn has_aria2() -> bool {
    Command::new("aria2c")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(bench: DownloadBench) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let seed_dir = bench.work.join("download-seed");
    std::fs::create_dir_all(&seed_dir)?;
    let payload = seed_dir.join("payload.bin");
    let size = bench.size_mib << 20;
    write_payload(&payload, size)?;

    let plain = torrent_broker::torrent_file::make_torrent(&payload, None, &[], true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seeder = runtime.block_on(Seeder::start(&plain.bytes, &seed_dir, None))?;
    // aria2c can only learn the seeder from a tracker. The announce list is outside the info
    // dictionary, so both torrents share one info hash and one seeder.
    let announce = swarm::tracker(seeder.addr)?;
    let tracked = torrent_broker::torrent_file::make_torrent(&payload, None, &[announce], true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if tracked.checked.info_hash != plain.checked.info_hash {
        bail!("adding a tracker changed the info hash");
    }
    let tracked_path = bench.work.join("download-tracked.torrent");
    std::fs::write(&tracked_path, &tracked.bytes)?;

    let mut patron = Patron::connect_with(&patron_client::ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        ..Default::default()
    })?;

    let mut leechers = vec![Leecher::RawLibrqbit, Leecher::Broker];
    if has_aria2() {
        leechers.push(Leecher::Aria2);
    } else {
        eprintln!("   (aria2c not installed: its anchor is skipped)");
    }
    let plain_path = bench.work.join("download-plain.torrent");
    std::fs::write(&plain_path, &plain.bytes)?;
    if has_libtorrent() {
        leechers.push(Leecher::Libtorrent);
    } else {
        eprintln!("   (python3-libtorrent not installed: its anchor is skipped)");
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); leechers.len()];
    for round in 0..bench.rounds {
        for k in 0..leechers.len() {
            let index = (k + round) % leechers.len();
            let leecher = leechers[index];
            let folder = bench
                .work
                .join(format!("download-{}-{round}", leecher.name()));
            std::fs::create_dir_all(&folder)?;
            let took = match leecher {
                Leecher::RawLibrqbit => {
                    runtime.block_on(swarm::raw_download(&plain.bytes, &folder, seeder.addr))?
                }
                Leecher::Broker => {
                    broker_download(&mut patron, &plain.bytes, &folder, seeder.addr)?
                }
                Leecher::Aria2 => aria2_download(&tracked_path, &folder)?,
                Leecher::Libtorrent => libtorrent_download(&plain_path, &folder, seeder.addr)?,
            };
            times[index].push(took.as_secs_f64() * 1e3);
            let copy = folder.join(&plain.checked.name);
            if !same_content(&payload, &copy)? {
                bail!("{} fetched a different file", leecher.name());
            }
            std::fs::remove_dir_all(&folder)?;
        }
    }
    let mut result = json!({
        "bench": "download",
        "bytes": size,
        "rounds": bench.rounds,
    });
    for (leecher, mut samples) in leechers.iter().zip(times) {
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        result[leecher.name()] = json!({
            "ms": samples,
            "median_ms": median,
            "mib_per_s": (size as f64 / (1 << 20) as f64) / (median / 1e3),
        });
    }
    println!("{result}");
    Ok(())
}

/// The broker fetches the torrent; done when its completion reaches the patron (pushed at
/// once, not at the next status tick: no polling load on the broker while it downloads).
/// The torrent is then dropped through the broker, its data kept to be compared.
fn broker_download(
    patron: &mut Patron,
    torrent: &[u8],
    folder: &Path,
    seeder: std::net::SocketAddr,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent.to_vec()));
    create.output = Some(folder.display().to_string());
    create.peers = vec![seeder.to_string()];
    let info = match patron.create(create)? {
        Created::New(info) | Created::Queued(info) => info,
        Created::AlreadyDownloading(..) => bail!("the broker already ran the bench torrent"),
    };
    let deadline = started + Duration::from_secs(600);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match patron.next_event_timeout(left)? {
            Some(Event::TorrentStatusUpdate(status)) if status.id == info.id && status.complete => {
                break
            }
            Some(_) => {}
            None => bail!("the broker did not finish the download in 10 minutes"),
        }
    }
    let took = started.elapsed();
    patron.close(TorrentRef::Id(info.id), false, true)?;
    Ok(took)
}

fn has_libtorrent() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `bench/libtorrent_leech.py`: python3-libtorrent, TCP only, timing itself from its add to
/// its last piece (its interpreter's start is not counted).
fn libtorrent_download(
    torrent: &Path,
    folder: &Path,
    seeder: std::net::SocketAddr,
) -> anyhow::Result<Duration> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("libtorrent_leech.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(torrent)
        .arg(folder)
        .arg(seeder.to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot run the libtorrent leecher")?;
    if !out.status.success() {
        bail!(
            "the libtorrent leecher failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ms = line["ms"]
        .as_f64()
        .context("the libtorrent leecher printed no time")?;
    Ok(Duration::from_secs_f64(ms / 1e3))
}

/// aria2c from start to exit (it exits once the file is complete and checked).
fn aria2_download(torrent: &Path, folder: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("aria2c")
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            "--seed-time=0",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=error",
            "--quiet=true",
        ])
        .arg(format!("--listen-port={}", free_port()?))
        .arg(format!("--dht-listen-port={}", free_port()?))
        .arg("-d")
        .arg(folder)
        .arg(torrent)
        .stdin(Stdio::null())
        .status()
        .context("cannot run aria2c")?;
    if !status.success() {
        bail!("aria2c failed: {status}");
    }
    Ok(started.elapsed())
}
