//! Status out of the engine: onto the shared board for every reader, and as
//! `TorrentStatusUpdate` events to each torrent's holders.
//!
//! Every [`PULSE`] the loop takes a cheap look ([`engine::Pulse`]: its stage, bytes verified
//! and uploaded, peers; counters, no allocation) at the torrents that can have moved: those
//! awake (with live peers, checking, or changed in the last seconds), those the broker
//! changed (the registry marks every change: [`crate::registry::TorrentRegistry::take_touched`]),
//! and those the engine says changed (a peer went live, its state changed: each torrent's
//! watcher, [`watch_torrent`]). A torrent with no peer that nothing changes falls asleep
//! and costs nothing until then: ten thousand idle seeds are not looked at ten times a
//! second. Torrents that moved get their full status computed and written to the board, as
//! one batch with one wake. Every `--status-interval` every awake torrent is refreshed
//! (rates move all the time) and holders get their events, queued per torrent so a slow
//! patron gets the latest, not a backlog.
//!
//! Some things cannot wait for the interval: a torrent that completes or fails is on the
//! board and in its holders' queues at once. Completion does not even wait for the pulse:
//! the engine's own completion notification wakes the loop.

use crate::engine::{self, ManagedTorrentHandle, Pulse};
use crate::registry::{shown_status, Overlay, Source};

use super::Service;
use proto::{TorrentId, TorrentStatus, TorrentSummary};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the torrents awake are looked at.
pub const PULSE: Duration = Duration::from_millis(100);
/// Least time between two passes, however often the loop is nudged: a pass looks at every
/// torrent awake, and a patron's cheap requests must not buy one each.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(5);
/// How long a torrent with no peer stays awake after its last change, at least: its rates
/// fall to zero (the engine's estimators look half a second back) and a full refresh shows
/// them, and a change the broker began (a pause) has reached the engine.
const AWAKE_AFTER_CHANGE: Duration = Duration::from_secs(3);
/// How often every torrent is looked at anyway, asleep or not: a safety net under the
/// engine's notifications, cheap at this pace.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Torrents the engine says changed, for the next pass (filled by the watchers).
#[derive(Default)]
pub struct Woken(Mutex<HashSet<TorrentId>>);

impl Woken {
    pub(super) fn add(&self, id: TorrentId) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    fn take(&self) -> HashSet<TorrentId> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The torrents awake at the status loop's last pass: the only ones whose bytes can move
/// (the seeding counts look at no other).
#[derive(Default)]
pub struct Awake(Mutex<Arc<HashSet<TorrentId>>>);

impl Awake {
    /// The torrents awake now.
    pub fn now(&self) -> Arc<HashSet<TorrentId>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, awake: HashSet<TorrentId>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(awake);
    }
}

/// What the loop remembers of a torrent between looks.
struct Seen {
    /// The pulse, how many hold it, whether it is ephemeral, and its place in the queue, at
    /// the last look.
    look: (Pulse, u32, bool, Overlay),
    /// Tells the loop what the engine changed (completion, peers, state); aborted when it
    /// goes. None while the torrent is out of the engine (dormant).
    watcher: Option<tokio::task::AbortHandle>,
    /// The engine's handle it watches (a recheck, or a wake, gives the torrent a new one);
    /// none while it is dormant.
    handle: Option<ManagedTorrentHandle>,
    /// Looked at every pulse until then (and while it has peers or is not settled).
    awake_until: Instant,
    /// While it seeds asleep: when the minute of its seeding time shown next changes.
    next_minute: Option<Instant>,
}

impl Drop for Seen {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

/// Whether what the loop saw of a torrent was read from `source`: the same engine handle,
/// or dormant then and now.
fn same_source(handle: Option<&ManagedTorrentHandle>, source: &Source) -> bool {
    match (handle, source) {
        (Some(seen), Source::Engine(now)) => Arc::ptr_eq(seen, now),
        (None, Source::Dormant { .. }) => true,
        _ => false,
    }
}

/// A torrent's [`Pulse`]: the engine's, or a dormant seed's, which never changes.
fn pulse_from(source: &Source) -> Pulse {
    match source {
        Source::Engine(handle) => engine::pulse_of(handle),
        Source::Dormant { bytes, paused } => Pulse {
            stage: (if *paused { 2 } else { 3 }, true),
            have: *bytes,
            uploaded: 0,
            peers: 0,
        },
        Source::Restarting | Source::Frozen(_) => Pulse::default(),
    }
}

impl Seen {
    /// Whether it must be looked at on every pulse.
    fn awake(&self, now: Instant) -> bool {
        let (pulse, ..) = &self.look;
        // Live (3), paused (2) or failed (4) are settled; initializing is not.
        let settled = matches!(pulse.stage.0, 2..=4);
        pulse.peers > 0 || !settled || now < self.awake_until
    }
}

/// Name of the status loop's thread.
pub const THREAD: &str = "status";

/// Starts the status loop on a thread of its own ([`THREAD`]): its cost (looking at the
/// torrents, writing the board, waking its readers, fanning events out) is then that
/// thread's CPU time, which `scripts/bench` reads. It ends when the broker stops.
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
    // Boxed: a table's empty buckets then cost a pointer each, not a whole `Seen`.
    let mut seen: HashMap<TorrentId, Box<Seen>> = HashMap::new();
    let mut awake: HashSet<TorrentId> = HashSet::new();
    let mut pulse = tokio::time::interval(PULSE);
    pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let interval = service.config.status_interval;
    let mut last_full: Option<Instant> = None;
    let mut last_sweep: Option<Instant> = None;
    let mut last_pass = Instant::now();
    let mut placeholders_version = None;
    // Torrents whose status changed on a pass that told no holder: told at the next tick,
    // asleep by then or not.
    let mut owed: HashSet<TorrentId> = HashSet::new();
    while !service.is_stopping() {
        let ticked = tokio::select! {
            _ = pulse.tick() => true,
            _ = service.status_nudge.notified() => false,
        };
        let since = last_pass.elapsed();
        if since < MIN_PASS_GAP {
            tokio::time::sleep(MIN_PASS_GAP - since).await;
        }
        last_pass = Instant::now();
        let full = last_full.is_none_or(|at| at.elapsed() >= interval);
        if full {
            last_full = Some(Instant::now());
        }
        let sweep = last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
        if sweep {
            last_sweep = Some(Instant::now());
        }
        let pass = Pass {
            awake: ticked || full,
            full,
            sweep,
        };
        let (urgent, computed) = refresh_board(
            &service,
            &mut seen,
            &mut awake,
            pass,
            &mut placeholders_version,
        );
        if full {
            owed.extend(computed.keys().copied());
            let only = std::mem::take(&mut owed);
            fan_out(&service, Some(&only), &computed);
        } else {
            if !urgent.is_empty() {
                let only: HashSet<TorrentId> = urgent.iter().copied().collect();
                fan_out(&service, Some(&only), &computed);
            }
            owed.extend(computed.keys().filter(|id| !urgent.contains(id)).copied());
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

/// What one pass of the loop covers.
#[derive(Clone, Copy)]
struct Pass {
    /// The torrents awake are looked at (at each pulse; a nudge looks only at what changed,
    /// however many adds nudge).
    awake: bool,
    /// Every awake torrent's status is computed again (rates), not only those that moved.
    full: bool,
    /// Every torrent is looked at, asleep or not.
    sweep: bool,
}

/// One look at the torrents that can have moved: what moved goes onto the board (every
/// awake torrent on a full pass). Returns the torrents whose stage changed (started,
/// completed, paused, failed), and the statuses it computed (the fan-out needs not compute
/// them again).
fn refresh_board(
    service: &Arc<Service>,
    seen: &mut HashMap<TorrentId, Box<Seen>>,
    awake: &mut HashSet<TorrentId>,
    pass: Pass,
    placeholders_version: &mut Option<u64>,
) -> (Vec<TorrentId>, HashMap<TorrentId, TorrentStatus>) {
    let now = Instant::now();
    // From the look at the registry to the write, no reply changes the board under us.
    let _deciding = service.board.decide();
    // Which torrents to look at: on a sweep (the first pass is one) all; else those awake,
    // those the broker changed, those the engine woke, and asleep seeds whose minute turns.
    let woken = service.woken.take();
    type Look = (TorrentId, Source, u32, bool, Overlay, Option<u64>);
    let seeding = service.seed_policy();
    let wall = crate::counts::now_ms();
    let (running, placeholders, mut gone, present, nudged) = {
        let mut state = service.state();
        // Changed by the broker or the engine: awake for a while (a change the broker
        // began, a pause, reaches the engine after the registry).
        let mut nudged = state.registry.take_touched();
        nudged.extend(woken);
        let candidates: Vec<TorrentId> = if pass.sweep {
            state.registry.iter().map(|(id, _)| *id).collect()
        } else {
            let mut candidates: HashSet<TorrentId> = nudged.clone();
            if pass.awake {
                candidates.extend(awake.iter().copied());
            }
            // Once a second, the seeds asleep whose minute of seeding time turned.
            if pass.full {
                candidates.extend(seen.iter().filter_map(|(id, known)| {
                    known.next_minute.is_some_and(|at| now >= at).then_some(*id)
                }));
            }
            candidates.into_iter().collect()
        };
        let mut running: Vec<Look> = Vec::with_capacity(candidates.len());
        let mut gone = Vec::new();
        for id in candidates {
            match state.registry.get(id) {
                Some(entry) => {
                    // Being added again ([`crate::registry::Life::Restarting`]) or moving: its
                    // line stays as it is until it has a handle (the change that gives it one
                    // marks it). A dormant seed is looked at as one asleep.
                    let source = entry.source();
                    if matches!(source, Source::Engine(_) | Source::Dormant { .. }) {
                        let holders = entry.holders.len() as u32;
                        let ephemeral = entry.restore.ephemeral;
                        // While it seeds: milliseconds until the minute of seeding time it
                        // shows changes (it is then looked at, asleep or not).
                        let minute = entry
                            .restore
                            .seeding_since
                            .map(|_| 60_000 - entry.restore.seeding_ms_at(wall) % 60_000);
                        let place = entry.overlay(&seeding);
                        running.push((id, source, holders, ephemeral, place, minute));
                    }
                }
                None => gone.push(id),
            }
        }
        // Magnets resolving and records kept unrestored: looked at when those change.
        let version = state.registry.version();
        let placeholders: Option<Vec<TorrentSummary>> =
            (*placeholders_version != Some(version) || pass.sweep).then(|| {
                *placeholders_version = Some(version);
                state
                    .registry
                    .placeholders()
                    .map(|(info, state, holders)| TorrentSummary {
                        status: TorrentStatus::idle(&info, state),
                        info,
                        holders,
                        held_by_you: false,
                        ephemeral: false,
                    })
                    .collect()
            });
        // When those change (and on a sweep), the board keeps only what is there: every
        // torrent known, and these.
        let present: Option<HashSet<TorrentId>> = placeholders.as_ref().map(|placeholders| {
            let running = state.registry.iter().map(|(id, _)| *id);
            running
                .chain(placeholders.iter().map(|p| p.info.id))
                .collect()
        });
        (running, placeholders, gone, present, nudged)
    };
    if let Some(present) = &present {
        gone.extend(seen.keys().filter(|id| !present.contains(id)).copied());
    }
    let mut moved = Vec::new();
    let mut urgent = Vec::new();
    let mut arrived = false;
    let looked: Vec<TorrentId> = running.iter().map(|(id, ..)| *id).collect();
    for (id, source, holders, ephemeral, place, minute) in running {
        let look = (pulse_from(&source), holders, ephemeral, place.clone());
        let next_minute = minute.map(|in_ms| now + Duration::from_millis(in_ms));
        let before = match seen.get_mut(&id) {
            Some(known) if same_source(known.handle.as_ref(), &source) => {
                known.next_minute = next_minute;
                let before = std::mem::replace(&mut known.look, look.clone());
                if before != look || nudged.contains(&id) {
                    known.awake_until = now + AWAKE_AFTER_CHANGE;
                }
                Some(before)
            }
            known => {
                arrived = true;
                let before = known.map(|k| k.look.clone());
                let handle = match &source {
                    Source::Engine(handle) => Some(handle.clone()),
                    _ => None,
                };
                let watcher = handle
                    .as_ref()
                    .map(|handle| watch_torrent(service, id, handle.clone()));
                seen.insert(
                    id,
                    Box::new(Seen {
                        look: look.clone(),
                        watcher,
                        handle,
                        awake_until: now + AWAKE_AFTER_CHANGE,
                        next_minute,
                    }),
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
        if pass.full || before != Some(look) {
            moved.push((id, source, holders, ephemeral, place));
        }
    }
    let mut left = false;
    for id in &gone {
        left |= seen.remove(id).is_some();
    }
    let before = awake.len();
    awake.retain(|id| seen.get(id).is_some_and(|known| known.awake(now)));
    let mut changed_awake = awake.len() != before;
    for id in looked {
        if seen.get(&id).is_some_and(|known| known.awake(now)) {
            changed_awake |= awake.insert(id);
        }
    }
    if changed_awake || pass.sweep {
        service.awake.set(awake.clone());
    }
    // A stage changed (a completion, a check's end, a pause) or a torrent came or went:
    // the queue looks again.
    if !urgent.is_empty() || left || arrived {
        service.queue.nudge();
    }
    // The names and folders of what moved, then their statuses outside the lock.
    let infos: Vec<_> = {
        let state = service.state();
        moved
            .into_iter()
            .filter_map(|(id, source, holders, ephemeral, place)| {
                let info = state.registry.get(id)?.info.clone();
                Some((info, source, holders, ephemeral, place))
            })
            .collect()
    };
    let mut changed: Vec<TorrentSummary> = infos
        .into_iter()
        .map(|(info, source, holders, ephemeral, place)| TorrentSummary {
            status: shown_status(&info, &source, place),
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
    if let Some(placeholders) = placeholders {
        changed.extend(placeholders);
    }
    service
        .board
        .update(changed, &gone, present.as_ref(), !urgent.is_empty());
    (urgent, computed)
}

/// A task that tells the status loop what the engine changed of a torrent it may not look
/// at otherwise (asleep): a peer went live, or its state changed. When the engine reports
/// `handle` complete it wakes the loop at once, and then records what its files are (nothing
/// writes them any more), so that fast resume can trust its pieces at the next start only
/// while the files stay so.
fn watch_torrent(
    service: &Arc<Service>,
    id: TorrentId,
    handle: ManagedTorrentHandle,
) -> tokio::task::AbortHandle {
    let service = Arc::downgrade(service);
    tokio::spawn(async move {
        let mut peer_went_live = handle.shared().peer_went_live();
        peer_went_live.borrow_and_update();
        let completion = handle.wait_until_completed();
        tokio::pin!(completion);
        let (mut completing, mut failed) = (true, false);
        loop {
            let state_changed = handle.state_change_notified();
            tokio::select! {
                done = &mut completion, if completing => {
                    completing = false;
                    match done {
                        Ok(()) => {
                            let Some(service) = service.upgrade() else { return };
                            completed(&service, id, &handle).await;
                        }
                        // The engine gives up the wait when the torrent fails (a full
                        // disk); a resume runs the same handle on, so the wait starts again
                        // at its next change (and ends again at once while it is still in
                        // error).
                        Err(_) => failed = true,
                    }
                    continue;
                }
                woke = peer_went_live.changed() => {
                    if woke.is_err() {
                        return;
                    }
                }
                () = state_changed => {
                    if failed {
                        completion.set(handle.wait_until_completed());
                        (completing, failed) = (true, false);
                    }
                }
            }
            let Some(service) = service.upgrade() else {
                return;
            };
            service.woken.add(id);
            service.status_nudge.notify_one();
        }
    })
    .abort_handle()
}

/// What follows the engine's completion of torrent `id`.
async fn completed(service: &Arc<Service>, id: TorrentId, handle: &ManagedTorrentHandle) {
    // A download completed only if it fetched bytes in this run: a seed restored, rechecked
    // or made here completes at its check, with none (asking whether it was complete once
    // checked would miss a download quicker than this task's start: its hook and its move
    // to --move-completed-to were lost).
    let seeded = crate::engine::transfer(handle).is_none_or(|t| t.downloaded == 0);
    if !seeded {
        // Logged here, held or not (a status to holders may come later, or never).
        let name = crate::engine::name_of(handle);
        tracing::info!(torrent = %id, name = %name, "torrent complete");
    }
    service.woken.add(id);
    service.status_nudge.notify_one();
    // A download slot is free, and a seed may need one.
    service.queue.nudge();
    let stamping = service.clone();
    let _ = tokio::task::spawn_blocking(move || stamping.stamp_verified(id)).await;
    if !seeded {
        // Moved where completed torrents go (if they go anywhere), then its hook runs, told
        // where it is. In a task of its own: this one is aborted when the torrent leaves the
        // engine, as it does for its move.
        let runtime = service.runtime.clone();
        let service = service.clone();
        runtime.spawn(async move {
            service.move_completed(id, true).await;
            service.fire_hook(crate::hooks::HookEvent::Completed, id, None);
        });
    }
}

/// Queues each held torrent's status for its holders when it changed meaningfully (always
/// when it completes): every held torrent, or only `only`. Statuses not in `computed` are
/// computed without the broker's lock (every request, handshake and disconnect needs it);
/// only comparing and queueing hold it.
pub(super) fn fan_out(
    service: &Service,
    only: Option<&HashSet<TorrentId>>,
    computed: &HashMap<TorrentId, TorrentStatus>,
) {
    let seeding = service.seed_policy();
    let held: Vec<_> = {
        let state = service.state();
        // Only those named, when they are (a pass fans out what moved, not every torrent).
        let entries: Box<dyn Iterator<Item = &crate::registry::TorrentEntry>> = match only {
            Some(only) => Box::new(only.iter().filter_map(|id| state.registry.get(*id))),
            None => Box::new(state.registry.iter().map(|(_, entry)| entry)),
        };
        entries
            .filter(|entry| !entry.holders.is_empty())
            .filter_map(|entry| {
                let source = entry.source();
                matches!(source, Source::Engine(_) | Source::Dormant { .. })
                    .then(|| (entry.info.clone(), source, entry.overlay(&seeding)))
            })
            .collect()
    };
    let statuses: Vec<TorrentStatus> = held
        .iter()
        .map(|(info, source, place)| match computed.get(&info.id) {
            Some(status) => status.clone(),
            None => shown_status(info, source, place.clone()),
        })
        .collect();
    let mut state = service.state();
    let state = &mut *state;
    for status in statuses {
        // Closed meanwhile: nothing to say. (What was sent is the loop's own note, not a
        // change of the torrent.)
        let Some(entry) = state.registry.get_mut_quietly(status.id) else {
            continue;
        };
        if !changed(entry.last_status.as_deref(), &status) {
            continue;
        }
        // (A status let go while no one held it: what is sent now is not news.)
        let news = !entry.status_forgotten;
        let before = entry.last_status.as_deref().map(|s| &s.state);
        if news && before != Some(&status.state) {
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
        // (Its box kept: one allocation per torrent, not one per change.)
        match &mut entry.last_status {
            Some(last) => **last = status,
            None => entry.last_status = Some(Box::new(status)),
        }
        entry.status_forgotten = false;
    }
}

fn changed(previous: Option<&TorrentStatus>, now: &TorrentStatus) -> bool {
    previous.is_none_or(|previous| now.differs_meaningfully(previous))
}
