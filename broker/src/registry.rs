//! Which torrents run, who holds each, and what was last said about them.
//!
//! The engine persists the torrents themselves; this registry adds what only the broker
//! knows: each torrent's save folder as the patron named it, whether it is ephemeral, and
//! (in memory only, since patrons do not survive a broker restart) its holders.

use crate::engine::ManagedTorrentHandle;
use crate::patron::PatronId;
use proto::{InfoHash, TorrentId, TorrentInfo, TorrentRef, TorrentStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One running torrent.
pub struct TorrentEntry {
    /// What patrons are told about it.
    pub info: TorrentInfo,
    /// The engine's handle.
    pub handle: ManagedTorrentHandle,
    /// Connected patrons that created or joined it.
    pub holders: BTreeSet<PatronId>,
    /// Close it when its last holder goes.
    pub ephemeral: bool,
    /// The status its holders were last sent.
    pub last_status: Option<TorrentStatus>,
}

/// What survives a restart, per torrent.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    save_folder: PathBuf,
    ephemeral: bool,
}

/// Every torrent the broker runs.
#[derive(Default)]
pub struct TorrentRegistry {
    torrents: BTreeMap<TorrentId, TorrentEntry>,
}

impl TorrentRegistry {
    /// The torrent with this id.
    pub fn get(&self, id: TorrentId) -> Option<&TorrentEntry> {
        self.torrents.get(&id)
    }

    /// The torrent with this id, to change.
    pub fn get_mut(&mut self, id: TorrentId) -> Option<&mut TorrentEntry> {
        self.torrents.get_mut(&id)
    }

    /// The id a reference names, if such a torrent runs.
    pub fn resolve(&self, torrent: TorrentRef) -> Option<TorrentId> {
        match torrent {
            TorrentRef::Id(id) => self.torrents.contains_key(&id).then_some(id),
            TorrentRef::InfoHash(hash) => self.by_info_hash(hash),
        }
    }

    /// The id of the torrent with this info hash, if it runs.
    pub fn by_info_hash(&self, hash: InfoHash) -> Option<TorrentId> {
        self.torrents
            .iter()
            .find(|(_, entry)| entry.info.info_hash == hash)
            .map(|(id, _)| *id)
    }

    /// Records a torrent (if new) and makes `holder` hold it. Returns its info.
    pub fn insert_or_hold(
        &mut self,
        info: TorrentInfo,
        handle: ManagedTorrentHandle,
        ephemeral: bool,
        holder: Option<PatronId>,
    ) -> TorrentInfo {
        let entry = self
            .torrents
            .entry(info.id)
            .or_insert_with(|| TorrentEntry {
                info,
                handle,
                holders: BTreeSet::new(),
                ephemeral,
                last_status: None,
            });
        if let Some(holder) = holder {
            entry.holders.insert(holder);
        }
        entry.info.clone()
    }

    /// Forgets a torrent, returning it.
    pub fn remove(&mut self, id: TorrentId) -> Option<TorrentEntry> {
        self.torrents.remove(&id)
    }

    /// Releases every hold of a patron that left. Returns the ephemeral torrents nobody
    /// holds any more (already removed from the registry: the caller stops them).
    pub fn release_all(&mut self, patron: PatronId) -> Vec<TorrentId> {
        let mut orphans = Vec::new();
        for (id, entry) in self.torrents.iter_mut() {
            if entry.holders.remove(&patron) && entry.ephemeral && entry.holders.is_empty() {
                orphans.push(*id);
            }
        }
        for id in &orphans {
            self.torrents.remove(id);
        }
        orphans
    }

    /// All torrents, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&TorrentId, &TorrentEntry)> {
        self.torrents.iter()
    }

    /// All torrents, by id, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&TorrentId, &mut TorrentEntry)> {
        self.torrents.iter_mut()
    }

    /// How many torrents run.
    pub fn len(&self) -> usize {
        self.torrents.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.torrents.is_empty()
    }

    /// Writes the restart records (atomically: write a temporary file, then rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let records: BTreeMap<u64, Record> = self
            .torrents
            .iter()
            .map(|(id, entry)| {
                (
                    id.0,
                    Record {
                        save_folder: PathBuf::from(&entry.info.save_folder),
                        ephemeral: entry.ephemeral,
                    },
                )
            })
            .collect();
        let json = serde_json::to_vec_pretty(&records)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads the restart records written by [`TorrentRegistry::save`]: id → (save folder, ephemeral).
    pub fn load_records(path: &Path) -> BTreeMap<TorrentId, (PathBuf, bool)> {
        let Ok(bytes) = std::fs::read(path) else {
            return BTreeMap::new();
        };
        match serde_json::from_slice::<BTreeMap<u64, Record>>(&bytes) {
            Ok(records) => records
                .into_iter()
                .map(|(id, r)| (TorrentId(id), (r.save_folder, r.ephemeral)))
                .collect(),
            Err(e) => {
                tracing::warn!("ignoring unreadable {}: {e}", path.display());
                BTreeMap::new()
            }
        }
    }
}
