//! `Status`: one torrent's status, now.

use crate::service::Service;
use proto::{Event, ProtoError, RequestId, TorrentRef};

pub fn run(service: &Service, request: RequestId, torrent: TorrentRef) -> Event {
    let status = service.resolve(torrent).and_then(|id| {
        service
            .current_status(id)
            .ok_or_else(|| ProtoError::unknown_torrent(format!("no torrent {id} runs")))
    });
    match status {
        Ok(status) => Event::Status { request, status },
        Err(error) => {
            // Known but not running: a magnet resolving, a record not restored.
            let placeholder = service.state().registry.placeholder(torrent);
            match placeholder {
                Some((info, state)) => Event::Status {
                    request,
                    status: proto::TorrentStatus::idle(&info, state),
                },
                None => Event::Error { request, error },
            }
        }
    }
}
