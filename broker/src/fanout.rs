//! Status fan-out: every interval, compute each held torrent's status and queue it for its
//! holders when it changed meaningfully (always when it completes). Queues coalesce per
//! torrent, so a slow patron gets the latest status, not a backlog.

use crate::broker::Broker;
use crate::engine;
use proto::TorrentStatus;
use std::sync::Arc;

/// Runs until the task is aborted.
pub async fn run(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(broker.config.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        fan_out_once(&broker);
    }
}

/// One round of the fan-out.
pub fn fan_out_once(broker: &Broker) {
    let mut state = broker.state();
    let state = &mut *state;
    for (id, entry) in state.registry.iter_mut() {
        if entry.holders.is_empty() {
            continue;
        }
        let status = engine::status_of(*id, &entry.info.name, &entry.handle);
        if !changed(entry.last_status.as_ref(), &status) {
            continue;
        }
        if status.complete && !entry.last_status.as_ref().is_some_and(|s| s.complete) {
            tracing::info!(torrent = %id, name = %entry.info.name, "torrent complete");
        }
        for holder in &entry.holders {
            if let Some(patron) = state.patrons.get(holder) {
                patron.connection.outbox.push_status(status.clone());
            }
        }
        entry.last_status = Some(status);
    }
}

fn changed(previous: Option<&TorrentStatus>, now: &TorrentStatus) -> bool {
    previous.is_none_or(|previous| now.differs_meaningfully(previous))
}
