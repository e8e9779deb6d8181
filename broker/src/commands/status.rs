//! `Status`: one torrent's status, now.

use crate::broker::Broker;
use proto::{ErrorKind, Event, ProtoError, RequestId, TorrentRef};

pub fn run(broker: &Broker, request: RequestId, torrent: TorrentRef) -> Event {
    let status = broker.resolve(torrent).and_then(|id| {
        broker.current_status(id).ok_or_else(|| {
            ProtoError::new(ErrorKind::UnknownTorrent, format!("no torrent {id} runs"))
        })
    });
    match status {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
