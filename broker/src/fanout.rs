//! Status fan-out: every interval, compute each held torrent's status and queue it for its
//! holders when it changed meaningfully (always when it completes). Queues coalesce per
//! torrent, so a slow patron gets the latest status, not a backlog.

use crate::engine;
use crate::service::Service;
use proto::TorrentStatus;
use std::sync::Arc;

/// Runs until the task is aborted.
pub async fn run(service: Arc<Service>) {
    let mut tick = tokio::time::interval(service.config.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        fan_out_once(&service);
    }
}

/// One round of the fan-out. The engine's stats are computed without the broker's lock
/// (every request, handshake and disconnect needs it); only comparing and queueing hold it.
pub fn fan_out_once(service: &Service) {
    let held: Vec<_> = {
        let state = service.state();
        state
            .registry
            .iter()
            .filter(|(_, entry)| !entry.holders.is_empty())
            .map(|(id, entry)| (*id, entry.info.name.clone(), entry.handle.clone()))
            .collect()
    };
    let statuses: Vec<TorrentStatus> = held
        .iter()
        .map(|(id, name, handle)| engine::status_of(*id, name, handle))
        .collect();
    let mut state = service.state();
    let state = &mut *state;
    for status in statuses {
        // Closed meanwhile: nothing to say.
        let Some(entry) = state.registry.get_mut(status.id) else {
            continue;
        };
        if !changed(entry.last_status.as_ref(), &status) {
            continue;
        }
        if status.complete && !entry.last_status.as_ref().is_some_and(|s| s.complete) {
            tracing::info!(torrent = %status.id, name = %entry.info.name, "torrent complete");
        }
        let before = entry.last_status.as_ref().map(|s| &s.state);
        if before != Some(&status.state) {
            let (id, name) = (status.id, &entry.info.name);
            let from = before.map_or("new", |s| s.as_str());
            match &status.state {
                proto::TorrentState::Error(reason) => {
                    tracing::warn!(torrent = %id, name = %name, from = %from, "torrent failed: {reason}")
                }
                to => {
                    tracing::info!(torrent = %id, name = %name, from = %from, to = %to.as_str(), "torrent state changed")
                }
            }
        }
        for holder in &entry.holders {
            if let Some(patron) = state.patrons.get(holder) {
                patron.outbox.push_status(status.clone());
            }
        }
        entry.last_status = Some(status);
    }
}

fn changed(previous: Option<&TorrentStatus>, now: &TorrentStatus) -> bool {
    previous.is_none_or(|previous| now.differs_meaningfully(previous))
}
