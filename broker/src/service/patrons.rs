//! Patrons coming and going: the patron limit, and what a leaving patron lets go.

use super::Service;
use crate::sink::{PatronConnection, PatronId};
use std::sync::Arc;

impl Service {
    /// Registers a patron that completed the handshake, unless the broker already serves its
    /// maximum: the count and the insertion happen under one lock, so concurrent handshakes
    /// cannot overshoot it.
    pub fn connect(&self, connection: PatronConnection) -> Result<(), String> {
        let mut state = self.state();
        if state.patrons.len() >= self.config.max_patrons {
            return Err(format!(
                "the broker already serves its maximum of {} patrons",
                self.config.max_patrons
            ));
        }
        tracing::info!(
            patron = connection.id,
            pid = connection.pid,
            "patron connected"
        );
        state.patrons.insert(connection.id, connection);
        Ok(())
    }

    /// A patron left (it exited, crashed, was killed or cut off): its outbox closes now and
    /// its holds are released. Ephemeral torrents nobody holds any more are closed.
    pub fn disconnect(self: &Arc<Self>, patron: PatronId) {
        let orphans = {
            let mut state = self.state();
            let Some(connection) = state.patrons.remove(&patron) else {
                return;
            };
            connection.events.close();
            tracing::info!(patron, pid = connection.pid, "patron disconnected");
            state.registry.release_all(patron)
        };
        // Its priority windows leave the engine now, not when its torrents do. Outside the
        // state lock: opening a stream takes the streams' lock, then this one.
        self.streams.close_all_of(patron);
        // Its holds are off the board at once (one wake however many leave together).
        self.status_nudge.notify_one();
        if orphans.is_empty() {
            return;
        }
        let service = self.clone();
        self.runtime.spawn(async move {
            // Registry and engine change together, under the add lock: no add of the same
            // torrent can find it in one and not the other.
            let _adding = service.adding.lock().await;
            for id in orphans {
                if !service.state().registry.remove_orphan(id) {
                    continue; // someone joined it meanwhile
                }
                tracing::info!(torrent = %id, "closing ephemeral torrent: its last holder left");
                if let Err(e) = service.engine.remove(id, false).await {
                    tracing::warn!(torrent = %id, "cannot close: {e:#}");
                }
            }
            service.status_nudge.notify_one();
        });
    }
}
