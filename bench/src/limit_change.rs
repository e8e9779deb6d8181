//! The rate-limit row: a download running at its seeder's pace is limited from outside
//! (`SetLimits`, as `patron-client limits --down` sends it), and the time until its rate
//! is within 10 % of the new limit is measured. The anchor is the rate before the change,
//! in the same run.

use anyhow::{bail, Context};
use patron_client::proto::{
    CreateNewTorrent, MakeTorrent, SetLimits, TorrentId, TorrentRef, TorrentSource,
};
use patron_client::{ConnectOptions, Created, Patron};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct LimitChangeBench {
    /// A broker that seeds (its upload limited, so the download lasts).
    pub seeder_state: PathBuf,
    /// The broker that downloads and is limited.
    pub state_dir: PathBuf,
    pub work: PathBuf,
    pub size_mib: u64,
    /// The new download limit.
    pub limit_kib: u64,
    /// The seeder's upload limit, MiB/s.
    pub seeder_mib: u64,
}

fn connect(state: &std::path::Path) -> anyhow::Result<Patron> {
    Ok(Patron::connect_with(&ConnectOptions {
        state_dir: Some(state.to_path_buf()),
        auto_start: false,
        ..ConnectOptions::default()
    })?)
}

/// Sets a broker's own limits (`Some(0)`: none; `None`: unchanged).
fn limit(patron: &mut Patron, download: Option<u64>, upload: Option<u64>) -> anyhow::Result<()> {
    patron.set_limits(SetLimits {
        torrent: None,
        download,
        upload,
        alt: Default::default(),
    })?;
    Ok(())
}

/// Bytes done of `id` now.
fn done(patron: &mut Patron, id: TorrentId) -> anyhow::Result<u64> {
    let status = patron.status(TorrentRef::Id(id))?;
    if status.complete {
        bail!("the download completed before it could be measured: give it more data");
    }
    Ok(status.bytes_done)
}

/// The rate over the last `window` of `samples` (time, bytes), if they span it.
fn windowed(samples: &[(Instant, u64)], window: Duration) -> Option<f64> {
    let (end, last) = *samples.last()?;
    let (start, first) = *samples
        .iter()
        .rev()
        .find(|(at, _)| end.duration_since(*at) >= window)?;
    Some((last - first) as f64 / end.duration_since(start).as_secs_f64())
}

pub fn run(bench: LimitChangeBench) -> anyhow::Result<()> {
    let mut seeder = connect(&bench.seeder_state)?;
    let mut leecher = connect(&bench.state_dir)?;
    // The seeder's pace: slow enough that the download outlasts the measurement.
    limit(&mut seeder, None, Some(bench.seeder_mib << 20))?;
    limit(&mut leecher, Some(0), Some(0))?;
    let data = bench.work.join("limit-change.bin");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&data).context("the data file")?;
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for n in 0..bench.size_mib {
            let mut block = chunk.clone();
            block[..8].copy_from_slice(&n.to_le_bytes());
            file.write_all(&block)?;
        }
    }
    let made = seeder.make(MakeTorrent {
        path: data.display().to_string(),
        // Bytes count as done a piece at a time: pieces of one chunk make a half-second
        // window of 1 MiB/s hold 32 of them, not one or two.
        piece_size: Some(16 * 1024),
        trackers: Vec::new(),
        seed: true,
    })?;
    let seeding = made.seeding.context("the seeder did not seed")?.id;
    let peer = seeder.broker_info()?.listen;
    let out = bench.work.join("limit-change-out");
    std::fs::create_dir_all(&out)?;
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.torrent_file));
    create.output = Some(out.display().to_string());
    create.peers = vec![peer];
    let Created::New(torrent) = leecher.create(create)? else {
        bail!("the torrent already ran on the leecher");
    };
    let tick = Duration::from_millis(25);
    let window = Duration::from_millis(500);
    // Running at its seeder's pace: a second of it, then its rate over the last half.
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut flowing: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(20) {
        let bytes = done(&mut leecher, torrent.id)?;
        samples.push((Instant::now(), bytes));
        if bytes > 0 && flowing.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1)
        {
            break;
        }
        std::thread::sleep(tick);
    }
    let before = windowed(&samples, window).context("no download to measure")?;
    let target = (bench.limit_kib * 1024) as f64;
    if before < 3.0 * target {
        bail!("the download ran at {before:.0} B/s, not well above the limit to set ({target:.0} B/s): the machine is too loaded");
    }
    limit(&mut leecher, Some(bench.limit_kib * 1024), None)?;
    let changed = Instant::now();
    // Only windows wholly after the change count.
    samples.clear();
    let mut within = None;
    while changed.elapsed() < Duration::from_secs(10) {
        samples.push((Instant::now(), done(&mut leecher, torrent.id)?));
        if let Some(rate) = windowed(&samples, window) {
            if (rate - target).abs() > 0.1 * target {
                within = None;
            } else if changed.elapsed()
                >= *within.get_or_insert(changed.elapsed()) + Duration::from_secs(1)
            {
                break; // held for a further second: not a passing dip
            }
        }
        std::thread::sleep(tick);
    }
    let last = windowed(&samples, window).unwrap_or(0.0);
    leecher.close(TorrentRef::Id(torrent.id), true, true)?;
    seeder.close(TorrentRef::Id(seeding), false, true)?;
    limit(&mut seeder, None, Some(0))?;
    limit(&mut leecher, Some(0), Some(0))?;
    let within = within.context(format!(
        "the rate never settled within 10 % of {target:.0} B/s in 10 s (last: {last:.0} B/s)"
    ))?;
    println!(
        "{}",
        json!({
            "bench": "limit-change",
            "limit_bps": target,
            "before_bps": before,
            "after_bps": last,
            "within_ms": within.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
