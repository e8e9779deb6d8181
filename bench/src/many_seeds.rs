//! The many-seeds rows (issue 23): N tiny single-file torrents whose data is present, all
//! seeding, nobody connected, held by a broker and by transmission-daemon in the same run.
//! For each client and each N: the time from the first add to all seeding, the idle CPU over
//! a window once everything seeds, the RSS and the descriptors held, and the time from a
//! restart to all seeding again. Transmission verifies one torrent at a time (a few a
//! second here), so its levels may be smaller than the broker's: the rows compare costs per
//! torrent (the slope between two levels, or the average at one).

use crate::restart::{BrokerUnderTest, Transmission};
use crate::web::Rpc;
use crate::{cpu_secs, rss_kib};
use anyhow::Context;
use patron_client::Created;
use proto::{CreateNewTorrent, TorrentSource};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// What `tp-bench many-seeds` needs.
pub struct ManySeedsBench {
    /// Scratch folder (inside the broker's download roots).
    pub work: PathBuf,
    /// The torrent-broker program.
    pub broker: PathBuf,
    /// Torrent counts the broker is measured at.
    pub broker_levels: Vec<usize>,
    /// Torrent counts transmission-daemon is measured at (none: no anchor).
    pub transmission_levels: Vec<usize>,
    /// The idle window.
    pub idle_secs: u64,
}

/// How long either client may take to reach all seeding (transmission checks ~3 a second).
const LIMIT: Duration = Duration::from_secs(3600);

/// One client at one level.
struct Figures {
    torrents: usize,
    add_to_seeding_ms: f64,
    idle_cpu_percent: f64,
    rss_kib: u64,
    fds: usize,
    restart_to_seeding_ms: f64,
}

impl Figures {
    fn json(&self) -> Value {
        json!({
            "torrents": self.torrents,
            "add_to_seeding_ms": self.add_to_seeding_ms,
            "idle_cpu_percent": self.idle_cpu_percent,
            "rss_kib": self.rss_kib,
            "fds": self.fds,
            "restart_to_seeding_ms": self.restart_to_seeding_ms,
        })
    }
}

pub fn run(bench: ManySeedsBench) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let most = bench
        .broker_levels
        .iter()
        .chain(&bench.transmission_levels)
        .copied()
        .max()
        .unwrap_or(0);
    let folder = bench.work.join("many-seeds");
    let data = folder.join("data");
    std::fs::create_dir_all(&data)?;
    let torrents = make_torrents(&folder, &data, most)?;

    let mut broker_rows = Vec::new();
    // (A level of 0 measures nothing: `--transmission-levels 0` leaves the anchor out.)
    for &level in bench.broker_levels.iter().filter(|&&n| n > 0) {
        let state = folder.join(format!("broker-{level}"));
        broker_rows.push(broker_at(&bench, state, &data, &torrents[..level])?.json());
    }
    let mut transmission_rows = Vec::new();
    for &level in bench.transmission_levels.iter().filter(|&&n| n > 0) {
        let config = folder.join(format!("transmission-{level}"));
        transmission_rows.push(transmission_at(&bench, config, &data, &torrents[..level])?.json());
    }
    let _ = std::fs::remove_dir_all(&folder);
    println!(
        "{}",
        json!({
            "bench": "many-seeds",
            "idle_secs": bench.idle_secs,
            "open_files": torrent_broker::storage::DEFAULT_OPEN_FILES,
            "broker": broker_rows,
            "transmission": transmission_rows,
        })
    );
    Ok(())
}

/// `count` distinct files of a few KiB and their torrents (each one piece), written as
/// `.torrent` files for transmission too.
fn make_torrents(
    folder: &Path,
    data: &Path,
    count: usize,
) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let files = folder.join("torrents");
    std::fs::create_dir_all(&files)?;
    (0..count)
        .map(|i| {
            let path = data.join(format!("seed-{i}.bin"));
            std::fs::write(
                &path,
                format!("seed {i} of the many-seeds bench\n").repeat(200),
            )?;
            let made = torrent_broker::torrent_file::make_torrent(&path, None, &[], true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let file = files.join(format!("seed-{i}.torrent"));
            std::fs::write(&file, &made.bytes)?;
            Ok((file, made.bytes))
        })
        .collect()
}

/// CPU (percent of one core) `pid` uses over `secs`.
/// The CPU a process used over `secs` idle, and its RSS over them: the median of one look
/// a second (either client's periodic work, such as a minute's save of every torrent's
/// counts, briefly holds buffers a single look could land on).
fn idle_cpu_and_rss(pid: u32, secs: u64) -> anyhow::Result<(f64, u64)> {
    let before = cpu_secs(&pid.to_string())?;
    let mut rss = Vec::new();
    for _ in 0..secs.max(1) {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kib(pid)?);
    }
    let after = cpu_secs(&pid.to_string())?;
    rss.sort_unstable();
    Ok((
        (after - before) * 100.0 / secs.max(1) as f64,
        rss[rss.len() / 2],
    ))
}

fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Settles after reaching all seeding (as long as the client takes to reach its idle
/// state), then measures what staying idle costs.
fn idle_figures(
    pid: u32,
    settle: Duration,
    bench: &ManySeedsBench,
) -> anyhow::Result<(f64, u64, usize)> {
    std::thread::sleep(settle);
    let (cpu, rss) = idle_cpu_and_rss(pid, bench.idle_secs)?;
    Ok((cpu, rss, fds(pid)?))
}

/// What the rows ask of either client.
trait Client {
    /// Its process.
    fn pid(&self) -> u32;
    /// How long after all seeding it reaches its idle state.
    fn settle(&self) -> Duration {
        Duration::from_secs(5)
    }
    /// Adds every torrent (its data in `data`), as a user adding many would.
    fn add_all(&mut self, data: &Path, torrents: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()>;
    /// Returns once `count` torrents seed.
    fn wait_all_seeding(&self, count: usize, after_restart: bool) -> anyhow::Result<()>;
    /// Stops it (cleanly: it saves what it must).
    fn stop(&mut self) -> anyhow::Result<()>;
    /// Starts it again.
    fn start(&mut self) -> anyhow::Result<()>;
    /// Stops it for good (it may already have stopped).
    fn end(&mut self);
}

/// One client at one level: add to all seeding, idle, restart to all seeding.
fn measure(
    client: &mut dyn Client,
    bench: &ManySeedsBench,
    data: &Path,
    torrents: &[(PathBuf, Vec<u8>)],
) -> anyhow::Result<Figures> {
    let figures = (|| {
        let started = Instant::now();
        client.add_all(data, torrents)?;
        client.wait_all_seeding(torrents.len(), false)?;
        let add_to_seeding_ms = started.elapsed().as_secs_f64() * 1e3;
        let (idle_cpu_percent, rss_kib, fds) = idle_figures(client.pid(), client.settle(), bench)?;
        client.stop()?;
        let started = Instant::now();
        client.start()?;
        client.wait_all_seeding(torrents.len(), true)?;
        Ok(Figures {
            torrents: torrents.len(),
            add_to_seeding_ms,
            idle_cpu_percent,
            rss_kib,
            fds,
            restart_to_seeding_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    })();
    client.end();
    figures
}

/// A broker of the bench's own: adds through one patron, seeding read off the board.
struct Broker {
    broker: BrokerUnderTest,
    child: Child,
}

impl Client for Broker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its idle seeds leave the engine after its default `--sleep-seeds-after` (a minute),
    /// looked for every 5 s, up to 2,048 a look (ten thousand: five looks); what they held
    /// goes back to the system within seconds more (jemalloc's background purge).
    fn settle(&self) -> Duration {
        Duration::from_secs(60 + 5 + 25 + 15)
    }

    fn add_all(&mut self, data: &Path, torrents: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
        let mut patron = self.broker.patron()?;
        for (_, bytes) in torrents {
            let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(bytes.clone()));
            create.output = Some(data.display().to_string());
            create.overwrite = true;
            if let Created::AlreadyDownloading(..) = patron.create(create)? {
                anyhow::bail!("a torrent of the bench was there already");
            }
        }
        Ok(())
    }

    fn wait_all_seeding(&self, count: usize, _: bool) -> anyhow::Result<()> {
        self.broker
            .wait_all_seeding_within(count, LIMIT, Duration::from_millis(50))
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.broker.stop(&mut self.child)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.child = self.broker.start()?;
        Ok(())
    }

    fn end(&mut self) {
        // (Only a process still running: a pid already reaped may be another's now.)
        if matches!(self.child.try_wait(), Ok(None)) && self.broker.stop(&mut self.child).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A transmission-daemon of the bench's own, driven through its RPC.
struct TransmissionClient {
    transmission: Transmission,
    rpc: Rpc,
    daemon: Child,
}

impl Client for TransmissionClient {
    fn pid(&self) -> u32 {
        self.daemon.id()
    }

    fn add_all(&mut self, data: &Path, torrents: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
        // One connection, as a script adding many would.
        let mut http = self.rpc.connect()?;
        for (path, _) in torrents {
            let reply = self.rpc.call(
                &mut http,
                "torrent-add",
                json!({"filename": path.display().to_string(), "download-dir": data.display().to_string()}),
            )?;
            anyhow::ensure!(reply["result"] == "success", "torrent-add: {reply}");
        }
        Ok(())
    }

    fn wait_all_seeding(&self, count: usize, after_restart: bool) -> anyhow::Result<()> {
        // Once a second while it checks (a torrent-get of thousands costs it too); closely
        // after a restart, which takes it a fraction of a second.
        let poll = match after_restart {
            true => Duration::from_millis(20),
            false => Duration::from_secs(1),
        };
        wait_all_seeding(&self.rpc, count, poll)
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.transmission.stop(&mut self.daemon)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.daemon = self.transmission.start()?;
        Ok(())
    }

    fn end(&mut self) {
        if matches!(self.daemon.try_wait(), Ok(None))
            && self.transmission.stop(&mut self.daemon).is_err()
        {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }
}

fn broker_at(
    bench: &ManySeedsBench,
    state: PathBuf,
    data: &Path,
    torrents: &[(PathBuf, Vec<u8>)],
) -> anyhow::Result<Figures> {
    let broker = BrokerUnderTest::new(&bench.broker, state, &bench.work);
    let child = broker.start()?;
    let mut client = Broker { broker, child };
    measure(&mut client, bench, data, torrents).context("the broker")
}

fn transmission_at(
    bench: &ManySeedsBench,
    config: PathBuf,
    data: &Path,
    torrents: &[(PathBuf, Vec<u8>)],
) -> anyhow::Result<Figures> {
    let transmission = Transmission::new(config, data)?;
    let daemon = transmission.start()?;
    let rpc = Rpc::new(&transmission.rpc, None);
    let mut client = TransmissionClient {
        transmission,
        rpc,
        daemon,
    };
    // Its RPC answers once it is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.transmission.remote(&["-l"]).is_none() {
        if Instant::now() > deadline {
            client.end();
            anyhow::bail!("transmission's RPC did not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    measure(&mut client, bench, data, torrents).context("transmission-daemon")
}

/// Asks transmission's RPC every `poll` until `count` torrents are whole and seeding
/// (status 6; 5 is waiting to seed, not yet seeding), within [`LIMIT`].
fn wait_all_seeding(rpc: &Rpc, count: usize, poll: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        std::thread::sleep(poll);
        // (It may be starting: not answering yet is not a failure.)
        let Ok(mut http) = rpc.connect() else {
            continue;
        };
        let Ok(reply) = rpc.call(
            &mut http,
            "torrent-get",
            json!({"fields": ["status", "percentDone"]}),
        ) else {
            continue;
        };
        let seeding = reply["arguments"]["torrents"].as_array().map_or(0, |all| {
            all.iter()
                .filter(|t| t["status"] == 6 && t["percentDone"].as_f64() == Some(1.0))
                .count()
        });
        if seeding == count {
            return Ok(());
        }
    }
    anyhow::bail!("transmission's torrents did not all seed within {LIMIT:?}")
}
