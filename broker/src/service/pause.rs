//! Pausing and resuming a torrent (`Pause`, `Resume`), across restarts too: the record says
//! so first, then the engine does it; if the engine cannot, the record says what was.

use super::Service;
use crate::engine::{self, Applied};
use crate::registry::Life;
use proto::{ProtoError, TorrentId, TorrentRef, TorrentStatus};
use std::sync::Arc;

impl Service {
    /// Stops a torrent's traffic until it is resumed. One checking its data is paused when
    /// the check ends (librqbit cannot pause it during it).
    pub async fn pause(self: &Arc<Self>, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
        // The engine and the records change together, and never under a close or a recheck.
        let _adding = self.adding.lock().await;
        if let (id, Life::Dormant(_)) = self.life_of(torrent)? {
            // Out of the engine while idle: paused by its record alone (a wake adds it
            // paused), its clocks stopped as the engine's pause would stop them.
            self.update_record(id, |restore| {
                restore.paused = true;
                restore.queued = false;
                restore.stop_clocks(crate::counts::now_ms());
            })?;
            self.dormant_changed(id);
            tracing::info!(torrent = %id, "paused, out of the engine");
            self.queue.nudge();
            return self.current_status(id).ok_or_else(|| super::gone(id));
        }
        let (id, handle) = self.running_awake(torrent).await?;
        // Recorded first: if the record cannot say so, nothing changes. A paused torrent is
        // out of the queue.
        let queued = self
            .state()
            .registry
            .get(id)
            .is_some_and(|e| e.restore.queued);
        self.update_record(id, |restore| {
            restore.paused = true;
            restore.queued = false;
        })?;
        match self.engine.pause(&handle).await {
            Ok(Applied::Now) => {}
            Ok(Applied::AfterCheck) => self.settle_after_check(id, handle),
            Err(error) => {
                if let Err(e) = self.update_record(id, |restore| {
                    restore.paused = false;
                    restore.queued = queued;
                }) {
                    tracing::warn!(torrent = %id, "cannot record it running again: {e}");
                }
                return Err(error);
            }
        }
        tracing::info!(torrent = %id, "paused (or paused once its check ends)");
        // Its slot, if it had one, is free.
        self.queue.nudge();
        self.current_status(id).ok_or_else(|| super::gone(id))
    }

    /// Lets a paused torrent (one added paused too) run again, and dials the peers its
    /// record names. One checking its data is resumed when the check ends.
    pub async fn resume(
        self: &Arc<Self>,
        torrent: TorrentRef,
    ) -> Result<TorrentStatus, ProtoError> {
        let _adding = self.adding.lock().await;
        if let (id, Life::Dormant(_)) = self.life_of(torrent)? {
            let (paused, peers) = self
                .state()
                .registry
                .get(id)
                .map(|e| (e.restore.paused, !e.restore.all_peers().is_empty()))
                .unwrap_or_default();
            // Seeding out of the engine (nothing to resume), or queued (it waits for its
            // turn); paused with no peer to dial: resumed by its record alone, and woken when
            // a peer comes.
            if !paused || !peers {
                if paused {
                    self.resume_dormant(id).await?;
                }
                return self.current_status(id).ok_or_else(|| super::gone(id));
            }
        }
        let (id, handle) = self.running_awake(torrent).await?;
        // Paused by a seeding limit: resumed by hand, it seeds on.
        self.lift_reached_limit(id)?;
        // With a queue, it takes its turn: queued, then started at once if it may run.
        let limited = {
            let settings = self.queue.settings();
            settings.max_active_downloads.is_some() || settings.max_active_seeds.is_some()
        };
        if limited {
            // Paused by a user, or failed (it held no slot): back in its place, started
            // in its turn.
            let was_paused = self
                .state()
                .registry
                .get(id)
                .is_some_and(|e| e.restore.paused);
            let failed = engine::queue_look(&handle) == engine::QueueLook::Failed;
            if was_paused || failed {
                self.update_record(id, |restore| {
                    restore.paused = false;
                    restore.queued = true;
                })?;
                if engine::queue_look(&handle) == engine::QueueLook::Checking {
                    self.settle_after_check(id, handle);
                } else {
                    self.advance_queue_locked().await;
                }
            }
            tracing::info!(torrent = %id, "resumed, in the queue");
            return self.current_status(id).ok_or_else(|| super::gone(id));
        }
        // Recorded first: if the record cannot say so, the torrent stays paused.
        self.update_record(id, |restore| restore.paused = false)?;
        match self.engine.resume(&handle).await {
            Ok(Applied::Now) => self.dial_recorded_peers(id, &handle),
            // Checking its data: resumed (and its peers dialled) when the check ends.
            Ok(Applied::AfterCheck) => self.settle_after_check(id, handle),
            Err(error) => {
                if let Err(e) = self.update_record(id, |restore| restore.paused = true) {
                    tracing::warn!(torrent = %id, "cannot record it paused again: {e}");
                }
                return Err(error);
            }
        }
        tracing::info!(torrent = %id, "resumed (or resumed once its check ends)");
        self.current_status(id).ok_or_else(|| super::gone(id))
    }

    /// Resumes a paused dormant seed by its record (the caller holds the add lock): with a
    /// queue, back in its place to start in its turn; without, seeding at once.
    async fn resume_dormant(self: &Arc<Self>, id: TorrentId) -> Result<(), ProtoError> {
        // Paused by a seeding limit: resumed by hand, it seeds on.
        self.lift_reached_limit(id)?;
        let limited = {
            let settings = self.queue.settings();
            settings.max_active_downloads.is_some() || settings.max_active_seeds.is_some()
        };
        let wall = crate::counts::now_ms();
        self.update_record(id, |restore| {
            restore.paused = false;
            if limited {
                restore.queued = true;
            } else {
                restore.start_clocks(wall);
            }
        })?;
        if limited {
            self.dormant_changed(id);
            self.advance_queue_locked().await;
        } else {
            self.dormant_runs_again(id);
        }
        tracing::info!(torrent = %id, "resumed, out of the engine");
        Ok(())
    }

    /// A pause or resume reached a torrent checking its data, which librqbit cannot take
    /// then: once the check ends, the engine is made to agree with the record (paused or
    /// not), unless the torrent went or was added again meanwhile. One task per torrent
    /// ([`Life::Settling`]): it applies whatever the record says when the check ends.
    pub(super) fn settle_after_check(
        self: &Arc<Self>,
        id: TorrentId,
        handle: engine::ManagedTorrentHandle,
    ) {
        {
            let mut state = self.state();
            match state.registry.get_mut(id) {
                Some(entry) if matches!(&entry.life, Life::Running(h) if Arc::ptr_eq(h, &handle)) =>
                {
                    entry.life = Life::Settling(handle.clone());
                }
                _ => return, // settling already, gone, or added again
            }
        }
        let service = self.clone();
        self.runtime.spawn(async move {
            let checked = handle.wait_until_initialized().await;
            let _adding = service.adding.lock().await;
            let paused = {
                let mut state = service.state();
                match state.registry.get_mut(id) {
                    Some(entry) if entry.life.is(&handle) => {
                        entry.life = Life::Running(handle.clone());
                        Some(entry.restore.engine_paused())
                    }
                    _ => None, // closed or added again meanwhile: nothing to settle
                }
            };
            let Some(paused) = paused else {
                return;
            };
            if let Err(e) = checked {
                tracing::info!(torrent = %id, "its check failed; nothing to settle: {e:#}");
                return;
            }
            let applied = if paused {
                service.engine.pause(&handle).await
            } else {
                let resumed = service.engine.resume(&handle).await;
                service.dial_recorded_peers(id, &handle);
                resumed
            };
            match applied {
                Ok(Applied::Now) => {
                    tracing::info!(torrent = %id, paused, "check done: pause or resume applied")
                }
                // Checking again (a recheck came in between): that one settles it.
                Ok(Applied::AfterCheck) => {}
                Err(e) => tracing::warn!(torrent = %id, "after its check: {e}"),
            }
            service.status_nudge.notify_one();
            service.queue.nudge();
        });
    }
}
