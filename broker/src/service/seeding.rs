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

/// How often moving counts are saved with the records, at least.
const SAVE_EVERY: Duration = Duration::from_secs(60);

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
    /// When it was counted.
    at: Instant,
}

/// The broker's seeding limits, and what the counting remembers between looks.
pub struct Seeding {
    settings: Mutex<(SeedingLimits, SeedAction)>,
    runs: Mutex<HashMap<TorrentId, Run>>,
    /// When counts that moved were last saved.
    saved: Mutex<Instant>,
}

impl Seeding {
    /// Seeding with these limits and action.
    pub fn new(settings: (SeedingLimits, SeedAction)) -> Seeding {
        Seeding {
            settings: Mutex::new(settings),
            runs: Mutex::default(),
            saved: Mutex::new(Instant::now()),
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
        .is_some_and(|limit| restore.seeding_ms / 1000 >= limit)
    {
        return Some(SeedStop::SeedTime);
    }
    if limits
        .idle_secs
        .is_some_and(|limit| restore.idle_ms / 1000 >= limit)
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

    /// Counts what each running torrent moved and seeded since the last look (into its
    /// record), and stops those past a seeding limit. Called every second.
    pub(super) async fn count_and_limit_seeding(self: &Arc<Self>) {
        let now = Instant::now();
        let broker = self.seed_policy();
        let running: Vec<(TorrentId, engine::ManagedTorrentHandle)> = {
            let state = self.state();
            state
                .registry
                .iter()
                .filter_map(|(id, e)| match &e.life {
                    Life::Running(h) | Life::Settling(h) => Some((*id, h.clone())),
                    Life::Restarting | Life::Moving(_) => None,
                })
                .collect()
        };
        // The engine's counters, outside every lock.
        let counted: Vec<(TorrentId, engine::Transfer)> = running
            .iter()
            .filter_map(|(id, handle)| Some((*id, engine::transfer(handle)?)))
            .collect();
        let mut reached: Vec<(TorrentId, SeedStop)> = Vec::new();
        // Bytes moved (the board shows them at once), or only time counted (saved with
        // the rest, at least once a minute).
        let (mut moved, mut counted_any) = (false, false);
        {
            let mut runs = self.seeding.runs.lock().unwrap_or_else(|e| e.into_inner());
            let mut state = self.state();
            for (id, transfer) in &counted {
                let Some(entry) = state.registry.get_mut(*id) else {
                    continue;
                };
                let before = runs.get(id).filter(|run| run.run == transfer.run);
                let (up, down, step) = match before {
                    Some(run) => (
                        transfer.uploaded.saturating_sub(run.uploaded),
                        transfer.downloaded.saturating_sub(run.downloaded),
                        now.duration_since(run.at).min(MAX_STEP),
                    ),
                    // A new run: what it moved so far is news.
                    None => (transfer.uploaded, transfer.downloaded, Duration::ZERO),
                };
                let step = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
                let restore = &mut entry.restore;
                restore.uploaded_ever = restore.uploaded_ever.saturating_add(up);
                restore.downloaded_ever = restore.downloaded_ever.saturating_add(down);
                if transfer.complete {
                    restore.seeding_ms = restore.seeding_ms.saturating_add(step);
                    // Idle: seeding time since its last upload (recorded, so a restart
                    // does not start it again).
                    restore.idle_ms = match up {
                        0 => restore.idle_ms.saturating_add(step),
                        _ => 0,
                    };
                } else {
                    restore.idle_ms = 0;
                }
                moved |= up > 0 || down > 0;
                counted_any |= step > 0 && transfer.complete;
                runs.insert(
                    *id,
                    Run {
                        run: transfer.run,
                        uploaded: transfer.uploaded,
                        downloaded: transfer.downloaded,
                        at: now,
                    },
                );
                if !transfer.complete || restore.paused {
                    continue;
                }
                let limits = restore.seed_limits(&broker);
                if let Some(stop) = reached_limit(restore, &limits, transfer.have) {
                    reached.push((*id, stop));
                }
            }
            let live: std::collections::HashSet<TorrentId> =
                counted.iter().map(|(id, _)| *id).collect();
            runs.retain(|id, _| live.contains(id));
        }
        if moved {
            self.status_nudge.notify_one();
        }
        if moved || counted_any {
            let mut saved = self.seeding.saved.lock().unwrap_or_else(|e| e.into_inner());
            if saved.elapsed() >= SAVE_EVERY {
                *saved = Instant::now();
                drop(saved);
                let _ = self.save_registry();
            }
        }
        if !reached.is_empty() {
            self.stop_seeding(reached).await;
        }
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
        let pausing: Vec<(TorrentId, engine::ManagedTorrentHandle, SeedStop)> = {
            let mut state = self.state();
            reached
                .into_iter()
                .filter_map(|(id, stop)| {
                    let entry = state.registry.get_mut(id)?;
                    // Paused meanwhile (by hand), or being added again: left as it is.
                    let Life::Running(handle) = &entry.life else {
                        return None;
                    };
                    if entry.restore.paused {
                        return None;
                    }
                    let handle = handle.clone();
                    entry.restore.paused = true;
                    entry.restore.queued = false;
                    entry.restore.stopped_by = Some(stop);
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
            let still = reached_limit(&fresh, &limits, have) == Some(stop);
            (stop, still && stop != SeedStop::Idle)
        };
        let (stop, lifted) = lift;
        self.update_record(id, |restore| {
            restore.stopped_by = None;
            restore.idle_ms = 0;
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
