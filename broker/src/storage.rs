//! The one way the engine touches a torrent's files (DESIGN §4): beneath a download root,
//! never through a symlink, with a bounded pool of open files.
//!
//! librqbit's own file-system storage joins paths and opens, truncates and removes through
//! whatever they lead to, and holds every file of every torrent open for the torrent's life.
//! So a checked walk at add did not cover what came later: a folder swapped for a symlink
//! before a recheck (which re-opens the files), before a delete, or before a restore led
//! writes and deletes outside the roots, and a torrent of 20,000 files held 20,000
//! descriptors. Here every open, create, truncate and unlink resolves its path afresh from
//! the download root's directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`: the kernel refuses a symlink or `..` anywhere below the root,
//! whenever and by whomever it was planted. Only regular files are used (a FIFO or device
//! planted at a file's path is refused, never waited on). Open files live in one
//! [`FilePool`] for the whole broker (an LRU, like libtorrent's file pool), so a torrent's
//! file count never costs descriptors.
//!
//! Add, restore, recheck (a re-add), resume from an error, delete and streaming's identity
//! check all reach the files through this storage: the engine is given no other.

use anyhow::{anyhow, bail, Context};
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{ManagedTorrentShared, TorrentMetadata};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The pool's size when no flag sets it.
pub const DEFAULT_OPEN_FILES: usize = 512;

/// What identifies one open file in the pool: a storage instance and a file of its torrent.
type Key = (u64, usize);

/// The broker's open data files, least recently used closed first.
///
/// A file in use when it is evicted stays open until that use ends (it is shared), so the
/// pool can exceed its size by the number of reads and writes in flight, never more.
pub struct FilePool {
    capacity: usize,
    next_owner: AtomicU64,
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    open: HashMap<Key, (Arc<File>, u64)>,
    by_use: BTreeMap<u64, Key>,
    tick: u64,
}

impl PoolInner {
    /// The open file for `key`, if any, marked as used now.
    fn used(&mut self, key: Key) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.open.get_mut(&key)?;
        let file = file.clone();
        let old = std::mem::replace(used, tick);
        self.by_use.remove(&old);
        self.by_use.insert(tick, key);
        Some(file)
    }

    fn remove(&mut self, key: &Key) {
        if let Some((_, tick)) = self.open.remove(key) {
            self.by_use.remove(&tick);
        }
    }
}

impl FilePool {
    /// A pool that keeps at most `capacity` files open (at least one).
    pub fn new(capacity: usize) -> Arc<FilePool> {
        Arc::new(FilePool {
            capacity: capacity.max(1),
            next_owner: AtomicU64::new(0),
            inner: Mutex::new(PoolInner::default()),
        })
    }

    /// How many files the pool holds open now.
    pub fn open_files(&self) -> usize {
        self.lock().open.len()
    }

    /// Its size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        // A panic while holding the lock leaves the maps consistent (no step is half done).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The open file for `key`, opened with `open` if the pool has none.
    fn get(
        &self,
        key: Key,
        open: impl FnOnce() -> anyhow::Result<File>,
    ) -> anyhow::Result<Arc<File>> {
        if let Some(file) = self.lock().used(key) {
            return Ok(file);
        }
        // Opened without the lock: a slow file system must not stall every other torrent.
        let file = Arc::new(open()?);
        let mut inner = self.lock();
        if let Some(existing) = inner.used(key) {
            // Another thread opened it meanwhile: use one descriptor, not two.
            return Ok(existing);
        }
        inner.tick += 1;
        let tick = inner.tick;
        while inner.open.len() >= self.capacity {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            inner.open.remove(&oldest);
        }
        inner.open.insert(key, (file.clone(), tick));
        inner.by_use.insert(tick, key);
        Ok(file)
    }

    fn forget(&self, key: Key) {
        self.lock().remove(&key);
    }

    fn forget_owner(&self, owner: u64) {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner
            .open
            .keys()
            .filter(|k| k.0 == owner)
            .copied()
            .collect();
        for key in keys {
            inner.remove(&key);
        }
    }
}

/// What a file was when its pieces were last known verified (DESIGN §4, "verified means
/// verified"): fast resume trusts a file's recorded pieces only if all of this is the same
/// at the next start, as libtorrent and transmission check size and mtime. The change time
/// is kept too: setting a file's mtime back by hand (`touch -d`) sets its ctime to now, and
/// only the clock can set that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number (a file replaced by another is another file).
    pub ino: u64,
}

impl FileStamp {
    /// The stamp of a file as `meta` describes it.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        FileStamp {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// What the broker can vouch for, per torrent and file: the stamp each file had when its
/// pieces were last hashed (the check that starts a torrent reads what its files were at
/// `init`) or when the engine itself last wrote it. A torrent's stamps are recorded for fast
/// resume only where its files are still exactly so: a file anyone else changed since (an
/// edit while the broker runs) is hashed again at the next start, not vouched for by the
/// clean stop. Shared by a torrent's storages (a pause hands the storage on) until the
/// torrent leaves the engine.
#[derive(Default)]
pub struct Vouched {
    torrents: Mutex<HashMap<usize, VouchedFiles>>,
}

/// One torrent's vouched stamps, in the engine's file order (`None`: nothing vouched).
type VouchedFiles = Arc<Mutex<Vec<Option<FileStamp>>>>;

impl Vouched {
    /// A torrent's entry, and whether it had one (its storage was made before: a resume
    /// after an error, not its first start).
    fn entry(&self, id: usize, files: usize) -> (VouchedFiles, bool) {
        let mut torrents = self.torrents.lock().unwrap_or_else(|e| e.into_inner());
        match torrents.get(&id) {
            Some(files) => (files.clone(), true),
            None => {
                let entry = Arc::new(Mutex::new(vec![None; files]));
                torrents.insert(id, entry.clone());
                (entry, false)
            }
        }
    }

    /// Forgets a torrent that left the engine (its next add is a first start).
    pub fn forget(&self, id: usize) {
        self.torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Whether every file of torrent `id` is as vouched for (`now`, in the engine's file
    /// order; padding files are `None` on both sides).
    pub fn holds(&self, id: usize, now: &[Option<FileStamp>]) -> bool {
        let torrents = self.torrents.lock().unwrap_or_else(|e| e.into_inner());
        let Some(files) = torrents.get(&id) else {
            return false;
        };
        let vouched = files.lock().unwrap_or_else(|e| e.into_inner());
        vouched.as_slice() == now
    }
}

fn lock_vouched(files: &VouchedFiles) -> MutexGuard<'_, Vec<Option<FileStamp>>> {
    files.lock().unwrap_or_else(|e| e.into_inner())
}

/// A folder beneath a download root, reached only through real folders.
#[derive(Debug, Clone)]
pub struct Beneath {
    /// The download root (canonical; its own path is the user's configuration, trusted).
    root: PathBuf,
    /// The folder, relative to the root (empty: the root itself).
    folder: PathBuf,
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

pub(crate) fn open_how(flags: OFlag, mode: u32) -> OpenHow {
    // openat2 refuses O_PATH with anything but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    // ... and a mode without O_CREAT.
    let mode = if flags.contains(OFlag::O_CREAT) {
        mode
    } else {
        0
    };
    OpenHow::new()
        .flags(flags | extra)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(RESOLVE)
}

/// Refuses a relative path that is empty or has anything but plain names.
pub(crate) fn plain(relative: &Path) -> anyhow::Result<()> {
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        bail!(
            "{} is not a plain path inside the torrent",
            relative.display()
        );
    }
    Ok(())
}

impl Beneath {
    /// `folder` (absolute, canonical when checked) beneath the longest of `roots` it is in.
    pub fn new(roots: &[PathBuf], folder: &Path) -> anyhow::Result<Beneath> {
        let root = roots
            .iter()
            .filter(|root| folder.starts_with(root))
            .max_by_key(|root| root.as_os_str().len())
            .with_context(|| {
                format!(
                    "{} is outside the broker's download roots",
                    folder.display()
                )
            })?;
        let inside = folder.strip_prefix(root).unwrap_or(Path::new(""));
        if !inside.as_os_str().is_empty() {
            plain(inside)?;
        }
        Ok(Beneath {
            root: root.clone(),
            folder: inside.to_path_buf(),
        })
    }

    /// The folder as a full path (for messages).
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.folder)
    }

    pub(crate) fn root_fd(&self) -> anyhow::Result<OwnedFd> {
        let fd = nix::fcntl::open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open download root {}", self.root.display()))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `relative` (beneath the folder) as a path from the root.
    pub(crate) fn path_from_root(&self, relative: &Path) -> PathBuf {
        if self.folder.as_os_str().is_empty() {
            relative.to_path_buf()
        } else {
            self.folder.join(relative)
        }
    }

    /// An error for `from_root` (a path from the root) that says what happened.
    pub(crate) fn explain(&self, from_root: &Path, e: Errno, what: &str) -> anyhow::Error {
        let full = self.root.join(from_root);
        match e {
            Errno::ELOOP | Errno::EXDEV => anyhow!(
                "cannot {what} {}: a symbolic link (or a path out of {}) is on the way; a torrent's files are never reached through one",
                full.display(),
                self.root.display()
            ),
            e => anyhow!("cannot {what} {}: {}", full.display(), std::io::Error::from(e)),
        }
    }

    /// Opens a folder beneath the root (`relative` from the root; empty: the root).
    pub(crate) fn open_dir_from_root(
        &self,
        root: &OwnedFd,
        relative: &Path,
    ) -> Result<OwnedFd, Errno> {
        let path = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let fd = nix::fcntl::openat2(
            root.as_raw_fd(),
            path,
            open_how(OFlag::O_PATH | OFlag::O_DIRECTORY, 0),
        )?;
        // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Makes the folder and every folder on the way to `relative`'s parent, one real folder
    /// at a time (each made inside the one opened before it, so no swap can redirect it).
    pub(crate) fn make_parents(&self, root: &OwnedFd, relative: &Path) -> anyhow::Result<()> {
        let target = self.path_from_root(relative);
        let Some(parent) = target.parent() else {
            return Ok(());
        };
        let mut at = PathBuf::new();
        for part in parent.components() {
            at.push(part);
            match self.open_dir_from_root(root, &at) {
                Ok(_) => continue,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.explain(&at, e, "open folder")),
            }
            let above = at.parent().unwrap_or(Path::new(""));
            let dir = self
                .open_dir_from_root(root, above)
                .map_err(|e| self.explain(above, e, "open folder"))?;
            match nix::sys::stat::mkdirat(
                Some(dir.as_raw_fd()),
                part.as_os_str(),
                Mode::from_bits_truncate(0o777),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(self.explain(&at, e, "create folder")),
            }
        }
        Ok(())
    }

    /// Opens file `relative` (beneath the folder) read-write; `create`: make it (and its
    /// folders) if missing, `exclusive`: refuse an existing one. Only a regular file is
    /// returned.
    pub fn open_file(
        &self,
        relative: &Path,
        create: bool,
        exclusive: bool,
    ) -> anyhow::Result<File> {
        plain(relative)?;
        let root = self.root_fd()?;
        let mut flags = OFlag::O_RDWR | OFlag::O_NONBLOCK;
        if create {
            self.make_parents(&root, relative)?;
            flags |= OFlag::O_CREAT;
            if exclusive {
                flags |= OFlag::O_EXCL;
            }
        }
        let fd = nix::fcntl::openat2(
            root.as_raw_fd(),
            &self.path_from_root(relative),
            open_how(flags, 0o666),
        )
        .map_err(|e| match e {
            Errno::EEXIST => anyhow!(
                "{} exists already and the torrent was not allowed to overwrite it",
                self.path().join(relative).display()
            ),
            e => self.explain(&self.path_from_root(relative), e, "open"),
        })?;
        // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            bail!(
                "{} is not a regular file; a torrent reads and writes only regular files",
                self.path().join(relative).display()
            );
        }
        Ok(file)
    }

    /// File `relative`'s stamp, or `None` if it is not there (or not a regular file reached
    /// through real folders).
    pub fn stamp(&self, relative: &Path) -> Option<FileStamp> {
        plain(relative).ok()?;
        let root = self.root_fd().ok()?;
        let fd = nix::fcntl::openat2(
            root.as_raw_fd(),
            &self.path_from_root(relative),
            open_how(OFlag::O_PATH, 0),
        )
        .ok()?;
        // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = file.metadata().ok()?;
        meta.file_type().is_file().then(|| FileStamp::of(&meta))
    }

    /// Removes file `relative` (the name only: nothing it might link to).
    pub fn remove_file(&self, relative: &Path) -> anyhow::Result<()> {
        self.unlink(relative, nix::unistd::UnlinkatFlags::NoRemoveDir)
    }

    /// Removes folder `relative` if it is empty; a folder with something in it stays.
    pub fn remove_dir_if_empty(&self, relative: &Path) -> anyhow::Result<()> {
        match self.unlink(relative, nix::unistd::UnlinkatFlags::RemoveDir) {
            Err(e)
                if e.downcast_ref::<Errno>()
                    .is_some_and(|e| matches!(e, Errno::ENOTEMPTY | Errno::EEXIST)) =>
            {
                tracing::debug!("kept {}: not empty", self.path().join(relative).display());
                Ok(())
            }
            other => other,
        }
    }

    fn unlink(&self, relative: &Path, how: nix::unistd::UnlinkatFlags) -> anyhow::Result<()> {
        plain(relative)?;
        let root = self.root_fd()?;
        let target = self.path_from_root(relative);
        let name = target.file_name().context("no file name")?;
        let parent = target.parent().unwrap_or(Path::new(""));
        // Gone already (or its folder is): nothing to remove.
        let dir = match self.open_dir_from_root(&root, parent) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.explain(&target, e, "remove")),
        };
        match nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, how) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e @ (Errno::ENOTEMPTY | Errno::EEXIST)) => Err(e.into()),
            Err(e) => Err(self.explain(&target, e, "remove")),
        }
    }
}

/// The stamps of a torrent's files (`relative` to `data_folder`, beneath one of `roots`).
pub fn stamps_of(
    roots: &[PathBuf],
    data_folder: &Path,
    relative: &[PathBuf],
) -> Vec<Option<FileStamp>> {
    match Beneath::new(roots, data_folder) {
        Ok(folder) => relative.iter().map(|r| folder.stamp(r)).collect(),
        Err(_) => vec![None; relative.len()],
    }
}

/// Deletes a torrent's files (`relative` to `data_folder`), then the folders its own paths
/// made, deepest first, once empty, and `data_folder` itself if it is the torrent's own
/// (`own_folder`) and empty; never the folder it was saved into, never through a symlink.
pub fn delete_torrent_data(
    roots: &[PathBuf],
    data_folder: &Path,
    relative: &[PathBuf],
    own_folder: bool,
) -> Result<(), String> {
    let folder = Beneath::new(roots, data_folder).map_err(|e| format!("{e:#}"))?;
    delete_torrent_data_beneath(&folder, relative, own_folder)
}

/// [`delete_torrent_data`] of a folder already found beneath its root.
pub fn delete_torrent_data_beneath(
    folder: &Beneath,
    relative: &[PathBuf],
    own_folder: bool,
) -> Result<(), String> {
    let mut failed = Vec::new();
    for file in relative {
        if let Err(e) = folder.remove_file(file) {
            failed.push(format!("{e:#}"));
        }
    }
    if let Err(e) = remove_empty_folders(folder, relative, own_folder) {
        failed.push(e);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Removes the folders a torrent's paths (`relative`) make beneath `folder`, deepest first,
/// those that are empty; and `folder` itself if it is the torrent's own (`own_folder`) and
/// empty.
pub fn remove_empty_folders(
    folder: &Beneath,
    relative: &[PathBuf],
    own_folder: bool,
) -> Result<(), String> {
    let mut failed = Vec::new();
    let folders: std::collections::BTreeSet<PathBuf> = relative
        .iter()
        .flat_map(|file| file.ancestors().skip(1))
        .filter(|a| !a.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    // Deepest first: a folder's folders go before it.
    let mut folders: Vec<PathBuf> = folders.into_iter().collect();
    folders.sort_by_key(|f| std::cmp::Reverse(f.components().count()));
    for dir in folders {
        if let Err(e) = folder.remove_dir_if_empty(&dir) {
            failed.push(format!("{e:#}"));
        }
    }
    if own_folder {
        if let (Some(parent), Some(name)) = (folder.folder.parent(), folder.folder.file_name()) {
            let above = Beneath {
                root: folder.root.clone(),
                folder: parent.to_path_buf(),
            };
            if let Err(e) = above.remove_dir_if_empty(Path::new(name)) {
                failed.push(format!("{e:#}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Makes a [`BeneathStorage`] for each torrent the engine starts.
#[derive(Clone)]
pub struct BeneathStorageFactory {
    roots: Arc<Vec<PathBuf>>,
    pool: Arc<FilePool>,
    vouched: Arc<Vouched>,
}

impl BeneathStorageFactory {
    /// Storage beneath `roots` (canonical), sharing `pool`, keeping what it can vouch for
    /// in `vouched`.
    pub fn new(
        roots: Vec<PathBuf>,
        pool: Arc<FilePool>,
        vouched: Arc<Vouched>,
    ) -> BeneathStorageFactory {
        BeneathStorageFactory {
            roots: Arc::new(roots),
            pool,
            vouched,
        }
    }

    /// As the engine takes it.
    pub fn boxed_factory(self) -> BoxStorageFactory {
        self.boxed()
    }
}

impl StorageFactory for BeneathStorageFactory {
    type Storage = BeneathStorage;

    fn create(
        &self,
        shared: &ManagedTorrentShared,
        metadata: &TorrentMetadata,
    ) -> anyhow::Result<BeneathStorage> {
        let folder = Beneath::new(&self.roots, shared.output_folder())?;
        let files: Vec<Option<PathBuf>> = metadata
            .file_infos
            .iter()
            .map(|f| (!f.attrs.padding).then(|| f.relative_filename.clone()))
            .collect();
        let (vouched, made_before) = self.vouched.entry(shared.id, files.len());
        Ok(BeneathStorage {
            folder,
            files: Arc::new(files),
            // A multi-file torrent's folder is its own (the broker saves it as
            // `<save folder>/<name>`); a single file's folder is where the user saved it.
            own_folder: metadata.info.info().files.is_some(),
            pool: self.pool.clone(),
            owner: self.pool.new_owner(),
            // Existing files are refused only at a torrent's first start: once it ran, they
            // are its own (a resume after an error opens them again).
            exclusive: !shared.allow_overwrite() && !made_before,
            taken: AtomicBool::new(false),
            vouched,
        })
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

/// One torrent's files, beneath its folder.
pub struct BeneathStorage {
    folder: Beneath,
    /// Each file's path inside the folder; `None` for padding files (never on disk).
    files: Arc<Vec<Option<PathBuf>>>,
    own_folder: bool,
    pool: Arc<FilePool>,
    /// This instance's files in the pool.
    owner: u64,
    /// Refuse files that exist already (a first start without `--overwrite`).
    exclusive: bool,
    /// Handed on by `take` (a pause): this instance must no longer touch the files.
    taken: AtomicBool,
    /// What its files were when last hashed or written by the engine (see [`Vouched`]).
    vouched: VouchedFiles,
}

impl Drop for BeneathStorage {
    fn drop(&mut self) {
        self.pool.forget_owner(self.owner);
    }
}

impl BeneathStorage {
    fn relative(&self, file_id: usize) -> anyhow::Result<&Path> {
        match self.files.get(file_id) {
            Some(Some(path)) => Ok(path),
            Some(None) => bail!("file {file_id} is padding, never on disk"),
            None => bail!("the torrent has no file {file_id}"),
        }
    }

    fn file(&self, file_id: usize) -> anyhow::Result<Arc<File>> {
        if self.taken.load(Ordering::Acquire) {
            bail!("this torrent's storage was handed on (paused or stopped)");
        }
        let relative = self.relative(file_id)?;
        let file = self.pool.get((self.owner, file_id), || {
            self.folder.open_file(relative, false, false)
        })?;
        // Handed on while it was being opened: it must not stay in the pool.
        if self.taken.load(Ordering::Acquire) {
            self.pool.forget((self.owner, file_id));
            bail!("this torrent's storage was handed on (paused or stopped)");
        }
        Ok(file)
    }

    /// The engine just wrote `file_id` through `file`: what it is now is vouched for.
    fn wrote(&self, file_id: usize, file: &File) {
        let stamp = file.metadata().ok().map(|meta| FileStamp::of(&meta));
        if let Some(slot) = lock_vouched(&self.vouched).get_mut(file_id) {
            *slot = stamp;
        }
    }
}

impl TorrentStorage for BeneathStorage {
    fn init(
        &mut self,
        _shared: &ManagedTorrentShared,
        _metadata: &TorrentMetadata,
    ) -> anyhow::Result<()> {
        // Every file made (or, when overwriting is allowed, found) now, as librqbit's own
        // storage does, but none held open: the pool opens them as they are used. What each
        // is now is what the check that follows hashes (vouched for once it ends unchanged).
        let mut vouched = lock_vouched(&self.vouched);
        vouched.resize(self.files.len(), None);
        for (index, relative) in self.files.iter().enumerate() {
            let Some(relative) = relative else {
                continue;
            };
            let file = self.folder.open_file(relative, true, self.exclusive)?;
            vouched[index] = file.metadata().ok().map(|meta| FileStamp::of(&meta));
        }
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.file(file_id)?.read_exact_at(buf, offset)?)
    }

    fn pwrite_all(&self, file_id: usize, offset: u64, buf: &[u8]) -> anyhow::Result<()> {
        let file = self.file(file_id)?;
        file.write_all_at(buf, offset)?;
        self.wrote(file_id, &file);
        Ok(())
    }

    fn pwrite_all_vectored(
        &self,
        file_id: usize,
        offset: u64,
        bufs: [IoSlice<'_>; 2],
    ) -> anyhow::Result<usize> {
        let file = self.file(file_id)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let Ok(at) = nix::libc::off_t::try_from(offset) else {
            bail!("offset {offset} is beyond what this system can address");
        };
        let written = nix::sys::uio::pwritev(&*file, &bufs, at).context("pwritev")?;
        if written == total {
            self.wrote(file_id, &file);
            return Ok(total);
        }
        // A short write: finish it buffer by buffer.
        let mut done = 0usize;
        for buf in bufs.iter() {
            let start = written.saturating_sub(done).min(buf.len());
            if start < buf.len() {
                file.write_all_at(&buf[start..], offset + (done + start) as u64)?;
            }
            done += buf.len();
        }
        self.wrote(file_id, &file);
        Ok(total)
    }

    fn remove_file(&self, file_id: usize, _filename: &Path) -> anyhow::Result<()> {
        let relative = self.relative(file_id)?;
        self.pool.forget((self.owner, file_id));
        self.folder.remove_file(relative)
    }

    fn remove_directory_if_empty(&self, path: &Path) -> anyhow::Result<()> {
        if path.as_os_str().is_empty() {
            // The folder itself: removed only if the torrent made it for itself, never the
            // folder a user saved into.
            if !self.own_folder {
                return Ok(());
            }
            let (parent, name) = match (self.folder.folder.parent(), self.folder.folder.file_name())
            {
                (Some(parent), Some(name)) => (parent.to_path_buf(), PathBuf::from(name)),
                _ => return Ok(()), // the download root itself: never removed
            };
            let above = Beneath {
                root: self.folder.root.clone(),
                folder: parent,
            };
            return above.remove_dir_if_empty(&name);
        }
        self.folder.remove_dir_if_empty(path)
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> anyhow::Result<()> {
        let file = self.file(file_id)?;
        // A truncate to the same size still sets the times: the file would look changed
        // at the next start (see `FileStamp`).
        if file.metadata()?.len() != length {
            file.set_len(length)?;
            self.wrote(file_id, &file);
        }
        Ok(())
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        self.taken.store(true, Ordering::Release);
        self.pool.forget_owner(self.owner);
        // A checkpoint (the end of the check that starts a torrent, or a pause): a file that
        // is no longer as vouched for was changed by someone else meanwhile.
        let mut vouched = lock_vouched(&self.vouched);
        for (index, relative) in self.files.iter().enumerate() {
            if let (Some(relative), Some(slot)) = (relative, vouched.get_mut(index)) {
                if slot.is_some() && *slot != self.folder.stamp(relative) {
                    *slot = None;
                }
            }
        }
        drop(vouched);
        Ok(Box::new(BeneathStorage {
            folder: self.folder.clone(),
            files: self.files.clone(),
            own_folder: self.own_folder,
            pool: self.pool.clone(),
            owner: self.pool.new_owner(),
            exclusive: false,
            taken: AtomicBool::new(false),
            vouched: self.vouched.clone(),
        }))
    }

    fn file_identity(&self, file_id: usize) -> Option<(u64, u64)> {
        let meta = self.file(file_id).ok()?.metadata().ok()?;
        Some((meta.dev(), meta.ino()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn beneath(root: &Path, folder: &str) -> Beneath {
        let root = root.canonicalize().unwrap();
        Beneath::new(std::slice::from_ref(&root), &root.join(folder)).unwrap()
    }

    #[test]
    fn opens_and_makes_files_beneath_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let b = beneath(root.path(), "save/t");
        let f = b.open_file(Path::new("a/b/c.bin"), true, true).unwrap();
        f.write_all_at(b"hi", 0).unwrap();
        assert_eq!(
            std::fs::read(root.path().join("save/t/a/b/c.bin")).unwrap(),
            b"hi"
        );
        // Exclusive refuses an existing file; plain open finds it.
        assert!(b.open_file(Path::new("a/b/c.bin"), true, true).is_err());
        assert!(b.open_file(Path::new("a/b/c.bin"), false, false).is_ok());
    }

    #[test]
    fn never_through_a_symlink_anywhere_on_the_way() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"user's").unwrap();
        std::fs::create_dir_all(root.path().join("save")).unwrap();
        // The torrent's own folder swapped for a link to a folder outside.
        symlink(outside.path(), root.path().join("save/t")).unwrap();
        let b = beneath(root.path(), "save/t");
        let e = b.open_file(Path::new("victim"), true, false).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert!(b.open_file(Path::new("new"), true, false).is_err());
        assert!(b.remove_file(Path::new("victim")).is_err());
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"user's"
        );
        assert!(!outside.path().join("new").exists());
        // A link as the file itself is refused too, and removing it removes the link only.
        std::fs::remove_file(root.path().join("save/t")).unwrap();
        std::fs::create_dir(root.path().join("save/t")).unwrap();
        symlink(outside.path().join("victim"), root.path().join("save/t/f")).unwrap();
        assert!(b.open_file(Path::new("f"), true, false).is_err());
        b.remove_file(Path::new("f")).unwrap();
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"user's"
        );
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("t")).unwrap();
        nix::unistd::mkfifo(&root.path().join("t/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let b = beneath(root.path(), "t");
        // A FIFO nobody writes: refused at once, not waited on.
        let e = b.open_file(Path::new("fifo"), true, false).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        assert!(b.open_file(Path::new("../x"), true, false).is_err());
        assert!(b.open_file(Path::new("/etc/passwd"), false, false).is_err());
    }

    #[test]
    fn the_pool_keeps_at_most_its_size_open() {
        let root = tempfile::tempdir().unwrap();
        let b = beneath(root.path(), "t");
        let pool = FilePool::new(3);
        for i in 0..10 {
            let name = PathBuf::from(format!("f{i}"));
            b.open_file(&name, true, true).unwrap();
            let f = pool
                .get((0, i), || b.open_file(&name, false, false))
                .unwrap();
            drop(f);
            assert!(pool.open_files() <= 3);
        }
        // The most recently used stay; touching one keeps it over the others.
        pool.get((0, 7), || unreachable!("7 is open")).unwrap();
        pool.get((0, 0), || b.open_file(Path::new("f0"), false, false))
            .unwrap();
        pool.get((0, 7), || unreachable!("7 was used more recently than 8"))
            .unwrap();
        pool.forget_owner(0);
        assert_eq!(pool.open_files(), 0);
    }

    #[test]
    fn empty_folders_go_but_full_ones_and_the_save_folder_stay() {
        let root = tempfile::tempdir().unwrap();
        let b = beneath(root.path(), "save/t");
        b.open_file(Path::new("d/f"), true, true).unwrap();
        b.remove_dir_if_empty(Path::new("d")).unwrap();
        assert!(root.path().join("save/t/d/f").exists());
        b.remove_file(Path::new("d/f")).unwrap();
        b.remove_dir_if_empty(Path::new("d")).unwrap();
        assert!(!root.path().join("save/t/d").exists());
    }
}

/// Fuzzing the storage's path rules (`scripts/fuzz` runs these long; every test run 4,096
/// cases): whatever relative paths a torrent names, and whatever links sit in its folder,
/// nothing outside the root is created, written or removed.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;

    /// A path component as a hostile torrent (or a planted link) might have it.
    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("/tmp".to_owned()),
            Just("link".to_owned()),
            Just("up".to_owned()),
            Just("fifo".to_owned()),
            Just("victim".to_owned()),
            "[a-c]{1,2}",
        ]
    }

    fn relative_path() -> impl Strategy<Value = PathBuf> {
        proptest::collection::vec(component(), 1..5).prop_map(|parts| parts.iter().collect())
    }

    /// Everything under `dir`, with each file's bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(at) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&at) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let kind = entry.file_type().ok();
                if kind.is_some_and(|k| k.is_dir()) {
                    stack.push(path.clone());
                    found.push((path, None));
                } else {
                    found.push((path.clone(), std::fs::read(&path).ok()));
                }
            }
        }
        found.sort();
        found
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::fuzz_cases(), ..ProptestConfig::default() })]

        #[test]
        fn no_file_list_leads_the_storage_outside_the_root(
            paths in proptest::collection::vec(relative_path(), 1..6),
            create in any::<bool>(),
        ) {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("victim"), b"the user's").unwrap();
            std::fs::create_dir(outside.path().join("a")).unwrap();
            let root = tempfile::tempdir().unwrap();
            let save = root.path().join("save");
            std::fs::create_dir_all(save.join("a")).unwrap();
            // Links planted in the torrent's folder: out of the root, up the tree, at a
            // file outside; and a FIFO nobody writes.
            symlink(outside.path(), save.join("link")).unwrap();
            symlink("../..", save.join("a/up")).unwrap();
            symlink(outside.path().join("victim"), save.join("victim")).unwrap();
            nix::unistd::mkfifo(&save.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
            let before = snapshot(outside.path());
            let canonical = root.path().canonicalize().unwrap();
            let folder = Beneath::new(std::slice::from_ref(&canonical), &canonical.join("save"))
                .unwrap();
            for path in &paths {
                if let Ok(file) = folder.open_file(path, create, false) {
                    let _ = file.write_all_at(b"torrent bytes", 0);
                    let _ = file.set_len(1 << 20);
                }
                let _ = folder.stamp(path);
                let _ = folder.remove_dir_if_empty(path);
                let _ = folder.remove_file(path);
            }
            let _ = delete_torrent_data(
                std::slice::from_ref(&canonical),
                &canonical.join("save"),
                &paths,
                true,
            );
            prop_assert_eq!(snapshot(outside.path()), before);
        }
    }
}
