//! The queue row: a broker running five downloads at most (`--max-active-downloads 5`)
//! holds four that never end (nobody seeds them), one that completes, and the rest
//! queued; the time from the completion, as the board shows it, to the next queued torrent
//! leaving the queue is measured with 10 torrents (the anchor) and with 1,000.
//!
//! Each round: a paused torrent that a seeder has is resumed; ranked before every filler,
//! it takes the fifth slot from the filler holding it (queued again); it completes; the
//! filler must start again.

use anyhow::{bail, Context};
use patron_client::proto::{
    CreateNewTorrent, MakeTorrent, SetLimits, SetQueue, TorrentId, TorrentRef, TorrentSource,
    TorrentState,
};
use patron_client::{Board, ConnectOptions, Created, Patron};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct QueueBench {
    /// A broker that seeds the torrents that complete.
    pub seeder_state: PathBuf,
    /// The broker whose queue is measured.
    pub state_dir: PathBuf,
    pub work: PathBuf,
    /// Torrents held at the measured rounds.
    pub torrents: usize,
    /// Rounds at that many (one more is measured at 10).
    pub rounds: usize,
}

/// Downloads running at once.
const ACTIVE: u32 = 5;

/// The size of a torrent that completes: four times its seeder's upload rate (whose first
/// second passes at once, as a burst), so that it lasts about three seconds.
const COMPLETING_BYTES: usize = 1 << 20;

fn connect(state: &Path) -> anyhow::Result<Patron> {
    Ok(Patron::connect_with(&ConnectOptions {
        state_dir: Some(state.to_path_buf()),
        auto_start: false,
        ..ConnectOptions::default()
    })?)
}

/// A small file of its own (`size` bytes) in `folder`, made into a torrent by `patron`'s
/// broker (seeding it when `seed`): the .torrent's bytes.
fn made(
    patron: &mut Patron,
    folder: &Path,
    name: &str,
    size: usize,
    seed: bool,
) -> anyhow::Result<Vec<u8>> {
    let path = folder.join(name);
    let line = format!("{name} of the queue bench\n");
    std::fs::write(&path, line.repeat(size / line.len() + 1))?;
    let made = patron.make(MakeTorrent {
        path: path.display().to_string(),
        piece_size: Some(16 * 1024),
        trackers: Vec::new(),
        seed,
    })?;
    Ok(made.torrent_file)
}

/// Adds `torrent` (ephemeral: held by this bench only) into `out`, dialling `peer`.
fn add(
    patron: &mut Patron,
    torrent: Vec<u8>,
    out: &Path,
    peer: Option<&str>,
    paused: bool,
) -> anyhow::Result<TorrentId> {
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent));
    create.output = Some(out.display().to_string());
    create.peers = peer.map(|p| vec![p.to_owned()]).unwrap_or_default();
    create.paused = paused;
    // Ephemeral: the figure is about the queue, not about writing records.
    create.ephemeral = true;
    match patron.create(create)? {
        Created::New(info) | Created::Queued(info) => Ok(info.id),
        Created::AlreadyDownloading(info, _) => bail!("torrent {} already ran", info.id),
    }
}

/// One round: `completing` is resumed, takes the slot of `filler`, completes, and `filler`
/// must start again. Returns the time from the completion to the start, as the board shows
/// them.
fn round(
    patron: &mut Patron,
    board: &mut Board,
    completing: TorrentId,
    filler: TorrentId,
) -> anyhow::Result<Duration> {
    // Read each time after a refresh: the board is replaced as the broker's torrents grow.
    let state = |board: &mut Board, id: TorrentId| {
        board.refresh()?;
        anyhow::Ok(board.get(TorrentRef::Id(id)).map(|s| (s.state, s.complete)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    patron.resume(TorrentRef::Id(completing))?;
    // The filler gives its slot up first.
    while state(board, filler)?.map(|s| s.0) != Some(TorrentState::Queued) {
        if Instant::now() > deadline {
            let shown: Vec<String> = board
                .list()
                .iter()
                .filter(|s| s.status.state != TorrentState::Queued)
                .map(|s| {
                    format!(
                        "{} {:?} #{:?}",
                        s.info.id, s.status.state, s.status.queue_position
                    )
                })
                .collect();
            bail!(
                "the filler was not queued when a torrent ranked before it resumed: {:?}; not queued: {shown:?}",
                board.get(TorrentRef::Id(filler))
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let completed = loop {
        if state(board, completing)?.is_some_and(|s| s.1) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "the completing torrent did not complete: {:?}",
                board.get(TorrentRef::Id(completing))
            );
        }
        std::hint::spin_loop();
    };
    loop {
        if state(board, filler)?.is_some_and(|s| s.0 != TorrentState::Queued) {
            return Ok(completed.elapsed());
        }
        if completed.elapsed() > Duration::from_secs(10) {
            bail!(
                "the queue did not advance within 10 s of a completion: {:?}",
                board.get(TorrentRef::Id(filler))
            );
        }
        std::hint::spin_loop();
    }
}

pub fn run(bench: QueueBench) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let mut seeder = connect(&bench.seeder_state)?;
    let mut leecher = connect(&bench.state_dir)?;
    let mut board = Board::open(&ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        ..ConnectOptions::default()
    })?;
    leecher.set_queue(SetQueue {
        max_active_downloads: Some(Some(ACTIVE)),
        max_active_seeds: Some(None),
        stalled_after_secs: Some(None),
    })?;
    // A completing download lasts seconds: long enough for the filler it displaces to be
    // seen queued on the board.
    seeder.set_limits(SetLimits {
        torrent: None,
        download: None,
        upload: Some(COMPLETING_BYTES as u64 / 4),
        alt: Default::default(),
    })?;
    let peer = seeder.broker_info()?.listen;
    let folder = bench.work.join("queue-bench");
    let out = bench.work.join("queue-bench-out");
    std::fs::create_dir_all(&folder)?;
    std::fs::create_dir_all(&out)?;
    // Four downloads that never end: made by the leecher's own broker, seeded by nobody.
    for n in 0..ACTIVE - 1 {
        let torrent = made(
            &mut leecher,
            &folder,
            &format!("never-{n}.bin"),
            64 << 10,
            false,
        )?;
        add(&mut leecher, torrent, &out, None, false)?;
    }
    // One completing torrent per round (paused until its round), ranked before the fillers.
    let mut completing = Vec::new();
    for n in 0..=bench.rounds {
        let torrent = made(
            &mut seeder,
            &folder,
            &format!("done-{n}.bin"),
            COMPLETING_BYTES,
            true,
        )?;
        completing.push(add(&mut leecher, torrent, &out, Some(&peer), true)?);
    }
    let mut fillers = Vec::new();
    let held = ACTIVE as usize - 1 + completing.len();
    let fill = |leecher: &mut Patron, fillers: &mut Vec<TorrentId>, to: usize| {
        while held + fillers.len() < to {
            let n = fillers.len();
            let torrent = made(
                leecher,
                &folder,
                &format!("filler-{n}.bin"),
                16 << 10,
                false,
            )?;
            fillers.push(add(leecher, torrent, &out, None, false)?);
        }
        anyhow::Ok(())
    };
    let ten = 10.max(ACTIVE as usize + completing.len());
    fill(&mut leecher, &mut fillers, ten)?;
    let first_filler = *fillers.first().context("no filler")?;
    let at_ten = round(&mut leecher, &mut board, completing[0], first_filler)?;
    fill(&mut leecher, &mut fillers, bench.torrents)?;
    board.refresh()?;
    let held = board.list().len();
    if held < bench.torrents {
        bail!("the board shows {held} torrents, not {}", bench.torrents);
    }
    let mut at_scale: Vec<Duration> = completing[1..]
        .iter()
        .map(|&id| round(&mut leecher, &mut board, id, first_filler))
        .collect::<anyhow::Result<_>>()?;
    at_scale.sort();
    let worst = *at_scale.last().context("no round")?;
    seeder.set_limits(SetLimits {
        torrent: None,
        download: None,
        upload: Some(0),
        alt: Default::default(),
    })?;
    println!(
        "{}",
        json!({
            "bench": "queue-advance",
            "torrents": held,
            "active": ACTIVE,
            "rounds": at_scale.len(),
            "worst_ms": worst.as_secs_f64() * 1e3,
            "median_ms": at_scale[at_scale.len() / 2].as_secs_f64() * 1e3,
            "at_ten_ms": at_ten.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
