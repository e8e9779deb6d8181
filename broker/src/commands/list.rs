//! `List`: every torrent the broker runs, with its status.

use crate::service::Service;
use crate::sink::PatronId;
use proto::{Event, RequestId};

pub fn run(service: &Service, patron: PatronId, request: RequestId) -> Event {
    let torrents = service.list(patron);
    Event::TorrentList { request, torrents }
}
