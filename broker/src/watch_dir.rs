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
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::Mode;
use proto::text::shown;
use proto::{CreateNewTorrent, TorrentSource};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The largest watched file read (a .torrent of a very large torrent is a few MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How long a file found by a look (not by its writer closing it) must stay unchanged.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the folder is looked at besides its events (files missed, files settling).
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Starts watching `dir` on a thread of its own: its files are added through `service`.
pub fn start(service: Arc<Service>, dir: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context;
    let folder = nix::fcntl::open(
        &dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open the watch folder {}", dir.display()))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let folder = unsafe { OwnedFd::from_raw_fd(folder) };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .context("cannot watch (inotify)")?;
    inotify
        .add_watch(
            &dir,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
        )
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    tracing::info!(dir = %shown(&dir.display().to_string()), "watching for .torrent and .magnet files");
    std::thread::Builder::new()
        .name("watch-dir".into())
        .spawn(move || {
            let mut watcher = Watcher {
                service,
                dir,
                folder,
                seen: HashMap::new(),
            };
            watcher.run(&inotify)
        })?;
    Ok(())
}

struct Watcher {
    service: Arc<Service>,
    dir: PathBuf,
    /// The folder, opened once: its files are reached from it, by name only.
    folder: OwnedFd,
    /// Files found by a look and waiting to settle: when each last changed.
    seen: HashMap<OsString, SystemTime>,
}

/// Whether a name is one the watch folder takes: `NAME.torrent` or `NAME.magnet`.
fn watched(name: &OsStr) -> bool {
    let name = name.as_bytes();
    !name.starts_with(b".") && (name.ends_with(b".torrent") || name.ends_with(b".magnet"))
}

impl Watcher {
    fn run(&mut self, inotify: &Inotify) {
        loop {
            if self.service.is_stopping() {
                return;
            }
            self.look();
            // Events until the next look.
            let mut fds = [nix::poll::PollFd::new(
                inotify.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let timeout = nix::poll::PollTimeout::try_from(LOOK_EVERY.as_millis() as i32)
                .unwrap_or(nix::poll::PollTimeout::MAX);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("the watch folder is not watched any more: {e}");
                    return;
                }
            }
            let events = match inotify.read_events() {
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

    /// Takes the files there that have settled (not changed for [`SETTLE`]).
    fn look(&mut self) {
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
            let settled = now.duration_since(changed).is_ok_and(|age| age >= SETTLE);
            let same = self.seen.get(&name) == Some(&changed);
            if settled || same {
                self.seen.remove(&name);
                self.take(&name);
            } else {
                self.seen.insert(name, changed);
            }
        }
        self.seen.retain(|name, _| there.contains(name));
    }

    /// Adds one file, then renames it `.added` or `.failed` (with the reason beside it).
    fn take(&self, name: &OsStr) {
        let shown_name = shown(&name.to_string_lossy());
        let outcome = match self.read(name) {
            Ok(None) => return, // gone meanwhile
            Ok(Some(source)) => {
                let create = CreateNewTorrent::new(source);
                let service = self.service.clone();
                let runtime = self.service.runtime_handle();
                runtime.block_on(async move { service.add(POLICY, create).await })
            }
            Err(why) => Err(proto::ProtoError::invalid_torrent(why)),
        };
        // On the board before the file is renamed (as an add's reply is), and watched.
        if let Ok(Started::New { torrent, .. } | Started::Joined { torrent, .. }) = &outcome {
            self.service.sync_board(torrent.id);
            self.service.status_nudge.notify_one();
        }
        // Added and recorded, not renamed yet: a crash here must neither lose nor double it.
        crate::stop_point::at("watch:added");
        match outcome {
            Ok(Started::New { torrent, .. }) => {
                tracing::info!(torrent = %torrent.id, "added from the watch folder: {shown_name}");
                self.rename(name, "added");
            }
            Ok(Started::Joined { torrent, .. }) => {
                tracing::info!(torrent = %torrent.id, "from the watch folder, already running: {shown_name}");
                self.rename(name, "added");
            }
            // Stopping: left as it is, for the next start.
            Err(error) if error.kind == proto::ErrorKind::ShuttingDown => {}
            Err(error) => {
                tracing::warn!(
                    "not added from the watch folder: {shown_name}: {}",
                    error.message
                );
                self.fail(name, &error.message);
            }
        }
    }

    /// The file's torrent: its bytes, or the magnet link in it. `Ok(None)`: it is gone.
    fn read(&self, name: &OsStr) -> Result<Option<TorrentSource>, String> {
        let fd = match nix::fcntl::openat(
            Some(self.folder.as_raw_fd()),
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
                return Err(
                    "it is a symbolic link; the watch folder reads only regular files".into(),
                )
            }
            Err(e) => return Err(format!("cannot open it: {e}")),
        };
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read it: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("it is not a regular file (a FIFO, a device, a folder?)".into());
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "it has {} bytes; a watched file has at most {MAX_FILE_BYTES}",
                meta.len()
            ));
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if name.as_bytes().ends_with(b".magnet") {
            let text = String::from_utf8(bytes)
                .map_err(|_| "a .magnet file holds a magnet link as text, not UTF-8".to_owned())?;
            let link = text.trim();
            if link.is_empty() {
                return Err("the .magnet file is empty".into());
            }
            return Ok(Some(TorrentSource::Magnet(link.to_owned())));
        }
        Ok(Some(TorrentSource::TorrentFile(bytes)))
    }

    /// Renames `name` to `name.SUFFIX` (or `name.SUFFIX.2`... if that exists: nothing is
    /// written over); the new name, if renamed.
    fn rename(&self, name: &OsStr, suffix: &str) -> Option<OsString> {
        (1..=100)
            .find_map(|n| {
                let to = numbered(name, suffix, n);
                match self.rename_to(name, &to) {
                    Ok(()) => Some(Some(to)),
                    Err(Errno::EEXIST) => None,
                    Err(e) => {
                        tracing::warn!(
                            "cannot rename {} in the watch folder: {e}",
                            shown(&name.to_string_lossy())
                        );
                        Some(None)
                    }
                }
            })
            .flatten()
    }

    fn rename_to(&self, name: &OsStr, to: &OsStr) -> Result<(), Errno> {
        nix::fcntl::renameat2(
            Some(self.folder.as_raw_fd()),
            name,
            Some(self.folder.as_raw_fd()),
            to,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
    }

    /// Renames `name` to `name.failed` (numbered as [`Watcher::rename`]) with the reason in
    /// `name.failed.txt`, written first: whoever sees the `.failed` file finds why beside it.
    fn fail(&self, name: &OsStr, why: &str) {
        for n in 1..=100 {
            let failed = numbered(name, "failed", n);
            let mut reason = failed.clone();
            reason.push(".txt");
            match self.create(&reason) {
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
                    self.rename(name, "failed");
                    return;
                }
            }
            match self.rename_to(name, &failed) {
                Ok(()) => return,
                Err(e) => {
                    let _ = nix::unistd::unlinkat(
                        Some(self.folder.as_raw_fd()),
                        reason.as_os_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    if e != Errno::EEXIST {
                        tracing::warn!(
                            "cannot rename {} in the watch folder: {e}",
                            shown(&name.to_string_lossy())
                        );
                        return;
                    }
                }
            }
        }
    }

    /// A new file in the folder (never over anything, never through a link).
    fn create(&self, name: &OsStr) -> Result<std::fs::File, Errno> {
        let fd = nix::fcntl::openat(
            Some(self.folder.as_raw_fd()),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
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
