//! The engine's fast-resume folder: one `<torrent id>.bitv` per torrent, saying which of its
//! pieces were verified, so that a restarted broker does not hash its data again. Named by
//! the broker's id, a bitfield belongs to one record: two records of the same torrent (one
//! not restored, the same torrent added again elsewhere) never share one.
//!
//! A bitfield is only worth what the data under it is. librqbit writes both without fsync,
//! so after a SIGKILL both are in the page cache and agree, but after a power cut or a
//! kernel crash the bitfield can claim pieces the disk never got. So the folder keeps a note
//! of the boot it was last used in and whether the broker then stopped cleanly (having
//! synced the file systems): a start after an unclean end in another boot trusts no
//! bitfield, and every torrent is hashed again.
//!
//! The folder is the broker's own: a symlink in it (or in its place) is never followed.

use crate::storage::FileStamp;
use anyhow::{bail, Context};
use proto::TorrentId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The note of the last run, beside the bitfields.
const NOTE: &str = "run.json";

/// How long a clean stop may spend syncing the torrents' file systems. Past it the stop goes
/// on and the run is not marked clean (so a later crash of the machine costs a full check,
/// never bad data).
const SYNC_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize, Deserialize)]
struct RunNote {
    /// `/proc/sys/kernel/random/boot_id` of the run.
    boot_id: String,
    /// Whether that run stopped cleanly, its data synced.
    clean: bool,
}

/// The folder, opened for this run.
#[derive(Debug)]
pub struct FastResume {
    dir: PathBuf,
    boot_id: String,
}

impl FastResume {
    /// Prepares `dir` (created owner-only; refused if it is a symlink) for this run, and
    /// drops every bitfield if the last run ended uncleanly in another boot. Files that are
    /// not the engine's are left alone; a `session.json` (librqbit's session store, which
    /// the broker never writes) is moved aside, since the engine would refuse to start on a
    /// bad one.
    pub fn open(dir: &Path) -> anyhow::Result<FastResume> {
        if let Ok(meta) = std::fs::symlink_metadata(dir) {
            if !meta.is_dir() {
                bail!(
                    "{} is not a folder (a symlink?): the broker keeps the engine's fast-resume state there; move it aside",
                    dir.display()
                );
            }
        }
        crate::config::create_private_dir(dir)?;
        let store = dir.join("session.json");
        if store.symlink_metadata().is_ok() {
            let aside = dir.join("session.json.ignored");
            tracing::warn!(
                "moving {} aside to {}: the broker keeps its torrents in its own records",
                store.display(),
                aside.display()
            );
            std::fs::rename(&store, &aside)
                .with_context(|| format!("cannot move {} aside", store.display()))?;
        }
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default();
        let fast_resume = FastResume {
            dir: dir.to_path_buf(),
            boot_id,
        };
        // Unreadable or damaged: no note, so no bitfield is trusted. Not a regular file of
        // ours (a FIFO would hang the start while the lock is held): a refused start.
        let last = crate::store::read_state_file(&dir.join(NOTE))?
            .and_then(|bytes| serde_json::from_slice::<RunNote>(&bytes).ok());
        // No note (a first run has no bitfield either): nothing vouches for any bitfield.
        // An unknown boot (no boot id to read) is never the same boot.
        let same_boot = |id: &str| !id.is_empty() && id == fast_resume.boot_id;
        let trusted = last
            .as_ref()
            .is_some_and(|note| note.clean || same_boot(&note.boot_id));
        if !trusted {
            if last.is_some() {
                tracing::warn!(
                    "the machine restarted while the broker ran (a power cut or a crash): what the engine had verified may not have reached the disk, so every torrent's data is checked again"
                );
            }
            fast_resume.sweep(Some(&HashSet::new()));
        } else {
            // Before the engine reads any: no symlink, no leftover temporary file.
            fast_resume.sweep(None);
        }
        if let Err(e) = fast_resume.note(false) {
            // A start must not need a writable state disk (a full one would lock every patron
            // out). Without this run's note, no bitfield may be trusted after it.
            tracing::warn!("{e:#}; the next start hashes every torrent again");
            let _ = std::fs::remove_file(dir.join(NOTE));
        }
        Ok(fast_resume)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A torrent's bitfield.
    pub fn path(&self, id: TorrentId) -> PathBuf {
        self.dir.join(format!("{id}.bitv"))
    }

    /// What a torrent's files were when its bitfield was last known true.
    pub fn stamps_path(&self, id: TorrentId) -> PathBuf {
        self.dir.join(format!("{id}.stamps"))
    }

    /// Records what a torrent's files are now, its bitfield being true of them.
    pub fn write_stamps(&self, id: TorrentId, stamps: &[Option<FileStamp>]) -> anyhow::Result<()> {
        // Every seed completes again at each start: rewriting (and syncing) the same stamps
        // for each of 10,000 torrents kept the disk busy for seconds after a restart.
        if self.stamps_match(id, stamps) {
            return Ok(());
        }
        let path = self.stamps_path(id);
        crate::store::write_atomically(&path, &serde_json::to_vec(stamps)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Whether a torrent's bitfield has every one of its `pieces` (the engine's: one bit a
    /// piece, the first in the high bit of the first byte).
    pub fn has_every_piece(&self, id: TorrentId, pieces: u64) -> bool {
        let Ok(Some(bits)) = crate::store::read_state_file(&self.path(id)) else {
            return false;
        };
        bitfield_is_full(&bits, pieces)
    }

    /// Whether a torrent's files are as recorded (no record: not known to be).
    pub fn stamps_match(&self, id: TorrentId, now: &[Option<FileStamp>]) -> bool {
        stamps_at_match(&self.stamps_path(id), now)
    }

    /// Without `keep` (before the engine runs): removes the engine's temporary bitfields and
    /// anything but a plain file in a bitfield's place. With `keep` (the engine may be
    /// writing those of torrents in it): removes the bitfields, temporary or not, of
    /// torrents not in it.
    pub fn sweep(&self, keep: Option<&HashSet<TorrentId>>) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for file in dir.flatten() {
            let path = file.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name
                .strip_suffix(".bitv")
                .or_else(|| name.strip_suffix(".bitv.tmp"))
                .or_else(|| name.strip_suffix(".stamps"))
            else {
                continue;
            };
            let stale = match keep {
                Some(keep) => stem
                    .parse()
                    .map(TorrentId)
                    .map_or(true, |id| !keep.contains(&id)),
                None => {
                    let regular = file.file_type().is_ok_and(|t| t.is_file());
                    !regular || name.ends_with(".tmp")
                }
            };
            if stale {
                tracing::info!("removing fast-resume file {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Marks this run stopped cleanly, once every file system is synced (sync(2): also those
    /// of torrents not restored this run, whose data an earlier run may have left unsynced):
    /// the data is then on disk as far as the bitfields say.
    pub async fn stopped_cleanly(&self) {
        let synced = tokio::task::spawn_blocking(nix::unistd::sync);
        match tokio::time::timeout(SYNC_LIMIT, synced).await {
            Ok(Ok(())) => {
                if let Err(e) = self.note(true) {
                    tracing::warn!("{e:#}");
                }
            }
            _ => tracing::warn!(
                "the torrents' data is not known to be on disk: after a crash of the machine, they are checked again"
            ),
        }
    }

    fn note(&self, clean: bool) -> anyhow::Result<()> {
        let note = RunNote {
            boot_id: self.boot_id.clone(),
            clean,
        };
        let path = self.dir.join(NOTE);
        crate::store::write_atomically(&path, &serde_json::to_vec(&note)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Whether `bits` holds exactly `pieces` bits, every one set (what follows the last piece in
/// its byte is not looked at).
fn bitfield_is_full(bits: &[u8], pieces: u64) -> bool {
    if pieces == 0 || bits.len() as u64 != pieces.div_ceil(8) {
        return false;
    }
    let whole = (pieces / 8) as usize;
    let rest = (pieces % 8) as u32;
    let last = 0xffu8.checked_shl(8 - rest).unwrap_or(0);
    bits[..whole].iter().all(|b| *b == 0xff) && (rest == 0 || bits[whole] & last == last)
}

/// Whether the stamps recorded at `path` (a torrent's `.stamps`) are `now` (no record: not
/// known to be).
pub fn stamps_at_match(path: &Path, now: &[Option<FileStamp>]) -> bool {
    let recorded = crate::store::read_state_file(path)
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<Vec<Option<FileStamp>>>(&bytes).ok());
    recorded.is_some_and(|recorded| recorded == now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitfield_is_full_only_with_every_piece_and_its_exact_length() {
        assert!(bitfield_is_full(&[0xff], 8));
        assert!(bitfield_is_full(&[0xff, 0xe0], 11));
        assert!(
            bitfield_is_full(&[0xff, 0xff], 11),
            "bits past the last piece are not looked at"
        );
        assert!(!bitfield_is_full(&[0xff, 0xc0], 11));
        assert!(!bitfield_is_full(&[0x7f, 0xe0], 11));
        assert!(!bitfield_is_full(&[0xff], 11), "too short");
        assert!(!bitfield_is_full(&[0xff, 0xff], 8), "too long");
        assert!(!bitfield_is_full(&[], 0));
    }
}
