//! `CreateNewTorrent`: start a torrent, or join it if its info hash already runs.

use crate::service::{Service, Started};
use crate::sink::PatronId;
use proto::{CreateNewTorrent, Event, RequestId};
use std::sync::Arc;

pub async fn run(
    service: &Arc<Service>,
    patron: PatronId,
    request: RequestId,
    create: CreateNewTorrent,
) -> Event {
    match service.add(patron, create).await {
        Ok(Started::New { torrent, queued }) => Event::NewTorrentCreated {
            request,
            torrent,
            queued,
        },
        Ok(Started::Joined {
            torrent,
            not_applied,
        }) => Event::TorrentAlreadyDownloading {
            request,
            torrent,
            not_applied,
        },
        Err(error) => Event::TorrentStartFail { request, error },
    }
}
