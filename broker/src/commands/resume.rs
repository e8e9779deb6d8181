//! `Resume`: let a paused torrent (one added paused too) run again, across restarts too.

use crate::engine::Applied;
use crate::service::{gone, Service};
use proto::{Event, ProtoError, RequestId, TorrentRef, TorrentStatus};
use std::sync::Arc;

pub async fn run(service: &Arc<Service>, request: RequestId, torrent: TorrentRef) -> Event {
    match resume(service, torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}

async fn resume(service: &Arc<Service>, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
    let _adding = service.adding.lock().await;
    let (id, handle) = service.running(torrent)?;
    // Recorded first: if the record cannot say so, the torrent stays paused.
    service.update_record(id, |restore| restore.paused = false)?;
    match service.engine.resume(&handle).await {
        Ok(Applied::Now) => {}
        // Checking its data: resumed (and its peers dialled) when the check ends.
        Ok(Applied::AfterCheck) => {
            service.settle_after_check(id, handle);
            return service.current_status(id).ok_or_else(|| gone(id));
        }
        Err(error) => {
            if let Err(e) = service.update_record(id, |restore| restore.paused = true) {
                tracing::warn!(torrent = %id, "cannot record it paused again: {e}");
            }
            return Err(error);
        }
    }
    service.dial_recorded_peers(id, &handle);
    tracing::info!(torrent = %id, "resumed");
    service.current_status(id).ok_or_else(|| gone(id))
}
