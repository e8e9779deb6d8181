//! The broker's records of its torrents (DESIGN §4a): one small file per torrent,
//! `<state dir>/records/<id>.json`, as transmission keeps one resume file per torrent.
//!
//! They were one `torrents.json` for all, rewritten whole (and synced twice) at every
//! change: an add to a broker of 10,000 torrents wrote megabytes, and 10,000 adds were
//! quadratic (issue 23). Now a change writes the records it changed, each crash-safe on its
//! own (temporary file, fsync, rename, fsync of the folder): one torrent's add or change is
//! one small write, whatever the number of torrents. A save of everything (the seeding
//! counts, a queue reordered) still looks at every record but writes only those that
//! changed since they were last written.
//!
//! A start migrates a `torrents.json` it finds: every record is written into
//! `records.new`, which is then renamed `records` (one atomic step) before the old file is
//! moved aside (`torrents.json.migrated`); a crash at any point leaves either the old file,
//! whole, or the new folder, whole.
//! A record that cannot be read refuses the start, naming its file, as the old file did.
//!
//! A change of many records at once (a queue reordered, the seeding counts of a previous
//! release) is one step too: what every changed record becomes is first written, crash-safe,
//! to `records.journal` beside the folder; then each record; then the journal goes. A start
//! that finds a journal (a SIGKILL or a power cut in the middle) finishes the change before it
//! reads the records, so they are never part old, part new. A damaged journal refuses the
//! start, naming it.

use crate::registry::{RestoreSpec, TorrentRegistry};
use proto::TorrentId;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

/// The folder of the records, in the state dir.
pub const FOLDER: &str = "records";
/// The file of the records before this folder (migrated at the first start).
pub const LEGACY_FILE: &str = "torrents.json";
/// Where the file of the records goes once migrated (kept, as a backup).
pub const MIGRATED_FILE: &str = "torrents.json.migrated";
/// Where a migration writes before the folder takes its name.
const STAGING: &str = "records.new";
/// What a change of many records becomes, while it is being made (see the module's doc).
pub const JOURNAL: &str = "records.journal";

/// A change of many records, as the journal holds it: each record's new bytes (JSON, as the
/// record is written), or `None` for a record removed.
type Journal = Vec<(TorrentId, Option<String>)>;

/// The records on disk, and what was last written of each.
pub struct RecordStore {
    dir: PathBuf,
    journal: PathBuf,
    /// A journal whose change is over could not be removed (see `remove_journal`).
    journal_left: bool,
    /// A hash of each record's bytes as last written (or read): a record whose bytes are
    /// the same is not written again.
    written: HashMap<TorrentId, u64>,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// A record as it is written.
pub fn encode(spec: &RestoreSpec) -> io::Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(spec)?)
}

impl RecordStore {
    /// The records of `state_dir`, migrated from a `torrents.json` if there is one.
    pub fn open(state_dir: &Path) -> Result<RecordStore, String> {
        let dir = state_dir.join(FOLDER);
        let legacy = state_dir.join(LEGACY_FILE);
        let staging = state_dir.join(STAGING);
        crate::store::check_state_folder(&dir).map_err(|e| e.to_string())?;
        if std::fs::symlink_metadata(&dir).is_err() {
            // A migration cut short left only its staging folder: done again.
            remove_staging(&staging)?;
            let records = TorrentRegistry::load_records(&legacy)?;
            // Owner-only, as everything of the state dir.
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(&staging)
                .map_err(|e| format!("cannot make {}: {e}", staging.display()))?;
            for (id, spec) in &records {
                let path = staging.join(format!("{id}.json"));
                let bytes = encode(spec).map_err(|e| e.to_string())?;
                crate::store::write_atomically(&path, &bytes)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            std::fs::rename(&staging, &dir)
                .and_then(|()| crate::store::sync_folder(state_dir))
                .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
            if !records.is_empty() {
                tracing::info!(
                    "the records of {} torrents moved from {} to {}, a file each",
                    records.len(),
                    legacy.display(),
                    dir.display()
                );
            }
        }
        let mut store = RecordStore {
            dir: dir.clone(),
            journal: state_dir.join(JOURNAL),
            journal_left: false,
            written: HashMap::new(),
        };
        store.finish_journal()?;
        // The folder is whole. An old file beside it is what a migration left, if it says
        // what the folder does: then it is moved aside (never deleted), and said. One that
        // says otherwise (put back by hand, or written by an earlier release run since)
        // refuses the start: neither is chosen over the other by guess.
        if std::fs::symlink_metadata(&legacy).is_ok() {
            let old = TorrentRegistry::load_records(&legacy)?;
            let now = store.load()?;
            let same = old.len() == now.len()
                && old.iter().all(|(id, spec)| {
                    now.get(id)
                        .is_some_and(|n| encode(n).ok() == encode(spec).ok())
                });
            if !same {
                return Err(format!(
                    "{} and {} both hold records of torrents, and they differ (an earlier release run on this state dir?): keep the one to use and move the other aside",
                    legacy.display(),
                    dir.display()
                ));
            }
            let aside = state_dir.join(MIGRATED_FILE);
            std::fs::rename(&legacy, &aside)
                .and_then(|()| crate::store::sync_folder(state_dir))
                .map_err(|e| format!("cannot move {} aside: {e}", legacy.display()))?;
            tracing::warn!(
                "{} moved aside to {}: the records are {}, a file per torrent",
                legacy.display(),
                aside.display(),
                dir.display()
            );
        }
        Ok(store)
    }

    /// Reads every record. One that cannot be read or parsed is an error naming its file
    /// (the caller must not start over it); temporary files a crash left are removed.
    pub fn load(&mut self) -> Result<BTreeMap<TorrentId, RestoreSpec>, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
        let mut records = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            // Only `<id>.json` as the broker names it (`01.json` would name torrent 1 twice).
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|id| id.parse::<u64>().ok())
                .filter(|id| format!("{id}.json") == name)
                .map(TorrentId)
            else {
                tracing::warn!(
                    "{} is not a record of the broker's: left alone",
                    path.display()
                );
                continue;
            };
            let damaged = |what: String| {
                format!(
                    "{} {what}; it is the record of torrent {id}, so the broker will not start over it: restore it from a backup, or move it aside to forget that torrent",
                    path.display()
                )
            };
            let bytes = match crate::store::read_state_file(&path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => return Err(damaged(format!("cannot be read ({e})"))),
            };
            let spec: RestoreSpec = serde_json::from_slice(&bytes).map_err(|e| {
                damaged(match bytes.is_empty() {
                    true => "is empty".to_owned(),
                    false => format!("is damaged ({e})"),
                })
            })?;
            if let Ok(bytes) = encode(&spec) {
                self.written.insert(id, hash(&bytes));
            }
            records.insert(id, spec);
        }
        Ok(records)
    }

    fn path(&self, id: TorrentId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes torrent `id`'s record (`None`: it has none any more, the file goes), unless
    /// it is as last written.
    pub fn save(&mut self, id: TorrentId, record: Option<&[u8]>) -> io::Result<()> {
        self.remove_journal_left()?;
        self.write_record(id, record)
    }

    fn write_record(&mut self, id: TorrentId, record: Option<&[u8]>) -> io::Result<()> {
        match record {
            Some(bytes) => {
                let digest = hash(bytes);
                // As last written, and still there (one removed from outside is written
                // again).
                if self.written.get(&id) == Some(&digest) && self.path(id).exists() {
                    return Ok(());
                }
                // Forgotten first: a failed write must be written again next time.
                self.written.remove(&id);
                crate::store::write_atomically(&self.path(id), bytes)?;
                self.written.insert(id, digest);
            }
            None => {
                // Forgotten only once removed: a failed removal is tried again next time
                // (a record left behind would bring a closed torrent back).
                if self.written.contains_key(&id) || self.path(id).exists() {
                    crate::store::remove_durably(&self.path(id))?;
                }
                self.written.remove(&id);
            }
        }
        Ok(())
    }

    /// Makes the records on disk those given (every torrent that has one): those changed
    /// are written, those gone are removed. Should one fail, those already changed are put
    /// back as they were (a change of many records, a queue reordered, is then the old one
    /// on disk as in memory, not a mixture). Each record is crash-safe on its own; a
    /// SIGKILL in the middle of a change of many can leave some changed and some not.
    pub fn save_all(&mut self, records: Vec<(TorrentId, Vec<u8>)>) -> io::Result<()> {
        let present: std::collections::HashSet<TorrentId> =
            records.iter().map(|(id, _)| *id).collect();
        let gone: Vec<TorrentId> = self
            .written
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        let changes: Vec<(TorrentId, Option<&[u8]>)> = records
            .iter()
            .map(|(id, bytes)| (*id, Some(bytes.as_slice())))
            .chain(gone.iter().map(|id| (*id, None)))
            .filter(|(id, record)| match record {
                Some(bytes) => {
                    self.written.get(id) != Some(&hash(bytes)) || !self.path(*id).exists()
                }
                None => self.written.contains_key(id) || self.path(*id).exists(),
            })
            .collect();
        self.remove_journal_left()?;
        // One record is one crash-safe step of its own; more go through the journal.
        let journaled = changes.len() > 1;
        if journaled {
            self.write_journal(&changes)?;
        }
        // What each changed record was, to put back.
        let mut done: Vec<(TorrentId, Option<Vec<u8>>)> = Vec::new();
        for (id, record) in changes {
            let before = std::fs::read(self.path(id)).ok();
            if let Err(e) = self.write_record(id, record) {
                // Put back. The journal first says what is put back, so that a kill from
                // here on ends with the records as they were, never as the failed change.
                if journaled {
                    let undo: Vec<_> = done.iter().map(|(id, b)| (*id, b.as_deref())).collect();
                    if let Err(e) = self.write_journal(&undo) {
                        tracing::error!("cannot write {}: {e}", self.journal.display());
                    }
                }
                for (id, before) in done.into_iter().rev() {
                    if let Err(e) = self.write_record(id, before.as_deref()) {
                        tracing::error!(torrent = %id, "a record changed by a failed save is not put back: {e}");
                    }
                }
                if journaled {
                    self.remove_journal();
                }
                return Err(e);
            }
            done.push((id, before));
        }
        if journaled {
            self.remove_journal();
        }
        Ok(())
    }

    /// Removes the journal of a change that is over (made, or put back). One that cannot be
    /// removed is the records as they are now; it is removed before any other change is
    /// made, or that change fails (a start would otherwise make the journal's change again
    /// over a later one).
    fn remove_journal(&mut self) {
        if let Err(e) = crate::store::remove_durably(&self.journal) {
            tracing::error!("cannot remove {}: {e}", self.journal.display());
            self.journal_left = true;
        }
    }

    fn remove_journal_left(&mut self) -> io::Result<()> {
        if self.journal_left {
            crate::store::remove_durably(&self.journal)?;
            self.journal_left = false;
        }
        Ok(())
    }

    /// The folder (for messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes, crash-safe, what a change of many records makes of them.
    fn write_journal(&self, changes: &[(TorrentId, Option<&[u8]>)]) -> io::Result<()> {
        let journal: Journal = changes
            .iter()
            .map(|(id, record)| {
                let record = record
                    .map(|bytes| String::from_utf8(bytes.to_vec()).map_err(io::Error::other))
                    .transpose()?;
                Ok((*id, record))
            })
            .collect::<io::Result<_>>()?;
        crate::store::write_atomically(&self.journal, &serde_json::to_vec(&journal)?)
    }

    /// Finishes a change of many records that a stop cut short (see the module's doc).
    fn finish_journal(&mut self) -> Result<(), String> {
        let damaged = |what: String| {
            format!(
                "{} {what}; it holds a change of many torrents' records that a stop cut short, so the broker will not start over it: move it aside to keep the records as they are",
                self.journal.display()
            )
        };
        let bytes = match crate::store::read_state_file(&self.journal) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(()),
            Err(e) => return Err(damaged(format!("cannot be read ({e})"))),
        };
        let journal: Journal =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("is damaged ({e})")))?;
        for (id, record) in &journal {
            if let Some(record) = record {
                serde_json::from_str::<RestoreSpec>(record).map_err(|e| {
                    damaged(format!("holds a damaged record of torrent {id} ({e})"))
                })?;
            }
        }
        for (id, record) in &journal {
            self.write_record(*id, record.as_deref().map(str::as_bytes))
                .map_err(|e| {
                    format!(
                        "cannot finish the change {} holds: {e}",
                        self.journal.display()
                    )
                })?;
        }
        crate::store::remove_durably(&self.journal)
            .map_err(|e| format!("cannot remove {}: {e}", self.journal.display()))?;
        tracing::warn!(
            "a change of {} torrents' records was cut short by a stop: it is finished",
            journal.len()
        );
        Ok(())
    }
}

/// Removes what a migration cut short left: its staging folder (only a real folder, only
/// record files and temporary files in it).
fn remove_staging(staging: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(staging) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a folder (a symbolic link?): move it aside",
            staging.display()
        ));
    }
    std::fs::remove_dir_all(staging)
        .map_err(|e| format!("cannot remove {}: {e}", staging.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(folder: &str) -> RestoreSpec {
        RestoreSpec::new(PathBuf::from(folder), PathBuf::from(folder))
    }

    #[test]
    fn a_record_written_is_read_back_and_one_removed_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RecordStore::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        let one = encode(&spec("/a")).unwrap();
        let two = encode(&spec("/b")).unwrap();
        store
            .save_all(vec![(TorrentId(1), one), (TorrentId(2), two)])
            .unwrap();
        let mut again = RecordStore::open(dir.path()).unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[&TorrentId(2)].save_folder, PathBuf::from("/b"));
        // Saving every record but one removes that one's file.
        let one = encode(&loaded[&TorrentId(1)]).unwrap();
        again.save_all(vec![(TorrentId(1), one)]).unwrap();
        assert!(!dir.path().join("records/2.json").exists());
        assert!(dir.path().join("records/1.json").exists());
    }

    #[test]
    fn a_change_of_many_records_cut_short_by_a_kill_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RecordStore::open(dir.path()).unwrap();
        let old: Vec<_> = (1..=3)
            .map(|n| (TorrentId(n), encode(&spec(&format!("/old{n}"))).unwrap()))
            .collect();
        store.save_all(old).unwrap();
        assert!(!dir.path().join(JOURNAL).exists(), "no journal once done");
        // A change of all three (one removed) journaled, then killed after its first write.
        let one = encode(&spec("/new1")).unwrap();
        let three = encode(&spec("/new3")).unwrap();
        let changes = [
            (TorrentId(1), Some(one.as_slice())),
            (TorrentId(3), Some(three.as_slice())),
            (TorrentId(2), None),
        ];
        store.write_journal(&changes).unwrap();
        store.save(TorrentId(1), Some(&one)).unwrap();
        drop(store);
        let loaded = RecordStore::open(dir.path()).unwrap().load().unwrap();
        let folders: Vec<_> = loaded.values().map(|s| s.save_folder.clone()).collect();
        assert_eq!(folders, [PathBuf::from("/new1"), PathBuf::from("/new3")]);
        assert!(!dir.path().join(JOURNAL).exists());
    }

    #[test]
    fn a_change_of_many_that_fails_midway_is_put_back_whole_and_leaves_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RecordStore::open(dir.path()).unwrap();
        let old: Vec<_> = (1..=2)
            .map(|n| (TorrentId(n), encode(&spec(&format!("/old{n}"))).unwrap()))
            .collect();
        store.save_all(old.clone()).unwrap();
        // Record 3 cannot be written: a folder (not empty) stands in its place.
        std::fs::create_dir_all(dir.path().join("records/3.json/in")).unwrap();
        let new: Vec<_> = (1..=3)
            .map(|n| (TorrentId(n), encode(&spec(&format!("/new{n}"))).unwrap()))
            .collect();
        assert!(store.save_all(new).is_err());
        assert!(!dir.path().join(JOURNAL).exists());
        std::fs::remove_dir_all(dir.path().join("records/3.json")).unwrap();
        let loaded = RecordStore::open(dir.path()).unwrap().load().unwrap();
        let folders: Vec<_> = loaded.values().map(|s| s.save_folder.clone()).collect();
        assert_eq!(folders, [PathBuf::from("/old1"), PathBuf::from("/old2")]);
    }

    #[test]
    fn a_damaged_journal_refuses_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        RecordStore::open(dir.path()).unwrap();
        for bytes in [&b"[[1, \"{\\\"save"[..], b"[[1, \"{}\"]]"] {
            std::fs::write(dir.path().join(JOURNAL), bytes).unwrap();
            let error = RecordStore::open(dir.path()).err().unwrap();
            assert!(error.contains(JOURNAL), "{error}");
        }
        // Nor through a link.
        std::fs::remove_file(dir.path().join(JOURNAL)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(JOURNAL)).unwrap();
        let error = RecordStore::open(dir.path()).err().unwrap();
        assert!(error.contains(JOURNAL), "{error}");
    }

    #[test]
    fn only_the_brokers_own_names_are_records_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RecordStore::open(dir.path()).unwrap();
        let bytes = encode(&spec("/a")).unwrap();
        store.save(TorrentId(1), Some(&bytes)).unwrap();
        // Another name for torrent 1, and a stranger's file: left alone, not read.
        std::fs::write(dir.path().join("records/01.json"), b"{").unwrap();
        std::fs::write(dir.path().join("records/notes.txt"), b"mine").unwrap();
        let loaded = RecordStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.len(), 1);
        std::fs::write(dir.path().join("records/3.json"), b"{\"save_fol").unwrap();
        let error = RecordStore::open(dir.path()).unwrap().load().unwrap_err();
        assert!(error.contains("records/3.json"), "{error}");
    }

    #[test]
    fn a_torrents_json_is_migrated_and_a_staging_folder_left_by_a_crash_is_done_again() {
        let dir = tempfile::tempdir().unwrap();
        let old: BTreeMap<u64, RestoreSpec> = [(0, spec("/a")), (5, spec("/b"))].into();
        std::fs::write(
            dir.path().join(LEGACY_FILE),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join(STAGING)).unwrap();
        std::fs::write(dir.path().join(STAGING).join("0.json"), b"{\"half").unwrap();
        let mut store = RecordStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded.keys().copied().collect::<Vec<_>>(),
            [TorrentId(0), TorrentId(5)]
        );
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert!(dir.path().join(MIGRATED_FILE).exists(), "kept aside");
        assert!(!dir.path().join(STAGING).exists());
        // A damaged torrents.json is never migrated over: the start stops, naming it.
        let damaged = tempfile::tempdir().unwrap();
        std::fs::write(damaged.path().join(LEGACY_FILE), b"{\"0\": {").unwrap();
        let error = RecordStore::open(damaged.path()).err().unwrap();
        assert!(error.contains(LEGACY_FILE), "{error}");
        assert!(damaged.path().join(LEGACY_FILE).exists());
    }
}
