//! Moving a torrent's files from one folder beneath the download roots to another (`move`,
//! DESIGN §13), through the same checked walk as every other file access ([`Beneath`]): a
//! symlink or `..` planted anywhere on either side, before or during the move, makes a step
//! fail, never lead outside the roots.
//!
//! On one file system each file is renamed (`renameat2(RENAME_NOREPLACE)`: nothing of the
//! user's is ever replaced). Across file systems each file is copied to a name that did not
//! exist (`O_EXCL`), synced, then read back from the disk and compared by SHA-1 with what
//! was read from the original; the originals are deleted only once the torrent's record
//! names the copy. What to do after a crash at any step is the service's business
//! (`service::move_storage`); everything here can be done again, or undone, safely.

use crate::storage::{open_how, plain, Beneath};
use anyhow::{anyhow, bail, Context};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use sha1w::ISha1;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes read or written at a time by a copy.
const CHUNK: usize = 1 << 20;

/// One torrent's files, at the folder they are in and the folder they go to.
pub struct Relocation {
    from: Beneath,
    to: Beneath,
    /// Relative to both folders (padding files, never on disk, left out).
    files: Vec<PathBuf>,
    /// Whether the folders are the torrent's own (a torrent of several files): then they
    /// go too once empty.
    own_folder: bool,
}

/// Why a step failed: the error, and whether it is because the file systems differ (a
/// rename that must become a copy).
#[derive(Debug)]
pub struct StepError {
    pub error: anyhow::Error,
    pub cross_device: bool,
    pub no_space: bool,
}

impl From<anyhow::Error> for StepError {
    fn from(error: anyhow::Error) -> StepError {
        let errno = error.chain().find_map(|e| {
            e.downcast_ref::<Errno>().copied().or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(|e| e.raw_os_error())
                    .map(Errno::from_raw)
            })
        });
        StepError {
            cross_device: errno == Some(Errno::EXDEV),
            no_space: matches!(errno, Some(Errno::ENOSPC | Errno::EFBIG | Errno::EDQUOT)),
            error,
        }
    }
}

impl Relocation {
    /// The files `relative` (to both folders) of a torrent whose data is in `from` and goes
    /// to `to`, both beneath one of `roots`; `own_folder`: both are the torrent's own.
    pub fn new(
        roots: &[PathBuf],
        from: &Path,
        to: &Path,
        relative: Vec<PathBuf>,
        own_folder: bool,
    ) -> anyhow::Result<Relocation> {
        for file in &relative {
            plain(file)?;
        }
        Ok(Relocation {
            from: Beneath::new(roots, from)?,
            to: Beneath::new(roots, to)?,
            files: relative,
            own_folder,
        })
    }

    /// The files that are at the old place (those never downloaded are nowhere).
    fn present_at_from(&self) -> Vec<&PathBuf> {
        self.files
            .iter()
            .filter(|f| self.from.stamp(f).is_some())
            .collect()
    }

    /// Whether any file is at the new place.
    pub fn any_at_to(&self) -> bool {
        self.files.iter().any(|f| exists(&self.to, f))
    }

    /// Whether any file is at the old place.
    pub fn any_at_from(&self) -> bool {
        self.files.iter().any(|f| exists(&self.from, f))
    }

    /// Refuses a move onto anything that exists: a file (or folder, or link) at any of the
    /// new paths. For a torrent with a folder of its own, that folder must not exist at all:
    /// a move never mixes its files with someone else's.
    pub fn check_free(&self) -> anyhow::Result<()> {
        if self.own_folder {
            let folder = self.to.path();
            match std::fs::symlink_metadata(&folder) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(_) => bail!(
                    "{} exists already: a torrent is moved into a folder of its own that does not exist yet",
                    folder.display()
                ),
                Err(e) => bail!("cannot check {}: {e}", folder.display()),
            }
        }
        for file in &self.files {
            let path = self.to.path().join(file);
            match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(_) => bail!(
                    "{} exists already; a move never writes over anything",
                    path.display()
                ),
                Err(e) => bail!("cannot check {}: {e}", path.display()),
            }
        }
        Ok(())
    }

    /// Renames every file that is at the old place to the new one. On a failure the files
    /// renamed so far are renamed back (those it can be), and the error says what failed.
    pub fn rename_each(&self) -> Result<(), StepError> {
        let mut renamed = Vec::new();
        let done = self.present_at_from().into_iter().try_for_each(|file| {
            rename(&self.from, &self.to, file)?;
            renamed.push(file);
            Ok::<_, StepError>(())
        });
        let done = done.and_then(|()| {
            sync_folders(&self.to, &self.files)?;
            Ok(sync_folders(&self.from, &self.files)?)
        });
        if done.is_err() {
            for file in renamed {
                if let Err(e) = rename(&self.to, &self.from, file) {
                    tracing::error!("cannot undo a move's rename: {:#}", e.error);
                }
            }
            let _ = sync_folders(&self.from, &self.files);
            let _ = crate::storage::remove_empty_folders(&self.to, &self.files, self.own_folder);
        }
        done
    }

    /// Renames back every file that is at the new place and not at the old one.
    pub fn rename_back(&self) -> anyhow::Result<()> {
        for file in &self.files {
            if exists(&self.to, file) && !exists(&self.from, file) {
                rename(&self.to, &self.from, file).map_err(|e| e.error)?;
            }
        }
        sync_folders(&self.from, &self.files)?;
        sync_folders(&self.to, &self.files)
    }

    /// Copies every file that is at the old place to the new one under a name of the
    /// move's own ([`part_of`]: the user's names are never taken before the copy is whole),
    /// syncs the copies, and reads each back from the disk to compare it by hash with what
    /// was read. `copied` counts the bytes written. On a failure what it made goes.
    pub fn copy_each(&self, copied: &AtomicU64) -> Result<(), StepError> {
        let done = self.copy_and_verify(copied);
        if done.is_err() {
            let _ = self.remove_parts();
        }
        done
    }

    /// Gives each copy made by [`Relocation::copy_each`] its own name, never over anything.
    /// On a failure every copy is taken back to its move's name, for
    /// [`Relocation::remove_parts`].
    pub fn place_each(&self) -> Result<(), StepError> {
        let placed = self.files.iter().try_for_each(|file| {
            if exists(&self.to, &part_of(file)) {
                rename_as(&self.to, &part_of(file), &self.to, file)?;
            }
            Ok::<_, StepError>(())
        });
        let placed = placed.and_then(|()| Ok(sync_folders(&self.to, &self.files)?));
        if placed.is_err() {
            self.unplace();
        }
        placed
    }

    /// Takes back to its move's name every copy placed at its own name: those whose move's
    /// name is gone (a copy whose placing was cut short).
    pub fn unplace(&self) {
        for file in &self.files {
            if !exists(&self.to, &part_of(file)) && exists(&self.to, file) {
                if let Err(e) = rename_as(&self.to, file, &self.to, &part_of(file)) {
                    tracing::error!("cannot take back a move's copy: {:#}", e.error);
                }
            }
        }
    }

    /// Deletes the copies still under their move's names (made by this broker: no one
    /// else's file has such a name), and the folders left empty.
    pub fn remove_parts(&self) -> Result<(), String> {
        let parts: Vec<PathBuf> = self.files.iter().map(|f| part_of(f)).collect();
        let mut failed = Vec::new();
        for part in &parts {
            if let Err(e) = self.to.remove_file(part) {
                failed.push(format!("{e:#}"));
            }
        }
        if let Err(e) = crate::storage::remove_empty_folders(&self.to, &self.files, self.own_folder)
        {
            failed.push(e);
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(failed.join("; ")),
        }
    }

    /// Whether every file at the old place is at the new one too (a finished copy's new
    /// place is there: its disk mounted).
    pub fn all_at_to(&self) -> bool {
        self.files
            .iter()
            .filter(|f| exists(&self.from, f))
            .all(|f| self.to.stamp(f).is_some())
    }

    fn copy_and_verify(&self, copied: &AtomicU64) -> Result<(), StepError> {
        let mut hashes = Vec::new();
        for file in self.present_at_from() {
            let mut source = open_beneath(&self.from, file, OFlag::O_RDONLY)?;
            let part = part_of(file);
            let mut copy = self.to.open_file(&part, true, true)?;
            let mut hash = sha1w::Sha1::new();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(anyhow!(e)
                            .context(format!(
                                "cannot read {}",
                                self.from.path().join(file).display()
                            ))
                            .into())
                    }
                };
                hash.update(&buf[..n]);
                copy.write_all(&buf[..n]).with_context(|| {
                    format!("cannot write {}", self.to.path().join(file).display())
                })?;
                copied.fetch_add(n as u64, Ordering::Relaxed);
            }
            copy.sync_all()
                .with_context(|| format!("cannot sync {}", self.to.path().join(file).display()))?;
            hashes.push((file, hash.finish()));
        }
        sync_folders(&self.to, &self.files)?;
        for (file, expected) in hashes {
            let copy = open_beneath(&self.to, &part_of(file), OFlag::O_RDONLY)?;
            // Read from the disk, not from what the copy left in memory (a no-op where the
            // file system is memory).
            let _ = nix::fcntl::posix_fadvise(
                copy.as_raw_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            if hash_of(copy).with_context(|| {
                format!("cannot read back {}", self.to.path().join(file).display())
            })? != expected
            {
                return Err(anyhow!(
                    "the copy {} does not read back as what was written: the move is undone",
                    self.to.path().join(file).display()
                )
                .into());
            }
        }
        Ok(())
    }

    /// Deletes the files at the new place (a finished copy undone), then the folders they
    /// made there once empty.
    pub fn remove_at_to(&self) -> Result<(), String> {
        remove(&self.to, &self.files, self.own_folder)
    }

    /// Deletes the files at the old place (a copy done), as [`Relocation::remove_at_to`].
    pub fn remove_at_from(&self) -> Result<(), String> {
        remove(&self.from, &self.files, self.own_folder)
    }

    /// After renames: the folders left empty at the old place go.
    pub fn tidy_from(&self) -> Result<(), String> {
        crate::storage::remove_empty_folders(&self.from, &self.files, self.own_folder)
    }
}

/// The name a file's copy has until the copy is whole and verified: beside it, hidden, and
/// marked as the move's (`.NAME.tp-move`).
pub fn part_of(file: &Path) -> PathBuf {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    file.with_file_name(format!(".{name}.tp-move"))
}

fn exists(folder: &Beneath, relative: &Path) -> bool {
    let Ok(root) = folder.root_fd() else {
        return false;
    };
    nix::fcntl::openat2(
        root.as_raw_fd(),
        &folder.path_from_root(relative),
        open_how(OFlag::O_PATH, 0),
    )
    // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
    .map(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) }))
    .is_ok()
}

/// Opens a regular file beneath `folder` (never through a link, never a FIFO).
fn open_beneath(folder: &Beneath, relative: &Path, flags: OFlag) -> anyhow::Result<File> {
    let root = folder.root_fd()?;
    let from_root = folder.path_from_root(relative);
    let fd = nix::fcntl::openat2(
        root.as_raw_fd(),
        &from_root,
        open_how(flags | OFlag::O_NONBLOCK, 0),
    )
    .map_err(|e| folder.explain(&from_root, e, "open"))?;
    // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !file.metadata()?.file_type().is_file() {
        bail!(
            "{} is not a regular file",
            folder.path().join(relative).display()
        );
    }
    Ok(file)
}

fn hash_of(mut file: File) -> std::io::Result<[u8; 20]> {
    let mut hash = sha1w::Sha1::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hash.finish()),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Opens the folder `relative` is in, beneath `folder`.
fn parent_of(folder: &Beneath, relative: &Path) -> Result<(OwnedFd, PathBuf), StepError> {
    let root = folder.root_fd()?;
    let from_root = folder.path_from_root(relative);
    let parent = from_root.parent().unwrap_or(Path::new("")).to_path_buf();
    let dir = folder
        .open_dir_from_root(&root, &parent)
        .map_err(|e| StepError::from(folder.explain(&parent, e, "open folder")))?;
    Ok((dir, from_root))
}

fn rename(from: &Beneath, to: &Beneath, relative: &Path) -> Result<(), StepError> {
    rename_as(from, relative, to, relative)
}

/// Renames `from_rel` beneath `from` to `to_rel` beneath `to`, never over anything.
fn rename_as(
    from: &Beneath,
    from_rel: &Path,
    to: &Beneath,
    to_rel: &Path,
) -> Result<(), StepError> {
    let relative = to_rel;
    let (old_dir, old_path) = parent_of(from, from_rel)?;
    to.make_parents(&to.root_fd()?, to_rel)?;
    let (new_dir, new_path) = parent_of(to, to_rel)?;
    let name = |p: &Path| p.file_name().map(|n| n.to_owned()).context("no file name");
    nix::fcntl::renameat2(
        Some(old_dir.as_raw_fd()),
        name(&old_path)?.as_os_str(),
        Some(new_dir.as_raw_fd()),
        name(&new_path)?.as_os_str(),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| {
        let error = match e {
            Errno::EEXIST => anyhow!(
                "{} exists already; a move never writes over anything",
                to.path().join(relative).display()
            ),
            e => anyhow!(
                "cannot move {} to {}: {}",
                from.path().join(from_rel).display(),
                to.path().join(relative).display(),
                std::io::Error::from(e)
            ),
        };
        StepError {
            cross_device: e == Errno::EXDEV,
            no_space: matches!(e, Errno::ENOSPC | Errno::EDQUOT),
            error,
        }
    })
}

/// Syncs the folders `files` are in beneath `folder` (those that exist), so that what was
/// made, renamed or removed in them survives a power cut.
fn sync_folders(folder: &Beneath, files: &[PathBuf]) -> anyhow::Result<()> {
    let root = folder.root_fd()?;
    let mut folders = BTreeSet::new();
    for file in files {
        let from_root = folder.path_from_root(file);
        let mut at = from_root.parent();
        while let Some(dir) = at {
            folders.insert(dir.to_path_buf());
            if dir.as_os_str().is_empty() {
                break;
            }
            at = dir.parent();
        }
    }
    for dir in folders {
        let path = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir.as_path()
        };
        match nix::fcntl::openat2(
            root.as_raw_fd(),
            path,
            open_how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0),
        ) {
            Ok(fd) => {
                // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
                let dir_file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                dir_file
                    .sync_all()
                    .with_context(|| format!("cannot sync folder {}", path.display()))?;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(folder.explain(path, e, "open folder")),
        }
    }
    Ok(())
}

fn remove(folder: &Beneath, files: &[PathBuf], own_folder: bool) -> Result<(), String> {
    crate::storage::delete_torrent_data_beneath(folder, files, own_folder)
}
