//! `Peers`: a torrent's connected peers, after dialling any the patron names.

use crate::service::Service;
use proto::{Event, PeersRequest, RequestId};

pub async fn run(
    service: &std::sync::Arc<Service>,
    request: RequestId,
    peers: PeersRequest,
) -> Event {
    match service.peers(peers).await {
        Ok((torrent, dialled, (peers, banned))) => Event::Peers {
            request,
            torrent,
            dialled,
            peers,
            banned,
        },
        Err(error) => Event::Error { request, error },
    }
}
