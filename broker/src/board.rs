//! The status board this broker publishes (DESIGN §7): which torrent is in which slot, and a
//! larger board when the slots run out.
//!
//! The layout, the seqlock and the futex are [`proto::board`]'s; this module only decides
//! what goes where. Writes come from one place (the status loop in [`crate::service::fanout`]) and a
//! board is written under this module's lock, so the board has exactly one writer.

use proto::board::{BoardWriter, STOPPED, SUPERSEDED};
use proto::{TorrentId, TorrentSummary};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Slots on a broker's first board by default (`--board-slots`); each growth doubles them.
pub const INITIAL_SLOTS: usize = 256;

/// How often, at most, readers asleep on the board are woken for routine progress (bytes,
/// rates, peers). A torrent that comes, goes or changes stage (completes, fails, pauses)
/// wakes them at once. Every wake costs the broker a few µs per sleeping reader.
pub const WAKE_EVERY: Duration = Duration::from_millis(500);

/// Readers woken through eventfds of their own, at most (each costs the broker two
/// descriptors: its connection and its eventfd). Past it, readers sleep on the futex alone.
pub const MAX_WAITERS: usize = 1024;

/// How often, at most, a wake looks for waiters whose reader went.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// A reader that gave the broker an eventfd to wake it: its connection (its closing says the
/// reader is gone) and the eventfd.
struct Waiter {
    channel: OwnedFd,
    event: OwnedFd,
}

/// The board and what each of its slots shows.
pub struct StatusBoard {
    inner: Mutex<Inner>,
    /// Held by whoever decides what the board shows, from looking at the registry to
    /// writing (the status loop for a whole pass, a reply for its torrent): a pass that
    /// looked before an add or a close cannot then undo what that add or close wrote.
    deciding: Mutex<()>,
}

/// A write to the board wakes sleeping readers at once (not at most every [`WAKE_EVERY`]).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Urgent(bool);

/// Where a torrent is on the board, and what it shows there, as fingerprints.
struct Shown {
    slot: usize,
    /// Of its whole summary: it changed when this does.
    whole: u64,
    /// Of its stage (state, complete) and holders: a change of these wakes readers at once.
    stage: u64,
}

struct Inner {
    writer: BoardWriter,
    /// Slot of each torrent on the board, and fingerprints of what it shows: not a copy of
    /// it (a summary and its texts were half a kilobyte an idle seed kept for nothing; the
    /// board itself holds what it shows).
    shown: HashMap<TorrentId, Shown>,
    /// The fingerprints' keys, this process's own (no torrent name can be made to collide).
    keys: std::collections::hash_map::RandomState,
    /// Fingerprints that could not be taken whole (each made unique by this count).
    unhashable: u64,
    /// Empty slots below `in_use`, lowest first, so the used part stays compact.
    free: BTreeSet<usize>,
    /// Slots readers look at: every used slot is below it.
    in_use: usize,
    generation: u64,
    /// When sleeping readers were last woken, and whether changes were published since.
    woken: Instant,
    unwoken: bool,
    /// Readers woken through their own eventfds, and when gone ones were last dropped.
    waiters: Vec<Waiter>,
    pruned: Instant,
}

impl StatusBoard {
    /// Creates this broker's first board, of `slots` slots.
    pub fn create(slots: usize) -> io::Result<StatusBoard> {
        let generation = first_generation();
        Ok(StatusBoard {
            inner: Mutex::new(Inner {
                writer: BoardWriter::create(slots, std::process::id(), generation)?,
                shown: HashMap::new(),
                keys: Default::default(),
                unhashable: 0,
                free: BTreeSet::new(),
                in_use: 0,
                generation,
                woken: Instant::now(),
                unwoken: false,
                waiters: Vec::new(),
                pruned: Instant::now(),
            }),
            deciding: Mutex::new(()),
        })
    }

    /// Takes the right to decide what the board shows (see `deciding`). Take it before the
    /// service's lock, never while holding it.
    pub fn decide(&self) -> MutexGuard<'_, ()> {
        self.deciding.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every section below leaves the bookkeeping consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for `torrents` at once (a restart knows how many it restores): one board of
    /// the size they need, not a doubling after every few hundred.
    pub fn reserve(&self, torrents: usize) {
        let mut inner = self.inner();
        let wanted = torrents
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .min(proto::board::MAX_CAPACITY);
        if wanted > inner.writer.capacity() {
            if let Err(e) = inner.grow_to(wanted) {
                tracing::warn!("cannot make the status board room for {torrents} torrents: {e}");
            }
        }
    }

    /// A read-only descriptor of the current board, for a patron.
    pub fn reader_fd(&self) -> io::Result<OwnedFd> {
        self.inner().writer.reader_fd()
    }

    /// Shows `changed` (torrents new or changed) and takes off the torrents `gone`, and
    /// every torrent not in `present` when it is given, as one batch. Sleeping readers are
    /// woken at once when a torrent came or went or when `urgent` (a stage changed), else at
    /// most every [`WAKE_EVERY`].
    pub fn update(
        &self,
        changed: Vec<TorrentSummary>,
        gone: &[TorrentId],
        present: Option<&HashSet<TorrentId>>,
        urgent: bool,
    ) {
        let mut inner = self.inner();
        let mut any = false;
        let mut structural = false;
        let mut gone = gone.to_vec();
        if let Some(present) = present {
            gone.extend(
                inner
                    .shown
                    .keys()
                    .filter(|id| !present.contains(id))
                    .copied(),
            );
        }
        for id in gone {
            if let Some(Shown { slot, .. }) = inner.shown.remove(&id) {
                inner.writer.clear(slot);
                inner.free.insert(slot);
                any = true;
                structural = true;
            }
        }
        for summary in changed {
            structural |= !inner.shown.contains_key(&summary.info.id);
            any |= inner.show(summary).is_some();
        }
        if any {
            inner.compact_in_use();
        }
        inner.end_batch(any, urgent || structural);
    }

    /// Shows one torrent now (new or changed), outside the status loop's rounds. Readers
    /// are woken at once if it is new or its stage or holders changed, else as for routine
    /// progress (a patron repeating a cheap request must not wake every reader each time).
    pub fn show(&self, summary: TorrentSummary) {
        let mut inner = self.inner();
        let written = inner.show(summary);
        inner.end_batch(written.is_some(), written == Some(Urgent(true)));
    }

    /// Takes one torrent off the board now.
    pub fn remove(&self, id: TorrentId) {
        let mut inner = self.inner();
        if let Some(Shown { slot, .. }) = inner.shown.remove(&id) {
            inner.writer.clear(slot);
            inner.free.insert(slot);
            inner.compact_in_use();
            inner.end_batch(true, true);
        }
    }

    /// Marks the board stopped: readers stop waiting and know to look for a new broker.
    pub fn stop(&self) {
        let mut inner = self.inner();
        inner.writer.mark(STOPPED);
        inner.wake_waiters();
    }

    /// Whether `event` can wake a reader: an eventfd, and room for one more waiter.
    pub fn can_take_waiter(&self, event: &OwnedFd) -> bool {
        use std::os::fd::AsRawFd;
        let is_eventfd = std::fs::read_link(format!("/proc/self/fd/{}", event.as_raw_fd()))
            .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]");
        let mut inner = self.inner();
        inner.prune_waiters();
        is_eventfd && inner.waiters.len() < MAX_WAITERS
    }

    /// Wakes the reader of `channel` through `event` at every wake from now on, until it
    /// closes `channel`.
    pub fn add_waiter(&self, channel: OwnedFd, event: OwnedFd) {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        // Its writes must never block the status loop, whatever the reader made it.
        let nonblocking = fcntl(event.as_raw_fd(), FcntlArg::F_GETFL).and_then(|flags| {
            let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
            fcntl(event.as_raw_fd(), FcntlArg::F_SETFL(flags))
        });
        if nonblocking.is_err() {
            return;
        }
        let mut inner = self.inner();
        if inner.waiters.len() < MAX_WAITERS {
            inner.waiters.push(Waiter { channel, event });
        }
    }

    /// Drops the waiters whose readers went, at most once a second, when no wake has done so
    /// lately: on a quiet board nothing else would, and each gone waiter holds two
    /// descriptors.
    pub fn prune_now_and_then(&self) {
        let mut inner = self.inner();
        if inner.pruned.elapsed() >= PRUNE_EVERY {
            inner.prune_waiters();
        }
    }

    /// Readers woken through their own eventfds now.
    pub fn waiters(&self) -> usize {
        self.inner().waiters.len()
    }

    /// Torrents shown and slots on the board (for logs and tests).
    pub fn occupancy(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.shown.len(), inner.writer.capacity())
    }
}

impl Inner {
    /// Publishes a batch (if `wrote`) and wakes sleeping readers when it `matters` (a
    /// torrent came, went or changed stage), else at most every [`WAKE_EVERY`].
    fn end_batch(&mut self, wrote: bool, matters: bool) {
        if wrote {
            self.writer.publish_quietly();
            self.unwoken = true;
        }
        if self.unwoken && (matters || self.woken.elapsed() >= WAKE_EVERY) {
            self.wake();
        }
    }

    fn wake(&mut self) {
        self.writer.wake();
        self.wake_waiters();
        self.woken = Instant::now();
        self.unwoken = false;
    }

    /// Drops the waiters whose reader went (its connection hung up, or sent anything: a
    /// reader only ever closes it).
    fn prune_waiters(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        self.pruned = Instant::now();
        if self.waiters.is_empty() {
            return;
        }
        let gone: Vec<bool> = {
            let mut fds: Vec<PollFd> = self
                .waiters
                .iter()
                .map(|w| PollFd::new(w.channel.as_fd(), PollFlags::POLLIN))
                .collect();
            if poll(&mut fds, PollTimeout::ZERO).is_err() {
                return;
            }
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut index = 0;
        self.waiters.retain(|_| {
            index += 1;
            !gone[index - 1]
        });
    }

    /// Writes every waiter's eventfd (it never blocks: a counter that would overflow is left
    /// as it is, which wakes its reader anyway). Gone readers are pruned at most once a
    /// second, not at every wake: writing a gone reader's eventfd harms nobody, and a poll of
    /// every waiter's connection per batch was the wake's main cost.
    fn wake_waiters(&mut self) {
        if self.pruned.elapsed() >= PRUNE_EVERY {
            self.prune_waiters();
        }
        for waiter in &self.waiters {
            let _ = nix::unistd::write(&waiter.event, &1u64.to_ne_bytes());
        }
    }

    /// A fingerprint of `value` as it would be sent (one that could not be taken whole
    /// differs from every other: the torrent is written again rather than a change missed).
    fn fingerprint<T: serde::Serialize>(&mut self, value: &T) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = self.keys.build_hasher();
        if !proto::hash_wire(value, &mut hasher) {
            self.unhashable += 1;
            hasher.write_u64(self.unhashable);
        }
        hasher.finish()
    }

    /// Writes one torrent, if it changed: whether it did, and then whether that is urgent
    /// (it is new, or its stage or holders changed).
    fn show(&mut self, summary: TorrentSummary) -> Option<Urgent> {
        let id = summary.info.id;
        let whole = self.fingerprint(&summary);
        // Unchanged (most torrents a sweep looks at): its stage is not hashed.
        if self
            .shown
            .get(&id)
            .is_some_and(|shown| shown.whole == whole)
        {
            return None;
        }
        let stage = self.fingerprint(&(
            &summary.status.state,
            summary.status.complete,
            summary.holders,
        ));
        let Inner { shown, writer, .. } = self;
        if let Some(shown) = shown.get_mut(&id) {
            writer.write(shown.slot, &summary);
            let urgent = Urgent(shown.stage != stage);
            (shown.whole, shown.stage) = (whole, stage);
            return Some(urgent);
        }
        let slot = match self.free.pop_first() {
            Some(slot) => slot,
            None if self.in_use < self.writer.capacity() => {
                self.in_use += 1;
                self.writer.set_in_use(self.in_use);
                self.in_use - 1
            }
            None => {
                if let Err(e) = self.grow() {
                    tracing::error!("cannot grow the status board: {e}");
                    return None;
                }
                self.in_use += 1;
                self.writer.set_in_use(self.in_use);
                self.in_use - 1
            }
        };
        self.writer.write(slot, &summary);
        self.shown.insert(id, Shown { slot, whole, stage });
        Some(Urgent(true))
    }

    /// Moves everything to a board twice as large and tells readers of the old one.
    fn grow(&mut self) -> io::Result<()> {
        if self.writer.capacity() >= proto::board::MAX_CAPACITY {
            return Err(io::Error::other("the board is as large as a board may be"));
        }
        self.grow_to((self.writer.capacity() * 2).min(proto::board::MAX_CAPACITY))
    }

    /// Moves everything to a board of `capacity` slots (more than now) and tells readers of
    /// the old one.
    fn grow_to(&mut self, capacity: usize) -> io::Result<()> {
        self.generation += 1;
        let bigger = BoardWriter::create(capacity, std::process::id(), self.generation)?;
        for shown in self.shown.values() {
            bigger.copy_from(&self.writer, shown.slot);
        }
        bigger.set_in_use(self.in_use);
        bigger.publish();
        let old = std::mem::replace(&mut self.writer, bigger);
        old.mark(SUPERSEDED);
        self.wake_waiters();
        tracing::info!(slots = capacity, "the status board grew");
        Ok(())
    }

    /// Lowers `in_use` past empty slots at its end, so readers scan less.
    fn compact_in_use(&mut self) {
        let before = self.in_use;
        while self.in_use > 0 && self.free.remove(&(self.in_use - 1)) {
            self.in_use -= 1;
        }
        if self.in_use != before {
            self.writer.set_in_use(self.in_use);
        }
    }
}

/// A generation no earlier broker of this machine used: the time in nanoseconds.
fn first_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{InfoHash, TorrentInfo, TorrentState, TorrentStatus};

    fn summary(id: u64) -> TorrentSummary {
        let info = TorrentInfo {
            id: TorrentId(id),
            info_hash: InfoHash([id as u8; 20]),
            name: format!("t{id}"),
            save_folder: "/d".into(),
            total_bytes: 10,
        };
        TorrentSummary {
            status: TorrentStatus::idle(&info, TorrentState::Seeding),
            info,
            holders: 0,
            held_by_you: false,
            ephemeral: false,
        }
    }

    /// Routine progress is published at once but wakes sleepers at most every WAKE_EVERY; a
    /// torrent that comes or goes, or changes stage, wakes them at once.
    #[test]
    fn sleepers_are_woken_at_once_only_for_what_matters() {
        let board = StatusBoard::create(8).unwrap();
        let reader = proto::board::BoardReader::map(board.reader_fd().unwrap()).unwrap();
        let present: HashSet<_> = [TorrentId(1), TorrentId(2)].into();
        board.update(vec![summary(1)], &[], Some(&present), false); // new: wakes
        let seen = reader.header().changes;
        let waiter = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let now = reader.wait_for_change(seen, Duration::from_secs(10));
            (now, started.elapsed(), reader)
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut moved = summary(1);
        moved.status.bytes_done = 5;
        board.update(vec![moved.clone()], &[], Some(&present), false); // routine, just after a wake
        std::thread::sleep(Duration::from_millis(200));
        board.update(vec![summary(2)], &[], Some(&present), false); // new: wakes
        let (now, waited, reader) = waiter.join().unwrap();
        assert!(now > seen);
        assert!(
            waited >= Duration::from_millis(200),
            "woken by routine progress"
        );
        assert!(
            waited < Duration::from_secs(5),
            "not woken by a new torrent"
        );
        // A stage change wakes at once too.
        let seen = reader.header().changes;
        let waiter = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            reader.wait_for_change(seen, Duration::from_secs(10));
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        moved.status.complete = true;
        board.update(vec![moved], &[], Some(&present), true);
        assert!(waiter.join().unwrap() < Duration::from_secs(5));
    }

    #[test]
    fn a_reader_follows_growth_and_removal() {
        let board = StatusBoard::create(INITIAL_SLOTS).unwrap();
        let first = proto::board::BoardReader::map(board.reader_fd().unwrap()).unwrap();
        let all: Vec<_> = (0..INITIAL_SLOTS as u64 + 1).map(summary).collect();
        let present: HashSet<_> = all.iter().map(|s| s.info.id).collect();
        board.update(all[..10].to_vec(), &[], Some(&present), false);
        assert_eq!(first.iter().count(), 10);
        // Unchanged: no write, no wake.
        let changes = first.header().changes;
        board.update(all[..10].to_vec(), &[], Some(&present), false);
        assert_eq!(first.header().changes, changes);
        board.update(all.clone(), &[], Some(&present), false);
        assert!(first.header().superseded && !first.is_current());
        let second = proto::board::BoardReader::map(board.reader_fd().unwrap()).unwrap();
        assert_eq!(second.header().capacity, 2 * INITIAL_SLOTS);
        assert_eq!(second.iter().count(), all.len());
        assert_ne!(first.header().generation, second.header().generation);
        // Torrents gone from `present` leave the board; the scanned part shrinks back.
        let kept: HashSet<_> = [TorrentId(0)].into();
        board.update(Vec::new(), &[], Some(&kept), false);
        assert_eq!(
            second.iter().map(|s| s.info.id).collect::<Vec<_>>(),
            [TorrentId(0)]
        );
        assert_eq!(board.occupancy().0, 1);
        board.stop();
        assert!(second.header().stopped);
    }
}
