//! The scaling rows: the round trip of a constant-size request (`BrokerInfo`) and the
//! broker's RSS as idle patrons go 10 → 100 → 1,000, then as torrents go 10 → 1,000 (with
//! `List`, whose reply grows with them, beside it).

use anyhow::bail;
use patron_client::{ConnectOptions, Created, Patron};
use proto::{CreateNewTorrent, RequestBody, TorrentSource};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

pub struct ScalingBench {
    /// A fresh broker's state directory (nothing else uses it).
    pub state_dir: PathBuf,
    pub work: PathBuf,
    pub patron_levels: Vec<usize>,
    pub torrent_levels: Vec<usize>,
    pub samples: usize,
}

fn p50_us(patron: &mut Patron, body: RequestBody, samples: usize) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        patron.request(body.clone())?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(bench: ScalingBench) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let options = ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut measuring = Patron::connect_with(&options)?;
    let broker = measuring.broker_pid();
    let settle = || std::thread::sleep(std::time::Duration::from_millis(300));

    let mut by_patrons = Vec::new();
    let mut idle = Vec::new();
    for &level in &bench.patron_levels {
        while idle.len() + 1 < level {
            let mut patron = Patron::connect_with(&options)?;
            patron.request(RequestBody::BrokerInfo)?;
            idle.push(patron);
        }
        settle();
        by_patrons.push(json!({
            "patrons": level,
            "round_trip_p50_us": p50_us(&mut measuring, RequestBody::BrokerInfo, bench.samples)?,
            "rss_kib": crate::rss_kib(broker)?,
        }));
    }
    drop(idle);

    let data = bench.work.join("scaling-data");
    std::fs::create_dir_all(&data)?;
    let mut by_torrents: Vec<Value> = Vec::new();
    let mut added = 0;
    for &level in &bench.torrent_levels {
        while added < level {
            // Small distinct files: each torrent costs the engine its tasks and state, not I/O.
            let path = data.join(format!("t{added}.bin"));
            std::fs::write(
                &path,
                format!("torrent {added} of the scaling bench\n").repeat(400),
            )?;
            let made = torrent_broker::torrent_file::make_torrent(&path, None, &[], true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.bytes));
            create.output = Some(data.display().to_string());
            create.overwrite = true;
            if let Created::AlreadyDownloading(..) = measuring.create(create)? {
                bail!("torrent {added} already ran");
            }
            added += 1;
        }
        settle();
        by_torrents.push(json!({
            "torrents": level,
            "round_trip_p50_us": p50_us(&mut measuring, RequestBody::BrokerInfo, bench.samples)?,
            "list_p50_us": p50_us(&mut measuring, RequestBody::List, (bench.samples / 10).max(20))?,
            "rss_kib": crate::rss_kib(broker)?,
        }));
    }
    println!(
        "{}",
        json!({ "bench": "scaling", "by_patrons": by_patrons, "by_torrents": by_torrents })
    );
    Ok(())
}
