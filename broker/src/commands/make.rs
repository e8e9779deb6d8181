//! `MakeTorrent`: hash local data into a .torrent and, if asked, seed it.

use crate::service::Service;
use crate::sink::PatronId;
use proto::{Event, MakeTorrent, RequestId};

pub async fn run(
    service: &Service,
    patron: PatronId,
    request: RequestId,
    make: MakeTorrent,
) -> Event {
    match service.make(patron, make).await {
        Ok(made) => Event::TorrentMade { request, made },
        Err(error) => Event::Error { request, error },
    }
}
