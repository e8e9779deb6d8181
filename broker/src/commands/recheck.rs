//! `Recheck`: verify a torrent's data on disk again, every piece.

use crate::service::Service;
use proto::{Event, RequestId, TorrentRef};
use std::sync::Arc;

pub async fn run(service: &Arc<Service>, request: RequestId, torrent: TorrentRef) -> Event {
    match service.recheck(torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
