//! `Pause`: stop a torrent's traffic until it is resumed, across restarts too.

use crate::service::Service;
use proto::{Event, RequestId, TorrentRef};
use std::sync::Arc;

pub async fn run(service: &Arc<Service>, request: RequestId, torrent: TorrentRef) -> Event {
    match service.pause(torrent).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
