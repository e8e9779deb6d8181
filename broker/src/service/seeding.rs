//! Seeding limits (DESIGN §13): a finished torrent stops seeding once it uploaded a ratio
//! of what it downloaded, once it seeded a while in all, or once it sat idle a while; it is
//! then paused (or closed, its data kept). Each limit is the broker's, or the torrent's
//! own (`SetSeeding`). The counts they need (bytes moved and time seeded, in all) are the
//! broker's own: librqbit's start again at each resume. They are taken every second from
//! each running torrent and recorded with it (saved with the records, at least once a
//! minute while they move, and at a clean stop).
//!
//! As in transmission, a torrent paused by a limit and resumed by hand seeds on: a ratio or
//! seeding-time limit it still meets is lifted for it (its own becomes "none"), and an idle
//! limit counts again from the resume.

use super::Service;
use crate::engine;
use crate::registry::Life;
use crate::settings::RunSettings;
use proto::{
    OwnSeedingChange, ProtoError, SeedAction, SeedLimit, SeedingLimits, SetSeeding, TorrentId,
    TorrentRef,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often counts that move are saved, at least.
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// The time between two ticks, as a gap longer than [`MAX_STEP`] counts it.
const TICK_STEP: Duration = Duration::from_secs(1);

/// Longest time one look counts as seeded (a broker stopped by SIGSTOP, or a machine
/// asleep, did not seed meanwhile).
const MAX_STEP: Duration = Duration::from_secs(5);

/// Which limit stopped a torrent (recorded: a resume by hand lifts that one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedStop {
    /// Its ratio.
    Ratio,
    /// Its seeding time.
    SeedTime,
    /// Its idle time.
    Idle,
}

impl SeedStop {
    fn as_str(self) -> &'static str {
        match self {
            SeedStop::Ratio => "ratio",
            SeedStop::SeedTime => "seeding time",
            SeedStop::Idle => "idle seeding time",
        }
    }
}

/// One run of a torrent, as last counted.
struct Run {
    /// Which run (a new one at each resume).
    run: usize,
    uploaded: u64,
    downloaded: u64,
    /// Bytes verified.
    have: u64,
}

/// When the counts are due to be saved.
struct CountsDue {
    /// When they were last saved.
    saved_at: Instant,
    /// A clock started or stopped since (or this is the start: records read, none written).
    changed: bool,
    /// Bytes moved since.
    moved: bool,
    /// The last tick.
    last_tick: Option<Instant>,
}

/// The broker's seeding limits, and what the counting remembers between looks.
pub struct Seeding {
    settings: Mutex<(SeedingLimits, SeedAction)>,
    runs: Mutex<HashMap<TorrentId, Run>>,
    due: Mutex<CountsDue>,
}

impl Seeding {
    /// Forgets torrent `id`'s run (it left the engine: its next run counts afresh, whatever
    /// address the engine's new state gets).
    pub(super) fn forget_run(&self, id: TorrentId) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Seeding with these limits and action.
    pub fn new(settings: (SeedingLimits, SeedAction)) -> Seeding {
        Seeding {
            settings: Mutex::new(settings),
            runs: Mutex::default(),
            due: Mutex::new(CountsDue {
                saved_at: Instant::now(),
                changed: true,
                moved: false,
                last_tick: None,
            }),
        }
    }

    /// The broker's limits.
    pub fn limits(&self) -> SeedingLimits {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// What is done past a limit.
    pub fn action(&self) -> SeedAction {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// The limit a seeding torrent has reached, if any: its ratio (uploaded over downloaded,
/// or over what it has when it downloaded nothing, as `TorrentStatus::ratio`), its
/// seeding time, its idle time.
fn reached_limit(
    restore: &crate::registry::RestoreSpec,
    limits: &SeedingLimits,
    have: u64,
    now: u64,
) -> Option<SeedStop> {
    let base = match restore.downloaded_ever {
        0 => have,
        downloaded => downloaded,
    };
    let ratio = limits
        .ratio
        .is_some_and(|limit| base > 0 && restore.uploaded_ever as f64 >= limit * base as f64);
    if ratio {
        return Some(SeedStop::Ratio);
    }
    if limits
        .seed_time_secs
        .is_some_and(|limit| restore.seeding_ms_at(now) / 1000 >= limit)
    {
        return Some(SeedStop::SeedTime);
    }
    if limits
        .idle_secs
        .is_some_and(|limit| restore.idle_ms_at(now) / 1000 >= limit)
    {
        return Some(SeedStop::Idle);
    }
    None
}

/// A ratio limit the broker keeps: above 0, finite.
fn check_ratio(ratio: f64) -> Result<f64, ProtoError> {
    match proto::valid_ratio_limit(ratio) {
        true => Ok(ratio),
        false => Err(ProtoError::bad_request(
            "a ratio limit is a number from 0.001 to a million (none lifts it)",
        )),
    }
}

/// A time limit the broker keeps: a second to a century.
fn check_secs(secs: u64, what: &str) -> Result<u64, ProtoError> {
    match proto::valid_seed_secs(secs) {
        true => Ok(secs),
        false => Err(ProtoError::bad_request(format!(
            "a {what} limit is a second to a century (none lifts it)"
        ))),
    }
}

/// A torrent's own limits as an add gives them: each one the broker keeps.
pub(super) fn check_own(own: &proto::TorrentSeeding) -> Result<(), ProtoError> {
    if let Some(SeedLimit::At(ratio)) = own.ratio {
        check_ratio(ratio)?;
    }
    if let Some(SeedLimit::At(secs)) = own.seed_time_secs {
        check_secs(secs, "seeding time")?;
    }
    if let Some(SeedLimit::At(secs)) = own.idle_secs {
        check_secs(secs, "idle seeding")?;
    }
    Ok(())
}

impl Service {
    /// Changes seeding limits: the broker's (recorded in `settings.json`) or a torrent's
    /// own (recorded with it); returns those in force (for a torrent, its own where it has
    /// them and the broker's elsewhere) and the action.
    pub fn set_seeding(
        &self,
        change: SetSeeding,
    ) -> Result<(SeedingLimits, SeedAction), ProtoError> {
        let broker = change.ratio.is_some()
            || change.seed_time_secs.is_some()
            || change.idle_secs.is_some()
            || change.action.is_some();
        if let Some(torrent) = change.torrent {
            if broker {
                return Err(ProtoError::bad_request(
                    "with a torrent named, its own limits change; the broker's limits and the action past one are for all torrents: name no torrent",
                ));
            }
            return self.set_own_seeding(torrent, change.own);
        }
        if change.own != OwnSeedingChange::default() {
            return Err(ProtoError::bad_request(
                "`own` seeding limits need a torrent named",
            ));
        }
        if let Some(Some(ratio)) = change.ratio {
            check_ratio(ratio)?;
        }
        if let Some(Some(secs)) = change.seed_time_secs {
            check_secs(secs, "seeding time")?;
        }
        if let Some(Some(secs)) = change.idle_secs {
            check_secs(secs, "idle seeding")?;
        }
        if !broker {
            return Ok((self.seeding.limits(), self.seeding.action()));
        }
        let mut recorded = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let next = RunSettings {
            ratio_limit: change.ratio.or(recorded.ratio_limit),
            seed_time_limit_secs: change.seed_time_secs.or(recorded.seed_time_limit_secs),
            idle_seed_limit_secs: change.idle_secs.or(recorded.idle_seed_limit_secs),
            seed_limit_action: change.action.or(recorded.seed_limit_action),
            ..*recorded
        };
        next.save(&self.config.state_dir).map_err(|e| {
            ProtoError::io(format!(
                "cannot record the seeding limits in {} ({e}): nothing changed",
                RunSettings::path(&self.config.state_dir).display()
            ))
        })?;
        *recorded = next;
        let now = {
            let mut settings = self
                .seeding
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (limits, action) = &mut *settings;
            if let Some(ratio) = change.ratio {
                limits.ratio = ratio;
            }
            if let Some(secs) = change.seed_time_secs {
                limits.seed_time_secs = secs;
            }
            if let Some(secs) = change.idle_secs {
                limits.idle_secs = secs;
            }
            if let Some(new) = change.action {
                *action = new;
            }
            *settings
        };
        tracing::info!(limits = ?now.0, action = now.1.as_str(), "seeding limits changed");
        // Every line shows the limits in force, on the board before the reply; their
        // holders hear of it when the status loop looks at every torrent, asleep or not.
        let all: Vec<TorrentId> = {
            let mut state = self.state();
            state.registry.touch_all();
            state.registry.iter().map(|(id, _)| *id).collect()
        };
        for id in all {
            self.sync_board(id);
        }
        self.status_nudge.notify_one();
        Ok(now)
    }

    /// A torrent's own seeding limits, recorded with it.
    fn set_own_seeding(
        &self,
        torrent: TorrentRef,
        change: OwnSeedingChange,
    ) -> Result<(SeedingLimits, SeedAction), ProtoError> {
        let id = self.resolve(torrent)?;
        check_own(&proto::TorrentSeeding {
            ratio: change.ratio.flatten(),
            seed_time_secs: change.seed_time_secs.flatten(),
            idle_secs: change.idle_secs.flatten(),
        })?;
        if change != OwnSeedingChange::default() {
            self.update_record(id, |restore| {
                if let Some(ratio) = change.ratio {
                    restore.seeding.ratio = ratio;
                }
                if let Some(secs) = change.seed_time_secs {
                    restore.seeding.seed_time_secs = secs;
                }
                if let Some(secs) = change.idle_secs {
                    restore.seeding.idle_secs = secs;
                }
            })?;
            tracing::info!(torrent = %id, ?change, "the torrent's seeding limits changed");
            self.status_nudge.notify_one();
        }
        let broker = self.seed_policy();
        let limits = self
            .state()
            .registry
            .get(id)
            .map(|e| e.restore.seed_limits(&broker))
            .ok_or_else(|| super::gone(id))?;
        Ok((limits, self.seeding.action()))
    }

    /// Counts what each running torrent moved since the last look (into its record's
    /// counts), starts and stops the clocks that count seeding and idle time, stops those
    /// past a seeding limit, and saves every torrent's counts ([`crate::counts`]) when due.
    /// Called every second. An idle seed changes nothing here: its clocks run.
    pub(super) async fn count_and_limit_seeding(self: &Arc<Self>) {
        let now = Instant::now();
        let wall = crate::counts::now_ms();
        let broker = self.seed_policy();
        // A broker stopped (SIGSTOP) or a machine asleep did not seed meanwhile.
        let skipped = {
            let mut due = self.seeding.due.lock().unwrap_or_else(|e| e.into_inner());
            let gap = due
                .last_tick
                .map_or(Duration::ZERO, |at| now.duration_since(at));
            due.last_tick = Some(now);
            (gap > MAX_STEP).then(|| u64::try_from((gap - TICK_STEP).as_millis()).unwrap_or(0))
        };
        // Only torrents awake can have moved bytes or started or stopped seeding (the status
        // loop keeps them awake a while after any change): the engine is asked about those.
        // Seeds asleep are only checked against their limits, by their clocks.
        let awake = self.awake.now();
        let mut reached: Vec<(TorrentId, SeedStop)> = Vec::new();
        // Whether any clock runs (the counts are then due once a minute), seen on the way.
        let mut clocks_running = false;
        let running: Vec<(TorrentId, engine::ManagedTorrentHandle)> = {
            let mut state = self.state();
            // The gap comes off every running clock, asleep or awake.
            if let Some(skip) = skipped {
                let clocked: Vec<TorrentId> = state
                    .registry
                    .iter()
                    .filter(|(_, e)| e.restore.seeding_since.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                for id in clocked {
                    if let Some(entry) = state.registry.get_mut(id) {
                        let r = &mut entry.restore;
                        r.seeding_since = r.seeding_since.map(|t| t.saturating_add(skip).min(wall));
                        r.idle_since = r.idle_since.map(|t| t.saturating_add(skip).min(wall));
                    }
                }
            }
            let mut running = Vec::with_capacity(awake.len());
            let mut stopped = Vec::new();
            let runs = self.seeding.runs.lock().unwrap_or_else(|e| e.into_inner());
            for (id, e) in state.registry.iter() {
                clocks_running |= e.restore.seeding_since.is_some();
                match &e.life {
                    Life::Running(h) | Life::Settling(h) if awake.contains(id) => {
                        running.push((*id, h.clone()))
                    }
                    Life::Running(_) | Life::Settling(_) | Life::Dormant(_) => {
                        let r = &e.restore;
                        if r.seeding_since.is_none() || r.paused {
                            continue;
                        }
                        let have = match &e.life {
                            Life::Dormant(dormant) => dormant.bytes,
                            _ => runs.get(id).map_or(e.info.total_bytes, |run| run.have),
                        };
                        if let Some(stop) = reached_limit(r, &r.seed_limits(&broker), have, wall) {
                            reached.push((*id, stop));
                        }
                    }
                    Life::Restarting | Life::Moving(_) if e.restore.seeding_since.is_some() => {
                        stopped.push(*id)
                    }
                    Life::Restarting | Life::Moving(_) => {}
                }
            }
            drop(runs);
            for id in stopped {
                if let Some(entry) = state.registry.get_mut(id) {
                    entry.restore.stop_clocks(wall);
                }
            }
            running
        };
        // The engine's counters, outside every lock.
        let counted: Vec<(
            TorrentId,
            &engine::ManagedTorrentHandle,
            Option<engine::Transfer>,
        )> = running
            .iter()
            .map(|(id, handle)| (*id, handle, engine::transfer(handle)))
            .collect();
        // Bytes moved (the board shows them at once), or a clock started or stopped.
        let (mut moved, mut clocks_changed) = (false, false);
        {
            let mut runs = self.seeding.runs.lock().unwrap_or_else(|e| e.into_inner());
            let mut state = self.state();
            for (id, handle, transfer) in &counted {
                // Out of the engine since it was read (the sleeper runs apart), or added
                // again: what was read is of a run that is over.
                match state.registry.get_mut(*id) {
                    Some(entry) if entry.life.is(handle) => {}
                    // Asleep held (paused, queued): its clocks stop, as they would have here.
                    Some(entry)
                        if matches!(entry.life, Life::Dormant(_))
                            && entry.restore.engine_paused()
                            && entry.restore.seeding_since.is_some() =>
                    {
                        entry.restore.stop_clocks(wall);
                        clocks_changed = true;
                        continue;
                    }
                    _ => continue,
                }
                // Paused in the engine: its clocks stop.
                let Some(transfer) = transfer else {
                    runs.remove(id);
                    let counting = state
                        .registry
                        .get(*id)
                        .is_some_and(|e| e.restore.seeding_since.is_some());
                    if counting {
                        if let Some(entry) = state.registry.get_mut(*id) {
                            entry.restore.stop_clocks(wall);
                            clocks_changed = true;
                        }
                    }
                    continue;
                };
                let before = runs.get(id).filter(|run| run.run == transfer.run);
                let (up, down) = match before {
                    Some(run) => (
                        transfer.uploaded.saturating_sub(run.uploaded),
                        transfer.downloaded.saturating_sub(run.downloaded),
                    ),
                    // A new run: what it moved so far is news.
                    None => (transfer.uploaded, transfer.downloaded),
                };
                runs.insert(
                    *id,
                    Run {
                        run: transfer.run,
                        uploaded: transfer.uploaded,
                        downloaded: transfer.downloaded,
                        have: transfer.have,
                    },
                );
                // Only what changes takes the entry to change (a change marks it for the
                // status loop): an idle seed is only read.
                let Some(entry) = state.registry.get(*id) else {
                    continue;
                };
                let r = &entry.restore;
                let seeding = transfer.complete;
                let change = up > 0
                    || down > 0
                    || seeding != r.seeding_since.is_some()
                    || (!seeding && r.idle_ms != 0);
                if change {
                    let Some(entry) = state.registry.get_mut(*id) else {
                        continue;
                    };
                    let r = &mut entry.restore;
                    r.uploaded_ever = r.uploaded_ever.saturating_add(up);
                    r.downloaded_ever = r.downloaded_ever.saturating_add(down);
                    moved |= up > 0 || down > 0;
                    if seeding && r.seeding_since.is_none() {
                        r.start_clocks(wall);
                        clocks_changed = true;
                    } else if !seeding && r.seeding_since.is_some() {
                        r.stop_clocks(wall);
                        clocks_changed = true;
                    }
                    if !seeding {
                        r.idle_ms = 0;
                    } else if up > 0 {
                        // Idle: seeding time since its last upload.
                        r.idle_ms = 0;
                        r.idle_since = Some(wall);
                    }
                }
                let Some(entry) = state.registry.get(*id) else {
                    continue;
                };
                let r = &entry.restore;
                if !seeding || r.paused {
                    continue;
                }
                let limits = r.seed_limits(&broker);
                if let Some(stop) = reached_limit(r, &limits, transfer.have, wall) {
                    reached.push((*id, stop));
                }
            }
            // (Runs of torrents asleep are kept: what they moved is counted from there.)
            if runs.len() > state.registry.len() {
                runs.retain(|id, _| state.registry.get(*id).is_some());
            }
        }
        if moved {
            self.status_nudge.notify_one();
        }
        self.save_counts_when_due(moved, clocks_changed, clocks_running)
            .await;
        if !reached.is_empty() {
            self.stop_seeding(reached).await;
        }
    }

    /// Saves every torrent's counts ([`crate::counts`]): soon after a clock started or
    /// stopped (and at the first tick), and at least once a minute while bytes move or
    /// clocks run. One write of one file, however many torrents.
    async fn save_counts_when_due(
        self: &Arc<Self>,
        moved: bool,
        clocks_changed: bool,
        running: bool,
    ) {
        let now = Instant::now();
        {
            let mut due = self.seeding.due.lock().unwrap_or_else(|e| e.into_inner());
            due.changed |= clocks_changed;
            due.moved |= moved;
            let minute = now.duration_since(due.saved_at) >= SAVE_EVERY;
            if !(due.changed || (minute && (due.moved || running))) {
                return;
            }
            due.changed = false;
            due.moved = false;
            due.saved_at = now;
        }
        let saving = self.clone();
        let saved = tokio::task::spawn_blocking(move || saving.save_counts()).await;
        if let Ok(Err(why)) = saved {
            tracing::warn!("what the torrents moved and seeded is not saved: {why}");
            // Tried again at the next tick.
            self.seeding
                .due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .changed = true;
        }
    }

    /// Writes every torrent's counts now (also at a clean stop).
    pub(crate) fn save_counts(&self) -> std::io::Result<()> {
        let counts = {
            let state = self.state();
            crate::counts::Counts::of(crate::counts::now_ms(), state.registry.counted())
        };
        counts.save(&self.config.state_dir)
    }

    /// Pauses (or closes) the torrents past a seeding limit, as the broker's action says:
    /// paused all at once, under the add lock, with one save of the records (each with the
    /// limit that paused it).
    async fn stop_seeding(self: &Arc<Self>, reached: Vec<(TorrentId, SeedStop)>) {
        if self.seeding.action() == SeedAction::Close {
            for (id, stop) in reached {
                let close = proto::CloseTorrent {
                    torrent: TorrentRef::Id(id),
                    delete_data: false,
                    force: true,
                };
                let why = format!("it reached its {} limit", stop.as_str());
                match self.close_for(super::POLICY, close, Some(&why)).await {
                    Ok(_) => tracing::info!(torrent = %id, "closed: {why}"),
                    Err(e) => tracing::warn!(torrent = %id, "{why}, but cannot close: {e}"),
                }
            }
            return;
        }
        let _adding = self.adding.lock().await;
        // A dormant seed is paused by its record alone (its wake adds it paused): a limit
        // reached by thousands of sleeping seeds at once wakes none of them.
        let pausing: Vec<(TorrentId, Option<engine::ManagedTorrentHandle>, SeedStop)> = {
            let mut state = self.state();
            reached
                .into_iter()
                .filter_map(|(id, stop)| {
                    let entry = state.registry.get_mut(id)?;
                    // Paused meanwhile (by hand), or being added again: left as it is.
                    let handle = match &entry.life {
                        Life::Running(handle) => Some(handle.clone()),
                        Life::Dormant(_) => None,
                        _ => return None,
                    };
                    if entry.restore.paused {
                        return None;
                    }
                    entry.restore.paused = true;
                    entry.restore.queued = false;
                    entry.restore.stopped_by = Some(stop);
                    entry.restore.stop_clocks(crate::counts::now_ms());
                    Some((id, handle, stop))
                })
                .collect()
        };
        if pausing.is_empty() {
            return;
        }
        if let Err(why) = self.save_registry() {
            tracing::warn!("the seeding limits' pauses are not recorded: {why}");
        }
        for (id, handle, stop) in pausing {
            let Some(handle) = handle else {
                tracing::info!(torrent = %id, "paused out of the engine: it reached its {} limit", stop.as_str());
                self.dormant_changed(id);
                continue;
            };
            match self.engine.pause(&handle).await {
                Ok(engine::Applied::Now) => {
                    tracing::info!(torrent = %id, "paused: it reached its {} limit", stop.as_str())
                }
                Ok(engine::Applied::AfterCheck) => self.settle_after_check(id, handle),
                Err(e) => {
                    tracing::warn!(torrent = %id, "past its {} limit, but cannot pause: {e}", stop.as_str())
                }
            }
        }
        self.status_nudge.notify_one();
        self.queue.nudge();
    }

    /// A torrent resumed by hand after a seeding limit paused it seeds on, as in
    /// transmission: a ratio or seeding-time limit it still meets is lifted for it (its own
    /// becomes "none"; one raised since is kept); its idle time starts again. Before the
    /// resume.
    pub(super) fn lift_reached_limit(&self, id: TorrentId) -> Result<(), ProtoError> {
        let broker = self.seed_policy();
        let lift = {
            let state = self.state();
            let Some(entry) = state.registry.get(id) else {
                return Ok(());
            };
            let Some(stop) = entry.restore.stopped_by else {
                return Ok(());
            };
            let limits = entry.restore.seed_limits(&broker);
            let have = entry.info.total_bytes;
            let mut fresh = entry.restore.clone();
            fresh.idle_ms = 0;
            fresh.idle_since = None;
            let now = crate::counts::now_ms();
            let still = reached_limit(&fresh, &limits, have, now) == Some(stop);
            (stop, still && stop != SeedStop::Idle)
        };
        let (stop, lifted) = lift;
        self.update_record(id, |restore| {
            restore.stopped_by = None;
            restore.idle_ms = 0;
            restore.idle_since = restore.idle_since.map(|_| crate::counts::now_ms());
            if lifted {
                match stop {
                    SeedStop::Ratio => restore.seeding.ratio = Some(SeedLimit::Unlimited),
                    SeedStop::SeedTime => {
                        restore.seeding.seed_time_secs = Some(SeedLimit::Unlimited)
                    }
                    SeedStop::Idle => {}
                }
            }
        })?;
        match lifted {
            true => {
                tracing::info!(torrent = %id, "resumed by hand: its {} limit is lifted for it", stop.as_str())
            }
            false => {
                tracing::info!(torrent = %id, "resumed by hand after its {} limit: it seeds until a limit in force is reached", stop.as_str())
            }
        }
        Ok(())
    }
}
