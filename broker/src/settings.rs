//! Settings changed while the broker runs (`patron-client limits`), recorded in
//! `<state dir>/settings.json` so that a restart keeps them (DESIGN §4a, §13).
//!
//! Which value a setting has at start, strongest first: a flag or environment variable
//! given to that start, the record, `broker.toml`, the default (transmission-daemon's rule
//! for its command line and `settings.json`). A field absent from the record was never
//! changed at run time; a rate of `0` there is "no limit", which beats a limit in
//! `broker.toml`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The settings changed at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// The global download limit in bytes per second; `0`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_download_rate: Option<u64>,
    /// The global upload limit in bytes per second; `0`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload_rate: Option<u64>,
    /// How many unfinished torrents run at once; `null`: no limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_active_downloads: Option<Option<u32>>,
    /// How many finished torrents seed at once; `null`: no limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_active_seeds: Option<Option<u32>>,
    /// Seconds without a byte moved after which a torrent stops counting; `null`: never.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub stalled_after_secs: Option<Option<u64>>,
    /// The seeding ratio limit; `null`: none.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ratio_limit: Option<Option<f64>>,
    /// The seeding time limit in seconds; `null`: none.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub seed_time_limit_secs: Option<Option<u64>>,
    /// The idle seeding limit in seconds; `null`: none.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_seed_limit_secs: Option<Option<u64>>,
    /// What is done past a seeding limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_limit_action: Option<proto::SeedAction>,
    /// The alternative download limit in bytes per second; `0`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_download_rate: Option<u64>,
    /// The alternative upload limit in bytes per second; `0`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_upload_rate: Option<u64>,
    /// When the alternative limits turn on by themselves; `null`: never.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub alt_schedule: Option<Option<proto::AltSchedule>>,
    /// The schedule's hours, kept while it is off too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_hours: Option<proto::AltSchedule>,
    /// Whether the alternative limits are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_on: Option<bool>,
}

/// A field present in the record, `null` included: it was changed at run time (an absent
/// one was not).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl RunSettings {
    /// Where the record is kept.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("settings.json")
    }

    /// The record (none yet: nothing changed at run time). One the broker cannot read is an
    /// error naming the file: starting on settings other than the user's is worse.
    pub fn load(state_dir: &Path) -> Result<RunSettings, String> {
        let path = RunSettings::path(state_dir);
        let bytes = match crate::store::read_state_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(RunSettings::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let settings: RunSettings = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not the broker's settings ({e}): fix it or move it aside",
                path.display()
            )
        })?;
        for (name, rate) in [
            ("max_download_rate", settings.max_download_rate),
            ("max_upload_rate", settings.max_upload_rate),
            ("alt_download_rate", settings.alt_download_rate),
            ("alt_upload_rate", settings.alt_upload_rate),
        ] {
            if rate.is_some_and(|r| r > u64::from(u32::MAX)) {
                return Err(format!(
                    "{}: {name} is more than the engine's largest limit (4 GiB/s)",
                    path.display()
                ));
            }
        }
        let bad = |what: &str| {
            Err(format!(
                "{}: {what}: fix it or move the file aside",
                path.display()
            ))
        };
        if let Some(Some(ratio)) = settings.ratio_limit {
            if !proto::valid_ratio_limit(ratio) {
                return bad("ratio_limit is a number from 0.001 to a million, or null");
            }
        }
        for (name, secs) in [
            ("seed_time_limit_secs", settings.seed_time_limit_secs),
            ("idle_seed_limit_secs", settings.idle_seed_limit_secs),
        ] {
            if secs.flatten().is_some_and(|s| !proto::valid_seed_secs(s)) {
                return bad(&format!("{name} is a second to a century, or null"));
            }
        }
        if [settings.alt_schedule.flatten(), settings.alt_hours]
            .into_iter()
            .flatten()
            .any(|schedule| !schedule.is_valid())
        {
            return bad("alt_schedule names no day, or minutes past a day");
        }
        Ok(settings)
    }

    /// Writes the record (atomically, durably).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::store::write_atomically(&RunSettings::path(state_dir), &json)
    }
}

/// A setting at start: the flag's, else the record's, else the file's, else the default.
pub fn effective<T>(flag: Option<T>, recorded: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(recorded).or(file).unwrap_or(default)
}

/// A rate at start: the flag's, else the record's (`0`: none), else the file's.
pub fn effective_rate(flag: Option<u32>, recorded: Option<u64>, file: Option<u32>) -> Option<u32> {
    match (flag, recorded) {
        (Some(flag), _) => Some(flag),
        (None, Some(0)) => None,
        // Checked at load: it fits.
        (None, Some(recorded)) => u32::try_from(recorded).ok(),
        (None, None) => file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_beats_the_record_which_beats_the_file() {
        assert_eq!(effective_rate(Some(5), Some(7), Some(9)), Some(5));
        assert_eq!(effective_rate(None, Some(7), Some(9)), Some(7));
        assert_eq!(
            effective_rate(None, Some(0), Some(9)),
            None,
            "no limit, recorded, wins"
        );
        assert_eq!(effective_rate(None, None, Some(9)), Some(9));
        assert_eq!(effective_rate(None, None, None), None);
    }

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(RunSettings::load(dir.path()), Ok(RunSettings::default()));
        let settings = RunSettings {
            max_download_rate: Some(1 << 20),
            max_upload_rate: Some(0),
            max_active_downloads: Some(Some(3)),
            max_active_seeds: Some(None),
            stalled_after_secs: None,
            ratio_limit: Some(Some(1.5)),
            seed_time_limit_secs: Some(None),
            idle_seed_limit_secs: None,
            seed_limit_action: Some(proto::SeedAction::Close),
            alt_download_rate: Some(0),
            alt_upload_rate: Some(256 << 10),
            alt_schedule: Some(proto::AltSchedule::parse("sat,sun 22:00-06:00")),
            alt_hours: proto::AltSchedule::parse("sat,sun 22:00-06:00"),
            alt_on: Some(true),
        };
        settings.save(dir.path()).expect("save");
        assert_eq!(RunSettings::load(dir.path()), Ok(settings));
        std::fs::write(
            RunSettings::path(dir.path()),
            b"{\"max_download_rate\": 1e99}",
        )
        .unwrap();
        assert!(RunSettings::load(dir.path()).is_err());
        std::fs::write(
            RunSettings::path(dir.path()),
            b"{\"max_download_rate\": 5000000000}",
        )
        .unwrap();
        let too_fast = RunSettings::load(dir.path()).unwrap_err();
        assert!(too_fast.contains("4 GiB/s"), "{too_fast}");
    }
}
