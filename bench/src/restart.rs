//! The restart row: a broker seeding `torrents` torrents (4 × 512 MiB in the full run) stops
//! and starts again; measured from the start of its process to every torrent seeding. Beside
//! it, transmission-daemon holding the same data restarts the same way (it resumes without
//! hashing again). Rounds alternate which goes first; both read the same files, so the page
//! cache favours neither.

use crate::download::write_payload;
use anyhow::{bail, Context};
use patron_client::{Board, ConnectOptions, Patron};
use proto::{CreateNewTorrent, TorrentSource, TorrentState};
use serde_json::json;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `tp-bench restart` needs.
pub struct RestartBench {
    /// Scratch folder: data, torrents, both clients' state (inside the broker's roots).
    pub work: PathBuf,
    /// The torrent-broker program.
    pub broker: PathBuf,
    pub torrents: usize,
    pub size_mib: u64,
    pub rounds: usize,
}

/// Nothing here may take longer.
const LIMIT: Duration = Duration::from_secs(600);

pub fn run(bench: RestartBench) -> anyhow::Result<()> {
    let data = bench.work.join("restart-data");
    std::fs::create_dir_all(&data)?;
    let mut torrents = Vec::new();
    for i in 0..bench.torrents {
        let file = data.join(format!("restart-{i}.bin"));
        write_payload(&file, bench.size_mib << 20)?;
        let made = torrent_broker::torrent_file::make_torrent(&file, None, &[], true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let path = bench.work.join(format!("restart-{i}.torrent"));
        std::fs::write(&path, &made.bytes)?;
        torrents.push((path, made.bytes));
    }

    // Each client takes the data once (hashing it all) before anything is measured.
    let broker = BrokerUnderTest::new(
        &bench.broker,
        bench.work.join("restart-broker-state"),
        &bench.work,
    );
    let mut child = broker.start()?;
    let mut patron = broker.patron()?;
    for (_, bytes) in &torrents {
        let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(bytes.clone()));
        create.output = Some(data.display().to_string());
        create.overwrite = true;
        patron.create(create)?;
    }
    drop(patron);
    broker.wait_all_seeding(bench.torrents)?;
    broker.stop(&mut child)?;

    let transmission = Transmission::new(bench.work.join("restart-transmission"), &data)?;
    let mut daemon = transmission.start()?;
    for (path, _) in &torrents {
        transmission.add(path, &data)?;
    }
    transmission.wait_all_seeding(bench.torrents)?;
    transmission.stop(&mut daemon)?;

    let (mut broker_ms, mut transmission_ms) = (Vec::new(), Vec::new());
    for round in 0..bench.rounds {
        for k in 0..2 {
            if (k + round) % 2 == 0 {
                let started = Instant::now();
                let mut child = broker.start()?;
                broker.wait_all_seeding(bench.torrents)?;
                broker_ms.push(started.elapsed().as_secs_f64() * 1e3);
                broker.stop(&mut child)?;
            } else {
                let started = Instant::now();
                let mut daemon = transmission.start()?;
                transmission.wait_all_seeding(bench.torrents)?;
                transmission_ms.push(started.elapsed().as_secs_f64() * 1e3);
                transmission.stop(&mut daemon)?;
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let result = json!({
        "bench": "restart",
        "torrents": bench.torrents,
        "bytes": (bench.size_mib << 20) * bench.torrents as u64,
        "rounds": bench.rounds,
        "broker_ms": broker_ms,
        "transmission_ms": transmission_ms,
        "broker_median_ms": median(broker_ms.clone()),
        "transmission_median_ms": median(transmission_ms.clone()),
    });
    println!("{result}");
    Ok(())
}

/// A broker of the bench's own, started and stopped as a user would (also `many-seeds`).
pub(crate) struct BrokerUnderTest {
    program: PathBuf,
    pub(crate) state: PathBuf,
    work: PathBuf,
}

impl BrokerUnderTest {
    /// `program` with its state in `state`, its download root `work`.
    pub(crate) fn new(program: &Path, state: PathBuf, work: &Path) -> BrokerUnderTest {
        BrokerUnderTest {
            program: program.to_path_buf(),
            state,
            work: work.to_path_buf(),
        }
    }

    pub(crate) fn options(&self) -> ConnectOptions {
        ConnectOptions {
            state_dir: Some(self.state.clone()),
            auto_start: false,
            ..Default::default()
        }
    }

    pub(crate) fn start(&self) -> anyhow::Result<Child> {
        Command::new(&self.program)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--loopback-only")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--download-root")
            .arg(&self.work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start torrent-broker")
    }

    pub(crate) fn patron(&self) -> anyhow::Result<Patron> {
        let deadline = Instant::now() + LIMIT;
        loop {
            match Patron::connect_with(&self.options()) {
                Ok(patron) => return Ok(patron),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Polls the status board (no request needed) until `count` torrents seed.
    pub(crate) fn wait_all_seeding(&self, count: usize) -> anyhow::Result<()> {
        self.wait_all_seeding_within(count, LIMIT, Duration::from_millis(1))
    }

    /// The same within `limit`, looking every `poll`.
    pub(crate) fn wait_all_seeding_within(
        &self,
        count: usize,
        limit: Duration,
        poll: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(board) = Board::open(&self.options()) {
                let seeding = board
                    .iter()
                    .filter(|t| t.status.state == TorrentState::Seeding)
                    .count();
                if seeding == count {
                    return Ok(());
                }
            }
            std::thread::sleep(poll);
        }
        bail!("the broker's torrents did not all seed within {limit:?}")
    }

    pub(crate) fn stop(&self, child: &mut Child) -> anyhow::Result<()> {
        self.patron()?.stop_broker()?;
        child.wait()?;
        Ok(())
    }
}

/// A transmission-daemon of the bench's own (also `many-seeds`).
pub(crate) struct Transmission {
    config: PathBuf,
    pub(crate) rpc: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Transmission {
    /// A transmission-daemon on 127.0.0.1 only, with DHT, LPD, PEX, uTP and port mapping off.
    pub(crate) fn new(config: PathBuf, data: &Path) -> anyhow::Result<Transmission> {
        std::fs::create_dir_all(&config)?;
        let rpc_port = free_port()?;
        let settings = json!({
            "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
            "utp-enabled": false, "port-forwarding-enabled": false, "blocklist-enabled": false,
            "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1",
            "peer-port": free_port()?, "peer-port-random-on-start": false,
            "rpc-port": rpc_port, "rpc-bind-address": "127.0.0.1",
            "rpc-authentication-required": false, "rpc-whitelist-enabled": false,
            "rpc-host-whitelist-enabled": false, "download-dir": data,
            "start-added-torrents": true, "message-level": 1,
        });
        std::fs::write(config.join("settings.json"), settings.to_string())?;
        Ok(Transmission {
            config,
            rpc: format!("127.0.0.1:{rpc_port}"),
        })
    }

    pub(crate) fn start(&self) -> anyhow::Result<Child> {
        Command::new("transmission-daemon")
            .arg("-f")
            .arg("-g")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start transmission-daemon")
    }

    pub(crate) fn remote(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("transmission-remote")
            .arg(&self.rpc)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn add(&self, torrent: &Path, data: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + LIMIT;
        let (torrent, data) = (torrent.display().to_string(), data.display().to_string());
        while self.remote(&["-a", &torrent, "-w", &data]).is_none() {
            if Instant::now() > deadline {
                bail!("transmission did not take {torrent}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Polls `transmission-remote -l` until `count` torrents are whole and seeding.
    pub(crate) fn wait_all_seeding(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if let Some(list) = self.remote(&["-l"]) {
                let seeding = list
                    .lines()
                    .filter(|l| l.contains("100%") && (l.contains("Seeding") || l.contains("Idle")))
                    .count();
                if seeding == count {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!("transmission's torrents did not all seed within {LIMIT:?}")
    }

    pub(crate) fn stop(&self, daemon: &mut Child) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        daemon.wait()?;
        Ok(())
    }
}
