//! Idle seeds out of the engine (issue 23): a complete seed with no peer, no reader and
//! nothing asked of it costs the engine's per-torrent state for nothing (its live state and
//! maps, its tasks, its metadata: most of what an idle seed costs). After
//! `--sleep-seeds-after` of that it leaves the engine ([`Life::Dormant`]): its files are
//! stamped as at a clean stop, its line shows it seeding as before, and its record, files
//! and holders stay the broker's.
//!
//! Whatever needs the engine wakes it first, as a resume the broker vouches for (nothing is
//! read unless its files changed, DESIGN §4 "verified means verified"):
//! - an incoming connection for its info hash (the engine asks the broker, see
//!   [`crate::engine::Engine::set_incoming_waker`]);
//! - a request that needs its handle: a file selection, a stream, recheck, move,
//!   `peers --add`, a joiner's peers, a resume of one paused with peers to dial
//!   ([`Service::running_awake`], [`Service::live`]);
//! - its next announce, for one that announces on DHT or LSD: every [`REANNOUNCE_EVERY`]
//!   it wakes, announces, and sleeps again once idle (one restored dormant at a start
//!   announces at the sleeper's first looks).
//!
//! A seed with a tracker does not sleep while it runs (held, by a pause or the queue, it
//! does): a tracker session is the engine's (`started` once, then announces when the
//! tracker asks, each with what was uploaded since), and a dormant seed could keep none of
//! it: waking began a new session each time, what it uploaded awake was never reported,
//! and a tracker that forgets peers sooner than its wakes stopped naming it. One let go by
//! its record (resumed, started by the queue) wakes at the sleeper's next look to announce,
//! ahead of the seeds that wake only to announce on DHT or LSD, and stays.
//!
//! What only changes or reads its record does not wake it: listing its peers (none) or its
//! files (from its .torrent, all complete), a pause, a seeding limit reached, the queue
//! holding it back or starting it, a resume with no peer to dial, its rates and labels
//! (taken at its wake). Paused or queued seeds sleep too, and stay out when a peer comes.
//!
//! The sleeper runs in a task of its own: it waits for the add lock once per seed, and
//! neither the policy task's clocks nor a request wait for more than one seed's sleep.

use super::Service;
use crate::registry::{Dormant, Life};
use crate::service::restore::Prepared;
use proto::{ProtoError, TorrentId, TorrentRef, TorrentState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a dormant seed that announces on DHT or LSD wakes to do so (as often as a
/// tracker usually asks; DHT nodes keep a peer about this long).
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(30 * 60);

/// At most this many dormant entries, and [`REPACK_PATHS`] of their paths, are moved into
/// fresh allocations per hold of the state lock (a few milliseconds).
const REPACK_CHUNK: usize = 1024;

/// At most this many paths (each torrent's files, up to
/// [`crate::registry::REPACKED_FILES`], and their places in the owners map) are copied per
/// hold of the state lock.
const REPACK_PATHS: usize = 8192;

/// How often the sleeper looks for seeds to put to sleep or to wake for their announce.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Whether a torrent in the engine is one that may sleep once idle: recorded (its .torrent
/// is on disk to wake it from), no move pending, seeding or held (paused, queued). (And
/// complete, no peer, no stream reading it: the engine and the streams are asked apart.)
fn may_sleep(entry: &crate::registry::TorrentEntry) -> bool {
    let r = &entry.restore;
    !r.ephemeral
        && r.moving.is_none()
        && !r.move_due
        && (r.seeding_since.is_some() || r.engine_paused())
}

/// Whether a seed in the engine is in a tracker session it keeps while it runs: the engine
/// announces when the tracker asks and reports what it uploaded. Asleep it could do
/// neither (a wake begins a new session), and a tracker that forgets peers sooner than its
/// wakes stopped naming it. (Held, by a pause or the queue, it announces nothing.)
fn in_tracker_session(
    handle: &crate::engine::ManagedTorrentHandle,
    entry: &crate::registry::TorrentEntry,
) -> bool {
    has_tracker(handle) && !entry.restore.engine_paused()
}

/// Whether the engine announces this torrent to a tracker (to a URL its tracker client
/// takes: a `wss://` alone is none, as at a restore:
/// [`crate::torrent_file::CheckedTorrent::has_trackers`]).
fn has_tracker(handle: &crate::engine::ManagedTorrentHandle) -> bool {
    handle
        .shared()
        .trackers
        .iter()
        .any(crate::torrent_file::is_announce_url)
}

/// Whether a dormant seed is due to wake and announce. (Paused, by a user, a limit or the
/// queue, it does not announce.)
fn due_to_announce(dormant: &Dormant, entry: &crate::registry::TorrentEntry, now: Instant) -> bool {
    !entry.restore.engine_paused() && dormant.next_announce.is_some_and(|at| now >= at)
}

/// At most this many seeds are put to sleep at one look, and as many with a tracker woken
/// (let go by a resume or the queue), all within the look's [`LOOK_BUDGET`] (ten thousand
/// added at once sleep over half a minute, not in one go; one sleep takes well under a
/// millisecond).
const MAX_PER_LOOK: usize = 2048;

/// At most this many dormant seeds that announce only on DHT or LSD are woken to announce
/// at one look (a wake adds a torrent to the engine; they sleep again once idle).
const WAKES_PER_LOOK: usize = 64;

/// How long a peer's wake waits for the add lock (a peer waits about this for its
/// handshake's answer).
const PEER_WAITS: Duration = Duration::from_secs(5);

/// How long a wake waits for the woken seed's check (a resume vouched for reads nothing and
/// ends at once; one whose files changed hashes them, and is shown checking meanwhile).
const WAKE_CHECK_LIMIT: Duration = Duration::from_secs(10);

/// How long one look may go on waking and putting seeds to sleep; the rest wait for the
/// next look. Seeds with a tracker let go by their record are woken first, for at most
/// [`TRACKER_WAKES_BUDGET`] of it: ten thousand resumed at once still leave each look time
/// to put seeds to sleep and to wake those due to announce on DHT.
const LOOK_BUDGET: Duration = Duration::from_secs(3);

/// The part of [`LOOK_BUDGET`] that wakes of seeds with a tracker may take.
const TRACKER_WAKES_BUDGET: Duration = Duration::from_secs(2);

/// The longest a seed that could not sleep waits before it is tried again (the wait doubles
/// at each refusal, from `--sleep-seeds-after`).
const MAX_BACK_OFF: Duration = Duration::from_secs(30 * 60);

/// What the sleeper remembers between looks: since when each seed in the engine has been
/// idle, and what it had uploaded then (only those: none once it sleeps).
#[derive(Default)]
pub struct Sleeper {
    idle_since: Mutex<HashMap<TorrentId, Idle>>,
    /// Seeds put to sleep since the last move of dormant entries into fresh allocations.
    unpacked: Mutex<Vec<TorrentId>>,
}

/// One seed idle in the engine, as the sleeper last saw it.
#[derive(Clone, Copy)]
struct Idle {
    /// Since when.
    since: Instant,
    /// What it had uploaded then: a change is not idle.
    uploaded: u64,
    /// How many times in a row it could not sleep when due.
    refusals: u32,
    /// Not tried again before then (after a refusal: its back-off).
    retry_at: Option<Instant>,
}

/// Starts the sleeper's task (nothing, with `--sleep-seeds-after none`); it ends when the
/// broker stops.
pub fn start(service: &Arc<Service>) {
    let Some(after) = service.config.sleep_seeds_after else {
        return;
    };
    let service = service.clone();
    service.clone().runtime.spawn(async move {
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = look.tick() => service.sleep_and_wake(after).await,
                _ = service.shutdown.wait() => return,
            }
            if service.is_stopping() {
                return;
            }
        }
    });
}

impl Service {
    /// Puts to sleep the seeds idle for `after` (the longest idle first, within a budget),
    /// and wakes the dormant ones due to announce.
    async fn sleep_and_wake(self: &Arc<Self>, after: Duration) {
        let now = Instant::now();
        let awake = self.awake.now();
        // Streams first, apart: the streams' lock is never taken under the state lock
        // (opening a stream takes them in the other order).
        let streamed = self.streams.torrents_read();
        // What to look at, under the state lock; the engine is asked outside it. Under the
        // add lock too: a change in flight (the queue letting go of many seeds, one at a
        // time) is seen whole, not half.
        let (candidates, to_wake) = {
            let _adding = self.adding.lock().await;
            if self.is_stopping() {
                return;
            }
            let state = self.state();
            let mut candidates = Vec::new();
            let mut to_wake = Vec::new();
            for (id, entry) in state.registry.iter() {
                match &entry.life {
                    Life::Running(handle)
                        if may_sleep(entry)
                            && !streamed.contains(id)
                            && !in_tracker_session(handle, entry) =>
                    {
                        candidates.push((*id, handle.clone()))
                    }
                    Life::Dormant(dormant) if due_to_announce(dormant, entry, now) => {
                        to_wake.push((dormant.tracker, dormant.next_announce, *id))
                    }
                    _ => {}
                }
            }
            (candidates, to_wake)
        };
        let mut due = Vec::new();
        {
            let mut idle = self
                .sleeper
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut kept = HashMap::with_capacity(candidates.len().min(idle.len() + 64));
            for (id, handle) in candidates {
                // Asleep in the status loop: idle as it was. Awake there: a peer, or only
                // its line that changed (its minute of seeding time)? The engine says.
                let seen = match idle.get(&id).copied() {
                    Some(known) if !awake.contains(&id) => known,
                    known => {
                        let pulse = crate::engine::pulse_of(&handle);
                        match known {
                            _ if pulse.peers > 0 => continue,
                            Some(known) if pulse.uploaded == known.uploaded => known,
                            _ => Idle {
                                since: now,
                                uploaded: pulse.uploaded,
                                refusals: 0,
                                retry_at: None,
                            },
                        }
                    }
                };
                if now.saturating_duration_since(seen.since) >= after
                    && seen.retry_at.is_none_or(|at| now >= at)
                {
                    due.push((seen.since, id));
                }
                kept.insert(id, seen);
            }
            // Only those idle now are remembered.
            *idle = kept;
        }
        if due.is_empty() && to_wake.is_empty() {
            self.repack_dormant();
            return;
        }
        // Seeds with a tracker a resume or the queue let go first: they stay in the engine
        // for their tracker session, and a user who resumed ten thousand waits for them.
        // (The longest due first in each kind.)
        let (mut tracked, mut announce_only): (Vec<_>, Vec<_>) =
            to_wake.into_iter().partition(|(tracker, ..)| *tracker);
        tracked.sort_unstable();
        tracked.truncate(MAX_PER_LOOK);
        // A few at a time: ten thousand seeds that slept together must not all wake at once
        // to announce on DHT.
        announce_only.sort_unstable();
        announce_only.truncate(WAKES_PER_LOOK);
        let tracked: Vec<TorrentId> = tracked.into_iter().map(|(.., id)| id).collect();
        let Some(mut woken) = self
            .wake_to_announce(&tracked, now, TRACKER_WAKES_BUDGET)
            .await
        else {
            return;
        };
        // The longest idle first, a bounded number per look and within a time budget, each
        // under the add lock on its own: requests, adds and the queue wait for one torrent
        // at most, never for thousands.
        due.sort_unstable();
        due.truncate(MAX_PER_LOOK);
        let mut slept = 0;
        for (idle_since, id) in due {
            if now.elapsed() >= LOOK_BUDGET {
                break;
            }
            let _adding = self.adding.lock().await;
            if self.is_stopping() {
                return;
            }
            if self.sleep_locked(id, idle_since).await {
                slept += 1;
            } else {
                self.refused_sleep(id, after);
            }
        }
        let announce_only: Vec<TorrentId> = announce_only.into_iter().map(|(.., id)| id).collect();
        let Some(announcing) = self
            .wake_to_announce(&announce_only, now, LOOK_BUDGET)
            .await
        else {
            return;
        };
        woken += announcing;
        if slept > 0 || woken > 0 {
            tracing::info!(slept, woken, "idle seeds out of the engine");
        }
        // Seeds that never stop falling asleep (thousands on DHT, each waking every 30
        // minutes) would keep the list growing: a chunk's worth is moved anyway.
        let waiting = self
            .sleeper
            .unpacked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if waiting >= REPACK_CHUNK {
            self.repack_dormant();
        }
    }

    /// Wakes the dormant seeds `to_wake` that are still due to announce, one under the add
    /// lock at a time, until `budget` since the look began (at `look`) is spent; how many
    /// it woke, or `None` if the broker is stopping.
    async fn wake_to_announce(
        self: &Arc<Self>,
        to_wake: &[TorrentId],
        look: Instant,
        budget: Duration,
    ) -> Option<usize> {
        let mut woken = 0;
        for &id in to_wake {
            if look.elapsed() >= budget {
                break;
            }
            let _adding = self.adding.lock().await;
            if self.is_stopping() {
                return None;
            }
            // Still due (not paused, queued, woken or gone meanwhile)?
            let due = self
                .state()
                .registry
                .get(id)
                .is_some_and(|entry| match &entry.life {
                    Life::Dormant(dormant) => due_to_announce(dormant, entry, Instant::now()),
                    _ => false,
                });
            if !due {
                continue;
            }
            woken += 1;
            if let Err(e) = self.wake_locked(id).await {
                tracing::warn!(torrent = %id, "cannot wake it to announce: {}", e.message);
            }
        }
        Some(woken)
    }

    /// Once seeds stop falling asleep (a look with none due), the entries of those that
    /// fell asleep since the last time are moved into fresh allocations, a chunk per hold
    /// of the state lock. Made while the seeds were added, among the engine's allocations
    /// for them, the entries held most of the pages the engine's freed state would give
    /// back; moved one by one as each slept, they landed beside the state of seeds still
    /// awake. Moved once all are out, a chunk's copies made before its originals are
    /// freed, they fill the oldest pages and leave the rest empty (`tp-bench many-seeds`,
    /// 2,000 and 10,000 seeds added then asleep: 3.3 KiB a seed; 4.7 when each copy was
    /// made as its original was freed, into the place the one before had left).
    fn repack_dormant(&self) {
        let mut slept = std::mem::take(
            &mut *self
                .sleeper
                .unpacked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // (A seed that slept, woke and slept again is named twice.)
        slept.sort_unstable();
        slept.dedup();
        let mut rest = &slept[..];
        while !rest.is_empty() {
            let moved_out = {
                let mut state = self.state();
                // Those asleep still (not woken, closed or added again meanwhile), as many
                // as one hold of the lock copies.
                let mut chunk = Vec::new();
                let mut paths = 0;
                while let Some((&id, more)) = rest.split_first() {
                    if chunk.len() >= REPACK_CHUNK || paths >= REPACK_PATHS {
                        break;
                    }
                    rest = more;
                    if let Some(entry) = state.registry.get(id) {
                        if matches!(entry.life, Life::Dormant(_)) {
                            paths += entry.files.len().min(crate::registry::REPACKED_FILES);
                            chunk.push(id);
                        }
                    }
                }
                state.registry.repack(&chunk)
            };
            // (Freed outside the lock.)
            drop(moved_out);
        }
    }

    /// A seed due that could not sleep (its files changed, a peer came, a request): tried
    /// again after a wait that doubles at each refusal, so that those that cannot sleep
    /// neither take every look nor stamp their files every few seconds.
    fn refused_sleep(&self, id: TorrentId, after: Duration) {
        let mut idle = self
            .sleeper
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = idle.get_mut(&id) {
            let back_off = after
                .saturating_mul(1 << seen.refusals.min(16))
                .min(MAX_BACK_OFF);
            seen.retry_at = Some(Instant::now() + back_off);
            seen.refusals = seen.refusals.saturating_add(1);
        }
    }

    /// A dormant seed the queue started or a resume let go, by its record (the caller
    /// changed it): idle from now, not from before it was held, and due to announce now,
    /// as one in the engine would on its start.
    pub(super) fn dormant_runs_again(&self, id: TorrentId) {
        if let Some(entry) = self.state().registry.get_mut(id) {
            if let Life::Dormant(dormant) = &mut entry.life {
                let now = Instant::now();
                dormant.idle_since = now;
                dormant.next_announce = dormant.next_announce.map(|_| now);
            }
        }
        self.dormant_changed(id);
    }

    /// Whether torrent `id`'s record holds it paused (a user's pause, a limit, the queue).
    fn record_paused(&self, id: TorrentId) -> bool {
        self.state()
            .registry
            .get(id)
            .is_some_and(|e| e.restore.engine_paused())
    }

    /// Marks a dormant seed's change (its record: paused, queued) for the board and its
    /// holders now; no engine tells of it.
    pub(super) fn dormant_changed(&self, id: TorrentId) {
        self.sync_board(id);
        self.woken.add(id);
        self.status_nudge.notify_one();
    }

    /// Takes one idle seed out of the engine (the caller holds the add lock); whether it
    /// did. Looked at again here: a peer, a reader or a request may have come meanwhile.
    async fn sleep_locked(self: &Arc<Self>, id: TorrentId, idle_since: Instant) -> bool {
        let reading = self.streams.reads(id);
        let handle = {
            let state = self.state();
            let Some(entry) = state.registry.get(id) else {
                return false;
            };
            let Life::Running(handle) = &entry.life else {
                return false;
            };
            if reading || !may_sleep(entry) {
                return false;
            }
            // (Let go by its record since it was looked at: it keeps its session.)
            if in_tracker_session(handle, entry) {
                return false;
            }
            handle.clone()
        };
        let status = crate::engine::status_of(id, "", &handle);
        if !matches!(status.state, TorrentState::Seeding | TorrentState::Paused)
            || !status.complete
            || crate::engine::peers_known(&handle) > 0
        {
            return false;
        }
        let tracker = has_tracker(&handle);
        let announces = self.announces(tracker, crate::engine::is_private(&handle));
        // Its files as they are now, its pieces true of them (as at a clean stop): the
        // wake's vouch holds only while they stay so. Not stamped (a file missing, or
        // changed by someone else since the engine hashed it): it stays in the engine, where
        // a read of a changed piece fails its hash, rather than shown complete out of it.
        let stamping = self.clone();
        let stamped = tokio::task::spawn_blocking(move || stamping.stamp_verified(id))
            .await
            .unwrap_or(false);
        if !stamped {
            return false;
        }
        // A peer or a reader that came while its files were stamped keeps it in.
        if self.streams.reads(id) || crate::engine::peers_known(&handle) > 0 {
            return false;
        }
        {
            let mut state = self.state();
            let Some(entry) = state.registry.get_mut(id) else {
                return false;
            };
            if !entry.life.is(&handle) {
                return false;
            }
            entry.life = Life::Dormant(Dormant {
                bytes: status.bytes_total,
                idle_since,
                next_announce: announces.then(|| Instant::now() + REANNOUNCE_EVERY),
                tracker,
            });
            // Held (paused, queued): its clocks stop now, as the seeding count would have
            // stopped them in the engine.
            if entry.restore.engine_paused() && entry.restore.seeding_since.is_some() {
                entry.restore.stop_clocks(crate::counts::now_ms());
            }
        }
        drop(handle);
        if let Err(e) = self.engine.stop_torrent(id).await {
            tracing::warn!(torrent = %id, "cannot take it out of the engine: {e:#}");
            // Still in the engine, as it was.
            if let Some(handle) = self.engine.handle(id) {
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.life = Life::Running(handle);
                }
            }
            return false;
        }
        self.sleeper
            .unpacked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        // What its run counted is done with: its next run (after a wake) counts afresh.
        self.seeding.forget_run(id);
        self.queue.forget_activity(id);
        self.sleeper
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        tracing::debug!(torrent = %id, "idle: out of the engine until something needs it");
        true
    }

    /// Whether a seed out of the engine has anything to announce (and so wakes to): to a
    /// tracker the engine announces to, or on DHT or LSD unless it is private (BEP 27).
    pub(super) fn announces(&self, tracker: bool, private: bool) -> bool {
        tracker || (!private && (self.config.dht || self.config.lsd))
    }

    /// Wakes a dormant seed for the engine's incoming connection of its info hash: its
    /// handle, or none (no such torrent, or it does not wake).
    pub async fn wake_for_peer(
        self: &Arc<Self>,
        info_hash: proto::InfoHash,
    ) -> Option<crate::engine::ManagedTorrentHandle> {
        let id = self
            .state()
            .registry
            .resolve(TorrentRef::InfoHash(info_hash))?;
        // In a task of its own: the engine may drop this future (its stop), and a wake
        // half done (in the engine, not in the registry) must not be left so.
        let service = self.clone();
        let wake = tokio::spawn(async move {
            // The peer waits for its handshake's answer: an add lock held long (a move's
            // copy) is not waited for past what the peer waits.
            let _adding = tokio::time::timeout(PEER_WAITS, service.adding.lock())
                .await
                .ok()?;
            if service.is_stopping() {
                return None;
            }
            service.wake_for_peer_locked(id).await
        });
        wake.await.ok().flatten()
    }

    async fn wake_for_peer_locked(
        self: &Arc<Self>,
        id: TorrentId,
    ) -> Option<crate::engine::ManagedTorrentHandle> {
        match self.life_of(TorrentRef::Id(id)).ok()? {
            (_, Life::Running(handle) | Life::Settling(handle)) => Some(handle),
            // Paused (by a user, a limit or the queue), it would refuse the peer in the
            // engine too: it stays out.
            (_, Life::Dormant(_)) if self.record_paused(id) => None,
            (_, Life::Dormant(_)) => match self.wake_locked(id).await {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(torrent = %id, "cannot wake it for a peer: {}", e.message);
                    None
                }
            },
            _ => None,
        }
    }

    /// Wakes dormant torrent `id` (the caller holds the add lock): added to the engine again
    /// as its record says, a resume the broker vouches for. Its handle (one running already
    /// is returned as it is). If the engine will not take it back, it is kept as a record
    /// not restored (shown in error, retried at the next start), as a failed restore.
    pub(super) async fn wake_locked(
        self: &Arc<Self>,
        id: TorrentId,
    ) -> Result<crate::engine::ManagedTorrentHandle, ProtoError> {
        if self.is_stopping() {
            return Err(ProtoError::engine("the broker is stopping"));
        }
        let (spec, idle_since) = match self.life_of(TorrentRef::Id(id))? {
            (_, Life::Running(handle) | Life::Settling(handle)) => return Ok(handle),
            (_, Life::Dormant(dormant)) => self
                .state()
                .registry
                .get(id)
                .map(|e| (e.restore.clone(), dormant.idle_since))
                .ok_or_else(|| super::gone(id))?,
            _ => return self.running(TorrentRef::Id(id)).map(|(_, handle)| handle),
        };
        // Read and checked as at a start: its .torrent, its folder and paths.
        let prepared = {
            let spec = spec.clone();
            let service = self.clone();
            tokio::task::spawn_blocking(move || service.prepare(id, &spec, &Default::default()))
                .await
                .map_err(|e| ProtoError::engine(format!("the wake's preparation failed: {e}")))?
        };
        let Prepared { checked, info, .. } = match prepared {
            Ok(prepared) => prepared,
            Err(failed) => {
                let (error, info, _) = *failed;
                return Err(self.lost_in_wake(id, info, spec, error.message));
            }
        };
        let added = self
            .engine_add_again(
                id,
                checked.bytes.clone(),
                &spec,
                true,
                checked.relative_paths(),
            )
            .await;
        match added {
            Ok(added) if added.id == id => {
                // Shown as it was (dormant, seeding) until its check ends: a vouched resume
                // reads nothing and ends at once; one whose files changed is shown checking
                // past the limit. What needs the engine then finds it live.
                let _ =
                    tokio::time::timeout(WAKE_CHECK_LIMIT, added.handle.wait_until_initialized())
                        .await;
                let held = {
                    let mut state = self.state();
                    state.registry.get_mut(id).map(|entry| {
                        entry.life = Life::Running(added.handle.clone());
                        entry.restore.engine_paused()
                    })
                };
                self.apply_recorded_rates(id, &added.handle);
                // Running, it stalls (and sleeps again) as it would have had it stayed in,
                // until it moves.
                if held == Some(false) {
                    self.queue.woke_idle(id, idle_since);
                    self.sleeper
                        .idle_since
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            id,
                            Idle {
                                since: idle_since,
                                uploaded: 0,
                                refusals: 0,
                                retry_at: None,
                            },
                        );
                }
                tracing::info!(torrent = %id, "woken: back in the engine");
                self.status_nudge.notify_one();
                Ok(added.handle)
            }
            Ok(added) => {
                let why = format!("the engine took it back as torrent {}", added.id);
                Err(self.lost_in_wake(id, info, spec, why))
            }
            Err(error) => Err(self.lost_in_wake(id, info, spec, error.message)),
        }
    }

    /// Gives a woken seed's handle the rates its record says now: one changed while it was
    /// added (a change that finds it dormant is recorded only), or while they were applied.
    fn apply_recorded_rates(&self, id: TorrentId, handle: &crate::engine::ManagedTorrentHandle) {
        let mut applied = None;
        // A change landing between the read and the setting is read at the next turn.
        for _ in 0..4 {
            let Some(rates) = self.recorded_rates(id).filter(|now| Some(*now) != applied) else {
                return;
            };
            crate::engine::set_torrent_limits(handle, Some(rates.download), Some(rates.upload));
            applied = Some(rates);
        }
    }

    /// A dormant seed the engine would not take back: kept as a record not restored (an
    /// ephemeral one never sleeps), its holders told it went.
    fn lost_in_wake(
        &self,
        id: TorrentId,
        info: proto::TorrentInfo,
        restore: crate::registry::RestoreSpec,
        why: String,
    ) -> ProtoError {
        tracing::error!(torrent = %id, "cannot bring it back into the engine: {why}");
        self.lose_to_unrestored(
            id,
            Some(info),
            restore,
            format!("out of the engine while idle, then could not start again: {why}"),
            format!("it could not start again: {why}"),
        );
        ProtoError::engine(format!("torrent {id} could not start again: {why}"))
    }
}
