//! `Resume`: let a paused torrent (one added paused too) run again, across restarts too.

use crate::service::Service;
use proto::{Event, RequestId, TorrentRef};
use std::sync::Arc;

pub async fn run(service: &Arc<Service>, request: RequestId, torrent: TorrentRef) -> Event {
    match service.resume(torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
