//! The broker's queue (DESIGN §13): how many torrents download, and how many seed, at once.
//!
//! The engine knows nothing of it. A torrent the queue holds is paused in the engine and
//! recorded `queued` (so a restart adds it paused rather than starting it), and is shown
//! [`proto::TorrentState::Queued`]. Every torrent has a place in the queue (its rank,
//! [`crate::registry::TorrentEntry::queue_rank`]); for each kind (unfinished, finished)
//! the first torrents in that order run, up to the kind's limit, and the rest wait. A
//! running torrent that moved no byte for `stalled_after` stops counting (it keeps running),
//! as transmission's stalled torrents do. Paused torrents are outside the queue.
//!
//! The queue looks again whenever something that counts changed: the status loop nudges it
//! at every change of stage (a completion, the end of a check, a pause) and of membership
//! (an add, a close); a request nudges it; and with a stall time set, once a second.

use super::Service;
use crate::engine::{self, QueueLook};
use crate::registry::Life;
use proto::{ProtoError, QueueMove, QueueSettings, SetQueue, TorrentId, TorrentRef, TorrentStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The queue's settings and what it remembers between looks.
pub struct Queue {
    settings: Mutex<QueueSettings>,
    /// Wakes the policy task to look at the queue (see [`super::policy`]).
    pub(super) nudge: tokio::sync::Notify,
    /// Per running torrent: its bytes moved, and since when they have not changed.
    activity: Mutex<HashMap<TorrentId, (u64, Instant)>>,
}

/// Bytes moved of a seed just woken, not looked at yet: its idle time goes on from its sleep.
const WOKEN: u64 = u64::MAX;

impl Queue {
    /// A queue with these settings.
    pub fn new(settings: QueueSettings) -> Queue {
        Queue {
            settings: Mutex::new(settings),
            nudge: tokio::sync::Notify::new(),
            activity: Mutex::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> QueueSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what torrent `id` moved when last looked at (it left the engine: its next run
    /// starts afresh).
    pub fn forget_activity(&self, id: TorrentId) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// A seed back in the engine from a sleep, idle since `idle_since`: stalled as it would
    /// have been had it stayed (until its first move).
    pub fn woke_idle(&self, id: TorrentId, idle_since: Instant) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (WOKEN, idle_since));
    }

    /// Asks the queue to look again soon.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Whether it must look every second (for stalls): limits and a stall time are set.
    pub fn looks_for_stalls(&self) -> bool {
        let settings = self.settings();
        (settings.max_active_downloads.is_some() || settings.max_active_seeds.is_some())
            && settings.stalled_after_secs.is_some()
    }
}

/// Whether a torrent downloads or seeds: each kind has its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not everything selected is verified (or not known yet: checking).
    Download,
    /// Everything selected is verified.
    Seed,
}

/// A torrent the queue decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Which.
    pub id: TorrentId,
    /// Its place, 1 first.
    pub rank: u32,
    /// Which limit it counts against.
    pub kind: Kind,
    /// Running in the engine (or checking its data to run).
    pub running: bool,
    /// Checking its data: left as it is until the check ends.
    pub checking: bool,
    /// Running, and moved no byte for the stall time: it does not count.
    pub stalled: bool,
}

/// What the queue does to a torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Start it (it was queued).
    Start,
    /// Stop it and queue it (more run than the limit allows).
    Queue,
}

/// The queue's decision: for each kind, the first `limit` torrents in rank order that count
/// run, and the others wait. A checking torrent is left as it is, uncounted; a stalled one
/// keeps running without counting.
pub fn plan(candidates: &[Candidate], settings: &QueueSettings) -> Vec<(TorrentId, Turn)> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_unstable_by_key(|c| (c.rank, c.id));
    let mut turns = Vec::new();
    for (kind, limit) in [
        (Kind::Download, settings.max_active_downloads),
        (Kind::Seed, settings.max_active_seeds),
    ] {
        let mut slots = limit.unwrap_or(u32::MAX);
        for candidate in sorted.iter().filter(|c| c.kind == kind) {
            // Checking its data (whether it is finished is not known yet): left as it is,
            // and not counted, as transmission counts no verifying torrent. A seed being
            // rechecked must not take a download's slot.
            if candidate.checking {
                continue;
            }
            if candidate.running && candidate.stalled {
                continue;
            }
            if slots > 0 {
                slots -= 1;
                if !candidate.running {
                    turns.push((candidate.id, Turn::Start));
                }
            } else if candidate.running {
                turns.push((candidate.id, Turn::Queue));
            }
        }
    }
    turns
}

impl Service {
    /// Changes the queue's settings (recorded first, in `settings.json`) and returns those
    /// in force; with nothing to change, only returns them.
    pub fn set_queue(&self, change: SetQueue) -> Result<QueueSettings, ProtoError> {
        if change == SetQueue::default() {
            return Ok(self.queue.settings());
        }
        if change.stalled_after_secs == Some(Some(0)) {
            return Err(ProtoError::bad_request(
                "a stall time must be at least a second (none: never stalled)",
            ));
        }
        let mut recorded = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let next = crate::settings::RunSettings {
            max_active_downloads: change
                .max_active_downloads
                .or(recorded.max_active_downloads),
            max_active_seeds: change.max_active_seeds.or(recorded.max_active_seeds),
            stalled_after_secs: change.stalled_after_secs.or(recorded.stalled_after_secs),
            ..*recorded
        };
        next.save(&self.config.state_dir).map_err(|e| {
            ProtoError::io(format!(
                "cannot record the queue in {} ({e}): nothing changed",
                crate::settings::RunSettings::path(&self.config.state_dir).display()
            ))
        })?;
        *recorded = next;
        let settings = {
            let mut settings = self
                .queue
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(downloads) = change.max_active_downloads {
                settings.max_active_downloads = downloads;
            }
            if let Some(seeds) = change.max_active_seeds {
                settings.max_active_seeds = seeds;
            }
            if let Some(stall) = change.stalled_after_secs {
                settings.stalled_after_secs = stall;
            }
            *settings
        };
        tracing::info!(?settings, "queue settings changed");
        self.queue.nudge();
        Ok(settings)
    }

    /// Moves a torrent in the queue (recorded), lets the queue act on it at once, and
    /// returns the torrent's status then.
    pub async fn move_in_queue(
        self: &Arc<Self>,
        torrent: TorrentRef,
        to: QueueMove,
    ) -> Result<TorrentStatus, ProtoError> {
        let _adding = self.adding.lock().await;
        let id = self.resolve(torrent)?;
        let before = {
            let mut state = self.state();
            let before: Vec<(TorrentId, u64, u32)> = state
                .registry
                .iter()
                .map(|(id, e)| (*id, e.restore.queue_position, e.queue_rank))
                .collect();
            if !state.registry.move_in_queue(id, to) {
                return Err(super::gone(id));
            }
            before
        };
        if let Err(why) = self.save_registry() {
            let mut state = self.state();
            for (id, position, _) in before {
                if let Some(entry) = state.registry.get_mut(id) {
                    entry.restore.queue_position = position;
                }
            }
            state.registry.rank_queue();
            return Err(ProtoError::io(format!("the move is not made: {why}")));
        }
        tracing::info!(torrent = %id, to = to.as_str(), "moved in the queue");
        self.advance_queue_locked().await;
        // Every line whose place changed is on the board before the reply (a patron that
        // lists next sees the new order).
        let moved: Vec<TorrentId> = {
            let state = self.state();
            before
                .iter()
                .filter(|(id, _, rank)| {
                    state
                        .registry
                        .get(*id)
                        .is_some_and(|e| e.queue_rank != *rank)
                })
                .map(|(id, _, _)| *id)
                .collect()
        };
        for other in moved {
            self.sync_board(other);
        }
        self.status_nudge.notify_one();
        self.current_status(id).ok_or_else(|| super::gone(id))
    }

    /// Whether a torrent of `kind` added now would run rather than wait: the queue's plan
    /// with it last. Called under the add lock, before the engine has it.
    pub(super) fn queue_admits(&self, kind: Kind) -> bool {
        let settings = self.queue.settings();
        if settings.max_active_downloads.is_none() && settings.max_active_seeds.is_none() {
            return true;
        }
        let newcomer = TorrentId(u64::MAX);
        let mut candidates = self.queue_candidates(&settings);
        candidates.push(Candidate {
            id: newcomer,
            rank: u32::MAX,
            kind,
            running: false,
            checking: false,
            stalled: false,
        });
        plan(&candidates, &settings)
            .iter()
            .any(|(id, turn)| *id == newcomer && *turn == Turn::Start)
    }

    /// Every torrent the queue decides about, as it is now: running (not settling a pause
    /// taken during a check), not paused by a user, not failed.
    fn queue_candidates(&self, settings: &QueueSettings) -> Vec<Candidate> {
        let entries: Vec<_> = {
            let state = self.state();
            state
                .registry
                .iter()
                .filter(|(_, e)| !e.restore.paused)
                .filter_map(|(id, e)| match &e.life {
                    Life::Running(handle) => {
                        Some((*id, Ok(handle.clone()), e.queue_rank, e.restore.queued))
                    }
                    // A seed out of the engine while idle (since then), or held there by
                    // the queue.
                    Life::Dormant(dormant) => {
                        Some((*id, Err(dormant.idle_since), e.queue_rank, e.restore.queued))
                    }
                    Life::Settling(_) | Life::Restarting | Life::Moving(_) => None,
                })
                .collect()
        };
        let stall = settings.stalled_after_secs.map(Duration::from_secs);
        let now = Instant::now();
        let mut activity = self
            .queue
            .activity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut candidates = Vec::with_capacity(entries.len());
        let mut live = Vec::with_capacity(entries.len());
        for (id, handle, rank, queued) in entries {
            let candidate = |kind, running, checking, stalled| Candidate {
                id,
                rank,
                kind,
                running,
                checking,
                stalled,
            };
            let handle = match handle {
                Ok(handle) => handle,
                // Held by the queue out of the engine: a seed waiting for its turn.
                Err(_) if queued => {
                    candidates.push(candidate(Kind::Seed, false, false, false));
                    continue;
                }
                // Idle since before it left the engine: stalled as a seed in it would be.
                Err(idle_since) => {
                    let stalled = stall
                        .is_some_and(|stall| now.saturating_duration_since(idle_since) >= stall);
                    candidates.push(candidate(Kind::Seed, true, false, stalled));
                    continue;
                }
            };
            match engine::queue_look(&handle) {
                // Failed: outside the queue (it holds no slot), unless a resume put it back
                // in, to be started again in its turn.
                QueueLook::Failed if queued => {
                    candidates.push(candidate(Kind::Download, false, false, false))
                }
                QueueLook::Failed => {}
                QueueLook::Checking => {
                    candidates.push(candidate(Kind::Download, !queued, true, false))
                }
                // Paused for the queue. (Paused otherwise, it is not the queue's to start.)
                QueueLook::Paused { complete } if queued => {
                    let kind = if complete { Kind::Seed } else { Kind::Download };
                    candidates.push(candidate(kind, false, false, false));
                }
                QueueLook::Paused { .. } => {}
                QueueLook::Live { complete, moved } => {
                    live.push(id);
                    let since = match activity.get(&id) {
                        Some((before, since)) if *before == moved || *before == WOKEN => *since,
                        _ => now,
                    };
                    activity.insert(id, (moved, since));
                    let stalled = stall.is_some_and(|stall| now.duration_since(since) >= stall);
                    let kind = if complete { Kind::Seed } else { Kind::Download };
                    candidates.push(candidate(kind, true, false, stalled));
                }
            }
        }
        // A torrent that stops running starts afresh when it runs again.
        if activity.len() != live.len() {
            let live: std::collections::HashSet<_> = live.into_iter().collect();
            activity.retain(|id, _| live.contains(id));
        }
        candidates
    }

    /// Looks at every torrent and starts or queues those the plan says; the records are
    /// saved once if any changed. Called under the add lock.
    pub(super) async fn advance_queue_locked(self: &Arc<Self>) {
        let settings = self.queue.settings();
        // No limit and nothing held: nothing to decide (ten thousand adds must not ask the
        // engine about every torrent at each of them).
        let limited =
            settings.max_active_downloads.is_some() || settings.max_active_seeds.is_some();
        if !limited && !self.state().registry.iter().any(|(_, e)| e.restore.queued) {
            return;
        }
        let candidates = self.queue_candidates(&settings);
        let turns = plan(&candidates, &settings);
        // A torrent shown queued that runs (or the reverse, after a failed pause) is put
        // right in its record.
        let mut recorded_change = false;
        {
            let mut state = self.state();
            for candidate in &candidates {
                if candidate.checking || !candidate.running {
                    continue;
                }
                // (Only a torrent shown queued is changed: a change marks it for the status
                // loop.)
                let queued = state
                    .registry
                    .get(candidate.id)
                    .is_some_and(|e| e.restore.queued);
                if let Some(entry) = state.registry.get_mut(candidate.id).filter(|_| queued) {
                    entry.restore.queued = false;
                    recorded_change |= !entry.restore.ephemeral;
                }
            }
        }
        let changed = recorded_change || !turns.is_empty();
        for (id, turn) in turns {
            let (dormant, peers) = self
                .state()
                .registry
                .get(id)
                .map(|e| {
                    let dormant = matches!(e.life, Life::Dormant(_));
                    (dormant, dormant && !e.restore.all_peers().is_empty())
                })
                .unwrap_or_default();
            if dormant && turn == Turn::Start && peers {
                // Its turn, and peers of its record to dial: into the engine (paused, as
                // its record says), then started and dialling below.
                if let Err(e) = self.wake_locked(id).await {
                    tracing::warn!(torrent = %id, ?turn, "the queue cannot wake it: {}", e.message);
                    continue;
                }
            } else if dormant {
                // Held back, or started, out of the engine by its record alone (a wake adds
                // it as its record says): a queue that shrinks or grows wakes none of the
                // seeds it holds; a peer wakes one started when it comes.
                let wall = crate::counts::now_ms();
                let changed = {
                    let mut state = self.state();
                    state.registry.get_mut(id).map(|entry| {
                        let restore = &mut entry.restore;
                        match turn {
                            Turn::Queue => {
                                restore.queued = true;
                                restore.stop_clocks(wall);
                            }
                            Turn::Start => {
                                restore.queued = false;
                                restore.start_clocks(wall);
                            }
                        }
                        recorded_change |= !entry.restore.ephemeral;
                    })
                };
                if changed.is_some() {
                    tracing::info!(torrent = %id, ?turn, "queue, out of the engine");
                    match turn {
                        Turn::Start => self.dormant_runs_again(id),
                        Turn::Queue => self.dormant_changed(id),
                    }
                }
                continue;
            }
            let handle = {
                let mut state = self.state();
                let Some(entry) = state.registry.get_mut(id) else {
                    continue;
                };
                let Life::Running(handle) = &entry.life else {
                    continue;
                };
                let handle = handle.clone();
                // Queued before the engine pauses it, and not queued only once it runs: a
                // board pass in between never shows it paused by a user.
                if turn == Turn::Queue {
                    entry.restore.queued = true;
                }
                recorded_change |= !entry.restore.ephemeral;
                handle
            };
            let applied = match turn {
                Turn::Start => {
                    let resumed = self.engine.resume(&handle).await;
                    if resumed.is_ok() {
                        self.dial_recorded_peers(id, &handle);
                    }
                    resumed
                }
                Turn::Queue => self.engine.pause(&handle).await,
            };
            if turn == Turn::Start && applied.is_ok() {
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.restore.queued = false;
                }
            }
            match applied {
                Ok(engine::Applied::Now) => tracing::info!(torrent = %id, ?turn, "queue"),
                // Checking its data, which the engine does not stop or start: the record
                // says what to do once the check ends.
                Ok(engine::Applied::AfterCheck) => {
                    tracing::info!(torrent = %id, ?turn, "queue, once its check ends");
                    self.settle_after_check(id, handle);
                }
                Err(e) => {
                    tracing::warn!(torrent = %id, ?turn, "the queue cannot: {e}");
                    if turn == Turn::Queue {
                        if let Some(entry) = self.state().registry.get_mut(id) {
                            entry.restore.queued = false;
                        }
                    }
                }
            }
        }
        if recorded_change {
            // The record of who is queued is a hint for the next start (which decides
            // again): a failure to write it is logged, and the queue goes on.
            let _ = self.save_registry();
        }
        if changed {
            // The board shows it at the status loop's next pass, not its next pulse.
            self.status_nudge.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u64, kind: Kind, running: bool) -> Candidate {
        Candidate {
            id: TorrentId(id),
            rank: id as u32,
            kind,
            running,
            checking: false,
            stalled: false,
        }
    }

    fn limits(downloads: Option<u32>, seeds: Option<u32>) -> QueueSettings {
        QueueSettings {
            max_active_downloads: downloads,
            max_active_seeds: seeds,
            stalled_after_secs: None,
        }
    }

    #[test]
    fn the_first_in_rank_order_run_up_to_each_kinds_limit() {
        let all = [
            candidate(1, Kind::Download, true),
            candidate(2, Kind::Download, false),
            candidate(3, Kind::Download, false),
            candidate(4, Kind::Seed, false),
            candidate(5, Kind::Seed, true),
        ];
        assert_eq!(
            plan(&all, &limits(Some(2), Some(1))),
            vec![
                (TorrentId(2), Turn::Start),
                (TorrentId(4), Turn::Start),
                (TorrentId(5), Turn::Queue)
            ]
        );
        // No limits: everything queued starts.
        assert_eq!(
            plan(&all, &limits(None, None)),
            vec![
                (TorrentId(2), Turn::Start),
                (TorrentId(3), Turn::Start),
                (TorrentId(4), Turn::Start)
            ]
        );
    }

    #[test]
    fn stalled_and_checking_torrents_run_without_counting() {
        let mut stalled = candidate(1, Kind::Download, true);
        stalled.stalled = true;
        let mut checking = candidate(2, Kind::Download, true);
        checking.checking = true;
        let all = [
            stalled,
            checking,
            candidate(3, Kind::Download, false),
            candidate(4, Kind::Download, false),
        ];
        assert_eq!(
            plan(&all, &limits(Some(2), None)),
            vec![(TorrentId(3), Turn::Start), (TorrentId(4), Turn::Start)]
        );
    }
}
