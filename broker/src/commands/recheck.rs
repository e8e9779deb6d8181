//! `Recheck`: verify a torrent's data on disk again, every piece.
//!
//! librqbit has no call for it, so the torrent is taken out of the engine and added again
//! under the same id with its fast-resume state dropped: the engine then hashes every byte.
//! Its holders, record and place on the board stay as they are; only the engine's handle
//! changes.

use crate::engine::AddSpec;
use crate::registry::Unrestored;
use crate::service::{gone, Service};
use proto::{Event, ProtoError, RequestId, TorrentRef, TorrentStatus};

pub async fn run(service: &Service, request: RequestId, torrent: TorrentRef) -> Event {
    match recheck(service, torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}

async fn recheck(service: &Service, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
    let _adding = service.adding.lock().await;
    let (id, handle) = service.running(torrent)?;
    // A check under way would still write what it found after the new one started.
    if handle.with_state(|s| matches!(s, librqbit::ManagedTorrentState::Initializing(_))) {
        return Err(ProtoError::bad_request(format!(
            "torrent {id} is checking its data already"
        )));
    }
    let bytes = handle
        .with_metadata(|meta| meta.torrent_bytes.to_vec())
        .map_err(|e| ProtoError::engine(format!("{e:#}")))?;
    let (restore, info) = {
        let mut state = service.state();
        let entry = state.registry.get_mut(id).ok_or_else(|| gone(id))?;
        // From here until the new handle is in, nothing reads the old one's status (a
        // removed torrent reads as failed).
        entry.restarting = true;
        (entry.restore.clone(), entry.info.clone())
    };
    if let Err(e) = service.engine.remove(id, false).await {
        if let Some(entry) = service.state().registry.get_mut(id) {
            entry.restarting = false;
        }
        let why = format!("cannot stop it for the check: {e:#}");
        return Err(ProtoError::engine(why));
    }
    let added = service
        .engine
        .add(AddSpec {
            torrent: bytes,
            data_folder: restore.data_folder.clone(),
            paused: restore.paused,
            only_files: restore.only_files.clone(),
            // Its own files, as before.
            overwrite: true,
            peers: restore.all_peers(),
            id: Some(id),
            rates: restore.rates,
            resume: false,
            files: Vec::new(),
        })
        .await;
    match added {
        Ok(added) if added.id == id => {
            if let Some(entry) = service.state().registry.get_mut(id) {
                entry.handle = added.handle;
                entry.restarting = false;
            }
            // The board shows it checking before the patron reads the reply.
            service.sync_board(id);
            tracing::info!(torrent = %id, "rechecking");
            service.current_status(id).ok_or_else(|| gone(id))
        }
        Ok(added) => {
            let why = format!("the engine took it back as torrent {}", added.id);
            Err(lost(service, id, info, restore, why))
        }
        Err(error) => Err(lost(service, id, info, restore, error.message)),
    }
}

/// The engine would not take the torrent back. A recorded torrent is kept as a record not
/// restored (shown in error, tried again at the next start); an ephemeral one is gone.
fn lost(
    service: &Service,
    id: proto::TorrentId,
    info: proto::TorrentInfo,
    restore: crate::registry::RestoreSpec,
    why: String,
) -> ProtoError {
    tracing::error!(torrent = %id, "cannot start it again after stopping it for a check: {why}");
    let mut state = service.state();
    let (holders, files) = state
        .registry
        .remove(id)
        .map(|entry| (entry.holders, entry.files))
        .unwrap_or_default();
    if !restore.ephemeral {
        let error = format!("stopped for a recheck, then could not start again: {why}");
        state.registry.keep_unrestored(
            id,
            Unrestored {
                info,
                restore,
                error,
                files,
            },
        );
    }
    for holder in holders {
        if let Some(patron) = state.patrons.get(&holder) {
            patron.send(Event::TorrentGone {
                id,
                reason: format!("it could not start again for its recheck: {why}"),
            });
        }
    }
    ProtoError::engine(format!(
        "torrent {id} could not start again for its recheck: {why}"
    ))
}
