//! The fan-out row: the broker's CPU while `count` patrons hold one torrent whose status
//! changes every tick (a download paced by a rate-limited raw seeder), against the same
//! download held by one patron. The difference is what the fan-out costs.

use crate::swarm::Seeder;
use anyhow::bail;
use patron_client::{ConnectOptions, Created, Patron};
use proto::{CreateNewTorrent, Event, TorrentRef, TorrentSource};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct FanoutBench {
    pub state_dir: PathBuf,
    pub work: PathBuf,
    pub count: usize,
    pub window: Duration,
}

/// The seeder's pace: slow enough that the download outlasts both windows, so every tick
/// carries a changed status.
const SEED_BPS: u32 = 256 * 1024;

/// Reads every patron's events for `window`; returns the broker's CPU share of one core over
/// it and how many status updates arrived.
fn measure(patrons: &mut [Patron], broker: u32, window: Duration) -> anyhow::Result<(f64, u64)> {
    let cpu_before = crate::cpu_secs(&broker.to_string())?;
    let started = Instant::now();
    let mut statuses = 0;
    while started.elapsed() < window {
        for patron in patrons.iter_mut() {
            while let Some(event) = patron.next_event_timeout(Duration::ZERO)? {
                if matches!(event, Event::TorrentStatusUpdate(_)) {
                    statuses += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu =
        (crate::cpu_secs(&broker.to_string())? - cpu_before) / started.elapsed().as_secs_f64();
    Ok((cpu * 100.0, statuses))
}

pub fn run(bench: FanoutBench) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new()?;
    let seed_dir = bench.work.join("fanout-seed");
    std::fs::create_dir_all(&seed_dir)?;
    let payload = seed_dir.join("paced.bin");
    // Two windows at SEED_BPS, with room to spare.
    let size = (SEED_BPS as u64 * bench.window.as_secs().max(1) * 4).max(8 << 20);
    crate::download::write_payload(&payload, size)?;
    let made = torrent_broker::torrent_file::make_torrent(&payload, Some(16 * 1024), &[], true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seeder = runtime.block_on(Seeder::start(&made.bytes, &seed_dir, Some(SEED_BPS)))?;

    let options = ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut first = Patron::connect_with(&options)?;
    let broker = first.broker_pid();
    let folder = bench.work.join("fanout-leech");
    std::fs::create_dir_all(&folder)?;
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.bytes.clone()));
    create.output = Some(folder.display().to_string());
    create.peers = vec![seeder.addr.to_string()];
    let info = match first.create(create)? {
        Created::New(info) | Created::Queued(info) => info,
        Created::AlreadyDownloading(..) => bail!("the broker already ran the fan-out torrent"),
    };
    let id = TorrentRef::Id(info.id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.status(id)?.bytes_done == 0 {
        if Instant::now() > deadline {
            bail!("the paced download did not start in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut patrons = vec![first];
    let (cpu_one, statuses_one) = measure(&mut patrons, broker, bench.window)?;
    for _ in 1..bench.count {
        let mut patron = Patron::connect_with(&options)?;
        patron.follow(id)?;
        patrons.push(patron);
    }
    let (cpu_all, statuses_all) = measure(&mut patrons, broker, bench.window)?;
    let status = patrons[0].status(id)?;
    if status.complete {
        bail!("the paced download finished inside the window: the figure would be wrong");
    }
    patrons[0].close(id, true, true)?;
    println!(
        "{}",
        json!({
            "bench": "fanout",
            "patrons": bench.count,
            "window_s": bench.window.as_secs_f64(),
            "cpu_percent_one_patron": cpu_one,
            "cpu_percent_all_patrons": cpu_all,
            "fanout_cpu_percent": (cpu_all - cpu_one).max(0.0),
            "statuses_one_patron": statuses_one,
            "statuses_all_patrons": statuses_all,
        })
    );
    Ok(())
}
