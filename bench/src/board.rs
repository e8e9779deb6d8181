//! The shared-board rows (DESIGN §5, §7): a status read from the board, `list` as torrents
//! grow, a thousand board watchers beside a thousand per-holder followers, and how soon a
//! completion is seen.

use crate::swarm::Seeder;
use anyhow::{bail, Context};
use patron_client::{Board, ConnectOptions, Created, Patron};
use proto::{CreateNewTorrent, Event, TorrentId, TorrentRef, TorrentSource};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn options(state_dir: &Path) -> ConnectOptions {
    ConnectOptions {
        state_dir: Some(state_dir.to_path_buf()),
        auto_start: false,
        ..ConnectOptions::default()
    }
}

/// Reads per timed batch: one read is far shorter than a clock read.
const BATCH: u32 = 100;

/// p50 of one torrent's status read from the board, in nanoseconds.
pub fn board_read(state_dir: PathBuf, count: usize) -> anyhow::Result<()> {
    let board = Board::open(&options(&state_dir))?;
    // The last torrent: the farthest slot from where a search starts.
    let id = board
        .list()
        .last()
        .map(|t| t.info.id)
        .context("the broker runs no torrent to read")?;
    let torrent = TorrentRef::Id(id);
    let mut per_read = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        for _ in 0..BATCH {
            std::hint::black_box(board.get(std::hint::black_box(torrent)));
        }
        per_read.push(started.elapsed().as_secs_f64() * 1e9 / f64::from(BATCH));
    }
    per_read.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "board-read",
            "torrents": board.list().len(),
            "reads": count * BATCH as usize,
            "p50_ns": per_read[per_read.len() / 2],
            "p90_ns": per_read[per_read.len() * 9 / 10],
        })
    );
    Ok(())
}

/// A tiny file of its own and its .torrent, in `folder`.
fn small_torrent(folder: &Path, name: &str, size: usize) -> anyhow::Result<Vec<u8>> {
    let path = folder.join(name);
    let line = format!("{name} of the board bench\n");
    std::fs::write(&path, line.repeat(size / line.len() + 1))?;
    let made = torrent_broker::torrent_file::make_torrent(&path, None, &[], true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(made.bytes)
}

/// Starts (ephemeral, held by `patron`) `torrent` seeding from `folder`.
fn seed(patron: &mut Patron, torrent: Vec<u8>, folder: &Path) -> anyhow::Result<TorrentId> {
    let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent));
    create.output = Some(folder.display().to_string());
    create.overwrite = true;
    // Ephemeral: the figure is about listing, not about writing thousands of records.
    create.ephemeral = true;
    match patron.create(create)? {
        Created::New(info) | Created::Queued(info) => Ok(info.id),
        Created::AlreadyDownloading(info, _) => bail!("torrent {} already ran", info.id),
    }
}

/// `patron-client list` wall time (p50) as the broker's torrents grow to each level.
pub fn list_scale(
    state_dir: PathBuf,
    work: PathBuf,
    levels: Vec<usize>,
    runs: usize,
    client: PathBuf,
    python: Option<PathBuf>,
) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let mut patron = Patron::connect_with(&options(&state_dir))?;
    let folder = work.join("list-scale");
    std::fs::create_dir_all(&folder)?;
    let mut added = 0;
    let mut results = Vec::new();
    for level in levels {
        let started = Instant::now();
        while added < level {
            let torrent = small_torrent(&folder, &format!("l{added}.bin"), 2000)?;
            seed(&mut patron, torrent, &folder)?;
            added += 1;
        }
        let adding_s = started.elapsed().as_secs_f64();
        // Every torrent on the board before timing: the figure is the read, not the wait.
        let board = patron.board()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while board.list().len() < level {
            if Instant::now() > deadline {
                bail!("the board shows {} of {level} torrents", board.list().len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let list = || {
            let mut command = Command::new(&client);
            command
                .arg("--state-dir")
                .arg(&state_dir)
                .arg("list")
                .stdin(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        // Once to check it lists them all; then timed, into /dev/null as for the anchor.
        let out = list().output()?;
        // A header, then one line per torrent.
        let lines = out.stdout.split(|b| *b == b'\n').count().saturating_sub(2);
        if !out.status.success() || lines != level {
            bail!(
                "list printed {lines} lines for {level} torrents ({})",
                out.status
            );
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let status = list().stdout(Stdio::null()).status()?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
            if !status.success() {
                bail!("patron-client list failed: {status}");
            }
        }
        samples.sort_by(f64::total_cmp);
        results.push(json!({
            "torrents": level,
            "list_p50_us": samples[samples.len() / 2],
            "adding_s": adding_s,
        }));
    }
    // The Python package's list() of the same torrents, while they are held.
    let python = python.map(|python| {
        let out = Command::new(python)
            .args(["bench/python_rows.py", "list", "--state"])
            .arg(&state_dir)
            .args(["--runs", &runs.to_string()])
            .stderr(Stdio::inherit())
            .output();
        match out {
            Ok(out) => serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(
                |e| json!({"not_measured": format!("python_rows.py list printed no JSON: {e}")}),
            ),
            Err(e) => json!({"not_measured": format!("cannot run python_rows.py: {e}")}),
        }
    });
    println!(
        "{}",
        json!({"bench": "list-scale", "levels": results, "python": python})
    );
    Ok(())
}

/// The broker's thread named `name`, as a `/proc` path below the root (`pid/task/tid`).
fn thread_of(broker: u32, name: &str) -> anyhow::Result<String> {
    for task in std::fs::read_dir(format!("/proc/{broker}/task"))? {
        let task = task?.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{broker}/task/{task}/comm"))?;
        if comm.trim() == name {
            return Ok(format!("{broker}/task/{task}"));
        }
    }
    bail!("the broker has no thread named {name:?}")
}

/// Shares of one core (%) over `window` of the whole broker and of its status thread, while
/// `during` runs (on this thread).
fn broker_cpu(
    broker: u32,
    window: Duration,
    mut during: impl FnMut(),
) -> anyhow::Result<(f64, f64)> {
    let (process, status) = (
        broker.to_string(),
        thread_of(broker, torrent_broker::service::fanout::THREAD)?,
    );
    let before = (crate::cpu_secs(&process)?, crate::cpu_secs(&status)?);
    let started = Instant::now();
    while started.elapsed() < window {
        during();
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((
        (crate::cpu_secs(&process)? - before.0) / secs * 100.0,
        (crate::cpu_secs(&status)? - before.1) / secs * 100.0,
    ))
}

pub struct WatchBench {
    pub state_dir: PathBuf,
    pub work: PathBuf,
    pub torrents: usize,
    pub watchers: usize,
    pub window: Duration,
}

/// Each watch torrent's piece, and the seeder's pace per torrent: a piece a second, so each
/// torrent's status (bytes done, rates) moves every second. Its size makes it outlast the
/// setup and the three windows.
const WATCH_PIECE: u64 = 16 * 1024;
const WATCH_BPS_PER_TORRENT: usize = 16 * 1024;
/// Seconds of download the setup may take, besides the windows (each torrent, paced on its
/// own, must still be downloading at the end). Most of it is the anchor's: resuming a
/// thousand torrents that a thousand patrons each follow takes 70–80 s on this 2-core
/// machine, and the torrents resumed first download meanwhile.
const WATCH_SETUP_SECS: u64 = 180;
/// Windows without and with board watchers, alternating.
const WATCH_PAIRS: u64 = 3;

/// Resumes every torrent with several requests in flight rather than one round trip at a
/// time. Behind the per-holder followers' fan-out, which takes the broker's cores, each
/// resume still waits its turn: a thousand take over a minute here (see
/// [`WATCH_SETUP_SECS`]).
fn resume_all(owner: &mut Patron, ids: &[TorrentId]) -> anyhow::Result<()> {
    const IN_FLIGHT: usize = 32;
    let (mut sent, mut replied) = (0, 0);
    while replied < ids.len() {
        while sent < ids.len() && sent - replied < IN_FLIGHT {
            owner.send(proto::RequestBody::Resume(TorrentRef::Id(ids[sent])))?;
            sent += 1;
        }
        match owner.next_event_timeout(Duration::from_secs(60))? {
            Some(Event::Error { error, .. }) => bail!("a resume failed: {}", error.message),
            Some(event) if event.request().is_some() => replied += 1,
            Some(_) => {}
            None => bail!("a resume got no reply within 60 s"),
        }
    }
    Ok(())
}

/// The broker's CPU while `watchers` board readers (threads, each with its own mapping, as
/// `watch` processes have) follow `torrents` downloading torrents, beside the same broker with
/// no reader and with as many per-holder followers (today's `watch` without the board).
pub fn watch(bench: WatchBench) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new()?;
    let seed_dir = bench.work.join("watch-seed");
    let leech_dir = bench.work.join("watch-leech");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::create_dir_all(&leech_dir)?;
    let watch_bytes = WATCH_BPS_PER_TORRENT as u64
        * ((2 * WATCH_PAIRS + 1) * (bench.window.as_secs().max(1) + 1) + WATCH_SETUP_SECS);
    let mut torrents = Vec::with_capacity(bench.torrents);
    for i in 0..bench.torrents {
        let path = seed_dir.join(format!("w{i}.bin"));
        // Distinct payloads: equal ones would be one torrent.
        let line = format!("watch torrent {i}\n");
        std::fs::write(&path, line.repeat(watch_bytes as usize / line.len()))?;
        let made = torrent_broker::torrent_file::make_torrent(&path, Some(WATCH_PIECE), &[], true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        torrents.push(made.bytes);
    }
    let rate = (bench.torrents * WATCH_BPS_PER_TORRENT) as u32;
    let seeder = runtime.block_on(Seeder::start_many(&torrents, &seed_dir, Some(rate)))?;
    let began = Instant::now();
    let phase =
        |what: &str| eprintln!("   watch: {what} at {:.0} s", began.elapsed().as_secs_f64());

    let options = options(&bench.state_dir);
    let mut owner = Patron::connect_with(&options)?;
    let broker = owner.broker_pid();
    let mut ids = Vec::new();
    for torrent in torrents {
        let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent));
        create.output = Some(leech_dir.display().to_string());
        create.peers = vec![seeder.addr.to_string()];
        create.ephemeral = true;
        // Each torrent paced on its own (the seeder's limit is shared, not fair: alone it let
        // early torrents finish inside the windows).
        create.max_download_rate = Some(WATCH_BPS_PER_TORRENT as u64);
        match owner.create(create)? {
            Created::New(info) | Created::Queued(info) => ids.push(info.id),
            Created::AlreadyDownloading(..) => bail!("the broker already ran a watch torrent"),
        }
    }
    phase("torrents added");
    let board = owner.board()?;
    let progress = || {
        let list = board.list();
        let done: u64 = list.iter().map(|t| t.status.bytes_done).sum();
        let complete = list.iter().filter(|t| t.status.complete).count();
        let paused = list
            .iter()
            .filter(|t| matches!(t.status.state, proto::TorrentState::Paused))
            .count();
        format!(
            "{} MiB done, {complete} complete, {paused} paused",
            done >> 20
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while board
        .list()
        .iter()
        .filter(|t| t.status.bytes_done > 0)
        .count()
        < ids.len()
    {
        if Instant::now() > deadline {
            bail!("not every watch torrent started downloading within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain = |owner: &mut Patron| {
        while let Ok(Some(_)) = owner.next_event_timeout(Duration::ZERO) {}
    };

    // Board watchers: each sleeps on the board and wakes per batch of changes. What a watcher
    // then reads costs the broker nothing, so each reads one torrent: a thousand of them
    // reading everything would take this machine's two cores from the broker and the seeder,
    // and the broker would look cheap for lack of work. They stay, but only watch while
    // `watching` is set: windows with and without them alternate, so a drift in the
    // download's own cost falls on both alike.
    let stop = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(false));
    let wakes = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for watcher in 0..bench.watchers {
        let mut board = owner.board()?;
        let (stop, watching, wakes) = (stop.clone(), watching.clone(), wakes.clone());
        let mine = TorrentRef::Id(ids[watcher % ids.len()]);
        readers.push(
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if !watching.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        if let Ok(true) = board.wait_for_change(Duration::from_millis(500)) {
                            wakes.fetch_add(1, Ordering::Relaxed);
                            std::hint::black_box(board.get(mine));
                        }
                    }
                })?,
        );
    }
    phase(&format!("watchers ready, {}", progress()));
    let mut idle_windows = Vec::new();
    let mut board_windows = Vec::new();
    let mut board_wakes = 0;
    for _ in 0..WATCH_PAIRS {
        watching.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(600)); // every watcher parked
        idle_windows.push(broker_cpu(broker, bench.window, || {
            drain(&mut owner);
            std::thread::sleep(Duration::from_millis(50));
        })?);
        watching.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        let wakes_before = wakes.load(Ordering::Relaxed);
        board_windows.push(broker_cpu(broker, bench.window, || {
            drain(&mut owner);
            std::thread::sleep(Duration::from_millis(50));
        })?);
        board_wakes += wakes.load(Ordering::Relaxed) - wakes_before;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.join();
    }
    let median = |windows: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = windows.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let idle = median(&idle_windows, |w| w.0);
    let with_board = median(&board_windows, |w| w.0);
    let idle_status = median(&idle_windows, |w| w.1);
    let board_status = median(&board_windows, |w| w.1);

    phase(&format!("board windows done, {}", progress()));
    // 3. The anchor: as many patrons, each holding every torrent, fed per holder. They are
    // set up while the torrents are paused: fanning every change out to the followers
    // already there made the setup take minutes, longer than the torrents last.
    for id in &ids {
        owner.pause(TorrentRef::Id(*id))?;
    }
    let mut followers = Vec::with_capacity(bench.watchers);
    for _ in 0..bench.watchers {
        let mut patron = Patron::connect_with(&options)?;
        for id in &ids {
            patron.send(proto::RequestBody::Follow(TorrentRef::Id(*id)))?;
        }
        // Its replies read now: unread, they hold its later requests back (DESIGN §4), and
        // setting up a thousand followers took minutes, longer than the torrents last.
        let mut replies = 0;
        while replies < ids.len() {
            match patron.next_event_timeout(Duration::from_secs(60))? {
                Some(event) if event.request().is_some() => replies += 1,
                Some(_) => {}
                None => bail!("a follower got no reply within 60 s"),
            }
        }
        followers.push(patron);
    }
    resume_all(&mut owner, &ids)?;
    phase(&format!("resumed, {}", progress()));
    let mut events = 0u64;
    let count = |patrons: &mut Vec<Patron>| -> u64 {
        let mut n = 0;
        for patron in patrons.iter_mut() {
            while let Ok(Some(event)) = patron.next_event_timeout(Duration::ZERO) {
                if matches!(event, Event::TorrentStatusUpdate(_)) {
                    n += 1;
                }
            }
        }
        n
    };
    // Past the burst of follow replies and first statuses.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        count(&mut followers);
    }
    phase(&format!("followers ready, {}", progress()));
    let (per_holder, per_holder_status) = broker_cpu(broker, bench.window, || {
        drain(&mut owner);
        events += count(&mut followers);
    })?;
    let unfinished = board
        .list()
        .iter()
        .filter(|t| ids.contains(&t.info.id) && !t.status.complete)
        .count();
    // The seeder's limit is shared, not fair: some torrents finish early (the per-holder
    // anchor, measured last, then has fewer changing torrents to send: it is understated, not
    // flattered). The figures stand while most still change.
    if unfinished * 2 < ids.len() {
        bail!(
            "{} of {} watch torrents finished inside the windows: the figures would be wrong",
            ids.len() - unfinished,
            ids.len()
        );
    }
    drop(followers);
    drop(owner);
    drop(seeder);
    println!(
        "{}",
        json!({
            "bench": "watch",
            "torrents": ids.len(),
            "still_downloading": unfinished,
            "watchers": bench.watchers,
            "window_s": bench.window.as_secs_f64(),
            "cpu_percent_no_watcher": idle,
            "cpu_percent_board_watchers": with_board,
            "cpu_percent_per_holder": per_holder,
            "status_thread_percent_no_watcher": idle_status,
            "status_thread_percent_board_watchers": board_status,
            "status_thread_percent_per_holder": per_holder_status,
            "board_wakes_per_watcher_per_s": board_wakes as f64 / bench.watchers.max(1) as f64 / (WATCH_PAIRS as f64 * bench.window.as_secs_f64()),
            "idle_windows": idle_windows.iter().map(|w| json!({"broker": w.0, "status_thread": w.1})).collect::<Vec<_>>(),
            "board_windows": board_windows.iter().map(|w| json!({"broker": w.0, "status_thread": w.1})).collect::<Vec<_>>(),
            "per_holder_statuses_per_s": events as f64 / bench.window.as_secs_f64(),
        })
    );
    Ok(())
}

/// When the broker's log last said the engine verified the last piece of the torrent named
/// `info_hash` (librqbit's "torrent finished downloading"), as a time. Every round downloads
/// the same payload, so only the last such line is this round's.
fn finished_at(log: &Path, info_hash: &str) -> anyhow::Result<Option<SystemTime>> {
    let text = std::fs::read_to_string(log)?;
    let Some(line) = text
        .lines()
        .rev()
        .find(|l| l.contains("torrent finished downloading") && l.contains(info_hash))
    else {
        return Ok(None);
    };
    // The line starts with an RFC 3339 UTC timestamp: 2026-11-27T16:56:51.123456Z.
    let stamp = line.split_whitespace().next().unwrap_or_default();
    Ok(Some(
        parse_utc(stamp).with_context(|| format!("odd log time {stamp:?}"))?,
    ))
}

fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: i64 = format!("{frac:0<9}")[..9].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos as u32))
}

/// How long after the engine verified a torrent's last piece its holder's `add --wait` path
/// (the TIPC event) and a board reader saw it complete, over `rounds` downloads.
pub fn completion(
    state_dir: PathBuf,
    work: PathBuf,
    log: PathBuf,
    rounds: usize,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut patron = Patron::connect_with(&options(&state_dir))?;
    let mut event_ms = Vec::new();
    let mut board_ms = Vec::new();
    for round in 0..rounds {
        let seed_dir = work.join(format!("completion-seed-{round}"));
        let leech_dir = work.join(format!("completion-leech-{round}"));
        std::fs::create_dir_all(&seed_dir)?;
        std::fs::create_dir_all(&leech_dir)?;
        let path = seed_dir.join("done.bin");
        crate::download::write_payload(&path, 4 << 20)?;
        let made = torrent_broker::torrent_file::make_torrent(&path, Some(64 * 1024), &[], true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let seeder = runtime.block_on(Seeder::start(&made.bytes, &seed_dir, None))?;
        let mut board = patron.board()?;
        let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(made.bytes));
        create.output = Some(leech_dir.display().to_string());
        create.peers = vec![seeder.addr.to_string()];
        create.ephemeral = true;
        let id = match patron.create(create)? {
            Created::New(info) | Created::Queued(info) => info.id,
            Created::AlreadyDownloading(..) => bail!("already ran"),
        };
        // A board reader on its own thread, asleep until the broker publishes.
        let watcher = std::thread::spawn(move || -> anyhow::Result<SystemTime> {
            loop {
                board.wait_for_change(Duration::from_secs(60))?;
                if board.get(TorrentRef::Id(id)).is_some_and(|s| s.complete) {
                    return Ok(SystemTime::now());
                }
            }
        });
        let event_seen = loop {
            match patron.next_event_timeout(Duration::from_secs(60))? {
                Some(Event::TorrentStatusUpdate(s)) if s.id == id && s.complete => {
                    break SystemTime::now()
                }
                Some(_) => {}
                None => bail!("no completion within 60 s"),
            }
        };
        let board_seen = watcher.join().map_err(|_| anyhow::anyhow!("watcher"))??;
        let hash = made.checked.info_hash.to_string();
        // The line is written before the engine notifies anyone, so it is there by now.
        let finished = finished_at(&log, &hash)?
            .context("the broker's log has no \"torrent finished\" line")?;
        let ms = |seen: SystemTime| {
            seen.duration_since(finished)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        event_ms.push(ms(event_seen));
        board_ms.push(ms(board_seen));
        patron.close(TorrentRef::Id(id), true, true)?;
        drop(seeder);
    }
    event_ms.sort_by(f64::total_cmp);
    board_ms.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "completion",
            "rounds": rounds,
            "event_p50_ms": event_ms[event_ms.len() / 2],
            "event_max_ms": event_ms[event_ms.len() - 1],
            "board_p50_ms": board_ms[board_ms.len() / 2],
            "board_max_ms": board_ms[board_ms.len() - 1],
        })
    );
    Ok(())
}

/// A .torrent of `pieces` pieces of 16 KiB (random hashes: no data needed), named `name`.
fn synthetic_torrent(name: &str, pieces: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ pieces as u64;
    let mut hashes = Vec::with_capacity(pieces * 20);
    while hashes.len() < pieces * 20 {
        // xorshift64*: quick, and enough to make every piece hash differ.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        hashes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    hashes.truncate(pieces * 20);
    let mut torrent = format!(
        "d4:infod6:lengthi{}e4:name{}:{name}12:piece lengthi16384e6:pieces{}:",
        pieces * 16384,
        name.len(),
        hashes.len()
    )
    .into_bytes();
    torrent.extend_from_slice(&hashes);
    torrent.extend_from_slice(b"ee");
    torrent
}

/// Request → reply of a create with a ~10 MiB .torrent (paused, no data) beside the engine's
/// own add of the same bytes in process (the anchor), and one of ~10 KiB (what the old
/// anchor measured: page faults, not our overhead), `rounds` times each.
pub fn add_size(state_dir: PathBuf, work: PathBuf, rounds: usize) -> anyhow::Result<()> {
    let mut patron = Patron::connect_with(&options(&state_dir))?;
    let folder = work.join("add-size");
    std::fs::create_dir_all(&folder)?;
    let small = synthetic_torrent("small-add", 512);
    let big = synthetic_torrent("big-add", 10 * 1024 * 1024 / 20);
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // The same requests refused at once (a save folder outside the roots is checked before
    // the .torrent is looked at): what carrying the bytes costs, apart from using them.
    let mut carried: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (which, torrent) in [(0, &small), (1, &big)] {
            let mut refused = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent.clone()));
            refused.output = Some("/".into());
            let started = Instant::now();
            if patron.create(refused).is_ok() {
                bail!("a save folder of / was accepted");
            }
            if round > 0 {
                carried[which].push(started.elapsed().as_secs_f64() * 1e6);
            }
            let mut create = CreateNewTorrent::new(TorrentSource::TorrentFile(torrent.clone()));
            create.output = Some(folder.display().to_string());
            create.paused = true;
            let started = Instant::now();
            let created = patron.create(create)?;
            let took = started.elapsed().as_secs_f64() * 1e6;
            let Created::New(info) = created else {
                bail!("round {round}: the torrent already ran");
            };
            // The first round warms caches up; it is not counted.
            if round > 0 {
                times[which].push(took);
            }
            patron.close(TorrentRef::Id(info.id), true, true)?;
        }
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut engine = runtime.block_on(crate::swarm::engine_adds(&big, &work, rounds - 1))?;
    println!(
        "{}",
        json!({
            "bench": "add-size",
            "rounds": rounds - 1,
            "engine_big_p50_us": p50(&mut engine),
            "small_bytes": small.len(),
            "big_bytes": big.len(),
            "small_p50_us": p50(&mut times[0]),
            "big_p50_us": p50(&mut times[1]),
            "small_carried_p50_us": p50(&mut carried[0]),
            "big_carried_p50_us": p50(&mut carried[1]),
        })
    );
    Ok(())
}
