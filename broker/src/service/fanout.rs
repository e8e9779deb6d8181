//! Status out of the engine: onto the shared board for every reader, and as
//! `TorrentStatusUpdate` events to each torrent's holders.
//!
//! Every [`PULSE`] the loop takes a cheap look at every torrent ([`engine::Pulse`]: its stage,
//! bytes verified and uploaded, peers; counters, no allocation). Torrents that moved get their
//! full status computed and written to the board, as one batch with one wake. Every
//! `--status-interval` everything is refreshed (rates move all the time) and holders get
//! their events, queued per torrent so a slow patron gets the latest, not a backlog.
//!
//! Some things cannot wait for the interval: a torrent that completes or fails is on the
//! board and in its holders' queues at once. Completion does not even wait for the pulse:
//! the engine's own completion notification wakes the loop.

use crate::engine::{self, ManagedTorrentHandle, Pulse};
use crate::registry::{shown_status, Overlay, Source};

use super::Service;
use proto::{TorrentId, TorrentStatus, TorrentSummary};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often every torrent is looked at.
pub const PULSE: Duration = Duration::from_millis(100);
/// Least time between two passes, however often the loop is nudged: a pass looks at every
/// torrent, and a patron's cheap requests must not buy one each.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(5);

/// What the loop remembers of a torrent between pulses.
struct Seen {
    /// The pulse, how many hold it, whether it is ephemeral, and its place in the queue, at
    /// the last look.
    look: (Pulse, u32, bool, Overlay),
    /// Wakes the loop when the engine says the torrent completed; aborted when it goes.
    completion: tokio::task::AbortHandle,
    /// The engine's handle it watches (a recheck gives the torrent a new one).
    handle: ManagedTorrentHandle,
}

impl Drop for Seen {
    fn drop(&mut self) {
        self.completion.abort();
    }
}

/// Name of the status loop's thread.
pub const THREAD: &str = "status";

/// Starts the status loop on a thread of its own ([`THREAD`]): its cost (looking at every
/// torrent, writing the board, waking its readers, fanning events out) is then that thread's
/// CPU time, which `scripts/bench` reads. It ends when the broker stops.
/// Returns once its first pass has put every torrent the broker knows on the board, so that
/// no patron ever reads a board emptier than the broker.
pub async fn start(service: Arc<Service>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (filled, board_filled) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || runtime.block_on(run(service, filled)))?;
    board_filled
        .await
        .map_err(|_| anyhow::anyhow!("the status loop ended before its first pass"))
}

/// Runs until the broker stops; `filled` is told after the first pass.
async fn run(service: Arc<Service>, filled: tokio::sync::oneshot::Sender<()>) {
    let mut filled = Some(filled);
    let mut seen: HashMap<TorrentId, Seen> = HashMap::new();
    let mut pulse = tokio::time::interval(PULSE);
    pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let interval = service.config.status_interval;
    let mut last_full: Option<Instant> = None;
    let mut last_pass = Instant::now();
    while !service.is_stopping() {
        tokio::select! {
            _ = pulse.tick() => {}
            _ = service.status_nudge.notified() => {}
        }
        let since = last_pass.elapsed();
        if since < MIN_PASS_GAP {
            tokio::time::sleep(MIN_PASS_GAP - since).await;
        }
        last_pass = Instant::now();
        let full = last_full.is_none_or(|at| at.elapsed() >= interval);
        if full {
            last_full = Some(Instant::now());
        }
        let (urgent, computed) = refresh_board(&service, &mut seen, full);
        if full {
            fan_out(&service, None, &computed);
        } else if !urgent.is_empty() {
            fan_out(&service, Some(&urgent), &computed);
        }
        if let Some(filled) = filled.take() {
            let _ = filled.send(());
        }
        // What patrons that left held: their unread regions and their board waiters (at
        // most once a second each; a busy board prunes its waiters as it wakes them).
        service.unread.sweep_now_and_then();
        service.board.prune_now_and_then();
    }
}

/// One look at every torrent: what moved goes onto the board (everything when `full`).
/// Returns the torrents whose stage changed (started, completed, paused, failed), and the
/// statuses it computed (the fan-out needs not compute them again).
fn refresh_board(
    service: &Arc<Service>,
    seen: &mut HashMap<TorrentId, Seen>,
    full: bool,
) -> (Vec<TorrentId>, HashMap<TorrentId, TorrentStatus>) {
    // From the look at the registry to the write, no reply changes the board under us.
    let _deciding = service.board.decide();
    // Under the lock only what is cheap to copy: handles are `Arc`s.
    type Look = (TorrentId, ManagedTorrentHandle, u32, bool, Overlay);
    let seeding = service.seed_policy();
    let (running, placeholders, restarting): (Vec<Look>, Vec<TorrentSummary>, Vec<TorrentId>) = {
        let state = service.state();
        // One pass over every torrent (this runs each 100 ms). Those being added again
        // ([`crate::registry::Life::Restarting`]) keep their lines as they are until they have a handle.
        let mut running = Vec::with_capacity(state.registry.len());
        let mut restarting = Vec::new();
        for (id, entry) in state.registry.iter() {
            match entry.live_handle() {
                Some(handle) => {
                    let holders = entry.holders.len() as u32;
                    let ephemeral = entry.restore.ephemeral;
                    running.push((*id, handle, holders, ephemeral, entry.overlay(&seeding)));
                }
                None => restarting.push(*id),
            }
        }
        let placeholders = state
            .registry
            .placeholders()
            .map(|(info, state, holders)| TorrentSummary {
                status: TorrentStatus::idle(&info, state),
                info,
                holders,
                held_by_you: false,
                ephemeral: false,
            })
            .collect();
        (running, placeholders, restarting)
    };
    let mut present: HashSet<TorrentId> = placeholders.iter().map(|p| p.info.id).collect();
    present.extend(restarting);
    let mut moved = Vec::new();
    let mut urgent = Vec::new();
    let mut arrived = false;
    for (id, handle, holders, ephemeral, place) in running {
        present.insert(id);
        let look = (engine::pulse_of(&handle), holders, ephemeral, place.clone());
        let before = match seen.get_mut(&id) {
            Some(known) if Arc::ptr_eq(&known.handle, &handle) => {
                Some(std::mem::replace(&mut known.look, look.clone()))
            }
            known => {
                arrived = true;
                let before = known.map(|k| k.look.clone());
                let completion = watch_completion(service, id, handle.clone());
                let watched = handle.clone();
                seen.insert(
                    id,
                    Seen {
                        look: look.clone(),
                        completion,
                        handle: watched,
                    },
                );
                before
            }
        };
        if before
            .as_ref()
            .is_some_and(|b| b.0.stage != look.0.stage || b.3.queued != place.queued)
        {
            urgent.push(id);
        }
        if full || before != Some(look) {
            moved.push((id, handle, holders, ephemeral, place));
        }
    }
    let known = seen.len();
    seen.retain(|id, _| present.contains(id));
    // A stage changed (a completion, a check's end, a pause) or a torrent came or went:
    // the queue looks again.
    if !urgent.is_empty() || seen.len() != known || arrived {
        service.queue.nudge();
    }
    // The names and folders of what moved, then their statuses outside the lock.
    let infos: Vec<_> = {
        let state = service.state();
        moved
            .into_iter()
            .filter_map(|(id, handle, holders, ephemeral, place)| {
                let info = state.registry.get(id)?.info.clone();
                Some((info, handle, holders, ephemeral, place))
            })
            .collect()
    };
    let mut changed: Vec<TorrentSummary> = infos
        .into_iter()
        .map(|(info, handle, holders, ephemeral, place)| TorrentSummary {
            status: shown_status(&info, &Source::Engine(handle), place),
            info,
            holders,
            held_by_you: false,
            ephemeral,
        })
        .collect();
    let computed: HashMap<TorrentId, TorrentStatus> = changed
        .iter()
        .map(|summary| (summary.info.id, summary.status.clone()))
        .collect();
    // A torrent that just failed runs its hook (once: at the change of stage; the few
    // torrents whose stage changed, not every torrent of the pass).
    for id in &urgent {
        if let Some(TorrentStatus {
            state: proto::TorrentState::Error(why),
            ..
        }) = computed.get(id)
        {
            service.fire_hook(crate::hooks::HookEvent::Error, *id, Some(why.clone()));
        }
    }
    changed.extend(placeholders);
    service.board.update(changed, &present, !urgent.is_empty());
    (urgent, computed)
}

/// A task that wakes the status loop when the engine reports `handle` complete, and then
/// records what its files are (nothing writes them any more), so that fast resume can
/// trust its pieces at the next start only while the files stay so.
fn watch_completion(
    service: &Arc<Service>,
    id: TorrentId,
    handle: ManagedTorrentHandle,
) -> tokio::task::AbortHandle {
    let service = Arc::downgrade(service);
    tokio::spawn(async move {
        if handle.wait_until_completed().await.is_ok() {
            // A download completed only if it fetched bytes in this run: a seed restored,
            // rechecked or made here completes at its check, with none (asking whether it
            // was complete once checked would miss a download quicker than this task's
            // start: its hook and its move to --move-completed-to were lost).
            let seeded = crate::engine::transfer(&handle).is_none_or(|t| t.downloaded == 0);
            if let Some(service) = service.upgrade() {
                service.status_nudge.notify_one();
                // A download slot is free, and a seed may need one.
                service.queue.nudge();
                let stamping = service.clone();
                let _ = tokio::task::spawn_blocking(move || stamping.stamp_verified(id)).await;
                if !seeded {
                    // Moved where completed torrents go (if they go anywhere), then its
                    // hook runs, told where it is. In a task of its own: this one is
                    // aborted when the torrent leaves the engine, as it does for its move.
                    let runtime = service.runtime.clone();
                    runtime.spawn(async move {
                        service.move_completed(id, true).await;
                        service.fire_hook(crate::hooks::HookEvent::Completed, id, None);
                    });
                }
            }
        }
    })
    .abort_handle()
}

/// Queues each held torrent's status for its holders when it changed meaningfully (always
/// when it completes): every held torrent, or only `only`. Statuses not in `computed` are
/// computed without the broker's lock (every request, handshake and disconnect needs it);
/// only comparing and queueing hold it.
pub(super) fn fan_out(
    service: &Service,
    only: Option<&[TorrentId]>,
    computed: &HashMap<TorrentId, TorrentStatus>,
) {
    let seeding = service.seed_policy();
    let held: Vec<_> = {
        let state = service.state();
        state
            .registry
            .iter()
            .filter(|(id, entry)| {
                !entry.holders.is_empty() && only.is_none_or(|only| only.contains(id))
            })
            .filter_map(|(_, entry)| {
                Some((
                    entry.info.clone(),
                    entry.live_handle()?,
                    entry.overlay(&seeding),
                ))
            })
            .collect()
    };
    let statuses: Vec<TorrentStatus> = held
        .iter()
        .map(|(info, handle, place)| match computed.get(&info.id) {
            Some(status) => status.clone(),
            None => shown_status(info, &Source::Engine(handle.clone()), place.clone()),
        })
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
                patron.events.push_status(status.clone());
            }
        }
        entry.last_status = Some(status);
    }
}

fn changed(previous: Option<&TorrentStatus>, now: &TorrentStatus) -> bool {
    previous.is_none_or(|previous| now.differs_meaningfully(previous))
}
