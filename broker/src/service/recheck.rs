//! Rechecking a torrent (`Recheck`): verify its data on disk again, every piece.
//!
//! librqbit has no call for it, so the torrent is taken out of the engine and added again
//! under the same id with its fast-resume state dropped: the engine then hashes every byte.
//! Its holders, record and place on the board stay as they are; only the engine's handle
//! changes ([`Life::Restarting`] in between).

use super::Service;
use crate::registry::{Life, RestoreSpec};
use proto::{ProtoError, TorrentId, TorrentInfo, TorrentRef, TorrentStatus};
use std::sync::Arc;

impl Service {
    /// Has the engine hash every piece of a torrent again. Should the engine not take it
    /// back, a recorded torrent is kept as a record not restored (shown in error, tried
    /// again at the next start) and its holders are told it went.
    pub async fn recheck(
        self: &Arc<Self>,
        torrent: TorrentRef,
    ) -> Result<TorrentStatus, ProtoError> {
        let _adding = self.adding.lock().await;
        let (id, handle) = self.running_awake(torrent).await?;
        // A check under way would still write what it found after the new one started.
        if handle.with_state(|s| matches!(s, librqbit::ManagedTorrentState::Initializing(_))) {
            return Err(ProtoError::bad_request(format!(
                "torrent {id} is checking its data already"
            )));
        }
        let bytes = handle
            .with_metadata(|meta| meta.torrent_bytes.to_vec())
            .map_err(|e| ProtoError::engine(format!("{e:#}")))?;
        let (restore, info, before) = {
            let mut state = self.state();
            let entry = state.registry.get_mut(id).ok_or_else(|| super::gone(id))?;
            // From here until the new handle is in, nothing reads the old one's status (a
            // removed torrent reads as failed).
            let before = std::mem::replace(&mut entry.life, Life::Restarting);
            (entry.restore.clone(), entry.info.clone(), before)
        };
        if let Err(e) = self.engine.remove(id, false).await {
            if let Some(entry) = self.state().registry.get_mut(id) {
                entry.life = before;
            }
            let why = format!("cannot stop it for the check: {e:#}");
            return Err(ProtoError::engine(why));
        }
        // Its fast-resume state dropped: every piece is hashed.
        let added = self
            .engine_add_again(id, bytes, &restore, false, Vec::new())
            .await;
        match added {
            Ok(added) if added.id == id => {
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.life = Life::Running(added.handle);
                }
                // The board shows it checking before the patron reads the reply.
                self.sync_board(id);
                tracing::info!(torrent = %id, "rechecking");
                self.current_status(id).ok_or_else(|| super::gone(id))
            }
            Ok(added) => {
                let why = format!("the engine took it back as torrent {}", added.id);
                Err(self.lost_in_recheck(id, info, restore, why))
            }
            Err(error) => Err(self.lost_in_recheck(id, info, restore, error.message)),
        }
    }

    /// The engine would not take the torrent back. A recorded torrent is kept as a record
    /// not restored; an ephemeral one is gone.
    fn lost_in_recheck(
        &self,
        id: TorrentId,
        info: TorrentInfo,
        restore: RestoreSpec,
        why: String,
    ) -> ProtoError {
        tracing::error!(torrent = %id, "cannot start it again after stopping it for a check: {why}");
        self.lose_to_unrestored(
            id,
            Some(info),
            restore,
            format!("stopped for a recheck, then could not start again: {why}"),
            format!("it could not start again for its recheck: {why}"),
        );
        ProtoError::engine(format!(
            "torrent {id} could not start again for its recheck: {why}"
        ))
    }
}
