//! `CloseTorrent`: release the caller's hold; stop the torrent when nobody else holds it
//! (or when forced).

use crate::service::{Closed, Service};
use crate::sink::PatronId;
use proto::{CloseTorrent, Event, RequestId};

pub async fn run(
    service: &Service,
    patron: PatronId,
    request: RequestId,
    close: CloseTorrent,
) -> Event {
    match service.close(patron, close).await {
        Ok(Closed {
            id,
            stopped,
            data_deleted,
        }) => Event::TorrentClosed {
            request,
            id,
            stopped,
            data_deleted,
        },
        Err(error) => Event::Error { request, error },
    }
}
