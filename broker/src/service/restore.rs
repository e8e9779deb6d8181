//! The start: every record of the previous run added again, or kept (in error, saying why)
//! when it cannot be (DESIGN §4a).

use super::Service;
use crate::registry::{Dormant, Life, RestoreSpec, Unrestored};
use crate::torrent_file;
use proto::{ProtoError, TorrentId, TorrentInfo};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Records are prepared (their .torrent read and parsed, their folders checked) this many at
/// a time on several threads, then added in order: that is most of a restart of thousands.
const PREPARE_BATCH: usize = 256;

/// And at most this many bytes of .torrent files at a time (a large torrent's is
/// megabytes, and what is held at once is that and more, parsed): one larger is a batch of
/// its own.
const PREPARE_BATCH_BYTES: u64 = 32 << 20;

/// `items` in consecutive batches of at most [`PREPARE_BATCH`] items and
/// [`PREPARE_BATCH_BYTES`] bytes (`bytes` of each), each at least one item.
fn in_batches<T>(items: &mut [T], bytes: impl Fn(&T) -> u64) -> Vec<&mut [T]> {
    let mut batches = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let (mut count, mut total) = (0, 0u64);
        while count < rest.len() && count < PREPARE_BATCH {
            let size = bytes(&rest[count]);
            if count > 0 && total.saturating_add(size) > PREPARE_BATCH_BYTES {
                break;
            }
            total = total.saturating_add(size);
            count += 1;
        }
        let (batch, after) = std::mem::take(&mut rest).split_at_mut(count);
        batches.push(batch);
        rest = after;
    }
    batches
}

/// Save folders already found restorable at this start: ten thousand torrents in one
/// folder resolve it once.
#[derive(Default)]
pub(super) struct FolderChecks(std::sync::Mutex<std::collections::HashSet<PathBuf>>);

/// A record ready to be added.
pub(super) struct Prepared {
    pub(super) checked: torrent_file::CheckedTorrent,
    pub(super) info: TorrentInfo,
    pub(super) files: Arc<[PathBuf]>,
}

/// A record that cannot be restored: why, and what is known of its torrent (boxed: most
/// records restore, and the results of a batch are held together).
pub(super) type Failed = Box<(ProtoError, TorrentInfo, Arc<[PathBuf]>)>;

/// `f` of each item, in order, on as many threads as there are cores (at most 4). Only for
/// work that blocks on nothing but the disk: it runs at the start, before anyone is served.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let per_thread = items.len().div_ceil(threads).max(1);
    if threads == 1 || items.len() <= 16 {
        return items.iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let workers: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| match worker.join() {
                Ok(results) => results,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

impl Service {
    /// Adds the recorded torrents again. A record that cannot be restored is kept (shown in
    /// error, retried at the next start); records that cannot be read stop the start, and
    /// nothing is overwritten.
    pub(super) async fn restore(&self) -> anyhow::Result<()> {
        crate::store::check_state_folder(&self.config.torrents_dir())?;
        let mut records = self.records().load().map_err(|why| anyhow::anyhow!(why))?;
        crate::counts::Counts::load(&self.config.state_dir)
            .map_err(|why| anyhow::anyhow!(why))?
            .apply(&mut records);
        for id in records.keys() {
            self.engine.reserve_id(*id);
        }
        // A .torrent that is not a regular file of ours (a FIFO planted there would hang the
        // start while the lock is held) refuses the start, naming it, before anything is
        // restored; a missing one, or one that cannot be read (or is swapped after this
        // look: its read refuses it as this does), is a record kept unrestored, as any other
        // failure to restore.
        let ids: Vec<TorrentId> = records.keys().copied().collect();
        let mut sizes = std::collections::HashMap::with_capacity(ids.len());
        for (id, size) in ids.iter().zip(in_parallel(&ids, |id| {
            crate::store::state_file_size(&self.torrent_file_path(*id))
        })) {
            sizes.insert(*id, size?.unwrap_or(0));
        }
        self.board.reserve(records.len());
        // In the queue's order: each restored torrent is then last so far, and keeps its place.
        let mut records: Vec<(TorrentId, RestoreSpec)> = records.into_iter().collect();
        records.sort_by_key(|(id, spec)| (spec.queue_position, *id));
        let started = std::time::Instant::now();
        let (mut finished_moves, mut kept) = (false, 0);
        let folders = FolderChecks::default();
        for batch in in_batches(&mut records, |(id, _)| sizes.get(id).copied().unwrap_or(0)) {
            let prepared = in_parallel(batch, |(id, spec)| {
                let prepared = self.prepare(*id, spec, &folders);
                let dormant = prepared
                    .as_ref()
                    .is_ok_and(|prepared| self.restores_dormant(*id, spec, prepared));
                (prepared, dormant)
            });
            for ((id, spec), (prepared, dormant)) in batch.iter_mut().zip(prepared) {
                let restored = match prepared {
                    Ok(prepared) => {
                        self.restore_prepared(*id, spec, prepared, dormant, &mut finished_moves)
                            .await
                    }
                    Err(failed) => Err(failed),
                };
                if let Err(failed) = restored {
                    let (error, info, files) = *failed;
                    tracing::error!(torrent = %id, "cannot restore, kept for the next start: {error}");
                    let unrestored = Unrestored {
                        info,
                        restore: spec.clone(),
                        error: error.message,
                        files,
                    };
                    self.state().registry.keep_unrestored(*id, unrestored);
                    kept += 1;
                }
            }
        }
        if !records.is_empty() {
            let dormant = self
                .state()
                .registry
                .iter()
                .filter(|(_, e)| matches!(e.life, Life::Dormant(_)))
                .count();
            tracing::info!(
                restored = records.len() - kept,
                out_of_the_engine = dormant,
                kept,
                ms = started.elapsed().as_millis() as u64,
                "restored the recorded torrents"
            );
        }
        // Files of torrents that are no longer recorded (ephemeral, or closed mid-save).
        if let Ok(dir) = std::fs::read_dir(self.config.torrents_dir()) {
            for file in dir.flatten() {
                let id = file
                    .path()
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                    .map(TorrentId);
                let is_record = file.path().extension().is_some_and(|e| e == "torrent");
                // Only `<id>.torrent` of an id no record names: nothing else is ours to sweep.
                if is_record && id.is_some_and(|id| !self.state().registry.remembers(id)) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        // Fast-resume state of torrents no longer recorded (closed while the broker was
        // killed): a later add of the same torrent must check its data afresh.
        let remembered = self.state().registry.ids();
        self.engine.sweep_verified(&remembered);
        // Nothing else to save: every record is kept, restored or not. (A start must not
        // need a writable state disk: a full one would lock every patron out; a move
        // finished or undone is finished or undone again at the next start.)
        if finished_moves {
            if let Err(why) = self.save_registry() {
                tracing::warn!("the records of finished moves are not saved yet: {why}");
            }
        }
        Ok(())
    }

    /// What restoring record `id` needs that touches nothing: its .torrent read and checked,
    /// and (unless a move is to be finished first) its folder and paths. Run for many records
    /// at once, on several threads.
    pub(super) fn prepare(
        &self,
        id: TorrentId,
        spec: &RestoreSpec,
        folders: &FolderChecks,
    ) -> Result<Prepared, Failed> {
        let mut info = TorrentInfo {
            id,
            info_hash: proto::InfoHash([0; 20]),
            name: format!("torrent {id}"),
            save_folder: spec.save_folder.display().to_string(),
            total_bytes: 0,
        };
        let none: Arc<[PathBuf]> = Arc::from(Vec::new());
        let path = self.torrent_file_path(id);
        let bytes = match crate::store::read_state_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let why = format!("{} is missing", path.display());
                return Err(Box::new((ProtoError::io(why), info, none)));
            }
            Err(e) => return Err(Box::new((ProtoError::io(e.to_string()), info, none))),
        };
        let checked = torrent_file::check_torrent_file(&bytes, self.config.loopback_only)
            .map_err(|e| Box::new((e, info.clone(), none.clone())))?;
        info = checked.info(id, &spec.save_folder, spec.only_files.as_deref());
        let files = checked.full_paths(&spec.data_folder);
        if spec.moving.is_none() {
            self.check_placement(spec, &checked, folders)
                .map_err(|e| Box::new((e, info.clone(), files.clone())))?;
        }
        Ok(Prepared {
            checked,
            info,
            files,
        })
    }

    /// Whether record `id` comes back out of the engine, a dormant seed (see
    /// [`super::sleep`]) shown seeding at once: seeds may sleep, it has no peer in its
    /// record to dial at its start, no move to finish, and what it verified vouches, with no
    /// engine, for every piece (its bitfield full, its files as when that was known true:
    /// what a resume's vouch asks). Blocking: it looks at its files.
    fn restores_dormant(&self, id: TorrentId, spec: &RestoreSpec, prepared: &Prepared) -> bool {
        self.config.sleep_seeds_after.is_some()
            && !spec.ephemeral
            && spec.moving.is_none()
            && !spec.move_due
            && spec.all_peers().is_empty()
            // One with a tracker runs in the engine, in a tracker session (see the sleeper).
            && (!prepared.checked.has_trackers || spec.engine_paused())
            && self.engine.vouches_complete(
                id,
                &spec.data_folder,
                &prepared.checked.relative_paths(),
                prepared.checked.pieces(),
            )
    }

    /// Where a torrent is restored must be as it was: its save folder and every path beneath.
    fn check_placement(
        &self,
        spec: &RestoreSpec,
        checked: &torrent_file::CheckedTorrent,
        folders: &FolderChecks,
    ) -> Result<(), ProtoError> {
        let known = folders
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&spec.save_folder);
        if !known {
            // Only a folder found fine is remembered: a failure is looked at again for the
            // next record (it may have been passing).
            self.check_restorable_folder(&spec.save_folder)?;
            folders
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.save_folder.clone());
        }
        crate::roots::check_torrent_paths(
            &spec.save_folder,
            checked,
            crate::roots::OwnFolder::Restored,
        )
    }

    /// Restores one prepared record (a move it was in the middle of finished or undone
    /// first, then `moves` set), into the engine or, `dormant`, out of it; on failure, the
    /// reason and what is known of the torrent.
    async fn restore_prepared(
        &self,
        id: TorrentId,
        spec: &mut RestoreSpec,
        prepared: Prepared,
        dormant: bool,
        moves: &mut bool,
    ) -> Result<(), Failed> {
        let Prepared {
            checked,
            mut info,
            mut files,
        } = prepared;
        if spec.moving.is_some() {
            let on_disk = checked
                .files
                .iter()
                .zip(&checked.padding)
                .filter(|(_, padding)| !**padding)
                .map(|((path, _), _)| path.clone())
                .collect();
            match self.finish_move(id, spec, on_disk) {
                Ok(changed) => *moves |= changed,
                Err(error) => return Err(Box::new((error, info, files))),
            }
            info = checked.info(id, &spec.save_folder, spec.only_files.as_deref());
            files = checked.full_paths(&spec.data_folder);
            self.check_placement(spec, &checked, &FolderChecks::default())
                .map_err(|e| Box::new((e, info.clone(), files.clone())))?;
        }
        // Two records with a file in common (one kept while the other was added): the
        // second stays a record, not restored over the first's data.
        if let Err(error) = self.room_for_files(&files, Some(id)) {
            return Err(Box::new((error, info, files)));
        }
        // Two records of one torrent (added again while the first could not be restored):
        // the second is kept, not silently merged away. (The engine would say so of one in
        // it; the registry of one out of it too.)
        let twin = self.state().registry.by_info_hash(checked.info_hash);
        if let Some(twin) = twin.filter(|twin| *twin != id) {
            let why = format!("the same torrent is already restored as torrent {twin}");
            return Err(Box::new((ProtoError::bad_request(why), info, files)));
        }
        if dormant {
            self.restore_dormant(id, spec, &checked);
            return Ok(());
        }
        // What the engine verified (under this id) is this torrent's own.
        let added = self
            .engine_add_again(
                id,
                checked.bytes.clone(),
                spec,
                true,
                checked.relative_paths(),
            )
            .await
            .map_err(|e| Box::new((e, info.clone(), files.clone())))?;
        if !added.is_new || added.id != id {
            // Two records of one torrent (added again while the first could not be restored):
            // the second is kept, not silently merged away.
            let why = format!(
                "the same torrent is already restored as torrent {}",
                added.id
            );
            return Err(Box::new((ProtoError::bad_request(why), info, files)));
        }
        tracing::debug!(torrent = %id, name = %checked.name, "restored torrent");
        let info = checked.info(added.id, &spec.save_folder, spec.only_files.as_deref());
        self.state()
            .registry
            .insert_or_hold(info, added.handle, spec.clone(), None);
        Ok(())
    }

    /// Records a complete seed its fast-resume state vouches for, out of the engine: shown
    /// seeding (or paused, or queued, as its record says), its clocks running from now as
    /// the engine's would from its first look.
    fn restore_dormant(
        &self,
        id: TorrentId,
        spec: &RestoreSpec,
        checked: &torrent_file::CheckedTorrent,
    ) {
        let info = checked.info(id, &spec.save_folder, spec.only_files.as_deref());
        let mut spec = spec.clone();
        if !spec.engine_paused() {
            spec.start_clocks(crate::counts::now_ms());
        }
        let files: Arc<[PathBuf]> = checked
            .files
            .iter()
            .zip(&checked.padding)
            .filter(|(_, padding)| !**padding)
            .map(|((path, _), _)| spec.data_folder.join(path))
            .collect::<Vec<_>>()
            .into();
        let now = std::time::Instant::now();
        // One that announces is due to at once: the sleeper wakes it in its turn (64 a look
        // of those that announce on DHT or LSD only, and they sleep again once idle; one
        // with a tracker is restored out of the engine only while held, and wakes to stay
        // once let go).
        let announces = self.announces(checked.has_trackers, checked.private);
        let dormant = Dormant {
            bytes: info.total_bytes,
            idle_since: now,
            next_announce: announces.then_some(now),
            tracker: checked.has_trackers,
        };
        tracing::debug!(torrent = %id, name = %checked.name, "restored out of the engine");
        self.state()
            .registry
            .insert_dormant(info, dormant, files, spec);
    }

    /// A save folder is used again only as it was: an existing folder inside the roots. A
    /// missing one is not created again (an unmounted disk would have the torrent written
    /// onto the disk beneath the mount point).
    fn check_restorable_folder(&self, folder: &Path) -> Result<(), ProtoError> {
        let io = |why: String| ProtoError::io(why);
        let meta = std::fs::metadata(folder).map_err(|e| {
            io(format!(
                "save folder {} is unusable: {e} (is its disk mounted?)",
                folder.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(io(format!(
                "save folder {} is not a folder",
                folder.display()
            )));
        }
        let canonical = folder.canonicalize().map_err(|e| {
            io(format!(
                "cannot resolve save folder {}: {e}",
                folder.display()
            ))
        })?;
        self.check_inside_roots(&canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_by_bytes_and_never_empty() {
        let mut small = vec![1u64; 600];
        let sizes: Vec<usize> = in_batches(&mut small, |s| *s)
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, [256, 256, 88]);
        // 20 MiB each: one per batch once a second would pass 32 MiB; one larger than the
        // bound is a batch of its own.
        let mut large = vec![20u64 << 20, 20 << 20, 40 << 20, 1, 1];
        let sizes: Vec<usize> = in_batches(&mut large, |s| *s)
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1, 2]);
        let mut none: Vec<u64> = Vec::new();
        assert!(in_batches(&mut none, |s| *s).is_empty());
    }
}
