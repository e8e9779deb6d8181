//! `CloseTorrent`: release the caller's hold; stop the torrent when nobody else holds it
//! (or when forced).

use crate::patron::PatronId;
use crate::service::Service;
use proto::{CloseTorrent, Event, ProtoError, RequestId};
use std::sync::Arc;

pub async fn run(
    service: &Arc<Service>,
    patron: PatronId,
    request: RequestId,
    close: CloseTorrent,
) -> Event {
    let id = match service.resolve(close.torrent) {
        Ok(id) => id,
        Err(error) => {
            // A record that could not be restored can still be closed: it is forgotten,
            // under the add lock (its files stay its own until the records say otherwise:
            // no add may take them in between).
            let _adding = service.adding.lock().await;
            let forgotten = service.state().registry.forget_unrestored(close.torrent);
            return match forgotten {
                Some((id, record)) => forget(service, patron, request, id, record),
                None => Event::Error { request, error },
            };
        }
    };
    let unknown = || Event::Error {
        request,
        error: ProtoError::unknown_torrent(format!("no torrent {id} runs")),
    };
    let kept = Event::TorrentClosed {
        request,
        id,
        stopped: false,
        data_deleted: false,
    };
    {
        let mut guard = service.state();
        // Borrow the registry and the patrons apart.
        let state = &mut *guard;
        let Some(entry) = state.registry.get_mut(id) else {
            return unknown();
        };
        let held = entry.holders.remove(&patron);
        // Someone else's torrent (held by others, not by this patron) is not this patron's
        // to close, unless forced (DESIGN §2). One nobody holds is anyone's.
        if !held && !entry.holders.is_empty() && !close.force {
            return Event::Error {
                request,
                error: ProtoError::not_holder(format!(
                        "torrent {id} is held by {} other patron(s), not by you; --force stops it anyway",
                        entry.holders.len()
                    ),
                ),
            };
        }
        // A status queued before the release must not arrive after the "closed" reply.
        if let Some(handle) = state.patrons.get(&patron) {
            handle.outbox.forget_status(id);
        }
        if !entry.holders.is_empty() && !close.force {
            return kept;
        }
    }
    // Stopping: the registry, the records and the engine change together, under the add
    // lock (an add of the same torrent meanwhile waits, then finds it in none of them), and
    // a step that fails puts back what the steps before it changed (DESIGN §4a).
    let _adding = service.adding.lock().await;
    let (entry, others) = {
        let mut guard = service.state();
        let state = &mut *guard;
        let Some(entry) = state.registry.get(id) else {
            return unknown(); // closed by someone else while we waited
        };
        if !entry.holders.is_empty() && !close.force {
            return kept; // someone joined it while we waited
        }
        let Some(entry) = state.registry.remove(id) else {
            return unknown();
        };
        let others: Vec<_> = entry
            .holders
            .iter()
            .filter_map(|h| state.patrons.get(h).cloned())
            .collect();
        (entry, others)
    };
    // Put back as it was, the caller's hold included (it was told nothing changed).
    let put_back = |mut entry: crate::registry::TorrentEntry| {
        if service.connection(patron).is_some() {
            entry.holders.insert(patron);
        }
        service.state().registry.reinsert(id, entry);
    };
    // The records first: if they cannot be saved without it, nothing else changes (a restart
    // would bring it back, its data perhaps deleted).
    if !entry.restore.ephemeral {
        if let Err(why) = service.save_registry() {
            put_back(entry);
            return Event::Error {
                request,
                error: ProtoError::io(format!("torrent {id} is not closed: {why}")),
            };
        }
    }
    // Then the engine. Should it refuse, the torrent runs on: back in the registry and in
    // the records.
    if let Err(e) = service.engine.stop_torrent(id).await {
        put_back(entry);
        let recorded = service.save_registry();
        let also = match recorded {
            Ok(()) => String::new(),
            Err(why) => format!(" (and its record could not be written back: {why})"),
        };
        return Event::Error {
            request,
            error: ProtoError::engine(format!(
                "torrent {id} is not closed: the engine cannot stop it: {e:#}{also}"
            )),
        };
    }
    // Out of everything: its .torrent, what it verified and, if asked, its data go.
    service.forget_torrent_file(id);
    if let Err(e) = service.engine.forget_verified(id) {
        tracing::warn!(torrent = %id, "{e:#}");
    }
    for other in others {
        other.send(Event::TorrentGone {
            id,
            reason: format!("closed by patron {patron} (forced)"),
        });
    }
    let data_deleted = if close.delete_data {
        let deleted = service.delete_data(&entry);
        if let Err(why) = &deleted {
            tracing::warn!(torrent = %id, "closed, but its data could not all be deleted: {why}");
        }
        deleted.is_ok()
    } else {
        false
    };
    tracing::info!(patron, torrent = %id, delete_data = close.delete_data, data_deleted, "torrent closed");
    Event::TorrentClosed {
        request,
        id,
        stopped: true,
        data_deleted,
    }
}

/// Closes a record the broker could not restore: its record and .torrent go; its data (on a
/// disk that may not even be there) is left alone.
fn forget(
    service: &Service,
    patron: PatronId,
    request: RequestId,
    id: proto::TorrentId,
    record: crate::registry::Unrestored,
) -> Event {
    if let Err(why) = service.forget_record(id) {
        service.state().registry.keep_unrestored(id, record);
        return Event::Error {
            request,
            error: ProtoError::io(why),
        };
    }
    tracing::info!(patron, torrent = %id, "closed a torrent that was not restored");
    Event::TorrentClosed {
        request,
        id,
        stopped: true,
        data_deleted: false,
    }
}
