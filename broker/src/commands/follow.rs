//! `Follow`: hold a running torrent to receive its status, without adding anything.

use crate::service::Service;
use crate::sink::PatronId;
use proto::{Event, RequestId, TorrentRef};

pub fn run(service: &Service, patron: PatronId, request: RequestId, torrent: TorrentRef) -> Event {
    match service.follow(patron, torrent) {
        Ok(torrent) => Event::Following { request, torrent },
        Err(error) => Event::Error { request, error },
    }
}
