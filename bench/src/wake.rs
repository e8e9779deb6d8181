//! The wake row: how soon a board change reaches a thousand sleeping readers while another
//! reader abuses the board's futex word (FUTEX_CMP_REQUEUE of every sleeper onto a word of
//! its own), beside the same with no abuser. Each reader sleeps in
//! `Board::wait_for_change`; a torrent is paused and resumed (a change of stage, which wakes
//! readers at once) and every reader notes when it woke.

use anyhow::{bail, Context};
use patron_client::proto::wire::encode_frames;
use patron_client::proto::{BoardHello, ToBroker, TorrentRef, PROTOCOL_VERSION};
use patron_client::{Board, ConnectOptions, Patron};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Changes per window.
const CHANGES: usize = 20;

fn options(state_dir: &Path) -> ConnectOptions {
    ConnectOptions {
        state_dir: Some(state_dir.to_path_buf()),
        auto_start: false,
        ..ConnectOptions::default()
    }
}

/// One window: `CHANGES` pauses and resumes; every reader's delay from each change to its
/// wake, in ms.
fn window(
    patron: &mut Patron,
    torrent: TorrentRef,
    woke: &Arc<Mutex<Vec<Instant>>>,
    readers: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut delays = Vec::new();
    for change in 0..CHANGES {
        std::thread::sleep(Duration::from_millis(100)); // everyone asleep again
        woke.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let changed = Instant::now();
        if change % 2 == 0 {
            patron.pause(torrent)?;
        } else {
            patron.resume(torrent)?;
        }
        let deadline = changed + Duration::from_secs(2);
        loop {
            let seen = woke.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if seen.len() >= readers || Instant::now() > deadline {
                delays.extend(
                    seen.iter()
                        .map(|at| at.saturating_duration_since(changed).as_secs_f64() * 1e3),
                );
                // A reader that did not wake within the deadline counts as late as that.
                delays.extend(std::iter::repeat_n(
                    2000.0,
                    readers.saturating_sub(seen.len()),
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(delays)
}

fn p99(mut delays: Vec<f64>) -> f64 {
    delays.sort_by(f64::total_cmp);
    delays[(delays.len() * 99 / 100).min(delays.len() - 1)]
}

/// Prints the p99 delay with and without an abuser (`requeuer`: the python script that
/// abuses the futex word for a number of seconds).
pub fn wake(state_dir: PathBuf, readers: usize, requeuer: PathBuf) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let mut patron = Patron::connect_with(&options(&state_dir))?;
    let torrent = TorrentRef::Id(
        patron
            .list()?
            .first()
            .map(|t| t.info.id)
            .context("the broker runs no torrent to pause")?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let woke = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for _ in 0..readers {
        let mut board = Board::open(&options(&state_dir))?;
        let (stop, woke) = (stop.clone(), woke.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(true) = board.wait_for_change(Duration::from_millis(500)) {
                            woke.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Instant::now());
                        }
                    }
                })?,
        );
    }
    std::thread::sleep(Duration::from_secs(1)); // every reader asleep, its waker given
    let quiet = window(&mut patron, torrent, &woke, readers)?;
    let request = encode_frames(&ToBroker::Board(BoardHello {
        version: PROTOCOL_VERSION,
    }))?
    .first;
    let socket = patron_client::proto::paths::socket_path(&state_dir);
    let seconds = (CHANGES as f64 * 0.2 + 5.0).to_string();
    let abuser = std::process::Command::new("python3")
        .arg(&requeuer)
        .arg(&socket)
        .arg(
            request
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
        .arg(&seconds)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the futex abuser")?;
    std::thread::sleep(Duration::from_millis(500));
    let abused = window(&mut patron, torrent, &woke, readers);
    let moved = abuser.wait_with_output()?;
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let abused = abused?;
    if !moved.status.success() {
        bail!("the futex abuser failed: {}", moved.status);
    }
    let waiters = patron.broker_info()?.board_waiters.0;
    println!(
        "{}",
        json!({
            "bench": "wake",
            "readers": readers,
            "changes": CHANGES,
            "quiet_p99_ms": p99(quiet),
            "abused_p99_ms": p99(abused),
            "sleepers_moved": String::from_utf8_lossy(&moved.stdout).trim(),
            "waiters_after": waiters,
        })
    );
    Ok(())
}
