//! One module per request kind. Each turns a request into exactly one reply [`Event`];
//! [`serve`] queues that reply, so no path can drop a request or answer it twice.

mod close;
mod close_stream;
mod create;
mod files;
mod follow;
mod info;
mod labels;
mod limits;
mod list;
mod make;
mod move_storage;
mod open_stream;
mod pause;
mod peers;
mod queue;
mod recheck;
mod resume;
mod seeding;
mod status;
mod stream_at;
mod stream_read;

use crate::service::Service;
use crate::sink::{PatronConnection, PatronId};
use futures::FutureExt;
use proto::{Event, ProtoError, Request, RequestBody, RequestId, TorrentId};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Answers one request of `patron`. Called by the patron's own task, one request at a time,
/// so replies leave in request order.
pub async fn serve(service: &Arc<Service>, patron: &PatronConnection, request: Request) {
    let (id, kind) = (request.id, request.body.kind());
    let is_create = matches!(request.body, RequestBody::CreateNewTorrent(_));
    let is_stop = matches!(request.body, RequestBody::StopBroker);
    let known = service.registry_version();
    // A panic below (in the engine, say) must still produce this request's one reply, and
    // must not end the task that serves this patron's later requests.
    let reply = AssertUnwindSafe(answer(service, patron, id, request.body))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| internal_error(patron, id, kind, is_create, panic));
    finish(service, patron, id, kind, reply);
    // Torrents, records or magnets came or went (a failed magnet leaves no reply naming
    // it): the status loop looks again now.
    if service.registry_version() != known {
        service.status_nudge.notify_one();
    }
    if is_stop {
        // After the reply is queued: stopping closes every outbox.
        service.shutdown.trigger(format!(
            "stop requested by patron {} (pid {})",
            patron.id, patron.pid
        ));
    }
}

/// Whether a request never waits on the engine or the disk, so that [`serve_immediate`] may
/// answer it.
pub fn is_immediate(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::List
            | RequestBody::Status(_)
            | RequestBody::Follow(_)
            | RequestBody::BrokerInfo
    )
}

/// Answers on the calling thread (the request reader's) a request that [`is_immediate`].
/// The caller makes sure no earlier request of `patron` is still being served, so replies
/// stay in order.
pub fn serve_immediate(service: &Arc<Service>, patron: &PatronConnection, request: Request) {
    let Request { id, body } = request;
    let kind = body.kind();
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| {
        answer_now(service, patron.id, id, body)
    }))
    .unwrap_or_else(|panic| internal_error(patron, id, kind, false, panic));
    finish(service, patron, id, kind, reply);
}

/// The answer to a request that [`is_immediate`].
fn answer_now(service: &Arc<Service>, patron: PatronId, id: RequestId, body: RequestBody) -> Event {
    match body {
        RequestBody::List => list::run(service, patron, id),
        RequestBody::Status(torrent) => status::run(service, id, torrent),
        RequestBody::Follow(torrent) => follow::run(service, patron, id, torrent),
        RequestBody::BrokerInfo => info::run(service, id),
        // Every other kind is answered in `answer`; a new one must be added there.
        other => Event::Error {
            request: id,
            error: ProtoError::engine(format!(
                "the broker cannot answer {} requests",
                other.kind()
            )),
        },
    }
}

/// The reply to a request whose handling panicked.
fn internal_error(
    patron: &PatronConnection,
    id: RequestId,
    kind: &str,
    is_create: bool,
    panic: Box<dyn std::any::Any + Send>,
) -> Event {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(patron = patron.id, request = %id, kind = %kind, "request panicked: {what}");
    let error =
        ProtoError::engine("internal error while handling the request (see the broker's log)");
    if is_create {
        Event::TorrentStartFail { request: id, error }
    } else {
        Event::Error { request: id, error }
    }
}

/// Logs and queues a reply; a patron that now holds a torrent hears its status at once.
fn finish(
    service: &Arc<Service>,
    patron: &PatronConnection,
    id: RequestId,
    kind: &str,
    reply: Event,
) {
    match &reply {
        Event::TorrentStartFail { error, .. } | Event::Error { error, .. } => {
            tracing::info!(patron = patron.id, pid = patron.pid, request = %id, kind = %kind, "refused: {error}")
        }
        _ => tracing::debug!(patron = patron.id, request = %id, kind = %kind, "answered"),
    }
    let now_held = held_by_reply(&reply);
    // The board shows what the reply says before the patron can read the reply, and the
    // status loop looks again soon (a new torrent needs its completion watched).
    if let Some(torrent) = changed_by_reply(&reply).or_else(|| changed_stage(kind, &reply)) {
        service.sync_board(torrent);
        service.status_nudge.notify_one();
    }
    patron.send(reply);
    // A new holder hears about its torrent at once, not at the next change.
    if let Some(status) = now_held.and_then(|torrent| service.current_status(torrent)) {
        patron.events.push_status(status);
    }
}

async fn answer(
    service: &Arc<Service>,
    patron: &PatronConnection,
    id: RequestId,
    body: RequestBody,
) -> Event {
    match body {
        RequestBody::CreateNewTorrent(create) => create::run(service, patron.id, id, create).await,
        RequestBody::CloseTorrent(close) => close::run(service, patron.id, id, close).await,
        RequestBody::MakeTorrent(make) => make::run(service, patron.id, id, make).await,
        RequestBody::StopBroker => Event::Ok { request: id },
        RequestBody::Pause(torrent) => pause::run(service, id, torrent).await,
        RequestBody::Resume(torrent) => resume::run(service, id, torrent).await,
        RequestBody::Recheck(torrent) => recheck::run(service, id, torrent).await,
        RequestBody::Files(files) => files::run(service, id, files).await,
        RequestBody::Peers(peers) => peers::run(service, id, peers).await,
        RequestBody::OpenStream(open) => open_stream::run(service, patron, id, open).await,
        RequestBody::StreamAt(at) => stream_at::run(service, patron, id, at).await,
        RequestBody::StreamRead(read) => stream_read::run(service, patron, id, read).await,
        RequestBody::CloseStream(stream) => close_stream::run(service, patron, id, stream),
        RequestBody::SetLimits(change) => limits::run(service, id, change),
        RequestBody::SetQueue(change) => queue::set(service, id, change),
        RequestBody::MoveInQueue(change) => queue::move_in(service, id, change).await,
        RequestBody::SetSeeding(change) => seeding::run(service, id, change),
        RequestBody::MoveStorage(change) => move_storage::run(service, id, change).await,
        RequestBody::SetLabels(change) => labels::set(service, id, change),
        RequestBody::ConfigureLabel(change) => labels::configure(service, id, *change),
        quick => answer_now(service, patron.id, id, quick),
    }
}

/// The torrent whose line on the board a reply changes (it came, went, or changed hands).
/// The torrent a pause or resume just changed: the board shows it (and wakes its readers)
/// before the reply goes, not at the status loop's next look, up to 100 ms later.
fn changed_stage(kind: &str, reply: &Event) -> Option<TorrentId> {
    match reply {
        Event::Status { status, .. }
            if matches!(kind, "pause" | "resume" | "queue-move" | "move") =>
        {
            Some(status.id)
        }
        _ => None,
    }
}

fn changed_by_reply(reply: &Event) -> Option<TorrentId> {
    match reply {
        Event::TorrentClosed { id, .. } => Some(*id),
        other => held_by_reply(other),
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
