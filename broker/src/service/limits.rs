//! Rate limits changed while the broker runs (`SetLimits`): its own for all torrents, or
//! one torrent's. Recorded first (`settings.json`, see [`crate::settings`]; or the
//! torrent's record), then applied, so a restart keeps what the user set and a record that
//! cannot be written changes nothing.

use super::Service;
use crate::engine;
use crate::settings::RunSettings;
use proto::{AltChange, AltSpeed, ProtoError, RateLimits, SetLimits, TorrentRef};
use std::num::NonZeroU32;
use std::sync::Mutex;

/// The broker's usual rate limits and its alternative ones (the engine keeps whichever are
/// on), and whether the schedule was last found inside its hours.
pub struct BrokerRates {
    state: Mutex<RatesState>,
}

struct RatesState {
    usual: RateLimits,
    alt: AltSpeed,
    /// Inside the schedule's hours at the last look (`None`: not looked yet).
    inside: Option<bool>,
}

impl BrokerRates {
    /// The usual limits `usual`, and the alternative ones as recorded.
    pub fn new(usual: RateLimits, recorded: &RunSettings) -> BrokerRates {
        let none_if_zero = |rate: Option<u64>| rate.filter(|&r| r != 0);
        BrokerRates {
            state: Mutex::new(RatesState {
                usual,
                alt: AltSpeed {
                    download: none_if_zero(recorded.alt_download_rate),
                    upload: none_if_zero(recorded.alt_upload_rate),
                    schedule: recorded.alt_schedule.flatten(),
                    hours: recorded.alt_hours.or(recorded.alt_schedule.flatten()),
                    on: recorded.alt_on.unwrap_or(false),
                },
                inside: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RatesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The usual limits and the alternative ones.
    pub fn get(&self) -> (RateLimits, AltSpeed) {
        let state = self.state();
        (state.usual, state.alt)
    }
}

/// The engine's limits for these settings: the alternative ones while on.
fn in_force(usual: RateLimits, alt: AltSpeed) -> (Option<NonZeroU32>, Option<NonZeroU32>) {
    let (download, upload) = match alt.on {
        true => (alt.download, alt.upload),
        false => (usual.download, usual.upload),
    };
    let engine = |rate: Option<u64>| {
        rate.and_then(|r| u32::try_from(r).ok())
            .and_then(NonZeroU32::new)
    };
    (engine(download), engine(upload))
}

/// The broker's local weekday (0 Monday) and minute after midnight now.
fn local_now() -> (u8, u16) {
    use chrono::{Datelike, Timelike};
    let now = chrono::Local::now();
    let weekday = now.weekday().num_days_from_monday() as u8;
    let minute = (now.hour() * 60 + now.minute()) as u16;
    (weekday, minute)
}

impl Service {
    /// Sets the limits `change` names (`0`: none) and returns those set (the broker's usual
    /// ones with its alternative ones, or a torrent's own); with nothing to change, only
    /// returns them.
    pub fn set_limits(
        &self,
        change: SetLimits,
    ) -> Result<(RateLimits, Option<AltSpeed>), ProtoError> {
        let download = change.download.map(|r| rate(r, "download")).transpose()?;
        let upload = change.upload.map(|r| rate(r, "upload")).transpose()?;
        let alt_download = change
            .alt
            .download
            .map(|r| rate(r, "alternative download"))
            .transpose()?;
        let alt_upload = change
            .alt
            .upload
            .map(|r| rate(r, "alternative upload"))
            .transpose()?;
        if let Some(torrent) = change.torrent {
            if change.alt != AltChange::default() {
                return Err(ProtoError::bad_request(
                    "alternative limits are the broker's, for all torrents: name no torrent",
                ));
            }
            return self
                .set_torrent_limits(torrent, download, upload)
                .map(|limits| (limits, None));
        }
        if [change.alt.schedule.flatten(), change.alt.hours]
            .into_iter()
            .flatten()
            .any(|schedule| !schedule.is_valid())
        {
            return Err(ProtoError::bad_request(
                "the schedule names no day, or minutes past a day",
            ));
        }
        if download.is_none() && upload.is_none() && change.alt == AltChange::default() {
            let (usual, alt) = self.rates.get();
            return Ok((usual, Some(alt)));
        }
        // One change at a time: each writes the whole record.
        let mut recorded = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        // New hours for the schedule: those it is turned on with, or those given alone;
        // hours given alone to a schedule that is on change it.
        let hours = change.alt.schedule.flatten().or(change.alt.hours);
        let schedule = match (change.alt.schedule, change.alt.hours) {
            (Some(schedule), _) => Some(schedule),
            (None, Some(hours)) if self.rates.get().1.schedule.is_some() => Some(Some(hours)),
            (None, _) => None,
        };
        let next = RunSettings {
            max_download_rate: change.download.or(recorded.max_download_rate),
            max_upload_rate: change.upload.or(recorded.max_upload_rate),
            alt_download_rate: change.alt.download.or(recorded.alt_download_rate),
            alt_upload_rate: change.alt.upload.or(recorded.alt_upload_rate),
            alt_schedule: schedule.or(recorded.alt_schedule),
            alt_hours: hours.or(recorded.alt_hours),
            alt_on: change.alt.on.or(recorded.alt_on),
            ..*recorded
        };
        next.save(&self.config.state_dir).map_err(|e| {
            ProtoError::io(format!(
                "cannot record the limits in {} ({e}): nothing changed",
                RunSettings::path(&self.config.state_dir).display()
            ))
        })?;
        *recorded = next;
        let bytes = |rate: Option<NonZeroU32>| rate.map(|r| u64::from(r.get()));
        let (usual, alt) = {
            let mut state = self.rates.state();
            if let Some(download) = download {
                state.usual.download = bytes(download);
            }
            if let Some(upload) = upload {
                state.usual.upload = bytes(upload);
            }
            if let Some(download) = alt_download {
                state.alt.download = bytes(download);
            }
            if let Some(upload) = alt_upload {
                state.alt.upload = bytes(upload);
            }
            if let Some(hours) = hours {
                state.alt.hours = Some(hours);
            }
            if let Some(schedule) = schedule {
                state.alt.schedule = schedule;
                // A new schedule is looked at afresh at the next tick...
                state.inside = None;
            }
            if let Some(on) = change.alt.on {
                state.alt.on = on;
                // ...unless the same request switches them: that switch holds until the
                // schedule's next edge.
                if let Some(schedule) = state.alt.schedule {
                    let (weekday, minute) = local_now();
                    state.inside = Some(schedule.contains(weekday, minute));
                }
            }
            (state.usual, state.alt)
        };
        let (down, up) = in_force(usual, alt);
        self.engine.set_limits(Some(down), Some(up));
        tracing::info!(?usual, ?alt, "rate limits set");
        Ok((usual, Some(alt)))
    }

    /// Puts the engine's limits in line with the broker's (at start: the alternative ones
    /// may have been on).
    pub(super) fn apply_rates(&self) {
        let (usual, alt) = self.rates.get();
        let (down, up) = in_force(usual, alt);
        self.engine.set_limits(Some(down), Some(up));
    }

    /// Turns the alternative limits on or off at the schedule's edges (and at the first look,
    /// as the schedule says then), as transmission does: a switch by hand holds until the
    /// next edge. Called every second.
    pub(super) fn follow_alt_schedule(&self) {
        let (weekday, minute) = local_now();
        // The record first, then the limits (as `set_limits` takes them): a change of the
        // limits cannot come in between and be overwritten.
        let mut recorded = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let turned = {
            let mut state = self.rates.state();
            let Some(schedule) = state.alt.schedule else {
                return;
            };
            let inside = schedule.contains(weekday, minute);
            if state.inside == Some(inside) {
                return;
            }
            state.inside = Some(inside);
            if state.alt.on == inside {
                return;
            }
            state.alt.on = inside;
            (state.usual, state.alt)
        };
        let (usual, alt) = turned;
        let next = RunSettings {
            alt_on: Some(alt.on),
            ..*recorded
        };
        match next.save(&self.config.state_dir) {
            Ok(()) => *recorded = next,
            Err(e) => tracing::warn!("cannot record the alternative limits' switch: {e}"),
        }
        let (down, up) = in_force(usual, alt);
        self.engine.set_limits(Some(down), Some(up));
        drop(recorded);
        tracing::info!(
            on = alt.on,
            "alternative rate limits switched by their schedule"
        );
    }

    /// One running torrent's own limits: recorded with it (a restart keeps them), then
    /// set on it, from its next chunk on (`None`: unchanged; `Some(None)`: lifted).
    fn set_torrent_limits(
        &self,
        torrent: TorrentRef,
        download: Option<Option<NonZeroU32>>,
        upload: Option<Option<NonZeroU32>>,
    ) -> Result<RateLimits, ProtoError> {
        // A dormant seed takes the rates its record says when it wakes.
        let (id, _) = self.running_or_dormant(torrent)?;
        if download.is_some() || upload.is_some() {
            self.update_record(id, |restore| {
                if let Some(download) = download {
                    restore.rates.download = download;
                }
                if let Some(upload) = upload {
                    restore.rates.upload = upload;
                }
            })?;
            // Its own where it has them, else its labels'. (Its handle asked for once
            // recorded: one woken meanwhile may have read the record before.)
            let rates = self.recorded_rates(id).unwrap_or_default();
            if let Ok((_, Some(handle))) = self.running_or_dormant(TorrentRef::Id(id)) {
                engine::set_torrent_limits(&handle, Some(rates.download), Some(rates.upload));
            }
            tracing::info!(torrent = %id, ?download, ?upload, "the torrent's rate limits set");
        }
        let handle = self.running_or_dormant(TorrentRef::Id(id))?.1;
        Ok(match &handle {
            Some(handle) => engine::torrent_limits(handle),
            None => {
                let rates = self.recorded_rates(id).unwrap_or_default();
                proto::RateLimits {
                    download: rates.download.map(|r| u64::from(r.get())),
                    upload: rates.upload.map(|r| u64::from(r.get())),
                }
            }
        })
    }
}

/// A limit the engine can keep: `0` is none, else 1 to `u32::MAX` bytes a second.
fn rate(bytes_per_second: u64, direction: &str) -> Result<Option<NonZeroU32>, ProtoError> {
    if bytes_per_second == 0 {
        return Ok(None);
    }
    u32::try_from(bytes_per_second)
        .ok()
        .and_then(NonZeroU32::new)
        .map(Some)
        .ok_or_else(|| {
            ProtoError::bad_request(format!(
                "the {direction} limit, {bytes_per_second} bytes a second, is more than the engine's largest (4 GiB/s); 0 lifts the limit"
            ))
        })
}
