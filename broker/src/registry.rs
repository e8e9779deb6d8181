//! Which torrents run, who holds each, and what was last said about them.
//!
//! The registry is also what survives a restart: each torrent's .torrent bytes and the
//! options it was added with and changed since (save folder, peers, file selection, paused,
//! rate limits) are written to the state directory, and the next broker adds them again.
//! librqbit's own session store is not used: it forgets a torrent's peers (so on loopback,
//! with no DHT or tracker, a restored torrent could never find its swarm), its id allocation
//! races, and it rewrites its whole list at every add. The engine keeps only each torrent's
//! verified pieces (fast resume, see `engine`), so a restored torrent is not hashed again.
//! Holders are kept in memory only: patrons do not survive a broker restart.

use crate::engine::ManagedTorrentHandle;
use crate::sink::PatronId;
use proto::{InfoHash, TorrentId, TorrentInfo, TorrentRef, TorrentState, TorrentStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One running torrent.
pub struct TorrentEntry {
    /// What patrons are told about it.
    pub info: TorrentInfo,
    /// Where it is in the engine.
    pub life: Life,
    /// Connected patrons that created or joined it.
    pub holders: BTreeSet<PatronId>,
    /// The status its holders were last sent.
    pub last_status: Option<Box<TorrentStatus>>,
    /// Whether that status was let go while no one held it (see [`TorrentRegistry::repack`]):
    /// the next one sent is not news to log.
    pub status_forgotten: bool,
    /// How to add it again after a restart.
    pub restore: RestoreSpec,
    /// Every file it has on disk (full paths): no other torrent may have one of them.
    pub files: Arc<[PathBuf]>,
    /// Its place in the queue, 1 first: the rank of its recorded
    /// [`RestoreSpec::queue_position`] among the running torrents'.
    pub queue_rank: u32,
}

impl TorrentEntry {
    /// The engine's handle, unless the torrent is being added again (then `None`: its status
    /// is [`proto::TorrentState::Checking`]).
    pub fn live_handle(&self) -> Option<ManagedTorrentHandle> {
        self.life.handle().cloned()
    }

    /// What its status is read from now.
    pub fn source(&self) -> Source {
        match &self.life {
            Life::Running(handle) | Life::Settling(handle) => Source::Engine(handle.clone()),
            Life::Restarting => Source::Restarting,
            Life::Moving(status) => Source::Frozen(status.clone()),
            Life::Dormant(dormant) => Source::Dormant {
                bytes: dormant.bytes,
                paused: self.restore.engine_paused(),
            },
        }
    }

    /// What the broker adds to its status from the engine, given the broker's and its
    /// labels' seeding limits.
    pub fn overlay(&self, policy: &SeedPolicy) -> Overlay {
        Overlay {
            rank: self.queue_rank,
            queued: self.restore.queued,
            uploaded: self.restore.uploaded_ever,
            downloaded: self.restore.downloaded_ever,
            // While its clock runs, in whole minutes: a count of seconds would change its
            // line on the board, and wake every reader asleep on it, each second for every
            // idle seed.
            seeding_secs: match self.restore.seeding_since {
                Some(_) if !self.restore.engine_paused() => {
                    let secs = self.restore.seeding_ms_at(crate::counts::now_ms()) / 1000;
                    secs - secs % 60
                }
                _ => self.restore.seeding_ms_at(crate::counts::now_ms()) / 1000,
            },
            seed_limits: self.restore.seed_limits(policy),
            labels: self.restore.labels.clone(),
        }
    }
}

/// The seeding limits torrents get where they have none of their own: the broker's, and
/// their labels'.
#[derive(Clone, Default)]
pub struct SeedPolicy {
    pub broker: proto::SeedingLimits,
    pub labels: Arc<crate::service::labels::LabelBook>,
}

/// What the broker adds to a torrent's status from the engine (which knows nothing of it):
/// its place in the queue and whether the queue holds it (paused in the engine, shown
/// queued), and what it recorded of it: bytes moved and time seeded in all, and the seeding
/// limits in force for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// 1 first; 0: not in the queue.
    pub rank: u32,
    /// Held by the queue.
    pub queued: bool,
    /// Bytes uploaded, in all.
    pub uploaded: u64,
    /// Bytes downloaded, in all.
    pub downloaded: u64,
    /// Seconds seeded, in all.
    pub seeding_secs: u64,
    /// Its seeding limits in force.
    pub seed_limits: proto::SeedingLimits,
    /// Its labels.
    pub labels: Vec<String>,
}

impl Overlay {
    /// The status the engine gave, as patrons see it.
    pub fn apply(self, status: &mut TorrentStatus) {
        status.queue_position = (self.rank != 0).then_some(self.rank);
        status.uploaded = self.uploaded;
        status.downloaded = self.downloaded;
        // While it seeds, in whole minutes: a count of seconds would change its line on
        // the board, and wake every reader asleep on it, each second for every idle seed.
        status.seeding_secs = match status.state {
            TorrentState::Seeding => self.seeding_secs - self.seeding_secs % 60,
            _ => self.seeding_secs,
        };
        status.seed_limits = self.seed_limits;
        status.labels = self.labels;
        // Paused in the engine for the queue: queued. (Checking first, or failed, it shows
        // that.)
        if self.queued && status.state == TorrentState::Paused {
            status.state = TorrentState::Queued;
        }
    }
}

/// What a torrent's status is read from.
#[derive(Clone)]
pub enum Source {
    /// The engine.
    Engine(ManagedTorrentHandle),
    /// Nothing: it is being added again (shown checking).
    Restarting,
    /// The status it had when its data began to move (shown [`TorrentState::Moving`]).
    Frozen(Arc<TorrentStatus>),
    /// Nothing: a complete seed out of the engine while idle, of this many bytes (its
    /// selected files'); shown seeding (or paused, by a user, a seeding limit or the queue),
    /// with no peer and no rate.
    Dormant { bytes: u64, paused: bool },
}

/// A torrent's status as patrons see it: the engine's (or what stands for it while it is out
/// of the engine), with the broker's overlay. The one way every status is made.
pub fn shown_status(info: &TorrentInfo, source: &Source, place: Overlay) -> TorrentStatus {
    let mut status = match source {
        Source::Engine(handle) => crate::engine::status_of(info.id, &info.name, handle),
        Source::Restarting => TorrentStatus::idle(info, TorrentState::Checking),
        Source::Frozen(status) => TorrentStatus {
            state: TorrentState::Moving,
            ..(**status).clone()
        },
        Source::Dormant { bytes, paused } => TorrentStatus {
            progress: 1.0,
            bytes_done: *bytes,
            bytes_total: *bytes,
            complete: true,
            ..TorrentStatus::idle(
                info,
                if *paused {
                    TorrentState::Paused
                } else {
                    TorrentState::Seeding
                },
            )
        },
    };
    place.apply(&mut status);
    status
}

/// Where a running torrent is in the engine: one state, not flags that could disagree.
#[derive(Clone)]
pub enum Life {
    /// In the engine, under this handle.
    Running(ManagedTorrentHandle),
    /// In the engine under this handle, checking its data; a task waits for the check to end
    /// to apply the pause or resume the engine could not take during it (one task is
    /// enough: it applies what the record says then).
    Settling(ManagedTorrentHandle),
    /// Taken out of the engine and being added again under the same id (a recheck): shown
    /// as checking, with no handle to read until it is back.
    Restarting,
    /// Taken out of the engine while its data moves (`move`): shown as it was when it
    /// stopped, [`TorrentState::Moving`], until it runs again from one place or the other.
    Moving(Arc<TorrentStatus>),
    /// A complete seed taken out of the engine while nothing asks for it (see
    /// [`crate::service::sleep`]): shown seeding; whatever needs the engine wakes it first.
    Dormant(Dormant),
}

/// What the broker keeps of a seed out of the engine: all it shows, and when it went.
#[derive(Clone, Copy, Debug)]
pub struct Dormant {
    /// Bytes of its selected files (all there: it is complete).
    pub bytes: u64,
    /// Since when it has been idle (before it left the engine), or running again after the
    /// queue or a pause held it: the queue's stall rule counts from there, asleep or awake.
    pub idle_since: std::time::Instant,
    /// When it wakes to announce, for one that announces (DHT or LSD; a tracker's, only
    /// once let go by its record: it then stays in the engine).
    pub next_announce: Option<std::time::Instant>,
    /// Whether it has a tracker the engine announces to
    /// ([`crate::torrent_file::is_announce_url`]): let go by its record (a resume, the queue), it wakes at the
    /// sleeper's next look, ahead of those that only announce on DHT or LSD, and stays in
    /// the engine for its tracker session.
    pub tracker: bool,
}

impl Life {
    /// Its engine handle, unless it is being added again.
    pub fn handle(&self) -> Option<&ManagedTorrentHandle> {
        match self {
            Life::Running(handle) | Life::Settling(handle) => Some(handle),
            Life::Restarting | Life::Moving(_) | Life::Dormant(_) => None,
        }
    }

    /// Whether it runs under exactly this handle (not one from before a recheck).
    pub fn is(&self, handle: &ManagedTorrentHandle) -> bool {
        self.handle().is_some_and(|h| Arc::ptr_eq(h, handle))
    }
}

/// What survives a restart, per torrent (besides its .torrent bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// The save folder as reported to patrons.
    pub save_folder: PathBuf,
    /// The folder the engine writes into.
    pub data_folder: PathBuf,
    /// Peers named when it was added (and those a magnet's swarm gave): always kept.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Peers named since (`peers --add`, a joiner's `--peer`): the latest
    /// [`MAX_RECORDED_PEERS`] are kept, so that no number of them can push out the first.
    #[serde(default)]
    pub added_peers: Vec<SocketAddr>,
    /// File selection.
    #[serde(default)]
    pub only_files: Option<Vec<usize>>,
    /// Paused (at add, or since).
    #[serde(default)]
    pub paused: bool,
    /// Close when the last holder goes (so: not restored).
    #[serde(default)]
    pub ephemeral: bool,
    /// Its own rate limits.
    #[serde(default)]
    pub rates: crate::engine::Rates,
    /// Its key in the queue: queued torrents start in the order of these (see
    /// [`TorrentEntry::queue_rank`]); `0` in records made before the queue (ranked by id).
    #[serde(default)]
    pub queue_position: u64,
    /// Held by the queue (paused in the engine until its turn): restored paused, for the
    /// queue to start it, rather than started and then stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    /// Bytes it uploaded, in all. This and the three counts below are saved in
    /// [`crate::counts`] (one file for every torrent, once a minute), not in the record:
    /// a record is written only when something else of it changes. Records made before
    /// that carry them (read, never written).
    #[serde(default, skip_serializing)]
    pub uploaded_ever: u64,
    /// Bytes it downloaded, in all.
    #[serde(default, skip_serializing)]
    pub downloaded_ever: u64,
    /// Milliseconds it seeded, in all, besides what `seeding_since` counts.
    #[serde(default, skip_serializing)]
    pub seeding_ms: u64,
    /// Milliseconds it seeded since it last uploaded a byte, besides what `idle_since`
    /// counts.
    #[serde(default, skip_serializing)]
    pub idle_ms: u64,
    /// Seeding in this run since then (Unix ms): a clock, so that an idle seed costs no
    /// work at each second.
    #[serde(skip)]
    pub seeding_since: Option<u64>,
    /// Idle in this run since then (Unix ms).
    #[serde(skip)]
    pub idle_since: Option<u64>,
    /// Its own seeding limits (where `None`, the broker's).
    #[serde(default)]
    pub seeding: proto::TorrentSeeding,
    /// The seeding limit that paused it, if one did (a resume by hand lifts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<crate::service::SeedStop>,
    /// Its files were there before it: the user's own, seeded in place by `make --seed`, or
    /// reused by an add with `--overwrite`. Closing with `--delete-data` does not delete them.
    #[serde(
        default,
        alias = "seeded_in_place",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub data_was_there: bool,
    /// Its labels (see [`crate::service::labels`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Where its data moves once it completes (its own `--move-completed-to`; `None`: the
    /// broker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_completed_to: Option<PathBuf>,
    /// It completed and its data is due to move to its `move_completed_to` (or the
    /// broker's): set before the move, cleared once moved; a start does the move.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub move_due: bool,
    /// A move of its data under way: what the next start finishes or undoes, so that one
    /// complete copy, the one this record names, is all that is left (see
    /// [`crate::service::MoveJournal`]). Boxed: rare, and a hundred bytes every record
    /// would carry (an entry then takes 512 bytes rather than 640).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<Box<crate::service::MoveJournal>>,
}

/// What `entry` keeps, in fresh allocations (see [`TorrentRegistry::repack`]).
fn copy_of(entry: &TorrentEntry) -> TorrentEntry {
    // (A long file list stays where it is: copying it would hold the state lock for its
    // length, for little, as its paths fill pages of their own.)
    let files = match Arc::strong_count(&entry.files) {
        1 if entry.files.len() <= REPACKED_FILES => entry.files.iter().cloned().collect(),
        _ => entry.files.clone(),
    };
    TorrentEntry {
        info: entry.info.clone(),
        life: entry.life.clone(),
        // (An empty set that once held a patron keeps its node: not copied.)
        holders: match entry.holders.is_empty() {
            true => BTreeSet::new(),
            false => entry.holders.clone(),
        },
        // What its holders were last sent: with none, nothing (256 bytes a seed; a patron
        // that holds it later is sent its status anew, see `fanout::fan_out`).
        last_status: match entry.holders.is_empty() {
            true => None,
            false => entry.last_status.as_deref().cloned().map(Box::new),
        },
        status_forgotten: entry.status_forgotten
            || (entry.holders.is_empty() && entry.last_status.is_some()),
        restore: entry.restore.clone(),
        files,
        queue_rank: entry.queue_rank,
    }
}

/// What [`TorrentRegistry::repack`] moved out of: dropped, it frees it.
#[derive(Default)]
pub struct Repacked {
    // (The boxes the map held, as they are: freed later, not moved out of.)
    #[allow(clippy::vec_box)]
    entries: Vec<Box<TorrentEntry>>,
    owners: Vec<OwnersPlace>,
}

/// A file's place in the owners map: its path, and the torrents that have it.
type OwnersPlace = (PathBuf, Vec<TorrentId>);

/// The longest file list [`TorrentRegistry::repack`] moves.
pub const REPACKED_FILES: usize = 64;

/// How many peers a torrent's record keeps (the latest named win): `peers --add` must not
/// grow a record without bound.
pub const MAX_RECORDED_PEERS: usize = 256;

impl RestoreSpec {
    /// A torrent saved in `save_folder`, its data in `data_folder`, with no peers named,
    /// every file, running, recorded, at the broker's rates.
    pub fn new(save_folder: PathBuf, data_folder: PathBuf) -> RestoreSpec {
        RestoreSpec {
            save_folder,
            data_folder,
            peers: Vec::new(),
            added_peers: Vec::new(),
            only_files: None,
            paused: false,
            ephemeral: false,
            rates: Default::default(),
            queue_position: 0,
            queued: false,
            uploaded_ever: 0,
            downloaded_ever: 0,
            seeding_ms: 0,
            idle_ms: 0,
            seeding_since: None,
            idle_since: None,
            seeding: Default::default(),
            stopped_by: None,
            data_was_there: false,
            move_completed_to: None,
            labels: Vec::new(),
            move_due: false,
            moving: None,
        }
    }

    /// Its seeding limits in force: its own where it has them, else its labels', else the
    /// broker's.
    pub fn seed_limits(&self, policy: &SeedPolicy) -> proto::SeedingLimits {
        fn pick<T: Copy>(
            own: Option<proto::SeedLimit<T>>,
            label: Option<proto::SeedLimit<T>>,
            broker: Option<T>,
        ) -> Option<T> {
            match own.or(label) {
                None => broker,
                Some(proto::SeedLimit::Unlimited) => None,
                Some(proto::SeedLimit::At(value)) => Some(value),
            }
        }
        let label = crate::service::labels::label_seeding(&policy.labels, &self.labels);
        let broker = &policy.broker;
        proto::SeedingLimits {
            ratio: pick(self.seeding.ratio, label.ratio, broker.ratio),
            seed_time_secs: pick(
                self.seeding.seed_time_secs,
                label.seed_time_secs,
                broker.seed_time_secs,
            ),
            idle_secs: pick(self.seeding.idle_secs, label.idle_secs, broker.idle_secs),
        }
    }

    /// Milliseconds seeded in all, at `now` (Unix ms).
    pub fn seeding_ms_at(&self, now: u64) -> u64 {
        let running = self
            .seeding_since
            .map_or(0, |since| now.saturating_sub(since));
        self.seeding_ms.saturating_add(running)
    }

    /// Milliseconds seeded since the last upload, at `now` (Unix ms).
    pub fn idle_ms_at(&self, now: u64) -> u64 {
        let running = self.idle_since.map_or(0, |since| now.saturating_sub(since));
        self.idle_ms.saturating_add(running)
    }

    /// Stops its clocks at `now`, what they counted kept.
    pub fn stop_clocks(&mut self, now: u64) {
        self.seeding_ms = self.seeding_ms_at(now);
        self.idle_ms = self.idle_ms_at(now);
        self.seeding_since = None;
        self.idle_since = None;
    }

    /// Starts its seeding and idle clocks (a seed that runs again), unless they run.
    pub fn start_clocks(&mut self, now: u64) {
        if self.seeding_since.is_none() {
            self.seeding_since = Some(now);
            self.idle_since = Some(now);
        }
    }

    /// Whether the engine holds it paused: by a user's pause, or for the queue.
    pub fn engine_paused(&self) -> bool {
        self.paused || self.queued
    }

    /// Remembers peers named for the torrent since it was added (dialled again after a
    /// restart).
    pub fn remember_peers(&mut self, peers: &[SocketAddr]) {
        for peer in peers {
            if !self.peers.contains(peer) && !self.added_peers.contains(peer) {
                self.added_peers.push(*peer);
            }
        }
        let excess = self.added_peers.len().saturating_sub(MAX_RECORDED_PEERS);
        self.added_peers.drain(..excess);
    }

    /// Every peer it knows of: those named at add, then those named since.
    pub fn all_peers(&self) -> Vec<SocketAddr> {
        self.peers
            .iter()
            .chain(&self.added_peers)
            .copied()
            .collect()
    }

    /// Whether it knows `peer` already.
    pub fn knows_peer(&self, peer: &SocketAddr) -> bool {
        self.peers.contains(peer) || self.added_peers.contains(peer)
    }
}

/// A record the broker could not restore (its disk not mounted, its folder gone, an engine
/// error). It is kept, saved with the others, shown in `list` in an error state saying why,
/// and tried again at the next start: never deleted because a start failed (DESIGN §4a).
#[derive(Debug, Clone)]
pub struct Unrestored {
    /// What is known of it (from its .torrent, when that could be read).
    pub info: TorrentInfo,
    /// How to add it again.
    pub restore: RestoreSpec,
    /// Why it could not be restored.
    pub error: String,
    /// Its files (full paths), as far as they are known: still its own while it is kept.
    pub files: Arc<[PathBuf]>,
}

/// A magnet whose metadata is being fetched: shown (`resolving-metadata`) under the id it
/// will have, until it runs or fails.
#[derive(Debug, Clone)]
pub struct Resolving {
    /// What is known so far (its name is the link's `dn`, its size 0).
    pub info: TorrentInfo,
    /// The patrons waiting for it.
    pub holders: BTreeSet<PatronId>,
}

/// Every torrent the broker runs, those it remembers but could not restore, and magnets
/// on their way.
#[derive(Default)]
pub struct TorrentRegistry {
    /// Boxed: an entry is most of a kilobyte, and a B-tree filled in order keeps its nodes
    /// half empty (about 1.5 KiB a torrent inline, 0.8 boxed).
    torrents: BTreeMap<TorrentId, Box<TorrentEntry>>,
    unrestored: BTreeMap<TorrentId, Unrestored>,
    resolving: BTreeMap<TorrentId, Resolving>,
    /// Whose each file is, for every torrent run or kept (DESIGN §4: one owner per file).
    /// Kept by the methods that add and remove torrents, so no path can skip it.
    /// A path has more than one owner only in records made before owners were checked: it
    /// stays claimed until the last of them goes.
    owners: BTreeMap<PathBuf, Vec<TorrentId>>,
    /// Bumped by every change of which torrents are known (see [`TorrentRegistry::version`]).
    version: u64,
    /// Running torrents changed (or added, or removed) since the status loop last took them
    /// ([`TorrentRegistry::take_touched`]). Every way to change an entry marks it here, so
    /// the loop need not look at the torrents nothing changed.
    touched: std::collections::HashSet<TorrentId>,
    /// The running torrents by info hash, kept with `torrents` (a lookup by hash on every
    /// add looked through them all: quadratic over 10,000 adds).
    by_hash: std::collections::HashMap<InfoHash, TorrentId>,
    /// No torrent run or kept has a later queue key: a new torrent goes after it. It only
    /// grows (a key freed by a close is not handed out again), so finding it costs nothing
    /// where a look at every torrent made each of 10,000 restores cost 10,000.
    queue_high: u64,
}

impl TorrentRegistry {
    /// Changes whenever a torrent, a record or a magnet comes or goes: the status loop looks
    /// again only then, not after every request.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Shows a magnet whose metadata `holder` is waiting for.
    pub fn start_resolving(&mut self, info: TorrentInfo, holder: PatronId) {
        self.version += 1;
        let holders = BTreeSet::from([holder]);
        self.resolving.insert(info.id, Resolving { info, holders });
    }

    /// The magnet's metadata came, or did not: it is no longer shown as resolving.
    pub fn stop_resolving(&mut self, id: TorrentId) {
        self.version += 1;
        self.resolving.remove(&id);
    }

    /// Torrents that do not run but are known: magnets resolving, records not restored;
    /// each with the state to show for it and how many patrons wait for it.
    pub fn placeholders(&self) -> impl Iterator<Item = (TorrentInfo, TorrentState, u32)> + '_ {
        let resolving = self.resolving.values().map(|r| {
            let holders = r.holders.len() as u32;
            (r.info.clone(), TorrentState::ResolvingMetadata, holders)
        });
        let unrestored = self.unrestored.values().map(|u| {
            let why = format!("not restored (retried at the next start): {}", u.error);
            (u.info.clone(), TorrentState::Error(why), 0)
        });
        resolving.chain(unrestored)
    }

    /// The placeholder (see [`TorrentRegistry::placeholders`]) a reference names.
    pub fn placeholder(&self, torrent: TorrentRef) -> Option<(TorrentInfo, TorrentState)> {
        self.placeholders()
            .find(|(info, _, _)| match torrent {
                TorrentRef::Id(id) => info.id == id,
                TorrentRef::InfoHash(hash) => info.info_hash == hash,
            })
            .map(|(info, state, _)| (info, state))
    }

    /// Keeps a record that could not be restored.
    pub fn keep_unrestored(&mut self, id: TorrentId, unrestored: Unrestored) {
        self.version += 1;
        self.queue_high = self.queue_high.max(unrestored.restore.queue_position);
        self.claim(id, &unrestored.files);
        self.unrestored.insert(id, unrestored);
    }

    fn claim(&mut self, id: TorrentId, files: &[PathBuf]) {
        for file in files {
            let owners = self.owners.entry(file.clone()).or_default();
            if !owners.contains(&id) {
                owners.push(id);
            }
        }
    }

    fn release(&mut self, id: TorrentId, files: &[PathBuf]) {
        for file in files {
            if let Some(owners) = self.owners.get_mut(file) {
                owners.retain(|owner| *owner != id);
                if owners.is_empty() {
                    self.owners.remove(file);
                }
            }
        }
    }

    /// How many file paths the torrents run or kept have.
    pub fn owned_files(&self) -> usize {
        self.owners.len()
    }

    /// The first of `files` (full paths) that another torrent run or kept has (the same
    /// path, a folder of it, or a file of it as a folder), and whose it is. `except`: the
    /// torrent's own id (a recheck or restore of it).
    pub fn owned_elsewhere(
        &self,
        files: &[PathBuf],
        except: Option<TorrentId>,
    ) -> Option<(PathBuf, TorrentId)> {
        let other = |owners: &Vec<TorrentId>| owners.iter().copied().find(|id| Some(*id) != except);
        for file in files {
            if let Some(id) = self.owners.get(file).and_then(other) {
                return Some((file.clone(), id));
            }
            // One of its folders is another torrent's file.
            for folder in file.ancestors().skip(1) {
                if let Some(id) = self.owners.get(folder).and_then(other) {
                    return Some((folder.to_path_buf(), id));
                }
            }
            // It is a folder of another torrent's files.
            let inside = self
                .owners
                .range(file.clone()..)
                .skip_while(|(path, _)| *path == file)
                .take_while(|(path, _)| path.starts_with(file))
                .find_map(|(path, owners)| Some((path.clone(), other(owners)?)));
            if inside.is_some() {
                return inside;
            }
        }
        None
    }

    /// Forgets a record that could not be restored (a patron closed it), returning its id.
    pub fn forget_unrestored(&mut self, torrent: TorrentRef) -> Option<(TorrentId, Unrestored)> {
        self.version += 1;
        let id = match torrent {
            TorrentRef::Id(id) => id,
            TorrentRef::InfoHash(hash) => {
                *self
                    .unrestored
                    .iter()
                    .find(|(_, u)| u.info.info_hash == hash)?
                    .0
            }
        };
        let forgotten = self.unrestored.remove(&id)?;
        self.release(id, &forgotten.files);
        Some((id, forgotten))
    }

    /// How many records could not be restored (kept, shown in error).
    pub fn kept(&self) -> usize {
        self.unrestored.len()
    }

    /// The ids of every torrent remembered (running or not restored).
    pub fn ids(&self) -> std::collections::HashSet<TorrentId> {
        self.torrents
            .keys()
            .chain(self.unrestored.keys())
            .copied()
            .collect()
    }

    /// Whether this id is remembered at all (running or not restored).
    pub fn remembers(&self, id: TorrentId) -> bool {
        self.torrents.contains_key(&id) || self.unrestored.contains_key(&id)
    }

    /// The torrent with this id.
    pub fn get(&self, id: TorrentId) -> Option<&TorrentEntry> {
        self.torrents.get(&id).map(|entry| &**entry)
    }

    /// The torrent with this id, to change.
    pub fn get_mut(&mut self, id: TorrentId) -> Option<&mut TorrentEntry> {
        let entry = self.torrents.get_mut(&id)?;
        self.touched.insert(id);
        Some(&mut **entry)
    }

    /// The torrent with this id, for what the status loop notes of it (the status its
    /// holders were last sent): not a change of the torrent, so not marked as one.
    pub fn get_mut_quietly(&mut self, id: TorrentId) -> Option<&mut TorrentEntry> {
        self.torrents.get_mut(&id).map(|entry| &mut **entry)
    }

    /// Moves what the torrents `ids` keep (their entries, and their files' places in the
    /// owners map) into fresh allocations, for ones that go on with no engine for long
    /// (asleep; see the sleeper's `repack_dormant`). Returns what they held, for the caller
    /// to free outside its lock.
    ///
    /// Every copy is made before any original is freed. Made one by one, each copy would
    /// take the place the one before it just freed (the allocator's thread cache hands the
    /// last freed back first) and nothing would move; made together, they fill the gaps of
    /// the oldest pages, and the pages the originals leave empty go back to the system.
    pub fn repack(&mut self, ids: &[TorrentId]) -> Repacked {
        let fresh: Vec<(TorrentId, Box<TorrentEntry>, Vec<OwnersPlace>)> = ids
            .iter()
            .filter_map(|id| {
                let entry = self.torrents.get(id)?;
                Some((*id, Box::new(copy_of(entry)), self.owners_of(&entry.files)))
            })
            .collect();
        let mut old = Repacked::default();
        for (id, copy, owned) in fresh {
            if let Some(entry) = self.torrents.get_mut(&id) {
                old.entries.push(std::mem::replace(entry, copy));
            }
            for (path, owners) in owned {
                if let Some(was) = self.owners.remove_entry(&path) {
                    old.owners.push(was);
                }
                self.owners.insert(path, owners);
            }
        }
        old
    }

    /// A copy of the owners map's places of `files` (none for a long list: see
    /// [`copy_of`]).
    fn owners_of(&self, files: &[PathBuf]) -> Vec<OwnersPlace> {
        if files.len() > REPACKED_FILES {
            return Vec::new();
        }
        files
            .iter()
            .filter_map(|file| {
                let (path, owners) = self.owners.get_key_value(file)?;
                Some((path.clone(), owners.clone()))
            })
            .collect()
    }

    /// Marks torrent `id` changed for the status loop, though its entry is not: what it
    /// shows depends on settings outside it (its labels', the broker's).
    pub fn touch(&mut self, id: TorrentId) {
        if self.torrents.contains_key(&id) {
            self.touched.insert(id);
        }
    }

    /// Marks every torrent changed (a broker-wide setting every line shows changed).
    pub fn touch_all(&mut self) {
        self.touched.extend(self.torrents.keys().copied());
    }

    /// The running torrents changed, added or removed since the last call.
    pub fn take_touched(&mut self) -> std::collections::HashSet<TorrentId> {
        std::mem::take(&mut self.touched)
    }

    /// The id a reference names, if such a torrent runs.
    pub fn resolve(&self, torrent: TorrentRef) -> Option<TorrentId> {
        match torrent {
            TorrentRef::Id(id) => self.torrents.contains_key(&id).then_some(id),
            TorrentRef::InfoHash(hash) => self.by_info_hash(hash),
        }
    }

    /// The id of the torrent with this info hash, if it runs.
    pub fn by_info_hash(&self, hash: InfoHash) -> Option<TorrentId> {
        self.by_hash.get(&hash).copied()
    }

    /// Records a torrent (if new) and makes `holder` hold it. Returns its info.
    pub fn insert_or_hold(
        &mut self,
        info: TorrentInfo,
        handle: ManagedTorrentHandle,
        restore: RestoreSpec,
        holder: Option<PatronId>,
    ) -> TorrentInfo {
        let files = match self.torrents.contains_key(&info.id) {
            true => Arc::from(Vec::new()),
            false => files_of(&handle, &restore.data_folder),
        };
        self.insert_with(info, Life::Running(handle), files, restore, holder)
    }

    /// Records a seed restored out of the engine (see [`crate::service::sleep`]), owning
    /// `files`.
    pub fn insert_dormant(
        &mut self,
        info: TorrentInfo,
        dormant: Dormant,
        files: Arc<[PathBuf]>,
        restore: RestoreSpec,
    ) {
        self.insert_with(info, Life::Dormant(dormant), files, restore, None);
    }

    fn insert_with(
        &mut self,
        info: TorrentInfo,
        life: Life,
        files: Arc<[PathBuf]>,
        restore: RestoreSpec,
        holder: Option<PatronId>,
    ) -> TorrentInfo {
        self.version += 1;
        self.touched.insert(info.id);
        if !self.torrents.contains_key(&info.id) {
            self.claim(info.id, &files);
            let mut restore = restore;
            let last = self.last_queue_position();
            if restore.queue_position == 0 {
                restore.queue_position = last + 1;
            }
            let at_the_end = restore.queue_position > last;
            self.queue_high = self.queue_high.max(restore.queue_position);
            self.by_hash.insert(info.info_hash, info.id);
            self.torrents.insert(
                info.id,
                Box::new(TorrentEntry {
                    info: info.clone(),
                    life,
                    holders: BTreeSet::new(),
                    last_status: None,
                    status_forgotten: false,
                    restore,
                    files,
                    queue_rank: self.torrents.len() as u32 + 1,
                }),
            );
            // Last in the queue (every new torrent, and records restored in their order):
            // nobody else's rank changes.
            if !at_the_end {
                self.rank_queue();
            }
        }
        let Some(entry) = self.torrents.get_mut(&info.id) else {
            return info;
        };
        if let Some(holder) = holder {
            entry.holders.insert(holder);
        }
        entry.info.clone()
    }

    /// Puts back a torrent taken out with [`TorrentRegistry::remove`] (a close that could not
    /// be recorded).
    pub fn reinsert(&mut self, id: TorrentId, entry: TorrentEntry) {
        self.version += 1;
        self.touched.insert(id);
        self.claim(id, &entry.files);
        self.queue_high = self.queue_high.max(entry.restore.queue_position);
        self.by_hash.insert(entry.info.info_hash, id);
        self.torrents.insert(id, Box::new(entry));
        self.rank_queue();
    }

    /// Changes which files a running torrent owns (a move: both places while its data
    /// moves, then the one it runs from). Returns `false` if it no longer runs.
    pub fn set_files(&mut self, id: TorrentId, files: Arc<[PathBuf]>) -> bool {
        let Some(entry) = self.torrents.get_mut(&id) else {
            return false;
        };
        let before = std::mem::replace(&mut entry.files, files.clone());
        self.touched.insert(id);
        self.release(id, &before);
        self.claim(id, &files);
        true
    }

    /// Forgets a torrent, returning it.
    pub fn remove(&mut self, id: TorrentId) -> Option<TorrentEntry> {
        self.version += 1;
        let entry = self.torrents.remove(&id)?;
        if self.by_hash.get(&entry.info.info_hash) == Some(&id) {
            self.by_hash.remove(&entry.info.info_hash);
        }
        self.touched.insert(id);
        self.release(id, &entry.files);
        self.rank_queue();
        Some(*entry)
    }

    /// The running torrents in the queue's order (first first).
    pub fn queue_order(&self) -> Vec<TorrentId> {
        let mut order: Vec<(u64, TorrentId)> = self
            .torrents
            .iter()
            .map(|(id, entry)| (entry.restore.queue_position, *id))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, id)| id).collect()
    }

    /// No torrent run or kept has a later queue key (see `queue_high`).
    fn last_queue_position(&self) -> u64 {
        self.queue_high
    }

    /// Gives every running torrent its rank in the queue (1 first).
    pub fn rank_queue(&mut self) {
        for (rank, id) in self.queue_order().into_iter().enumerate() {
            if let Some(entry) = self.torrents.get_mut(&id) {
                if entry.queue_rank != rank as u32 + 1 {
                    entry.queue_rank = rank as u32 + 1;
                    self.touched.insert(id);
                }
            }
        }
    }

    /// Moves torrent `id` in the queue, and numbers every running torrent's key by its new
    /// place (`1..`). Returns whether it is a running torrent (else nothing moved).
    pub fn move_in_queue(&mut self, id: TorrentId, to: proto::QueueMove) -> bool {
        let mut order = self.queue_order();
        let Some(at) = order.iter().position(|other| *other == id) else {
            return false;
        };
        let moved = order.remove(at);
        let to = match to {
            proto::QueueMove::Top => 0,
            proto::QueueMove::Up => at.saturating_sub(1),
            proto::QueueMove::Down => (at + 1).min(order.len()),
            proto::QueueMove::Bottom => order.len(),
        };
        order.insert(to, moved);
        self.queue_high = self.queue_high.max(order.len() as u64);
        // (Records kept unrestored keep their keys: one restored later takes its place
        // among these by it.)
        for (rank, id) in order.into_iter().enumerate() {
            if let Some(entry) = self.torrents.get_mut(&id) {
                entry.restore.queue_position = rank as u64 + 1;
                entry.queue_rank = rank as u32 + 1;
                self.touched.insert(id);
            }
        }
        self.version += 1;
        true
    }

    /// Releases every hold of a patron that left. Returns the ephemeral torrents nobody
    /// holds any more. They stay registered until the caller closes them with
    /// [`TorrentRegistry::remove_orphan`] (under the add lock): until then a patron adding the
    /// same torrent joins it, and it is not closed.
    pub fn release_all(&mut self, patron: PatronId) -> Vec<TorrentId> {
        let mut orphans = Vec::new();
        for (id, entry) in self.torrents.iter_mut() {
            if !entry.holders.remove(&patron) {
                continue;
            }
            self.touched.insert(*id);
            if entry.restore.ephemeral && entry.holders.is_empty() {
                orphans.push(*id);
            }
        }
        orphans
    }

    /// Removes an ephemeral torrent if still nobody holds it; true if it was removed.
    pub fn remove_orphan(&mut self, id: TorrentId) -> bool {
        self.version += 1;
        let orphan = self
            .torrents
            .get(&id)
            .is_some_and(|e| e.restore.ephemeral && e.holders.is_empty());
        if orphan {
            self.remove(id);
        }
        orphan
    }

    /// All torrents, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&TorrentId, &TorrentEntry)> {
        self.torrents.iter().map(|(id, entry)| (id, &**entry))
    }

    /// All torrents, by id, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&TorrentId, &mut TorrentEntry)> {
        self.touched.extend(self.torrents.keys().copied());
        self.torrents
            .iter_mut()
            .map(|(id, entry)| (id, &mut **entry))
    }

    /// How many torrents run.
    pub fn len(&self) -> usize {
        self.torrents.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.torrents.is_empty()
    }

    /// The restart records, as written in `records/` (see [`crate::records`]): every
    /// torrent to restore, running or not restored, ephemeral ones excepted.
    pub fn records(&self) -> std::io::Result<Vec<(TorrentId, Vec<u8>)>> {
        self.counted()
            .map(|(id, spec)| Ok((id, crate::records::encode(spec)?)))
            .collect()
    }

    /// Every recorded torrent's record (running and not ephemeral, or kept unrestored), for
    /// its counts ([`crate::counts`]).
    pub fn counted(&self) -> impl Iterator<Item = (TorrentId, &RestoreSpec)> {
        let running = self
            .torrents
            .iter()
            .filter(|(_, entry)| !entry.restore.ephemeral)
            .map(|(id, entry)| (*id, &entry.restore));
        running.chain(self.unrestored.iter().map(|(id, u)| (*id, &u.restore)))
    }

    /// Torrent `id`'s record as it is written, if it has one (a running torrent not
    /// ephemeral, or one kept unrestored).
    pub fn record(&self, id: TorrentId) -> std::io::Result<Option<Vec<u8>>> {
        let spec = match (self.torrents.get(&id), self.unrestored.get(&id)) {
            (Some(entry), _) if !entry.restore.ephemeral => Some(&entry.restore),
            (_, Some(kept)) => Some(&kept.restore),
            _ => None,
        };
        spec.map(crate::records::encode).transpose()
    }

    /// Reads the restart records written by [`TorrentRegistry::save`]. No file means no
    /// torrents; a file that cannot be read or parsed (empty included: a saved registry is
    /// never empty, it is at least `{}`) is an error, and the caller must not overwrite it.
    pub fn load_records(path: &Path) -> Result<BTreeMap<TorrentId, RestoreSpec>, String> {
        let bytes = match crate::store::read_state_file(path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.to_string()),
        };
        let records = serde_json::from_slice::<BTreeMap<u64, RestoreSpec>>(&bytes).map_err(|e| {
            let what = if bytes.is_empty() {
                "is empty".to_owned()
            } else {
                format!("is damaged ({e})")
            };
            format!(
                "{} {what}; it lists the torrents to restore, so the broker will not start over it: restore it from a backup, or move it aside to start with no torrents",
                path.display()
            )
        })?;
        Ok(records
            .into_iter()
            .map(|(id, spec)| (TorrentId(id), spec))
            .collect())
    }
}

/// The files a torrent has on disk (padding files are never there), as full paths.
pub fn files_of(handle: &ManagedTorrentHandle, data_folder: &Path) -> Arc<[PathBuf]> {
    handle
        .with_metadata(|meta| {
            meta.file_infos
                .iter()
                .filter(|f| !f.attrs.padding)
                .map(|f| data_folder.join(&f.relative_filename))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::InfoHash;

    fn kept(registry: &mut TorrentRegistry, id: u64, files: &[&str]) {
        let id = TorrentId(id);
        let info = TorrentInfo {
            id,
            info_hash: InfoHash([id.0 as u8; 20]),
            name: format!("t{id}"),
            save_folder: "/d".into(),
            total_bytes: 0,
        };
        let restore = RestoreSpec::new("/d".into(), "/d".into());
        let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        registry.keep_unrestored(
            id,
            Unrestored {
                info,
                restore,
                error: String::new(),
                files: files.into(),
            },
        );
    }

    fn owner(registry: &TorrentRegistry, files: &[&str], except: Option<u64>) -> Option<u64> {
        let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        registry
            .owned_elsewhere(&files, except.map(TorrentId))
            .map(|(_, id)| id.0)
    }

    #[test]
    fn one_owner_per_file_by_path_folder_and_contents() {
        let mut registry = TorrentRegistry::default();
        kept(&mut registry, 1, &["/d/movie.mkv", "/d/show/e1.mkv"]);
        // The same file.
        assert_eq!(owner(&registry, &["/d/x", "/d/movie.mkv"], None), Some(1));
        // A file where the other has a folder, and a folder where the other has a file.
        assert_eq!(owner(&registry, &["/d/show"], None), Some(1));
        assert_eq!(owner(&registry, &["/d/movie.mkv/inner"], None), Some(1));
        // Neighbours and names that merely share a prefix are free.
        assert_eq!(
            owner(&registry, &["/d/show2/e1.mkv", "/d/movie.mkv.part"], None),
            None
        );
        // A torrent's own files are its own (a recheck, a restore).
        assert_eq!(owner(&registry, &["/d/movie.mkv"], Some(1)), None);
        // Forgotten, its files are free again.
        registry.forget_unrestored(TorrentRef::Id(TorrentId(1)));
        assert_eq!(owner(&registry, &["/d/movie.mkv", "/d/show"], None), None);
        // Two old records with a file in common: it stays claimed until both are gone.
        kept(&mut registry, 2, &["/d/old.iso"]);
        kept(&mut registry, 3, &["/d/old.iso"]);
        registry.forget_unrestored(TorrentRef::Id(TorrentId(2)));
        assert_eq!(owner(&registry, &["/d/old.iso"], None), Some(3));
        registry.forget_unrestored(TorrentRef::Id(TorrentId(3)));
        assert_eq!(owner(&registry, &["/d/old.iso"], None), None);
    }

    /// A repacked entry is the same entry: its info, life, record, files and holders (a
    /// patron's, or none: an emptied set is dropped, not moved), and the status its
    /// holders were last sent while it has any.
    #[test]
    fn a_repacked_entry_keeps_everything() {
        let mut registry = TorrentRegistry::default();
        let info = |id: u64| TorrentInfo {
            id: TorrentId(id),
            info_hash: InfoHash([id as u8; 20]),
            name: format!("t{id}"),
            save_folder: "/d".into(),
            total_bytes: 7,
        };
        let dormant = || Dormant {
            bytes: 7,
            idle_since: std::time::Instant::now(),
            next_announce: None,
            tracker: false,
        };
        let mut restore = RestoreSpec::new("/d".into(), "/d/data".into());
        restore.labels = vec!["films".into()];
        for id in [1, 2] {
            let files: Arc<[PathBuf]> = vec![PathBuf::from(format!("/d/{id}.iso"))].into();
            registry.insert_dormant(info(id), dormant(), files, restore.clone());
        }
        registry.get_mut(TorrentId(1)).unwrap().holders.insert(9);
        // Held once, then let go: an empty set that had a node.
        let two = registry.get_mut(TorrentId(2)).unwrap();
        two.holders.insert(9);
        two.holders.remove(&9);
        // Both were sent a status while held.
        for id in [1, 2] {
            let sent = TorrentStatus::idle(&info(id), proto::TorrentState::Seeding);
            registry.get_mut(TorrentId(id)).unwrap().last_status = Some(Box::new(sent));
        }
        // (A seed that slept, woke and slept again is named twice.)
        drop(registry.repack(&[TorrentId(1), TorrentId(2), TorrentId(1)]));
        for id in [1, 2] {
            let entry = registry.get(TorrentId(id)).unwrap();
            assert_eq!(entry.info, info(id));
            assert!(matches!(
                entry.life,
                Life::Dormant(Dormant { bytes: 7, .. })
            ));
            assert_eq!(entry.restore.labels, restore.labels);
            assert_eq!(entry.restore.data_folder, restore.data_folder);
            assert_eq!(&*entry.files, [PathBuf::from(format!("/d/{id}.iso"))]);
        }
        assert_eq!(
            registry.get(TorrentId(1)).unwrap().holders,
            BTreeSet::from([9])
        );
        assert!(registry.get(TorrentId(2)).unwrap().holders.is_empty());
        // What holders were last sent: kept while one holds it, dropped with none.
        let sent = |id: u64| {
            let entry = registry.get(TorrentId(id)).unwrap();
            (
                entry.last_status.as_deref().map(|s| s.id),
                entry.status_forgotten,
            )
        };
        assert_eq!(sent(1), (Some(TorrentId(1)), false));
        assert_eq!(sent(2), (None, true));
        assert_eq!(owner(&registry, &["/d/1.iso"], None), Some(1));
        assert_eq!(owner(&registry, &["/d/2.iso"], None), Some(2));
    }
}
