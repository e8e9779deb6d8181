//! The typed status of one torrent (the original sent a loose dict).

use crate::{InfoHash, TorrentId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a torrent is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TorrentState {
    /// Fetching a magnet's metadata from peers.
    ResolvingMetadata,
    /// Checking data already on disk.
    Checking,
    /// Downloading.
    Downloading,
    /// Complete and serving to others.
    Seeding,
    /// Paused by request.
    Paused,
    /// Stopped by an error.
    Error(String),
    /// Waiting for its turn: the broker runs no more downloads (or seeds) at once than its
    /// queue allows (`--max-active-downloads`, `--max-active-seeds`); it starts when one
    /// ends or stalls, in the order of its [`TorrentStatus::queue_position`].
    Queued,
    /// Its data is being moved to another folder (`move`): out of the engine meanwhile, so
    /// nothing reads or writes its files until it runs again from the new place.
    Moving,
}

impl TorrentState {
    /// A stable lowercase name, used in JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            TorrentState::ResolvingMetadata => "resolving-metadata",
            TorrentState::Checking => "checking",
            TorrentState::Downloading => "downloading",
            TorrentState::Seeding => "seeding",
            TorrentState::Paused => "paused",
            TorrentState::Error(_) => "error",
            TorrentState::Queued => "queued",
            TorrentState::Moving => "moving",
        }
    }
}

impl fmt::Display for TorrentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorrentState::Error(message) => write!(f, "error: {message}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The status of one torrent at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorrentStatus {
    /// The broker's id.
    pub id: TorrentId,
    /// Its info hash.
    pub info_hash: InfoHash,
    /// Its name.
    pub name: String,
    /// What it is doing.
    pub state: TorrentState,
    /// Fraction of the selected data verified, 0.0 to 1.0.
    pub progress: f64,
    /// Bytes verified.
    pub bytes_done: u64,
    /// Bytes selected in total.
    pub bytes_total: u64,
    /// Download rate, bytes per second.
    pub download_rate: u64,
    /// Upload rate, bytes per second.
    pub upload_rate: u64,
    /// Bytes uploaded, in all (recorded with it: counted across pauses and restarts).
    pub uploaded: u64,
    /// Bytes downloaded, in all (as `uploaded`).
    pub downloaded: u64,
    /// Seconds it seeded, in all.
    pub seeding_secs: u64,
    /// When it stops seeding: its own limits where it has them, else the broker's.
    pub seed_limits: crate::SeedingLimits,
    /// Connected peers.
    pub peers: u32,
    /// Connected peers that have everything (0 when the engine cannot tell).
    pub seeds: u32,
    /// Estimated seconds to completion, when downloading and estimable.
    pub eta_secs: Option<u64>,
    /// True once every selected byte is verified.
    pub complete: bool,
    /// Its place in the broker's queue, 1 first (`None`: not in it, as a magnet resolving
    /// its metadata). Every torrent has one, queued or not: it is the order in which
    /// queued torrents start.
    pub queue_position: Option<u32>,
    /// Its labels.
    pub labels: Vec<String>,
}

impl TorrentStatus {
    /// The status of a torrent that is known but not moving: nothing done, no rates, no
    /// peers, in `state` (a magnet resolving its metadata, a record not restored, a test's
    /// starting point).
    pub fn idle(info: &crate::TorrentInfo, state: TorrentState) -> TorrentStatus {
        TorrentStatus {
            id: info.id,
            info_hash: info.info_hash,
            name: info.name.clone(),
            state,
            progress: 0.0,
            bytes_done: 0,
            bytes_total: info.total_bytes,
            download_rate: 0,
            upload_rate: 0,
            uploaded: 0,
            downloaded: 0,
            seeding_secs: 0,
            seed_limits: crate::SeedingLimits::default(),
            peers: 0,
            seeds: 0,
            eta_secs: None,
            complete: false,
            queue_position: None,
            labels: Vec::new(),
        }
    }

    /// Its share ratio: bytes uploaded over bytes downloaded, or over the bytes it has
    /// when it downloaded nothing (a torrent made here), as transmission's.
    pub fn ratio(&self) -> f64 {
        let base = if self.downloaded > 0 {
            self.downloaded
        } else {
            self.bytes_done
        };
        if base == 0 {
            return 0.0;
        }
        self.uploaded as f64 / base as f64
    }

    /// Whether the difference from `previous` is worth telling a patron about. Rates jitter
    /// constantly, so they count only together with some other change or when they cross zero.
    pub fn differs_meaningfully(&self, previous: &TorrentStatus) -> bool {
        self.state != previous.state
            || self.bytes_done != previous.bytes_done
            || self.bytes_total != previous.bytes_total
            || self.uploaded != previous.uploaded
            || self.downloaded != previous.downloaded
            || self.seed_limits != previous.seed_limits
            || self.peers != previous.peers
            || self.complete != previous.complete
            || self.name != previous.name
            || self.queue_position != previous.queue_position
            || (self.download_rate == 0) != (previous.download_rate == 0)
            || (self.upload_rate == 0) != (previous.upload_rate == 0)
    }
}
