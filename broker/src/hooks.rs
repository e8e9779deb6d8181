//! Hooks (DESIGN §13): a program of the user's run when a torrent is added, completes or
//! fails, as transmission's `script-torrent-done`. It gets the torrent in its environment
//! (`TP_EVENT`, `TP_TORRENT_ID`, `TP_INFO_HASH`, `TP_NAME`, `TP_SAVE_FOLDER`, `TP_LABEL`,
//! `TP_ERROR`), never on a command line a shell would read: a torrent's name is whatever a
//! stranger chose. It runs as the broker's user, in a process group of its own, at most
//! [`RUNNING`] at once with [`WAITING`] more waiting (past that a run is dropped, and the log
//! says so), killed with its whole group past `--hook-timeout`; what it prints goes to the
//! log, its first lines only. A hook that hangs, floods or forks never slows the broker:
//! nothing of the broker waits for one.
//!
//! Nothing a hook starts outlives it: when it ends (or is killed), what is left of its
//! process group is killed, and so is every process it left behind elsewhere (a `setsid`
//! daemon): the broker is their subreaper ([`adopt_orphans`]), so they become its children
//! when their parents end, and each end of a hook kills and reaps every child of the broker
//! that is not a hook still running.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Hooks running at once.
pub const RUNNING: usize = 4;
/// Hook runs waiting for one of those.
pub const WAITING: usize = 64;
/// Lines of a hook's output that reach the log (the rest is read and dropped).
const LOGGED_LINES: usize = 20;

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// A torrent was added (or made and seeded).
    Added,
    /// A torrent completed.
    Completed,
    /// A torrent failed.
    Error,
}

impl HookEvent {
    fn as_str(self) -> &'static str {
        match self {
            HookEvent::Added => "added",
            HookEvent::Completed => "completed",
            HookEvent::Error => "error",
        }
    }
}

/// What a hook is told of its torrent.
#[derive(Debug, Clone)]
pub struct HookTorrent {
    pub id: u64,
    pub info_hash: String,
    pub name: String,
    pub save_folder: String,
    /// Its labels, joined by commas.
    pub labels: String,
    pub error: Option<String>,
}

/// The programs to run, and the runs under way.
pub struct Hooks {
    added: Option<PathBuf>,
    completed: Option<PathBuf>,
    error: Option<PathBuf>,
    timeout: Duration,
    running: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// The hooks running now, by pid (every other child of the broker is left behind).
    live: Live,
}

type Live = Arc<Mutex<HashSet<i32>>>;

/// Makes the broker the subreaper of what it starts: a process a hook leaves behind (its
/// parent ended) becomes the broker's child rather than init's, for the broker to end it.
pub fn adopt_orphans() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot adopt what hooks leave behind (PR_SET_CHILD_SUBREAPER): {e}");
    }
}

impl Hooks {
    /// Hooks with these programs (each optional) and time limit.
    pub fn new(
        added: Option<PathBuf>,
        completed: Option<PathBuf>,
        error: Option<PathBuf>,
        timeout: Duration,
    ) -> Hooks {
        if added.is_some() || completed.is_some() || error.is_some() {
            adopt_orphans();
        }
        Hooks {
            added,
            completed,
            error,
            timeout,
            running: Arc::new(tokio::sync::Semaphore::new(RUNNING)),
            waiting: Arc::new(AtomicUsize::new(0)),
            live: Live::default(),
        }
    }

    /// Runs the hook for `event`, if one is set, on `runtime`; returns at once.
    pub fn fire(&self, runtime: &tokio::runtime::Handle, event: HookEvent, torrent: HookTorrent) {
        let program = match event {
            HookEvent::Added => &self.added,
            HookEvent::Completed => &self.completed,
            HookEvent::Error => &self.error,
        };
        let Some(program) = program.clone() else {
            return;
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                torrent = torrent.id,
                event = event.as_str(),
                "hook not run: {WAITING} runs wait already"
            );
            return;
        }
        let (running, waiting, timeout) =
            (self.running.clone(), self.waiting.clone(), self.timeout);
        let live = self.live.clone();
        runtime.spawn(async move {
            let permit = running.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(_permit) = permit else {
                return;
            };
            run(&program, event, &torrent, timeout, &live).await;
            // What it left behind goes before the next hook may start.
            let _ = tokio::task::spawn_blocking(move || end_orphans(&live)).await;
        });
    }
}

/// Runs one hook to its end, or kills its process group past `timeout`.
async fn run(
    program: &PathBuf,
    event: HookEvent,
    torrent: &HookTorrent,
    timeout: Duration,
    live: &Live,
) {
    let mut command = tokio::process::Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TP_EVENT", event.as_str())
        .env("TP_TORRENT_ID", torrent.id.to_string())
        .env("TP_INFO_HASH", &torrent.info_hash)
        .env("TP_NAME", &torrent.name)
        .env("TP_SAVE_FOLDER", &torrent.save_folder)
        .env("TP_LABEL", &torrent.labels)
        .env("TP_ERROR", torrent.error.as_deref().unwrap_or(""))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let id = torrent.id;
    // Spawned and counted as running under one lock: a sweep of what other hooks left
    // (which holds it) never takes this one for an orphan.
    let spawned = {
        let mut running = lock(live);
        let spawned = command.spawn();
        if let Some(pid) = spawned.as_ref().ok().and_then(|c| c.id()) {
            running.insert(pid as i32);
        }
        spawned
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(
                torrent = id,
                event = event.as_str(),
                "hook {} cannot start: {e}",
                program.display()
            );
            return;
        }
    };
    let group = child.id().and_then(|pid| i32::try_from(pid).ok());
    // Its output, read to the end whatever its length (a full pipe would hold it), the
    // first lines logged.
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(log_lines(out, id)));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(log_lines(err, id)));
    }
    let kill_group = || {
        if let Some(group) = group {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            // What it started in its group and left running goes too (the group's number
            // stays taken while any of them lives, so it names no one else's).
            kill_group();
            tracing::info!(torrent = id, event = event.as_str(), %status, "hook {} ended", program.display())
        }
        Ok(Err(e)) => tracing::warn!(torrent = id, "hook {}: {e}", program.display()),
        Err(_) => {
            tracing::warn!(
                torrent = id,
                event = event.as_str(),
                "hook {} ran past {timeout:?}: killed with its process group",
                program.display()
            );
            // Not reaped yet, so the group's number is still its own: every process it
            // started in it goes too.
            kill_group();
            let _ = child.wait().await;
        }
    }
    if let Some(pid) = group {
        lock(live).remove(&pid);
    }
    // What it printed before it ended is logged (a second at most: a process it left
    // holding the pipe is killed next, by the sweep of what hooks leave behind).
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

fn lock(live: &Live) -> std::sync::MutexGuard<'_, HashSet<i32>> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills and reaps every child of the broker that is not a hook running now: what hooks
/// left behind, adopted (see [`adopt_orphans`]). What those leave behind in turn is adopted
/// as they die, so this looks again, a bounded number of times.
fn end_orphans(live: &Live) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    for _ in 0..16 {
        // Held from the look to the kill: no hook starts in between.
        let running = lock(live);
        let orphans: Vec<i32> = children_of(me)
            .into_iter()
            .filter(|pid| !running.contains(pid))
            .collect();
        if orphans.is_empty() {
            return;
        }
        for &pid in &orphans {
            tracing::info!(pid, "a process a hook left behind: killed");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        drop(running);
        for &pid in &orphans {
            // Killed: it ends at once (a bounded wait for one stuck in the kernel).
            for _ in 0..100 {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the name (which may hold anything): state, then the parent.
                    let rest = stat.rsplit_once(") ")?.1.to_owned();
                    rest.split(' ').nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Logs a hook's first lines and drops the rest.
async fn log_lines(stream: impl tokio::io::AsyncRead + Unpin, id: u64) {
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut logged = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if logged < LOGGED_LINES {
            logged += 1;
            tracing::info!(torrent = id, "hook: {}", proto::text::shown(&line));
        }
    }
}
