//! `Resume`: let a paused torrent (one added paused too) run again, across restarts too.

use crate::service::{gone, Service};
use proto::{Event, ProtoError, RequestId, TorrentRef, TorrentStatus};

pub async fn run(service: &Service, request: RequestId, torrent: TorrentRef) -> Event {
    match resume(service, torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}

async fn resume(service: &Service, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
    let _adding = service.adding.lock().await;
    let (id, handle) = service.running(torrent)?;
    // Recorded first: if the record cannot say so, the torrent stays paused.
    service.update_record(id, |restore| restore.paused = false)?;
    if let Err(error) = service.engine.resume(&handle).await {
        if let Err(e) = service.update_record(id, |restore| restore.paused = true) {
            tracing::warn!(torrent = %id, "cannot record it paused again: {e}");
        }
        return Err(error);
    }
    // Its known peers (some named since it was added, which the engine does not know of)
    // are dialled again; those connected meanwhile are skipped.
    let peers = service
        .state()
        .registry
        .get(id)
        .map(|e| e.restore.peers.clone())
        .unwrap_or_default();
    if !peers.is_empty() {
        if let Err(e) = service.engine.dial(&handle, &peers) {
            tracing::info!(torrent = %id, "its peers are not dialled yet: {e}");
        }
    }
    tracing::info!(torrent = %id, "resumed");
    service.current_status(id).ok_or_else(|| gone(id))
}
