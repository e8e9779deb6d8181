//! Finding the broker of a state directory, starting one if none runs.
//!
//! The handshake mirrors the broker's `rendezvous` module: create a one-shot server for the
//! `Welcome`, connect an `IpcSender<ToBroker>` to the broker's socket, send a `Hello` naming
//! the one-shot server, and wait (bounded) for the broker's answer there.
//!
//! Auto-start is the original TorrentService's "use the one that exists, else create it",
//! made race-safe: patrons that find no broker queue on an `flock` of
//! `<state dir>/autostart.lock`; the first spawns a broker and waits until it answers, the
//! rest then find it running. The broker's own state lock remains the real guarantee.

use crate::error::{Error, Result};
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};
use nix::fcntl::{Flock, FlockArg};
use proto::{Event, Hello, ToBroker, Welcome, PROTOCOL_VERSION};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable naming the `torrent-broker` program to auto-start.
pub const BROKER_PROGRAM_ENV: &str = "TORRENT_PATRON_BROKER";

/// How to reach a broker.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// State directory (default: `$TORRENT_PATRON_STATE`, else `~/.local/state/torrent-patron`).
    pub state_dir: Option<PathBuf>,
    /// Start a broker when none runs (default: true).
    pub auto_start: bool,
    /// The broker program (default: `$TORRENT_PATRON_BROKER`, else `torrent-broker` beside
    /// this program, else on `PATH`).
    pub broker_program: Option<PathBuf>,
    /// How long to wait for a handshake, or for an auto-started broker to answer.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            state_dir: None,
            auto_start: true,
            broker_program: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A completed handshake.
pub(crate) struct Connected {
    pub requests: IpcSender<ToBroker>,
    pub events: ipc_channel::ipc::IpcReceiver<Event>,
    pub broker_pid: u32,
    pub patron_id: u64,
    pub socket: PathBuf,
}

enum Attempt {
    Connected(Connected),
    NotRunning(String),
}

/// The canonical state directory for these options: created if missing when a broker may
/// be started there (`auto_start`); otherwise a missing one means no broker runs, and
/// nothing is made.
pub fn state_dir(options: &ConnectOptions) -> Result<PathBuf> {
    let dir = proto::paths::resolve_state_dir(options.state_dir.as_deref());
    if options.auto_start {
        create_private_dir(&dir)?;
    } else if !dir.exists() {
        return Err(Error::BrokerUnreachable(format!(
            "no broker runs for {} (the folder does not exist)",
            dir.display()
        )));
    }
    dir.canonicalize().map_err(Error::io(format!(
        "cannot resolve state dir {}",
        dir.display()
    )))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io(format!("cannot create {}", dir.display())))
}

pub(crate) fn connect(options: &ConnectOptions) -> Result<Connected> {
    let state_dir = state_dir(options)?;
    let socket = proto::paths::socket_path(&state_dir);
    let why_not = match attempt(&socket, options.timeout)? {
        Attempt::Connected(c) => return Ok(c),
        Attempt::NotRunning(why) => why,
    };
    if !options.auto_start {
        return Err(Error::BrokerUnreachable(format!(
            "no broker runs for {} ({why_not})",
            state_dir.display()
        )));
    }
    let lock_path = state_dir.join("autostart.lock");
    let lock_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(Error::io(format!("cannot open {}", lock_path.display())))?;
    let _guard = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        context: format!("cannot lock {}", lock_path.display()),
        source: e.into(),
    })?;
    // Whoever held the lock before us may have started one.
    if let Attempt::Connected(c) = attempt(&socket, options.timeout)? {
        return Ok(c);
    }
    start_broker(options, &state_dir, &socket)
}

fn start_broker(options: &ConnectOptions, state_dir: &Path, socket: &Path) -> Result<Connected> {
    let program = broker_program(options);
    let log_path = state_dir.join("broker.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(Error::io(format!("cannot open {}", log_path.display())))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut child = Command::new(&program)
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C meant for this patron must not stop the broker.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            let looked = if e.kind() == std::io::ErrorKind::NotFound {
                where_it_looked(options, &program)
            } else {
                String::new()
            };
            Error::BrokerUnreachable(format!(
                "cannot start the broker {}: {e}{looked}",
                program.display()
            ))
        })?;
    let deadline = Instant::now() + options.timeout;
    loop {
        if let Attempt::Connected(c) = attempt(socket, options.timeout)? {
            // Reap the broker when it eventually exits, so it never lingers as a zombie.
            std::thread::spawn(move || child.wait());
            return Ok(c);
        }
        if let Ok(Some(status)) = child.try_wait() {
            if status.code() != Some(3) {
                return Err(Error::BrokerUnreachable(format!(
                    "the broker exited at start ({status}): {}",
                    log_tail(&log_path, log_start)
                )));
            }
            // Exit 3: another broker owns the state dir; keep trying to reach it.
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(Error::BrokerUnreachable(format!(
                "the broker did not answer within {:?}: {}",
                options.timeout,
                log_tail(&log_path, log_start)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn broker_program(options: &ConnectOptions) -> PathBuf {
    if let Some(program) = &options.broker_program {
        return program.clone();
    }
    if let Some(program) = std::env::var_os(BROKER_PROGRAM_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("torrent-broker")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("torrent-broker")
}

/// Where a broker program that could not be found was looked for, and how to name another.
fn where_it_looked(options: &ConnectOptions, program: &Path) -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("torrent-broker")));
    let how = if options.broker_program.is_some() {
        "the program named by the library's caller".to_owned()
    } else if std::env::var_os(BROKER_PROGRAM_ENV).is_some_and(|p| !p.is_empty()) {
        format!("${BROKER_PROGRAM_ENV}")
    } else {
        match beside {
            Some(beside) => format!(
                "{} (beside this program) and every folder of $PATH",
                beside.display()
            ),
            None => "every folder of $PATH".to_owned(),
        }
    };
    format!(
        " (looked for {} in {how}; install torrent-broker there, or set {BROKER_PROGRAM_ENV} to its path)",
        program.display()
    )
}

/// What the broker wrote to its log since `from`, for an error message.
fn log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(text.len());
    let tail = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = tail.lines().rev().take(5).collect();
    if lines.is_empty() {
        format!("no output (see {})", path.display())
    } else {
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

fn attempt(socket: &Path, timeout: Duration) -> Result<Attempt> {
    let requests = match IpcSender::<ToBroker>::connect(socket.display().to_string()) {
        Ok(requests) => requests,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::BrokerUnreachable(format!(
                "{}: {e} (the broker of this state dir belongs to another user)",
                socket.display()
            )))
        }
        Err(e) => return Ok(Attempt::NotRunning(format!("{}: {e}", socket.display()))),
    };
    let (server, server_name) =
        IpcOneShotServer::<Welcome>::new().map_err(Error::io("cannot create a one-shot server"))?;
    // accept() blocks with no timeout, so it runs on a thread we can unblock.
    let (welcome_tx, welcome_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = welcome_tx.send(server.accept());
    });
    let hello = ToBroker::Hello(Hello {
        version: PROTOCOL_VERSION,
        server_name: server_name.clone(),
    });
    if requests.send(hello).is_err() {
        unblock_accept(&server_name);
        // The broker closed the connection: it is stopping or was just killed.
        return Ok(Attempt::NotRunning(
            "the broker closed the connection".into(),
        ));
    }
    match welcome_rx.recv_timeout(timeout) {
        Ok(Ok((
            _,
            Welcome::Accepted {
                broker_pid,
                patron_id,
                events,
            },
        ))) => Ok(Attempt::Connected(Connected {
            requests,
            events,
            broker_pid,
            patron_id,
            socket: socket.to_path_buf(),
        })),
        Ok(Ok((_, Welcome::Refused { kind, message }))) if kind == "stopping" => {
            Ok(Attempt::NotRunning(message))
        }
        Ok(Ok((_, Welcome::Refused { kind, message }))) => Err(Error::Refused { kind, message }),
        Ok(Err(e)) => Err(Error::Protocol(format!("bad welcome: {e:?}"))),
        Err(_) => {
            unblock_accept(&server_name);
            Err(Error::TimedOut(format!(
                "the broker at {} did not answer within {timeout:?}",
                socket.display()
            )))
        }
    }
}

/// Completes our own one-shot server so its accept thread ends instead of leaking.
fn unblock_accept(name: &str) {
    if let Ok(sender) = IpcSender::<Welcome>::connect(name.to_owned()) {
        let _ = sender.send(Welcome::Refused {
            kind: "timeout".into(),
            message: String::new(),
        });
    }
}
