//! What every torrent moved and seeded, saved together in one file (`<state dir>/counts.json`)
//! rather than in each torrent's record.
//!
//! Seeding time grows for every seeding torrent all the time, and bytes move for every active
//! one: kept in the records, ten thousand idle seeds meant ten thousand record writes (two
//! fsyncs each) every minute for counts nobody changed, and a change of anything else in a
//! record had to be told from a change of its counts. Here a torrent's clocks run in memory
//! ([`crate::registry::RestoreSpec::seeding_since`]), records hold only what a user or a
//! policy changed, and this one small file takes every count at once: one crash-safe write a
//! minute while anything seeds or moves, within a second of a torrent starting or stopping to
//! seed, and at a clean stop. A SIGKILL loses at most a minute of counting.
//!
//! Records written before this file existed carry their counts: they are read from there
//! for any torrent the file does not name.

use crate::registry::RestoreSpec;
use proto::TorrentId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file's name in the state folder.
pub const FILE: &str = "counts.json";

/// Now, in Unix milliseconds: what the clocks count in (the counts outlive the process).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One torrent's counts: bytes uploaded and downloaded in all, milliseconds seeded in all
/// and since its last upload.
pub type TorrentCounts = [u64; 4];

/// What the file holds.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// When (Unix ms) they were taken.
    pub at: u64,
    pub torrents: BTreeMap<TorrentId, TorrentCounts>,
}

impl Counts {
    /// The counts of `records` at `now`, their running clocks counted in.
    pub fn of<'a>(now: u64, records: impl Iterator<Item = (TorrentId, &'a RestoreSpec)>) -> Self {
        Counts {
            at: now,
            torrents: records
                .map(|(id, spec)| (id, counts_of(spec, now)))
                .collect(),
        }
    }

    /// Reads the file in `state_dir`: none is no counts; one that cannot be read stops the
    /// start, naming it (it is the broker's state, never overwritten unread).
    pub fn load(state_dir: &Path) -> Result<Counts, String> {
        let path = path(state_dir);
        let damaged = |why: String| {
            format!(
                "{} {why}: the broker will not start over it; move it aside to forget what the torrents uploaded, downloaded and seeded",
                path.display()
            )
        };
        // (Read as every state file is: no link followed, a regular file of the broker's
        // user, bounded in size.)
        let bytes = match crate::store::read_state_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Self::default()),
            Err(e) => return Err(damaged(format!("cannot be read ({e})"))),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            damaged(match bytes.is_empty() {
                true => "is empty".to_owned(),
                false => format!("is damaged ({e})"),
            })
        })
    }

    /// Gives each record its counts from here (a record this file does not name keeps the
    /// counts it carried: one written before the file existed).
    pub fn apply(&self, records: &mut BTreeMap<TorrentId, RestoreSpec>) {
        for (id, spec) in records.iter_mut() {
            if let Some(&[uploaded, downloaded, seeding_ms, idle_ms]) = self.torrents.get(id) {
                spec.uploaded_ever = uploaded;
                spec.downloaded_ever = downloaded;
                spec.seeding_ms = seeding_ms;
                spec.idle_ms = idle_ms;
            }
        }
    }

    /// Writes them, crash-safe, into `state_dir`.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::store::write_atomically(&path(state_dir), &bytes)
    }
}

/// A record's counts at `now`.
pub fn counts_of(spec: &RestoreSpec, now: u64) -> TorrentCounts {
    [
        spec.uploaded_ever,
        spec.downloaded_ever,
        spec.seeding_ms_at(now),
        spec.idle_ms_at(now),
    ]
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uploaded: u64, seeding_ms: u64) -> RestoreSpec {
        let mut spec = RestoreSpec::new("/s".into(), "/d".into());
        spec.uploaded_ever = uploaded;
        spec.seeding_ms = seeding_ms;
        spec
    }

    #[test]
    fn counts_with_running_clocks_are_saved_and_given_back_to_the_records_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut seeding = spec(7, 1_000);
        seeding.seeding_since = Some(100);
        seeding.idle_since = Some(300);
        let records = [(TorrentId(1), seeding), (TorrentId(2), spec(9, 5_000))];
        let counts = Counts::of(600, records.iter().map(|(id, s)| (*id, s)));
        counts.save(dir.path()).unwrap();
        let loaded = Counts::load(dir.path()).unwrap();
        assert_eq!(loaded, counts);
        assert_eq!(loaded.torrents[&TorrentId(1)], [7, 0, 1_500, 300]);
        // Torrent 3's record predates the file: it keeps what it carried.
        let mut back: BTreeMap<_, _> = [(TorrentId(1), spec(0, 0)), (TorrentId(3), spec(4, 40))]
            .into_iter()
            .collect();
        loaded.apply(&mut back);
        let one = &back[&TorrentId(1)];
        assert_eq!(
            (one.uploaded_ever, one.seeding_ms, one.idle_ms),
            (7, 1_500, 300)
        );
        assert_eq!(
            (
                back[&TorrentId(3)].uploaded_ever,
                back[&TorrentId(3)].seeding_ms
            ),
            (4, 40)
        );
    }

    #[test]
    fn a_damaged_file_stops_the_start_naming_it_and_none_is_no_counts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Counts::load(dir.path()).unwrap(), Counts::default());
        for damage in [
            &b""[..],
            b"{\"at\": 1, \"torr",
            b"{\"at\": 1, \"torrents\": {}, \"x\": 1}",
        ] {
            std::fs::write(dir.path().join(FILE), damage).unwrap();
            let error = Counts::load(dir.path()).unwrap_err();
            assert!(error.contains(FILE), "{error}");
        }
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(FILE)).unwrap();
        assert!(Counts::load(dir.path()).is_err());
    }
}
