//! One module per request kind. Each turns a request into exactly one reply [`Event`];
//! [`serve`] queues that reply, so no path can drop a request or answer it twice.

mod close;
mod create;
mod follow;
mod info;
mod list;
mod make;
mod status;

use crate::broker::Broker;
use crate::patron::PatronConnection;
use proto::{Event, Request, RequestBody, TorrentId};
use std::sync::Arc;

/// Answers one request of `patron`. Called by the patron's own task, one request at a time,
/// so replies leave in request order.
pub async fn serve(broker: &Arc<Broker>, patron: &PatronConnection, request: Request) {
    let id = request.id;
    let kind = request.body.kind();
    let reply = match request.body {
        RequestBody::CreateNewTorrent(create) => create::run(broker, patron.id, id, create).await,
        RequestBody::CloseTorrent(close) => close::run(broker, patron.id, id, close).await,
        RequestBody::List => list::run(broker, patron.id, id),
        RequestBody::Status(torrent) => status::run(broker, id, torrent),
        RequestBody::Follow(torrent) => follow::run(broker, patron.id, id, torrent),
        RequestBody::MakeTorrent(make) => make::run(broker, patron.id, id, make).await,
        RequestBody::BrokerInfo => info::run(broker, id),
        RequestBody::StopBroker => {
            // Reply first: stopping closes every outbox.
            broker.deliver(patron, Event::Ok { request: id });
            broker.shutdown.trigger(format!(
                "stop requested by patron {} (pid {})",
                patron.id, patron.pid
            ));
            return;
        }
    };
    match &reply {
        Event::TorrentStartFail { error, .. } | Event::Error { error, .. } => {
            tracing::info!(patron = patron.id, pid = patron.pid, request = %id, kind, "refused: {error}")
        }
        _ => tracing::debug!(patron = patron.id, request = %id, kind, "answered"),
    }
    let now_held = held_by_reply(&reply);
    broker.deliver(patron, reply);
    // A new holder hears about its torrent at once, not at the next change.
    if let Some(status) = now_held.and_then(|torrent| broker.current_status(torrent)) {
        patron.outbox.push_status(status);
    }
}

fn held_by_reply(reply: &Event) -> Option<TorrentId> {
    match reply {
        Event::NewTorrentCreated { torrent, .. }
        | Event::TorrentAlreadyDownloading { torrent, .. }
        | Event::Following { torrent, .. } => Some(torrent.id),
        Event::TorrentMade { made, .. } => made.seeding.as_ref().map(|torrent| torrent.id),
        _ => None,
    }
}
