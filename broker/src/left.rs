//! Data the broker downloaded and left where it was when its torrent closed without
//! `--delete-data`. An add of that torrent into that folder again with `--overwrite` reuses
//! the broker's own download, so closing it later with `--delete-data` may delete it; any
//! other file an add with `--overwrite` finds there is the user's (DESIGN §4: deleting data
//! never deletes what the user had), and `--delete-data` leaves it.
//!
//! Kept in `<state dir>/left-data.json`, the latest [`MAX_LEFT`] closes, written atomically.
//! A damaged or missing file is an empty list: the worst it costs is a refusal to delete.

use proto::InfoHash;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How many closes are remembered (the oldest are forgotten first).
pub const MAX_LEFT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    info_hash: String,
    data_folder: PathBuf,
}

/// The broker's downloads left behind.
pub struct LeftData {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

impl LeftData {
    /// The list kept at `path`.
    pub fn load(path: PathBuf) -> LeftData {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<Entry>>(&bytes).ok())
            .unwrap_or_default();
        LeftData {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// Remembers that the torrent `info_hash` left the data it downloaded in `data_folder`.
    pub fn remember(&self, info_hash: InfoHash, data_folder: &Path) {
        let entry = Entry {
            info_hash: info_hash.to_string(),
            data_folder: data_folder.to_path_buf(),
        };
        let mut entries = self.lock();
        entries.retain(|e| *e != entry);
        entries.push(entry);
        let excess = entries.len().saturating_sub(MAX_LEFT);
        entries.drain(..excess);
        self.save(&entries);
    }

    /// Whether the data in `data_folder` is what torrent `info_hash` downloaded and left.
    pub fn holds(&self, info_hash: InfoHash, data_folder: &Path) -> bool {
        let hash = info_hash.to_string();
        self.lock()
            .iter()
            .any(|e| e.info_hash == hash && e.data_folder == data_folder)
    }

    /// Forgets that entry (the torrent runs from that data again).
    pub fn forget(&self, info_hash: InfoHash, data_folder: &Path) {
        let hash = info_hash.to_string();
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|e| !(e.info_hash == hash && e.data_folder == data_folder));
        if entries.len() != before {
            self.save(&entries);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, entries: &[Entry]) {
        let written = serde_json::to_vec(entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::store::write_atomically(&self.path, &bytes));
        if let Err(e) = written {
            tracing::warn!("cannot save {}: {e}", self.path.display());
        }
    }
}
