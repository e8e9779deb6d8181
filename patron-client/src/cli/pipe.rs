//! `patron-client pipe`: one patron whose inbox is stdin and whose outbox is stdout, as JSON
//! Lines — the shape of the original components (commands in, events out, `control` to shut
//! down, `signal` when finished) for scripts in any language.
//!
//! Each input line is one command object; each gets exactly one reply line carrying its
//! `request` (the caller's value, or the line number when it gave none). Status updates of
//! held torrents come in between, without `request`. A line that is not a valid command gets
//! an `error` line naming its line number, and the session goes on. EOF or a `shutdown` line
//! waits for the replies still due, prints `{"event":"finished"}` and exits 0.
//!
//! Two threads: this one owns the patron and prints events as they come; a reader thread
//! parses stdin and sends requests through a [`Requester`]. Shutting down sends one last
//! request as a barrier: replies come in request order, so when its reply arrives every
//! earlier request has been answered.
//!
//! `status` and `list` are read off the broker's shared board when it can be mapped and no
//! earlier request still waits for its reply; otherwise they go to the broker as requests, so
//! that each is answered in its turn and never sees the effect of a later line.

use super::output::{self, made_json, status_json, summary_json};
use super::{torrent_ref, Context, Exit};
use patron_client::json::event_json;
use patron_client::proto::{
    AltChange, AltSchedule, CloseTorrent, CreateNewTorrent, Event, FileRef, FilesRequest,
    MakeTorrent, MoveInQueue, OwnSeedingChange, PeersRequest, ProtoError, QueueMove, RequestBody,
    RequestId, SeedAction, SeedLimit, SetLimits, SetQueue, SetSeeding, TorrentRef, TorrentSeeding,
    TorrentSource,
};
use patron_client::{Board, ConnectOptions, Error, Requester, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One input line, after its `request` has been taken out.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
enum Command {
    /// Start (or join) a torrent: exactly one of `torrent` (a .torrent path),
    /// `torrent_base64` (its bytes) or `magnet`.
    Add {
        torrent: Option<PathBuf>,
        torrent_base64: Option<String>,
        magnet: Option<String>,
        output: Option<PathBuf>,
        #[serde(default)]
        peers: Vec<String>,
        #[serde(default)]
        paused: bool,
        #[serde(default)]
        ephemeral: bool,
        #[serde(default)]
        overwrite: bool,
        only: Option<Vec<FileName>>,
        max_download_rate: Option<u64>,
        max_upload_rate: Option<u64>,
        /// Its own seeding limits: a number, or "none".
        ratio_limit: Option<Value>,
        seed_time_limit_secs: Option<Value>,
        idle_seed_limit_secs: Option<Value>,
        move_completed_to: Option<PathBuf>,
        #[serde(default)]
        labels: Vec<String>,
    },
    Close {
        torrent: TorrentName,
        #[serde(default)]
        delete_data: bool,
        #[serde(default)]
        force: bool,
    },
    List {},
    Status {
        torrent: TorrentName,
    },
    Follow {
        torrent: TorrentName,
    },
    /// Hash a file or folder; the .torrent is written to `output` (never over an existing
    /// file) or returned as `torrent_base64`.
    Make {
        path: PathBuf,
        output: Option<PathBuf>,
        piece_size: Option<u64>,
        #[serde(default)]
        trackers: Vec<String>,
        #[serde(default)]
        seed: bool,
    },
    Info {},
    /// Show or change the global rate limits (0 lifts one).
    Limits {
        torrent: Option<TorrentName>,
        max_download_rate: Option<u64>,
        max_upload_rate: Option<u64>,
        /// The broker's alternative limits (0 lifts one), their schedule ("mon-fri
        /// 09:00-18:00", or null: none) and their switch.
        alt_download_rate: Option<u64>,
        alt_upload_rate: Option<u64>,
        #[serde(default, deserialize_with = "present")]
        alt_schedule: Option<Value>,
        alt_on: Option<bool>,
    },
    /// Show or change the queue: a number, or "none" (or null) to lift a limit; a stall
    /// time in seconds, or "never" (or null).
    Queue {
        #[serde(default, deserialize_with = "present")]
        max_active_downloads: Option<Value>,
        #[serde(default, deserialize_with = "present")]
        max_active_seeds: Option<Value>,
        #[serde(default, deserialize_with = "present")]
        stalled_after_secs: Option<Value>,
    },
    /// Show or change seeding limits: the broker's (a number, or "none"/null; and
    /// `seed_limit_action`), or a torrent's own (also "default": the broker's again).
    Seeding {
        torrent: Option<TorrentName>,
        #[serde(default, deserialize_with = "present")]
        ratio_limit: Option<Value>,
        #[serde(default, deserialize_with = "present")]
        seed_time_limit_secs: Option<Value>,
        #[serde(default, deserialize_with = "present")]
        idle_seed_limit_secs: Option<Value>,
        seed_limit_action: Option<String>,
    },
    /// Move a torrent in the queue: `to` is top, up, down or bottom.
    QueueMove {
        torrent: TorrentName,
        to: String,
    },
    Pause {
        torrent: TorrentName,
    },
    Resume {
        torrent: TorrentName,
    },
    Recheck {
        torrent: TorrentName,
    },
    /// Move a torrent's data to folder `to`, and run it from there.
    Move {
        torrent: TorrentName,
        to: PathBuf,
    },
    /// Give a torrent its labels.
    Label {
        torrent: TorrentName,
        labels: Vec<String>,
    },
    /// Change what label `name` carries (a folder, rates, seeding limits), or only list.
    Labels {
        name: Option<String>,
        folder: Option<Value>,
        max_download_rate: Option<u64>,
        max_upload_rate: Option<u64>,
        ratio_limit: Option<Value>,
        seed_time_limit_secs: Option<Value>,
        idle_seed_limit_secs: Option<Value>,
        #[serde(default)]
        remove: bool,
    },
    /// List a torrent's files; with `only`, choose which to download first.
    Files {
        torrent: TorrentName,
        only: Option<Vec<FileName>>,
    },
    /// List a torrent's peers; with `add`, dial those first.
    Peers {
        torrent: TorrentName,
        #[serde(default)]
        add: Vec<String>,
    },
    /// Write one file of a torrent, in order while it downloads, to `to`: a FIFO, or a new
    /// file (never one that exists). Its reply comes when the file is written.
    Cat {
        torrent: TorrentName,
        /// Index or path; the only file when left out.
        file: Option<Value>,
        #[serde(default)]
        offset: u64,
        to: PathBuf,
    },
}

/// A seeding limit as a pipe command gives it.
#[derive(Debug, Clone, Copy)]
enum Given {
    /// A ratio (`.0`) or seconds (`.1`).
    Number(f64, u64),
    None,
    Default,
}

impl Given {
    fn number(self) -> Option<(f64, u64)> {
        match self {
            Given::Number(ratio, secs) => Some((ratio, secs)),
            Given::None | Given::Default => None,
        }
    }

    /// As a torrent's own: `None` gives it the broker's again.
    fn own(self) -> Option<SeedLimit<(f64, u64)>> {
        match self {
            Given::Number(ratio, secs) => Some(SeedLimit::At((ratio, secs))),
            Given::None => Some(SeedLimit::Unlimited),
            Given::Default => None,
        }
    }
}

fn as_ratio(limit: SeedLimit<(f64, u64)>) -> SeedLimit<f64> {
    match limit {
        SeedLimit::At((ratio, _)) => SeedLimit::At(ratio),
        SeedLimit::Unlimited => SeedLimit::Unlimited,
    }
}

fn as_secs(limit: SeedLimit<(f64, u64)>) -> SeedLimit<u64> {
    match limit {
        SeedLimit::At((_, secs)) => SeedLimit::At(secs),
        SeedLimit::Unlimited => SeedLimit::Unlimited,
    }
}

/// A seeding limit's value: a number (a ratio above 0, or whole seconds from 1), `"none"`
/// or `null`, or `"default"`.
fn seed_limit(name: &str, value: Value, secs: bool) -> Result<Given, String> {
    match &value {
        Value::Null => return Ok(Given::None),
        Value::String(s) if matches!(s.as_str(), "none" | "unlimited") => return Ok(Given::None),
        Value::String(s) if s == "default" => return Ok(Given::Default),
        _ => {}
    }
    let bad = || match secs {
        true => format!("{name} is whole seconds from 1, \"none\" or \"default\", not {value}"),
        false => format!("{name} is a ratio above 0, \"none\" or \"default\", not {value}"),
    };
    match secs {
        true => value
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Given::Number(0.0, n))
            .ok_or_else(bad),
        false => value
            .as_f64()
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Given::Number(r, 0))
            .ok_or_else(bad),
    }
}

/// A field given, `null` included (`None` only when it is absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A torrent as a command names it: its id, as a number (`3`, as every reply prints it) or a
/// string (`"3"`), or its info hash.
#[derive(Debug)]
struct TorrentName(String);

impl<'de> Deserialize<'de> for TorrentName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(TorrentName(s)),
            Value::Number(n) if n.is_u64() => Ok(TorrentName(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "torrent must be an id (3 or \"3\") or an info hash, not {other}"
            ))),
        }
    }
}

impl std::ops::Deref for TorrentName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A file as a command names it: its index as a number (`3`) or a string (`"3"`), or its
/// path (`"sub/a.mkv"`; `"./3"` is the file whose path is `3`).
#[derive(Debug)]
struct FileName(FileRef);

impl<'de> Deserialize<'de> for FileName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(FileName(super::cat::file_ref(&s))),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| FileName(FileRef::Index(n)))
                .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a file index"))),
            other => Err(serde::de::Error::custom(format!(
                "a file is an index (3) or a path (\"sub/a.mkv\"), not {other}"
            ))),
        }
    }
}

fn file_refs(names: Option<Vec<FileName>>) -> Option<Vec<FileRef>> {
    names.map(|names| names.into_iter().map(|name| name.0).collect())
}

/// A parsed input line.
enum Line {
    /// A command to send (boxed: a `queue` command is large beside `Shutdown`).
    Command(Box<Command>),
    /// `{"cmd":"shutdown"}`: the control inbox.
    Shutdown,
}

/// What the event thread needs to know about a request it will see the reply of.
struct Pending {
    /// The caller's `request` value, echoed in the reply.
    request: Value,
    /// `make`: where to write the .torrent.
    make_output: Option<PathBuf>,
    /// The shutdown barrier: its reply ends the session.
    finishes: bool,
}

/// A `status` or `list` the board answers, and its caller's `request` value.
struct BoardRead {
    request: Value,
    read: Read,
}

enum Read {
    Status(TorrentRef),
    List,
}

/// Requests waiting for replies. Replies are printed under its lock, so a board read can
/// tell whether every earlier reply is out, and a `cat` can wait for that.
type PendingMap = Arc<Pendings>;

#[derive(Default)]
struct Pendings {
    waiting: Mutex<HashMap<RequestId, Pending>>,
    /// Told whenever a reply is printed.
    answered: std::sync::Condvar,
}

impl Pendings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Pending>> {
        lock(&self.waiting)
    }

    /// Waits until every request sent so far has its reply printed.
    fn wait_until_answered(&self) {
        let mut waiting = self.lock();
        while !waiting.is_empty() {
            waiting = self
                .answered
                .wait(waiting)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The board, shared by both threads (reads are done under its lock, which also lets a
/// superseded board be replaced).
type SharedBoard = Option<Arc<Mutex<Board>>>;

pub fn run(ctx: &Context) -> Result<Exit, Error> {
    let mut patron = ctx.patron()?;
    let pending: PendingMap = Arc::default();
    let board: SharedBoard = patron.board().ok().map(|b| Arc::new(Mutex::new(b)));
    let reader = {
        let (requester, pending, board) = (patron.requester(), pending.clone(), board.clone());
        let connect = ctx.connect.clone();
        std::thread::spawn(move || read_commands(&requester, &pending, &board, &connect))
    };
    let exit = loop {
        let event = match patron.next_event() {
            Ok(event) => event,
            Err(error) => {
                out!("{}", error_json(&error, Value::Null));
                out!(
                    "{}",
                    json!({"event": "finished", "reason": error.to_string()})
                );
                break Exit::of(&error);
            }
        };
        let mut waiting = pending.lock();
        let answered = event.request().and_then(|id| waiting.remove(&id));
        if answered.is_some() {
            pending.answered.notify_all();
        }
        match answered {
            Some(Pending {
                finishes: true,
                request,
                ..
            }) => {
                out!("{}", json!({"event": "finished", "request": request}));
                break Exit::Success;
            }
            Some(pending) => out!("{}", reply_json(event, pending)),
            // Status updates and notices. After `broker-stopping` or `disconnected` the
            // connection closes, and the next receive ends the session above.
            None => out!("{}", event_json(event)),
        }
    };
    // The reader may still block on stdin: it ends with the process.
    drop(reader);
    Ok(exit)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `status` or `list` answered from the board (as its reply from the broker would read).
fn answer_from_board(board: &SharedBoard, BoardRead { request, read }: BoardRead) -> Value {
    let Some(board) = board else {
        return json!({"event": "error", "kind": "internal", "message": "no board", "request": request});
    };
    let mut board = lock(board);
    if let Err(error) = board.refresh() {
        return error_json(&error, request);
    }
    let mut value = match read {
        Read::List => json!({
            "event": "list",
            "torrents": board.list().iter().map(summary_json).collect::<Vec<_>>(),
        }),
        Read::Status(torrent) => match board.get(torrent) {
            Some(status) => status_json(&status),
            // The board shows every torrent the broker knows (placeholders included) once
            // the reply that made it known is out: the broker says this much itself.
            None => {
                let error = Error::Request(ProtoError::unknown_torrent(format!(
                    "no torrent {torrent} runs"
                )));
                return error_json(&error, request);
            }
        },
    };
    value["request"] = request;
    value
}

/// The reader thread: one command per line until EOF or `shutdown`, then the barrier.
fn read_commands(
    requester: &Requester,
    pending: &PendingMap,
    board: &SharedBoard,
    connect: &ConnectOptions,
) {
    let cats = Cats::default();
    let mut shutdown_asked = false;
    let mut number = 0u64;
    let mut finish_request = Value::Null;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let (request, line) = match parse(&line, number) {
            Ok(parsed) => parsed,
            Err((request, message)) => {
                out!(
                    "{}",
                    json!({"event": "error", "kind": "bad-line", "line": number,
                           "request": request, "message": message})
                );
                continue;
            }
        };
        let command = match line {
            Line::Command(command) => match *command {
                Command::Cat {
                    torrent,
                    file,
                    offset,
                    to,
                } => {
                    // Its stream opens on a connection of its own: only once every earlier
                    // line's reply is out does it see what they did (an `add` just before
                    // it).
                    pending.wait_until_answered();
                    cats.start(connect, request, torrent, file, offset, to);
                    continue;
                }
                command => command,
            },
            Line::Shutdown => {
                finish_request = request;
                shutdown_asked = true;
                break;
            }
        };
        // A read the board can answer when every earlier reply is out. Later, the broker
        // could already have done later lines, which the board would show: ask it instead.
        if let (Some(_), Some(read)) = (board, board_read(&command)) {
            let waiting = pending.lock();
            if waiting.is_empty() {
                let read = BoardRead {
                    request: request.clone(),
                    read,
                };
                out!("{}", answer_from_board(board, read));
                continue;
            }
        }
        let (body, make_output) = match body_of(command) {
            Ok(body) => body,
            Err(message) => {
                out!(
                    "{}",
                    json!({"event": "error", "kind": "bad-line", "line": number,
                           "request": request, "message": message})
                );
                continue;
            }
        };
        let pending_entry = Pending {
            request: request.clone(),
            make_output,
            finishes: false,
        };
        if let Err(error) = send(requester, pending, body, pending_entry) {
            out!("{}", error_json(&error, request));
        }
    }
    // Every `cat` still writing owes its reply too; `shutdown` stops them first.
    cats.wait_all(shutdown_asked);
    // EOF or shutdown: a cheap request whose reply marks the end of all earlier ones.
    let barrier = Pending {
        request: finish_request,
        make_output: None,
        finishes: true,
    };
    if let Err(error) = send(requester, pending, RequestBody::BrokerInfo, barrier) {
        // No broker to answer: the event thread sees the loss and finishes itself.
        eprintln!("patron-client: {error}");
    }
}

/// The `cat` commands still writing, each on a thread and a connection of its own.
#[derive(Default)]
struct Cats {
    running: Arc<(Mutex<usize>, std::sync::Condvar)>,
    /// Set by `shutdown`: running cats stop and say so.
    cancel: Arc<AtomicBool>,
}

/// `cat`s one pipe session may run at once.
const MAX_CATS: usize = 16;
/// How long a `cat` waits for someone to open its FIFO for reading.
const FIFO_OPEN_LIMIT: Duration = Duration::from_secs(30);

impl Cats {
    fn start(
        &self,
        connect: &ConnectOptions,
        request: Value,
        torrent: TorrentName,
        file: Option<Value>,
        offset: u64,
        to: PathBuf,
    ) {
        {
            let mut running = lock(&self.running.0);
            if *running >= MAX_CATS {
                let error = Error::Request(ProtoError::limit_reached(format!(
                    "a pipe session runs at most {MAX_CATS} cats at once"
                )));
                out!("{}", error_json(&error, request));
                return;
            }
            *running += 1;
        }
        let (running, cancel) = (self.running.clone(), self.cancel.clone());
        let connect = connect.clone();
        std::thread::spawn(move || {
            let mut reply = match cat_to(&connect, &torrent, file, offset, &to, &cancel) {
                Ok(bytes) => {
                    json!({"event": "cat-done", "bytes": bytes, "to": to.display().to_string()})
                }
                Err(error) => output::error_json(&error),
            };
            reply["request"] = request;
            out!("{reply}");
            *lock(&running.0) -= 1;
            running.1.notify_all();
        });
    }

    /// Waits for every cat to end; with `cancel`, has them stop first.
    fn wait_all(&self, cancel: bool) {
        if cancel {
            self.cancel.store(true, Ordering::Relaxed);
        }
        let mut running = lock(&self.running.0);
        while *running > 0 {
            running = self
                .running
                .1
                .wait(running)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Streams a file of a torrent to `to` (a FIFO, or a new file); returns the bytes written.
fn cat_to(
    connect: &ConnectOptions,
    torrent: &str,
    file: Option<Value>,
    offset: u64,
    to: &Path,
    cancel: &Arc<AtomicBool>,
) -> Result<u64, Error> {
    let bad = |message: String| Error::Request(ProtoError::bad_request(message));
    let file = match file {
        None => None,
        Some(Value::Number(n)) => Some(FileRef::Index(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(format!("{n} is not a file index")))?,
        )),
        Some(Value::String(s)) => Some(super::cat::file_ref(&s)),
        Some(other) => return Err(bad(format!("file must be an index or a path, not {other}"))),
    };
    let torrent = torrent_ref(torrent).map_err(bad)?;
    // The stream first: a bad torrent or file is said at once, and leaves no empty file.
    let mut stream = Stream::open(connect, torrent, file, offset)?;
    let mut output = open_target(to, cancel)?;
    super::cat::copy(&mut stream, &mut output, Some(cancel))
}

/// Where a pipe `cat` writes: a new file, or a FIFO kept non-blocking so that a reader that
/// stops reading (a paused player) cannot hold the writer past a `shutdown`.
struct Target {
    file: std::fs::File,
    cancel: Arc<AtomicBool>,
}

impl std::io::Write for Target {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            match (&self.file).write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.cancel.load(Ordering::Relaxed) {
                        return Err(std::io::Error::other("the session shut down"));
                    }
                    let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLOUT)];
                    // Woken when there is room, or when the reader goes (POLLERR).
                    let _ = poll(&mut fds, PollTimeout::from(250u16));
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsFd for Target {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A FIFO as it is (once a reader opens it, within [`FIFO_OPEN_LIMIT`]), or a new file;
/// never anything else, and never through a symlink.
fn open_target(to: &Path, cancel: &Arc<AtomicBool>) -> Result<Target, Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |source: std::io::Error| Error::Io {
        context: format!("cannot write {}", to.display()),
        source,
    };
    let deadline = std::time::Instant::now() + FIFO_OPEN_LIMIT;
    loop {
        // Not blocking: a FIFO nobody reads yet is ENXIO, tried again, not a hang.
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(to);
        let cancel = cancel.clone();
        match opened {
            Ok(file) => {
                let meta = file.metadata().map_err(io)?;
                if !meta.file_type().is_fifo() {
                    return Err(bad_target(to));
                }
                return Ok(Target { file, cancel });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Request(ProtoError::shutting_down(
                        "stopped before anyone opened the FIFO: the session shut down",
                    )));
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::Io {
                        context: format!(
                            "nobody opened the FIFO {} for reading within {} s",
                            to.display(),
                            FIFO_OPEN_LIMIT.as_secs()
                        ),
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
                    .open(to)
                    .map_err(io)?;
                return Ok(Target { file, cancel });
            }
            // A symlink (ELOOP) or anything else that exists: refused.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(bad_target(to)),
            Err(e) => return Err(io(e)),
        }
    }
}

fn bad_target(to: &Path) -> Error {
    Error::Request(ProtoError::bad_request(format!(
        "{} exists and is not a FIFO: cat writes only into a FIFO or a new file",
        to.display()
    )))
}

/// Sends while holding the map, so the reply cannot be seen before it is recorded.
fn send(
    requester: &Requester,
    pending: &PendingMap,
    body: RequestBody,
    entry: Pending,
) -> Result<(), Error> {
    // Recorded before it is sent (the reply may come at once, to the reader thread), and
    // the table not held during the send: it blocks while the broker holds this patron
    // back, and the reader must go on taking replies meanwhile.
    let id = requester.reserve();
    pending.lock().insert(id, entry);
    if let Err(e) = requester.send_as(id, body) {
        pending.lock().remove(&id);
        pending.answered.notify_all();
        return Err(e);
    }
    Ok(())
}

/// The board read a command stands for, if it is one (`status` of a reference that parses,
/// `list`).
fn board_read(command: &Command) -> Option<Read> {
    match command {
        Command::List {} => Some(Read::List),
        Command::Status { torrent } => torrent_ref(torrent).ok().map(Read::Status),
        _ => None,
    }
}

/// Splits a line into its `request` (default: the line number) and its command.
fn parse(line: &str, number: u64) -> Result<(Value, Line), (Value, String)> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        (
            Value::from(number),
            format!("line {number} is not JSON: {e}"),
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err((
            Value::from(number),
            format!("line {number} is not a JSON object"),
        ));
    };
    let request = object.remove("request").unwrap_or(Value::from(number));
    if object.get("cmd").and_then(Value::as_str) == Some("shutdown") && object.len() == 1 {
        return Ok((request, Line::Shutdown));
    }
    match serde_json::from_value(Value::Object(object)) {
        Ok(command) => Ok((request, Line::Command(Box::new(command)))),
        Err(e) => Err((request, format!("line {number}: {e}"))),
    }
}

/// An absolute path as the broker wants it, or the reason for an error line.
fn absolute(path: &Path) -> Result<String, String> {
    super::absolute(path)
        .map(|p| p.display().to_string())
        .map_err(|e| e.to_string())
}

/// The request a command stands for, and for `make` where to write the result.
fn body_of(command: Command) -> Result<(RequestBody, Option<PathBuf>), String> {
    Ok(match command {
        Command::Add {
            torrent,
            torrent_base64,
            magnet,
            output,
            peers,
            paused,
            ephemeral,
            overwrite,
            only,
            max_download_rate,
            max_upload_rate,
            ratio_limit,
            seed_time_limit_secs,
            idle_seed_limit_secs,
            move_completed_to,
            labels,
        } => {
            let own = |name: &str, value: Option<Value>, secs: bool| match value {
                None => Ok(None),
                Some(value) => match seed_limit(name, value, secs)? {
                    Given::Default => {
                        Err(format!("{name}: \"default\" is for `seeding` of a torrent"))
                    }
                    given => Ok(given.own()),
                },
            };
            let seeding = TorrentSeeding {
                ratio: own("ratio_limit", ratio_limit, false)?.map(as_ratio),
                seed_time_secs: own("seed_time_limit_secs", seed_time_limit_secs, true)?
                    .map(as_secs),
                idle_secs: own("idle_seed_limit_secs", idle_seed_limit_secs, true)?.map(as_secs),
            };
            let source = match (torrent, torrent_base64, magnet) {
                (Some(path), None, None) => {
                    TorrentSource::TorrentFile(std::fs::read(&path).map_err(|e| {
                        format!(
                            "cannot read {}: {}",
                            path.display(),
                            patron_client::plain_io_error(&e)
                        )
                    })?)
                }
                (None, Some(encoded), None) => {
                    use base64::Engine;
                    TorrentSource::TorrentFile(
                        base64::engine::general_purpose::STANDARD
                            .decode(encoded.trim())
                            .map_err(|e| format!("torrent_base64 is not base64: {e}"))?,
                    )
                }
                (None, None, Some(link)) => TorrentSource::Magnet(link),
                _ => {
                    return Err("add needs exactly one of torrent, torrent_base64 or magnet".into())
                }
            };
            let mut create = CreateNewTorrent::new(source);
            let output = match output {
                Some(dir) => dir,
                None => std::env::current_dir().map_err(|e| e.to_string())?,
            };
            create.output = Some(absolute(&output)?);
            create.peers = peers
                .iter()
                .map(|p| super::peer(p))
                .collect::<Result<_, _>>()?;
            create.paused = paused;
            create.ephemeral = ephemeral;
            create.overwrite = overwrite;
            create.only_files = file_refs(only);
            create.max_download_rate = max_download_rate;
            create.max_upload_rate = max_upload_rate;
            create.seeding = seeding;
            create.move_completed_to = move_completed_to.map(|dir| absolute(&dir)).transpose()?;
            create.labels = labels;
            (RequestBody::CreateNewTorrent(create), None)
        }
        Command::Close {
            torrent,
            delete_data,
            force,
        } => (
            RequestBody::CloseTorrent(CloseTorrent {
                torrent: torrent_ref(&torrent)?,
                delete_data,
                force,
            }),
            None,
        ),
        Command::List {} => (RequestBody::List, None),
        Command::Status { torrent } => (RequestBody::Status(torrent_ref(&torrent)?), None),
        Command::Follow { torrent } => (RequestBody::Follow(torrent_ref(&torrent)?), None),
        Command::Make {
            path,
            output,
            piece_size,
            trackers,
            seed,
        } => {
            if let Some(output) = &output {
                if output.exists() {
                    return Err(format!("{} already exists", output.display()));
                }
            }
            let make = MakeTorrent {
                path: absolute(&path)?,
                piece_size,
                trackers,
                seed,
            };
            (RequestBody::MakeTorrent(make), output)
        }
        Command::Info {} => (RequestBody::BrokerInfo, None),
        Command::Limits {
            torrent,
            max_download_rate,
            max_upload_rate,
            alt_download_rate,
            alt_upload_rate,
            alt_schedule,
            alt_on,
        } => {
            let schedule = alt_schedule
                .map(|value| match value {
                    Value::Null => Ok(None),
                    Value::String(text) => AltSchedule::parse(&text).map(Some).ok_or_else(|| {
                        format!(
                            "alt_schedule {text:?} is not days and hours (\"mon-fri 09:00-18:00\")"
                        )
                    }),
                    other => Err(format!("alt_schedule is a string or null, not {other}")),
                })
                .transpose()?;
            (
                RequestBody::SetLimits(SetLimits {
                    torrent: torrent.map(|t| torrent_ref(&t)).transpose()?,
                    download: max_download_rate,
                    upload: max_upload_rate,
                    alt: AltChange {
                        download: alt_download_rate,
                        upload: alt_upload_rate,
                        schedule,
                        hours: None,
                        on: alt_on,
                    },
                }),
                None,
            )
        }
        Command::Queue {
            max_active_downloads,
            max_active_seeds,
            stalled_after_secs,
        } => {
            let count = |name: &str, value: Option<Value>| -> Result<Option<Option<u32>>, String> {
                value
                    .map(|v| match v {
                        Value::Null => Ok(None),
                        // As the CLI and the broker's flags take them: "5", "none", -1.
                        Value::String(s) => patron_client::proto::text::parse_count_limit(&s)
                            .ok_or_else(|| format!("{name} is a number of torrents, or \"none\"")),
                        v if v.as_i64() == Some(-1) => Ok(None),
                        v => v
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .map(Some)
                            .ok_or_else(|| format!("{name} is a number of torrents, or \"none\"")),
                    })
                    .transpose()
            };
            let stall = stalled_after_secs
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::String(s) if matches!(s.as_str(), "never" | "none") => Ok(None),
                    v => v.as_u64().filter(|&n| n > 0).map(Some).ok_or_else(|| {
                        "stalled_after_secs is a number of seconds (at least 1), or \"never\""
                            .to_owned()
                    }),
                })
                .transpose()?;
            let change = SetQueue {
                max_active_downloads: count("max_active_downloads", max_active_downloads)?,
                max_active_seeds: count("max_active_seeds", max_active_seeds)?,
                stalled_after_secs: stall,
            };
            (RequestBody::SetQueue(change), None)
        }
        Command::Seeding {
            torrent,
            ratio_limit,
            seed_time_limit_secs,
            idle_seed_limit_secs,
            seed_limit_action,
        } => {
            let given = |name: &str, value: Option<Value>, secs: bool| {
                value.map(|v| seed_limit(name, v, secs)).transpose()
            };
            let ratio = given("ratio_limit", ratio_limit, false)?;
            let seed_time = given("seed_time_limit_secs", seed_time_limit_secs, true)?;
            let idle = given("idle_seed_limit_secs", idle_seed_limit_secs, true)?;
            let action = seed_limit_action
                .map(|a| {
                    SeedAction::parse(&a)
                        .ok_or_else(|| format!("seed_limit_action is pause or close, not {a:?}"))
                })
                .transpose()?;
            let mut change = SetSeeding {
                action,
                ..SetSeeding::default()
            };
            match torrent {
                Some(torrent) => {
                    change.torrent = Some(torrent_ref(&torrent)?);
                    change.own = OwnSeedingChange {
                        ratio: ratio.map(|g| g.own().map(as_ratio)),
                        seed_time_secs: seed_time.map(|g| g.own().map(as_secs)),
                        idle_secs: idle.map(|g| g.own().map(as_secs)),
                    };
                }
                None => {
                    let broker = |g: Given| match g {
                        Given::Default => {
                            Err("\"default\" is for a torrent's own limits".to_owned())
                        }
                        g => Ok(g.number()),
                    };
                    change.ratio = ratio.map(broker).transpose()?.map(|n| n.map(|n| n.0));
                    change.seed_time_secs =
                        seed_time.map(broker).transpose()?.map(|n| n.map(|n| n.1));
                    change.idle_secs = idle.map(broker).transpose()?.map(|n| n.map(|n| n.1));
                }
            }
            (RequestBody::SetSeeding(change), None)
        }
        Command::QueueMove { torrent, to } => {
            let to = QueueMove::parse(&to)
                .ok_or_else(|| format!("to is top, up, down or bottom, not {to:?}"))?;
            let torrent = torrent_ref(&torrent)?;
            (RequestBody::MoveInQueue(MoveInQueue { torrent, to }), None)
        }
        Command::Pause { torrent } => (RequestBody::Pause(torrent_ref(&torrent)?), None),
        Command::Resume { torrent } => (RequestBody::Resume(torrent_ref(&torrent)?), None),
        Command::Recheck { torrent } => (RequestBody::Recheck(torrent_ref(&torrent)?), None),
        Command::Label { torrent, labels } => (
            RequestBody::SetLabels(patron_client::proto::SetLabels {
                torrent: torrent_ref(&torrent)?,
                labels,
            }),
            None,
        ),
        Command::Labels {
            name,
            folder,
            max_download_rate,
            max_upload_rate,
            ratio_limit,
            seed_time_limit_secs,
            idle_seed_limit_secs,
            remove,
        } => {
            // A label's own limit: a value, "none" (none at all), or "default" (lifted).
            let own = |key: &str, value: Option<Value>, secs: bool| match value {
                None => Ok::<_, String>(None),
                Some(value) => Ok(Some(seed_limit(key, value, secs)?.own())),
            };
            let folder = match folder {
                None => None,
                Some(Value::String(s)) if s == "none" => Some(None),
                Some(Value::String(s)) => Some(Some(absolute(Path::new(&s))?)),
                Some(other) => return Err(format!("folder is a path or \"none\", not {other}")),
            };
            let rate = |r: Option<u64>| r.map(|r| (r != 0).then_some(r));
            (
                RequestBody::ConfigureLabel(Box::new(patron_client::proto::ConfigureLabel {
                    name,
                    folder,
                    download: rate(max_download_rate),
                    upload: rate(max_upload_rate),
                    seeding: patron_client::proto::OwnSeedingChange {
                        ratio: own("ratio_limit", ratio_limit, false)?.map(|g| g.map(as_ratio)),
                        seed_time_secs: own("seed_time_limit_secs", seed_time_limit_secs, true)?
                            .map(|g| g.map(as_secs)),
                        idle_secs: own("idle_seed_limit_secs", idle_seed_limit_secs, true)?
                            .map(|g| g.map(as_secs)),
                    },
                    remove,
                })),
                None,
            )
        }
        Command::Move { torrent, to } => (
            RequestBody::MoveStorage(patron_client::proto::MoveStorage {
                torrent: torrent_ref(&torrent)?,
                to: absolute(&to)?,
            }),
            None,
        ),
        Command::Files { torrent, only } => (
            RequestBody::Files(FilesRequest {
                torrent: torrent_ref(&torrent)?,
                only: file_refs(only),
            }),
            None,
        ),
        // Run by the reader itself (`Cats`), never sent as one request.
        Command::Cat { .. } => return Err("cat is not a single request".into()),
        Command::Peers { torrent, add } => (
            RequestBody::Peers(PeersRequest {
                torrent: torrent_ref(&torrent)?,
                add: add
                    .iter()
                    .map(|p| super::peer(p))
                    .collect::<Result<_, _>>()?,
            }),
            None,
        ),
    })
}

fn error_json(error: &Error, request: Value) -> Value {
    let mut value = output::error_json(error);
    value["request"] = request;
    value
}

/// A reply, with the caller's `request`.
fn reply_json(event: Event, pending: Pending) -> Value {
    let mut value = match event {
        Event::TorrentMade { made, .. } => {
            let mut value = made_json(&made);
            match &pending.make_output {
                Some(path) => match write_new(path, &made.torrent_file) {
                    Ok(()) => value["torrent_file"] = path.display().to_string().into(),
                    Err(message) => {
                        value = json!({"event": "error", "kind": "io", "message": message})
                    }
                },
                None => {
                    use base64::Engine;
                    value["torrent_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(&made.torrent_file)
                        .into();
                }
            }
            value
        }
        other => event_json(other),
    };
    value["request"] = pending.request;
    value
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
