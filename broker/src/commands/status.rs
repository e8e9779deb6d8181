//! `Status`: one torrent's status, now.

use crate::service::Service;
use proto::{Event, RequestId, TorrentRef};

pub fn run(service: &Service, request: RequestId, torrent: TorrentRef) -> Event {
    match service.status(torrent) {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
