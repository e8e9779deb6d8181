//! Where a torrent may write (DESIGN §4): beneath its save folder, inside the download
//! roots, never through a symlink, and never into a folder that is not its own.
//!
//! The save folder itself is resolved (symlinks followed) and checked against the roots when
//! the request comes in. Beneath it the broker walks every path the torrent will write,
//! component by component, with `lstat`: a symlink anywhere on the way is refused (whether it
//! was there before the add, or planted between two runs: the walk is done again at restore),
//! and an existing file with other hard links is refused when it would be overwritten. A
//! multi-file torrent's own folder may already exist only if it holds nothing but this
//! torrent's files (a torrent named `.ssh` saved in `~` does not land in `~/.ssh`, empty or
//! not, `--overwrite` or not: DESIGN §4).
//!
//! Limit: the engine opens the files itself, after this walk; a symlink planted in the
//! instant between the walk and its open is not caught (the engine has no `openat2`).

use crate::torrent_file::CheckedTorrent;
use proto::ProtoError;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries looked at in an existing torrent folder before giving up (it is not a torrent's).
const MAX_ENTRIES_SCANNED: usize = 100_000;

fn not_allowed(why: String) -> ProtoError {
    ProtoError::path_not_allowed(why)
}

/// Which multi-file folder a check may find in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnFolder {
    /// A restored torrent's: its folder is its own.
    Restored,
    /// A new add's: an existing folder must hold this torrent's files and nothing else.
    New,
}

/// Checks every path `torrent` writes beneath `save_folder` (which must be canonical).
pub fn check_torrent_paths(
    save_folder: &Path,
    torrent: &CheckedTorrent,
    own_folder: OwnFolder,
) -> Result<(), ProtoError> {
    let data_folder = torrent.data_folder(save_folder);
    for (relative, _) in &torrent.files {
        let full = data_folder.join(relative);
        let Ok(inside) = full.strip_prefix(save_folder) else {
            return Err(not_allowed(format!(
                "{} is not beneath the save folder",
                full.display()
            )));
        };
        let mut at = save_folder.to_path_buf();
        let parts: Vec<_> = inside.components().collect();
        for (n, part) in parts.iter().enumerate() {
            at.push(part);
            let last = n + 1 == parts.len();
            let meta = match std::fs::symlink_metadata(&at) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(not_allowed(format!("cannot check {}: {e}", at.display()))),
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                return Err(not_allowed(format!(
                    "{} is a symbolic link; a torrent never writes through one",
                    at.display()
                )));
            }
            if last {
                if !kind.is_file() {
                    // Something of the user's in the way, as an existing file is.
                    return Err(ProtoError::file_exists(format!(
                        "{} exists and is not a regular file (a folder?); remove it, or save elsewhere with --output",
                        at.display()
                    )));
                }
                if meta.nlink() > 1 {
                    return Err(not_allowed(format!(
                        "{} has other hard links; writing it would change them too",
                        at.display()
                    )));
                }
            } else if !kind.is_dir() {
                return Err(not_allowed(format!(
                    "{} exists and is not a folder",
                    at.display()
                )));
            }
        }
    }
    match own_folder {
        OwnFolder::New if torrent.multi_file => check_own_folder(&data_folder, torrent),
        _ => Ok(()),
    }
}

/// A multi-file torrent's folder, if it exists, must hold this torrent's files and nothing
/// else: then it is this torrent's data from an earlier add. An empty one is not its own
/// either (an empty `~/.ssh` is the user's).
fn check_own_folder(folder: &Path, torrent: &CheckedTorrent) -> Result<(), ProtoError> {
    match std::fs::symlink_metadata(folder) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(not_allowed(format!(
                "cannot check {}: {e}",
                folder.display()
            )))
        }
    }
    let files: BTreeSet<PathBuf> = torrent.files.iter().map(|(p, _)| folder.join(p)).collect();
    let folders: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| f.ancestors().skip(1).map(Path::to_path_buf))
        .filter(|a| a.starts_with(folder) && a != folder)
        .collect();
    let foreign = |what: &Path| {
        ProtoError::file_exists(format!(
            "{} already exists and holds {}, which is not this torrent's; choose another save folder",
            folder.display(),
            what.display()
        ))
    };
    let mut found_own = false;
    let mut stack = vec![folder.to_path_buf()];
    let mut scanned = 0;
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| not_allowed(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| not_allowed(format!("cannot read {}: {e}", dir.display())))?;
            scanned += 1;
            if scanned > MAX_ENTRIES_SCANNED {
                return Err(foreign(&dir));
            }
            let path = entry.path();
            if files.contains(&path) {
                found_own = true;
            } else if folders.contains(&path) {
                stack.push(path);
            } else {
                return Err(foreign(&path));
            }
        }
    }
    if !found_own {
        return Err(ProtoError::file_exists(format!(
            "{} already exists and holds none of this torrent's files: a torrent never adds files to a folder it did not make (--overwrite included); remove it if it is empty and yours to remove (rmdir), or save elsewhere with --output",
            folder.display()
        )));
    }
    Ok(())
}
