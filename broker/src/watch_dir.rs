//! The watch folder (`--watch-dir`, DESIGN §13): each `.torrent` or `.magnet` file put
//! there is added once, then renamed `NAME.added`, or `NAME.failed` with the reason in
//! `NAME.failed.txt` beside it, as transmission's and qBittorrent's watch folders.
//!
//! It is a patron of the service like any other (the broker's own, holding nothing): every
//! check of an add applies. Files are read as untrusted data: never through a link, never a
//! FIFO or device waited on, at most [`MAX_FILE_BYTES`].
//!
//! - **Not read early.** A file is taken when its writer closes it (`IN_CLOSE_WRITE`) or it
//!   is renamed in (`IN_MOVED_TO`), or, for files there already (at the start, or missed),
//!   once it has not changed for [`SETTLE`]: a file being written is left alone.
//! - **Neither lost nor doubled by a crash.** The add is recorded before the file is
//!   renamed; a broker killed in between finds the file again at its next start, and adding
//!   it again joins the torrent it already runs (renamed `.added` then).

use crate::service::{Service, Started, POLICY};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::Mode;
use proto::text::shown;
use proto::{CreateNewTorrent, TorrentSource};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The largest watched file read (a .torrent of a very large torrent is a few MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How long a file found by a look (not by its writer closing it) must stay unchanged.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the folder is looked at besides its events (files missed, files settling).
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Adds from the watch folder under way at once (a magnet waits for its metadata: the
/// others go on meanwhile).
const ADDS_AT_ONCE: usize = 8;

/// Starts watching `dir` on a thread of its own: its files are added through `service`.
pub fn start(service: Arc<Service>, dir: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context;
    let folder = open_folder(&dir)
        .with_context(|| format!("cannot open the watch folder {}", dir.display()))?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .context("cannot watch (inotify)")?;
    let watch =
        add_watch(&inotify, &dir).with_context(|| format!("cannot watch {}", dir.display()))?;
    tracing::info!(dir = %shown(&dir.display().to_string()), "watching for .torrent and .magnet files");
    let shared = Arc::new(Shared {
        turns: Arc::new(tokio::sync::Semaphore::new(ADDS_AT_ONCE)),
        service,
        folder: Mutex::new(Arc::new(folder)),
        in_flight: Mutex::new(HashSet::new()),
        handled: Mutex::new(HashMap::new()),
    });
    std::thread::Builder::new()
        .name("watch-dir".into())
        .spawn(move || {
            let mut watcher = Watcher {
                shared,
                dir,
                inotify,
                watch,
                seen: HashMap::new(),
                said: None,
            };
            watcher.run()
        })?;
    Ok(())
}

fn open_folder(dir: &Path) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn add_watch(inotify: &Inotify, dir: &Path) -> nix::Result<WatchDescriptor> {
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW,
    )
}

/// A file as it was when taken: its inode and last change.
type Identity = (u64, SystemTime);

/// What the watcher's thread and its adds share.
struct Shared {
    service: Arc<Service>,
    /// The folder, opened: its files are reached from it, by name only (made again if the
    /// folder is replaced).
    folder: Mutex<Arc<OwnedFd>>,
    /// Files being added now: not taken again meanwhile.
    in_flight: Mutex<HashSet<OsString>>,
    /// Files added (or failed) that could not be renamed: not added again while they are
    /// the same file.
    handled: Mutex<HashMap<OsString, Identity>>,
    turns: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Watcher {
    shared: Arc<Shared>,
    dir: PathBuf,
    inotify: Inotify,
    watch: WatchDescriptor,
    /// Files found by a look and waiting to settle.
    seen: HashMap<OsString, SystemTime>,
    /// What was last said about the folder itself (gone, a link), said once.
    said: Option<String>,
}

/// Whether a name is one the watch folder takes: `NAME.torrent` or `NAME.magnet`.
fn watched(name: &OsStr) -> bool {
    let name = name.as_bytes();
    !name.starts_with(b".") && (name.ends_with(b".torrent") || name.ends_with(b".magnet"))
}

impl Watcher {
    fn run(&mut self) {
        let mut last_look: Option<std::time::Instant> = None;
        loop {
            if self.shared.service.is_stopping() {
                return;
            }
            // A look every LOOK_EVERY, not after every event (a look takes what has not
            // changed for SETTLE: never a file being written).
            if last_look.is_none_or(|at| at.elapsed() >= LOOK_EVERY) {
                self.look();
                last_look = Some(std::time::Instant::now());
            }
            let left = last_look
                .map(|at| LOOK_EVERY.saturating_sub(at.elapsed()))
                .unwrap_or(LOOK_EVERY);
            let mut fds = [nix::poll::PollFd::new(
                self.inotify.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let timeout = nix::poll::PollTimeout::try_from(left.as_millis().max(1) as i32)
                .unwrap_or(nix::poll::PollTimeout::MAX);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("the watch folder is not watched any more: {e}");
                    return;
                }
            }
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => continue,
                Err(e) => {
                    tracing::error!("the watch folder is not watched any more: {e}");
                    return;
                }
            };
            for event in events {
                if let Some(name) = event.name.filter(|n| watched(n)) {
                    // Closed by its writer, or renamed in: whole.
                    self.seen.remove(&name);
                    self.take(&name);
                }
            }
        }
    }

    /// Says something about the folder itself, once until it changes.
    fn say(&mut self, what: String) {
        if self.said.as_ref() != Some(&what) {
            tracing::warn!("{what}");
            self.said = Some(what);
        }
    }

    /// Follows the folder if it was made again (moved away, a new one made): the new one
    /// is watched. One replaced by a link is not followed.
    fn follow_the_folder(&mut self) -> bool {
        let dir = shown(&self.dir.display().to_string());
        let meta = match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) => meta,
            Err(_) => {
                self.say(format!(
                    "the watch folder {dir} is gone: nothing is added until it is made again"
                ));
                return false;
            }
        };
        if !meta.is_dir() {
            self.say(format!(
                "the watch folder {dir} is not a folder now (a symbolic link?): nothing is added from it until it is one again"
            ));
            return false;
        }
        let same = nix::sys::stat::fstat(lock(&self.shared.folder).as_raw_fd())
            .is_ok_and(|open| open.st_dev == meta.dev() && open.st_ino == meta.ino());
        if same {
            self.said = None;
            return true;
        }
        match (open_folder(&self.dir), add_watch(&self.inotify, &self.dir)) {
            (Ok(folder), Ok(watch)) => {
                let _ = self.inotify.rm_watch(self.watch);
                self.watch = watch;
                *lock(&self.shared.folder) = Arc::new(folder);
                self.seen.clear();
                self.said = None;
                tracing::warn!("the watch folder {dir} was made again: the new one is watched");
                true
            }
            (Err(e), _) | (_, Err(e)) => {
                self.say(format!(
                    "the watch folder {dir} cannot be watched again: {e}"
                ));
                false
            }
        }
    }

    /// Takes the files there that have settled (not changed for [`SETTLE`]).
    fn look(&mut self) {
        if !self.follow_the_folder() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut there = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !watched(&name) {
                continue;
            }
            there.push(name.clone());
            // Not followed: a link's own time.
            let changed = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if now.duration_since(changed).is_ok_and(|age| age >= SETTLE) {
                self.seen.remove(&name);
                self.take(&name);
            } else {
                self.seen.insert(name, changed);
            }
        }
        self.seen.retain(|name, _| there.contains(name));
        lock(&self.shared.handled).retain(|name, _| there.contains(name));
    }

    /// Reads one file and adds it in a task of its own, which then renames it `.added` or
    /// `.failed` (with the reason beside it).
    fn take(&self, name: &OsStr) {
        let shared = &self.shared;
        if lock(&shared.in_flight).contains(name) {
            return;
        }
        let folder = lock(&shared.folder).clone();
        let read = read(&folder, name);
        let (source, identity) = match read {
            Ok(None) => return, // gone meanwhile
            Ok(Some((source, identity))) => (Ok(source), identity),
            Err((why, identity)) => (Err(why), identity),
        };
        if lock(&shared.handled).get(name) == Some(&identity) {
            return; // handled, and could not be renamed: not again
        }
        lock(&shared.in_flight).insert(name.to_os_string());
        let shared = shared.clone();
        let name = name.to_os_string();
        let runtime = shared.service.runtime_handle();
        runtime.spawn(async move {
            let turn = shared.turns.clone().acquire_owned().await;
            let outcome = match source {
                Ok(source) => {
                    let create = CreateNewTorrent::new(source);
                    shared.service.add(POLICY, create).await
                }
                Err(why) => Err(proto::ProtoError::invalid_torrent(why)),
            };
            drop(turn);
            let done = tokio::task::spawn_blocking({
                let shared = shared.clone();
                let name = name.clone();
                move || finish(&shared, &folder, &name, outcome)
            })
            .await
            .unwrap_or(false);
            if !done {
                lock(&shared.handled).insert(name.clone(), identity);
            }
            lock(&shared.in_flight).remove(&name);
        });
    }
}

/// After an add: shown, then the file renamed. Returns whether it was renamed (or left
/// for the next start, the broker stopping).
fn finish(
    shared: &Shared,
    folder: &OwnedFd,
    name: &OsStr,
    outcome: Result<Started, proto::ProtoError>,
) -> bool {
    let shown_name = shown(&name.to_string_lossy());
    // On the board before the file is renamed (as an add's reply is), and watched.
    if let Ok(Started::New { torrent, .. } | Started::Joined { torrent, .. }) = &outcome {
        shared.service.sync_board(torrent.id);
        shared.service.status_nudge.notify_one();
    }
    // Added and recorded, not renamed yet: a crash here must neither lose nor double it.
    crate::stop_point::at("watch:added");
    match outcome {
        Ok(Started::New { torrent, .. }) => {
            tracing::info!(torrent = %torrent.id, "added from the watch folder: {shown_name}");
            rename(folder, name, "added").is_some()
        }
        Ok(Started::Joined { torrent, .. }) => {
            tracing::info!(torrent = %torrent.id, "from the watch folder, already running: {shown_name}");
            rename(folder, name, "added").is_some()
        }
        // Stopping: left as it is, for the next start.
        Err(error) if error.kind == proto::ErrorKind::ShuttingDown => true,
        Err(error) => {
            tracing::warn!(
                "not added from the watch folder: {shown_name}: {}",
                error.message
            );
            fail(folder, name, &error.message)
        }
    }
}

/// The file's torrent (its bytes, or the magnet link in it) and what it is (to know it
/// again); `Ok(None)`: it is gone. A refusal says why, with what it is.
#[allow(clippy::type_complexity)]
fn read(
    folder: &OwnedFd,
    name: &OsStr,
) -> Result<Option<(TorrentSource, Identity)>, (String, Identity)> {
    let unknown: Identity = (0, SystemTime::UNIX_EPOCH);
    let fd = match nix::fcntl::openat(
        Some(folder.as_raw_fd()),
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err((
                "it is a symbolic link; the watch folder reads only regular files".into(),
                unknown,
            ))
        }
        Err(e) => return Err((format!("cannot open it: {e}"), unknown)),
    };
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file
        .metadata()
        .map_err(|e| (format!("cannot read it: {e}"), unknown))?;
    let identity: Identity = (
        meta.ino(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    );
    let refuse = |why: String| Err((why, identity));
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file (a FIFO, a device, a folder?)".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return refuse(format!(
            "it has {} bytes; a watched file has at most {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return refuse(format!("cannot read it: {e}"));
    }
    if name.as_bytes().ends_with(b".magnet") {
        let Ok(text) = String::from_utf8(bytes) else {
            return refuse("a .magnet file holds a magnet link as text, not UTF-8".into());
        };
        let link = text.trim();
        if link.is_empty() {
            return refuse("the .magnet file is empty".into());
        }
        return Ok(Some((TorrentSource::Magnet(link.to_owned()), identity)));
    }
    Ok(Some((TorrentSource::TorrentFile(bytes), identity)))
}

/// Renames `name` to `name.SUFFIX` (or `name.SUFFIX.2`... if that exists: nothing is
/// written over); the new name, if renamed.
fn rename(folder: &OwnedFd, name: &OsStr, suffix: &str) -> Option<OsString> {
    let shown_name = || shown(&name.to_string_lossy());
    for n in 1..=100 {
        let to = numbered(name, suffix, n);
        match rename_to(folder, name, &to) {
            Ok(()) => return Some(to),
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                tracing::warn!(
                    "cannot rename {} in the watch folder: {e}; it is not added again",
                    shown_name()
                );
                return None;
            }
        }
    }
    tracing::warn!(
        "cannot rename {}: a hundred .{suffix} names are taken; it is not added again",
        shown_name()
    );
    None
}

fn rename_to(folder: &OwnedFd, name: &OsStr, to: &OsStr) -> Result<(), Errno> {
    nix::fcntl::renameat2(
        Some(folder.as_raw_fd()),
        name,
        Some(folder.as_raw_fd()),
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
}

/// Renames `name` to `name.failed` (numbered as [`rename`]) with the reason in
/// `name.failed.txt`, written first: whoever sees the `.failed` file finds why beside it.
/// Returns whether it was renamed.
fn fail(folder: &OwnedFd, name: &OsStr, why: &str) -> bool {
    for n in 1..=100 {
        let failed = numbered(name, "failed", n);
        let mut reason = failed.clone();
        reason.push(".txt");
        match create(folder, &reason) {
            Ok(mut file) => {
                use std::io::Write;
                let _ = writeln!(file, "{}", shown(why));
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                tracing::warn!(
                    "cannot write why {} failed: {e}",
                    shown(&name.to_string_lossy())
                );
                return rename(folder, name, "failed").is_some();
            }
        }
        match rename_to(folder, name, &failed) {
            Ok(()) => return true,
            Err(e) => {
                let _ = nix::unistd::unlinkat(
                    Some(folder.as_raw_fd()),
                    reason.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                if e != Errno::EEXIST {
                    tracing::warn!(
                        "cannot rename {} in the watch folder: {e}; it is not added again",
                        shown(&name.to_string_lossy())
                    );
                    return false;
                }
            }
        }
    }
    false
}

/// A new file in the folder (never over anything, never through a link).
fn create(folder: &OwnedFd, name: &OsStr) -> Result<std::fs::File, Errno> {
    let fd = nix::fcntl::openat(
        Some(folder.as_raw_fd()),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `name.SUFFIX`, or `name.SUFFIX.N` past the first.
fn numbered(name: &OsStr, suffix: &str, n: u32) -> OsString {
    let mut to = name.to_os_string();
    to.push(format!(".{suffix}"));
    if n > 1 {
        to.push(format!(".{n}"));
    }
    to
}

/// The watch folder as given: a folder (made if missing).
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make the watch folder {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve the watch folder {}", dir.display()))
}
