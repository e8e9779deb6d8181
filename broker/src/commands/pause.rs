//! `Pause`: stop a torrent's traffic until it is resumed, across restarts too.

use crate::engine::Applied;
use crate::service::{gone, Service};
use proto::{Event, ProtoError, RequestId, TorrentRef, TorrentStatus};
use std::sync::Arc;

pub async fn run(service: &Arc<Service>, request: RequestId, torrent: TorrentRef) -> Event {
    match pause(service, torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}

async fn pause(service: &Arc<Service>, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
    // The engine and the records change together, and never under a close or a recheck.
    let _adding = service.adding.lock().await;
    let (id, handle) = service.running(torrent)?;
    // Recorded first: if the record cannot say so, nothing changes.
    service.update_record(id, |restore| restore.paused = true)?;
    match service.engine.pause(&handle).await {
        Ok(Applied::Now) => {}
        // Checking its data: paused when the check ends.
        Ok(Applied::AfterCheck) => service.settle_after_check(id, handle),
        Err(error) => {
            if let Err(e) = service.update_record(id, |restore| restore.paused = false) {
                tracing::warn!(torrent = %id, "cannot record it running again: {e}");
            }
            return Err(error);
        }
    }
    tracing::info!(torrent = %id, "paused (or paused once its check ends)");
    service.current_status(id).ok_or_else(|| gone(id))
}
