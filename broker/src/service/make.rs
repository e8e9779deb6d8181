//! Making a torrent of local data (`MakeTorrent`) and, if asked, seeding it.

use super::Service;
use crate::engine::AddSpec;
use crate::registry::RestoreSpec;
use crate::sink::PatronId;
use crate::torrent_file;
use proto::{MadeTorrent, MakeTorrent, ProtoError};
use std::path::{Path, PathBuf};

impl Service {
    /// Hashes local data into a .torrent and, if asked, seeds it (held by `patron`).
    pub async fn make(
        &self,
        patron: PatronId,
        make: MakeTorrent,
    ) -> Result<MadeTorrent, ProtoError> {
        let service = self;
        let path = Path::new(&make.path);
        if !path.is_absolute() {
            return Err(ProtoError::bad_request(format!(
                "{} is not an absolute path",
                make.path
            )));
        }
        let path = path
            .canonicalize()
            .map_err(|e| ProtoError::io(format!("cannot read {}: {e}", make.path)))?;
        // The folder the torrent is seeded from: the file's folder, or the folder's parent
        // (a multi-file torrent's data lives in a folder named after it).
        let save_folder: PathBuf = path
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| ProtoError::bad_request("cannot share the root folder"))?;
        if make.seed {
            service.check_inside_roots(&path)?;
            // Before hashing, which can take long. The torrent limit is checked once the info
            // hash is known (making what already seeds joins it).
            if service.is_stopping() {
                return Err(ProtoError::shutting_down("the broker is stopping"));
            }
        }
        let (piece_size, trackers) = (make.piece_size, make.trackers.clone());
        let (hashed, loopback_only) = (path.clone(), service.config.loopback_only);
        let made = tokio::task::spawn_blocking(move || {
            torrent_file::make_torrent(&hashed, piece_size, &trackers, loopback_only)
        })
        .await
        .map_err(|e| ProtoError::engine(format!("hashing failed: {e}")))??;

        let seeding = if make.seed {
            Some(service.seed(patron, &made.checked, save_folder).await?)
        } else {
            None
        };
        Ok(MadeTorrent {
            info_hash: made.checked.info_hash,
            name: made.checked.name.clone(),
            pieces: made.pieces,
            piece_size: made.piece_size,
            total_bytes: made.checked.total_bytes,
            torrent_file: made.bytes,
            seeding,
        })
    }

    /// Seeds a torrent just made from local data in `save_folder`, or holds it if it already
    /// runs. Counts against the torrent limit like any add, under the same lock.
    async fn seed(
        &self,
        patron: PatronId,
        checked: &torrent_file::CheckedTorrent,
        save_folder: PathBuf,
    ) -> Result<proto::TorrentInfo, ProtoError> {
        let service = self;
        let data_folder = checked.data_folder(&save_folder);
        let _adding = service.adding.lock().await;
        // Already seeding (made before): hold it, as an add of the same torrent would. If it
        // runs from these very files, they are the user's: its data is never deleted.
        let running = service.state().registry.by_info_hash(checked.info_hash);
        if let Some(info) = running.and_then(|id| service.state().hold(id, patron)) {
            let here = service
                .state()
                .registry
                .get(info.id)
                .is_some_and(|entry| entry.restore.data_folder == data_folder);
            if here {
                service.update_record(info.id, |restore| restore.data_was_there = true)?;
            }
            return Ok(info);
        }
        service.room_for_one_more()?;
        service.room_for_files(&checked.full_paths(&data_folder), None)?;
        let mut restore = RestoreSpec::new(save_folder, data_folder.clone());
        restore.data_was_there = true;
        // A seed, unless the queue's seeds are all taken.
        restore.queued = !service.queue_admits(super::queue::Kind::Seed);
        let added = service
            .engine_add(AddSpec {
                torrent: checked.bytes.clone(),
                data_folder: data_folder.clone(),
                paused: restore.engine_paused(),
                only_files: None,
                // The data is the torrent's own: it was just hashed from it.
                overwrite: true,
                peers: Vec::new(),
                id: None,
                rates: Default::default(),
                resume: false,
                files: checked.relative_paths(),
            })
            .await?;
        let (info, _) = service.register(added, checked, restore, patron).await?;
        tracing::info!(patron, torrent = %info.id, name = %info.name, "seeding a made torrent");
        service.fire_hook(crate::hooks::HookEvent::Added, info.id, None);
        Ok(info)
    }
}
