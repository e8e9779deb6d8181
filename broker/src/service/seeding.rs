//! Seeding limits (DESIGN §13): a finished torrent stops seeding once it uploaded a ratio
//! of what it downloaded, once it seeded a while in all, or once it sat idle a while; it is
//! then paused (or closed, its data kept). Each limit is the broker's, or the torrent's
//! own (`SetSeeding`). The counts they need (bytes moved and time seeded, in all) are the
//! broker's own: librqbit's start again at each resume. They are taken every second from
//! each running torrent and recorded with it (saved with the records, at least once a
//! minute while they move, and at a clean stop).
//!
//! As in transmission, a torrent paused by a limit and resumed by hand seeds on: the limit
//! it reached is lifted for it (its own limit becomes "none").

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
    /// When it last uploaded a byte while complete (or became complete, or started).
    active: Instant,
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

/// A ratio limit the broker keeps: above 0, finite.
fn check_ratio(ratio: f64) -> Result<f64, ProtoError> {
    if ratio.is_finite() && ratio > 0.0 && ratio <= 1e6 {
        Ok(ratio)
    } else {
        Err(ProtoError::bad_request(format!(
            "a ratio limit of {ratio} is not a number above 0 (up to a million)"
        )))
    }
}

/// A time limit the broker keeps: at least a second.
fn check_secs(secs: u64, what: &str) -> Result<u64, ProtoError> {
    if secs == 0 {
        Err(ProtoError::bad_request(format!(
            "a {what} limit must be at least a second (none lifts it)"
        )))
    } else {
        Ok(secs)
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
                    "a torrent's own seeding limits are changed through `own`; the broker's, with no torrent named",
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
        let broker = self.seeding.limits();
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
        let broker = self.seeding.limits();
        let running: Vec<(TorrentId, engine::ManagedTorrentHandle)> = {
            let state = self.state();
            state
                .registry
                .iter()
                .filter_map(|(id, e)| match &e.life {
                    Life::Running(h) | Life::Settling(h) => Some((*id, h.clone())),
                    Life::Restarting => None,
                })
                .collect()
        };
        // The engine's counters, outside every lock.
        let counted: Vec<(TorrentId, engine::Transfer)> = running
            .iter()
            .filter_map(|(id, handle)| Some((*id, engine::transfer(handle)?)))
            .collect();
        let mut reached: Vec<(TorrentId, SeedStop)> = Vec::new();
        let mut moved = false;
        {
            let mut runs = self.seeding.runs.lock().unwrap_or_else(|e| e.into_inner());
            let mut state = self.state();
            for (id, transfer) in &counted {
                let Some(entry) = state.registry.get_mut(*id) else {
                    continue;
                };
                let before = runs.get(id).filter(|run| run.run == transfer.run);
                let (up, down, step, active) = match before {
                    Some(run) => (
                        transfer.uploaded.saturating_sub(run.uploaded),
                        transfer.downloaded.saturating_sub(run.downloaded),
                        now.duration_since(run.at).min(MAX_STEP),
                        run.active,
                    ),
                    // A new run: what it moved so far is news; its idle time starts now.
                    None => (transfer.uploaded, transfer.downloaded, Duration::ZERO, now),
                };
                // Idle counts only while seeding, from the last upload or the completion.
                let active = if up > 0 || !transfer.complete {
                    now
                } else {
                    active
                };
                let restore = &mut entry.restore;
                restore.uploaded_ever = restore.uploaded_ever.saturating_add(up);
                restore.downloaded_ever = restore.downloaded_ever.saturating_add(down);
                if transfer.complete {
                    let step = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
                    restore.seeding_ms = restore.seeding_ms.saturating_add(step);
                }
                moved |= up > 0 || down > 0;
                runs.insert(
                    *id,
                    Run {
                        run: transfer.run,
                        uploaded: transfer.uploaded,
                        downloaded: transfer.downloaded,
                        at: now,
                        active,
                    },
                );
                if !transfer.complete || restore.paused {
                    continue;
                }
                let limits = restore.seed_limits(&broker);
                let size = entry.info.total_bytes;
                let base = if restore.downloaded_ever > 0 {
                    restore.downloaded_ever
                } else {
                    size
                };
                let ratio_reached = limits.ratio.is_some_and(|limit| {
                    base > 0 && restore.uploaded_ever as f64 >= limit * base as f64
                });
                let stop = if ratio_reached {
                    Some(SeedStop::Ratio)
                } else if limits
                    .seed_time_secs
                    .is_some_and(|limit| restore.seeding_ms / 1000 >= limit)
                {
                    Some(SeedStop::SeedTime)
                } else if limits
                    .idle_secs
                    .is_some_and(|limit| now.duration_since(active).as_secs() >= limit)
                {
                    Some(SeedStop::Idle)
                } else {
                    None
                };
                if let Some(stop) = stop {
                    reached.push((*id, stop));
                }
            }
            let live: std::collections::HashSet<TorrentId> =
                counted.iter().map(|(id, _)| *id).collect();
            runs.retain(|id, _| live.contains(id));
        }
        if moved {
            self.status_nudge.notify_one();
            let mut saved = self.seeding.saved.lock().unwrap_or_else(|e| e.into_inner());
            if saved.elapsed() >= SAVE_EVERY {
                *saved = Instant::now();
                drop(saved);
                let _ = self.save_registry();
            }
        }
        for (id, stop) in reached {
            self.stop_seeding(id, stop).await;
        }
    }

    /// Pauses (or closes) a torrent past a seeding limit, as the broker's action says.
    async fn stop_seeding(self: &Arc<Self>, id: TorrentId, stop: SeedStop) {
        match self.seeding.action() {
            SeedAction::Pause => {
                if let Err(e) = self.pause(TorrentRef::Id(id)).await {
                    tracing::warn!(torrent = %id, "past its {} limit, but cannot pause: {e}", stop.as_str());
                    return;
                }
                if let Err(e) = self.update_record(id, |restore| restore.stopped_by = Some(stop)) {
                    tracing::warn!(torrent = %id, "cannot record why it paused: {e}");
                }
                tracing::info!(torrent = %id, "paused: it reached its {} limit", stop.as_str());
            }
            SeedAction::Close => {
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
        }
    }

    /// A torrent resumed by hand after a seeding limit paused it seeds on: that limit is
    /// lifted for it (its own becomes "none"), as transmission does. Before the resume.
    pub(super) fn lift_reached_limit(&self, id: TorrentId) -> Result<(), ProtoError> {
        let stop = self
            .state()
            .registry
            .get(id)
            .and_then(|e| e.restore.stopped_by);
        let Some(stop) = stop else {
            return Ok(());
        };
        self.update_record(id, |restore| {
            restore.stopped_by = None;
            match stop {
                SeedStop::Ratio => restore.seeding.ratio = Some(SeedLimit::Unlimited),
                SeedStop::SeedTime => restore.seeding.seed_time_secs = Some(SeedLimit::Unlimited),
                SeedStop::Idle => restore.seeding.idle_secs = Some(SeedLimit::Unlimited),
            }
        })?;
        tracing::info!(torrent = %id, "resumed by hand: its {} limit is lifted for it", stop.as_str());
        Ok(())
    }
}
