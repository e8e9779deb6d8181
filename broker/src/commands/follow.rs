//! `Follow`: hold a running torrent to receive its status, without adding anything.

use crate::patron::PatronId;
use crate::service::Service;
use proto::{Event, ProtoError, RequestId, TorrentRef};

pub fn run(service: &Service, patron: PatronId, request: RequestId, torrent: TorrentRef) -> Event {
    let mut state = service.state();
    let held = state
        .registry
        .resolve(torrent)
        .and_then(|id| state.hold(id, patron));
    match held {
        Some(torrent) => Event::Following { request, torrent },
        None => Event::Error {
            request,
            error: ProtoError::unknown_torrent(format!("no torrent {torrent} runs")),
        },
    }
}
