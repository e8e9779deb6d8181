//! The start: every record of the previous run added again, or kept (in error, saying why)
//! when it cannot be (DESIGN §4a).

use super::Service;
use crate::registry::{RestoreSpec, Unrestored};
use crate::torrent_file;
use proto::{ProtoError, TorrentId, TorrentInfo};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
            // A .torrent that is not a regular file of ours (a FIFO planted there would hang
            // the start while the lock is held) refuses the start, naming it; a missing one
            // is a record kept unrestored, as any other failure to restore.
            crate::store::open_state_file(&self.torrent_file_path(*id))?;
        }
        // In the queue's order: each restored torrent is then last so far, and keeps its place.
        let mut records: Vec<(TorrentId, RestoreSpec)> = records.into_iter().collect();
        records.sort_by_key(|(id, spec)| (spec.queue_position, *id));
        let mut finished_moves = false;
        for (id, mut spec) in records {
            let restored = self.restore_one(id, &mut spec, &mut finished_moves).await;
            if let Err((error, info, files)) = restored {
                tracing::error!(torrent = %id, "cannot restore, kept for the next start: {error}");
                let unrestored = Unrestored {
                    info,
                    restore: spec,
                    error: error.message,
                    files,
                };
                self.state().registry.keep_unrestored(id, unrestored);
            }
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

    /// Restores one record (a move it was in the middle of finished or undone first, then
    /// `moves` set); on failure, the reason and what is known of the torrent.
    async fn restore_one(
        &self,
        id: TorrentId,
        spec: &mut RestoreSpec,
        moves: &mut bool,
    ) -> Result<(), (ProtoError, TorrentInfo, Arc<[PathBuf]>)> {
        let mut files: Arc<[PathBuf]> = Arc::from(Vec::new());
        let mut info = TorrentInfo {
            id,
            info_hash: proto::InfoHash([0; 20]),
            name: format!("torrent {id}"),
            save_folder: spec.save_folder.display().to_string(),
            total_bytes: 0,
        };
        let path = self.torrent_file_path(id);
        let bytes = match crate::store::read_state_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let why = format!("{} is missing", path.display());
                return Err((ProtoError::io(why), info.clone(), files.clone()));
            }
            Err(e) => {
                let error = ProtoError::io(e.to_string());
                return Err((error, info.clone(), files.clone()));
            }
        };
        let checked = torrent_file::check_torrent_file(&bytes, self.config.loopback_only)
            .map_err(|e| (e, info.clone(), files.clone()))?;
        info = checked.info(id, &spec.save_folder, spec.only_files.as_deref());
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
                Err(error) => return Err((error, info, files)),
            }
            info = checked.info(id, &spec.save_folder, spec.only_files.as_deref());
        }
        files = checked.full_paths(&spec.data_folder);
        // Two records with a file in common (one kept while the other was added): the
        // second stays a record, not restored over the first's data.
        if let Err(error) = self.room_for_files(&files, Some(id)) {
            return Err((error, info, files));
        }
        self.check_restorable_folder(&spec.save_folder)
            .and_then(|()| {
                crate::roots::check_torrent_paths(
                    &spec.save_folder,
                    &checked,
                    crate::roots::OwnFolder::Restored,
                )
            })
            .map_err(|e| (e, info.clone(), files.clone()))?;
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
            .map_err(|e| (e, info.clone(), files.clone()))?;
        if !added.is_new || added.id != id {
            // Two records of one torrent (added again while the first could not be restored):
            // the second is kept, not silently merged away.
            let why = format!(
                "the same torrent is already restored as torrent {}",
                added.id
            );
            return Err((ProtoError::bad_request(why), info, files));
        }
        tracing::info!(torrent = %id, name = %checked.name, "restored torrent");
        let info = checked.info(added.id, &spec.save_folder, spec.only_files.as_deref());
        self.state()
            .registry
            .insert_or_hold(info, added.handle, spec.clone(), None);
        Ok(())
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
