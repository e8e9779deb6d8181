//! `Pause`: stop a torrent's traffic until it is resumed, across restarts too.

use crate::service::{gone, Service};
use proto::{Event, ProtoError, RequestId, TorrentRef, TorrentStatus};

pub async fn run(service: &Service, request: RequestId, torrent: TorrentRef) -> Event {
    match pause(service, torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}

async fn pause(service: &Service, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
    // The engine and the records change together, and never under a close or a recheck.
    let _adding = service.adding.lock().await;
    let (id, handle) = service.running(torrent)?;
    service.engine.pause(&handle).await?;
    if let Err(error) = service.update_record(id, |restore| restore.paused = true) {
        // Not recorded, so not done: a restart would have it running.
        if let Err(e) = service.engine.resume(&handle).await {
            tracing::warn!(torrent = %id, "cannot resume it again: {e}");
        }
        return Err(error);
    }
    tracing::info!(torrent = %id, "paused");
    service.current_status(id).ok_or_else(|| gone(id))
}
