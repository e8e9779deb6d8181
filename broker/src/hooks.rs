//! Hooks (DESIGN §13): a program of the user's run when a torrent is added, completes or
//! fails, as transmission's `script-torrent-done`. It gets the torrent in its environment
//! (`TP_EVENT`, `TP_TORRENT_ID`, `TP_INFO_HASH`, `TP_NAME`, `TP_SAVE_FOLDER`, `TP_LABEL`,
//! `TP_ERROR`), never on a command line a shell would read: a torrent's name is whatever a
//! stranger chose. It runs as the broker's user, in a process group of its own, at most
//! [`RUNNING`] at once with [`WAITING`] more waiting (past that a run is dropped, and the log
//! says so), killed with its whole group past `--hook-timeout`; what it prints goes to the
//! log, its first lines only. A hook that hangs, floods or forks never slows the broker:
//! nothing of the broker waits for one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
}

impl Hooks {
    /// Hooks with these programs (each optional) and time limit.
    pub fn new(
        added: Option<PathBuf>,
        completed: Option<PathBuf>,
        error: Option<PathBuf>,
        timeout: Duration,
    ) -> Hooks {
        Hooks {
            added,
            completed,
            error,
            timeout,
            running: Arc::new(tokio::sync::Semaphore::new(RUNNING)),
            waiting: Arc::new(AtomicUsize::new(0)),
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
        runtime.spawn(async move {
            let permit = running.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(_permit) = permit else {
                return;
            };
            run(&program, event, &torrent, timeout).await;
        });
    }
}

/// Runs one hook to its end, or kills its process group past `timeout`.
async fn run(program: &PathBuf, event: HookEvent, torrent: &HookTorrent, timeout: Duration) {
    let mut command = tokio::process::Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TP_EVENT", event.as_str())
        .env("TP_TORRENT_ID", torrent.id.to_string())
        .env("TP_INFO_HASH", &torrent.info_hash)
        .env("TP_NAME", &torrent.name)
        .env("TP_SAVE_FOLDER", &torrent.save_folder)
        .env("TP_LABEL", "")
        .env("TP_ERROR", torrent.error.as_deref().unwrap_or(""))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let id = torrent.id;
    let mut child = match command.spawn() {
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
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
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
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(group),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
        }
    }
    for reader in readers {
        reader.abort();
    }
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
