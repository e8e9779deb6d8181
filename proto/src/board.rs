//! The status board (DESIGN §7): every running torrent's status in memory the broker writes
//! and patrons only read.
//!
//! Asking the broker for a status costs a socket round trip (tens of µs) and broker time for
//! every patron that asks; with a thousand `watch`es open the broker would do nothing else.
//! So the broker publishes every torrent's status into one shared region and patrons read it
//! themselves, in well under a microsecond, without the broker noticing.
//!
//! # Why it is built this way
//! - **A sealed memfd, read-only for patrons.** The broker maps it writable, then seals it
//!   (`F_SEAL_FUTURE_WRITE`, no shrink, no grow, no further seals) and hands patrons a
//!   read-only descriptor. No patron can write it, map it writable or shrink it under the
//!   broker (which would be a SIGBUS in the broker). ipc-channel's `IpcSharedMemory` is not
//!   used here: its receiver maps writable and reads through `&[u8]` (DESIGN §10).
//! - **Only atomics.** Every shared word is an [`AtomicU64`] (the futex word an
//!   [`AtomicU32`]): no `&[u8]` ever covers memory another process writes.
//! - **A seqlock per slot.** The writer makes a slot's sequence odd, writes, makes it even;
//!   a reader that saw an odd sequence, or a different one after reading, reads again. One
//!   writer (the broker), any number of readers, no locks a reader could hold against it.
//! - **A futex to wait on.** After each batch of changes the broker bumps the change counter
//!   and the futex word and wakes every waiter once; a waiting patron sleeps in the kernel.
//! - **Generations.** A board never moves or resizes. When the broker needs more slots it
//!   publishes a new, larger board and marks the old one superseded; a stopping broker marks
//!   its board stopped. A reader that sees either fetches the current board again.
//!
//! # Layout (little-endian 64-bit words)
//! A header of [`HEADER_WORDS`] words, then `capacity` slots of [`SLOT_WORDS`] words each,
//! then `capacity` lines of [`LINE_WORDS`] words, then `capacity` extras of [`EXTRA_WORDS`]
//! words. A slot holds one [`TorrentSummary`] (without `held_by_you`, which depends on the
//! reader): the status fields and up to [`NAME_BYTES`] bytes of name, [`FOLDER_BYTES`] of
//! save folder, [`ERROR_BYTES`] of error message and [`LABELS_BYTES`] of labels; a longer
//! text is cut at a character boundary and marked with a trailing `…`.
//!
//! A name of up to [`NAME_INLINE`] bytes and a folder of up to [`FOLDER_INLINE`] sit in the
//! slot itself; longer ones, error messages and labels sit in the slot's extra, written
//! (under the slot's seqlock) only when there is one. The pages of a memfd take memory only
//! once written, so a board of ten thousand idle seeds with ordinary names costs the
//! slots and lines it uses (about 0.5 KiB a torrent), not room for texts it never has.
//!
//! Line `i` is slot `i`'s line of `patron-client list` ([`crate::text::status_line`]),
//! written by the broker once per change under a seqlock of its own: listing ten thousand
//! torrents is then a copy of a few pages, not ten thousand decodes and formats.

use crate::{InfoHash, TorrentId, TorrentInfo, TorrentState, TorrentStatus, TorrentSummary};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// First word of every board: "TPBOARD1".
pub const MAGIC: u64 = u64::from_le_bytes(*b"TPBOARD1");
/// Bumped on any change of the layout below.
pub const LAYOUT_VERSION: u64 = 5;
/// Words in the header.
pub const HEADER_WORDS: usize = 16;
/// Words in a slot.
pub const SLOT_WORDS: usize = S_FOLDER_INLINE + FOLDER_INLINE / 8;
/// Words in a slot's extra: its long texts.
pub const EXTRA_WORDS: usize = X_LABELS + LABELS_BYTES / 8;
/// Words per torrent in the lines region: its `list` line, ready to print.
pub const LINE_WORDS: usize = 20;
/// Longest `list` line kept; a longer one is marked, and readers format it from the slot.
pub const LINE_BYTES: usize = (LINE_WORDS - L_TEXT) * 8;
/// Longest name kept whole.
pub const NAME_BYTES: usize = 256;
/// Longest name kept in the slot itself.
pub const NAME_INLINE: usize = 64;
/// Longest save folder kept in the slot itself.
pub const FOLDER_INLINE: usize = 96;
/// Longest save folder kept whole.
pub const FOLDER_BYTES: usize = 448;
/// Longest error message kept whole.
pub const ERROR_BYTES: usize = 128;
/// Room for a torrent's labels, joined by commas: the most a torrent may have, whole.
pub const LABELS_BYTES: usize = 264;
const _: () = assert!(
    LABELS_BYTES >= crate::MAX_LABELS * (crate::MAX_LABEL_BYTES + 1) - 1 && LABELS_BYTES % 8 == 0
);
/// The most slots a board may have (4 GiB of board is not a status board any more).
pub const MAX_CAPACITY: usize = 1 << 20;

// Header words.
const H_MAGIC: usize = 0;
const H_LAYOUT: usize = 1;
const H_PID: usize = 2;
const H_GENERATION: usize = 3;
const H_FLAGS: usize = 4;
const H_CHANGES: usize = 5;
/// Accessed only as an [`AtomicU32`] (its low half on little-endian): the futex word.
const H_FUTEX: usize = 6;
const H_CAPACITY: usize = 7;
const H_SLOT_WORDS: usize = 8;
const H_IN_USE: usize = 9;

/// The broker has stopped: nothing on this board will change again.
pub const STOPPED: u64 = 1;
/// A newer board replaced this one (more slots): fetch it.
pub const SUPERSEDED: u64 = 2;

// Slot words.
const S_SEQ: usize = 0;
const _: () = assert!(S_SEQ == 0 && L_SEQ == 0); // `consistent` reads word 0
const S_FLAGS: usize = 1;
const S_ID: usize = 2;
const S_HASH: usize = 3; // three words
const S_STATE: usize = 6;
const S_PROGRESS: usize = 7;
const S_DONE: usize = 8;
const S_TOTAL: usize = 9;
const S_DOWN: usize = 10;
const S_UP: usize = 11;
const S_UPLOADED: usize = 12;
const S_PEERS: usize = 13;
const S_ETA: usize = 14;
const S_HOLDERS: usize = 15;
const S_LENGTHS: usize = 16;
const S_INFO_TOTAL: usize = 17;
/// The queue position, `0` for none.
const S_QUEUE: usize = 18;
const S_DOWNLOADED: usize = 19;
const S_SEEDING_SECS: usize = 20;
/// The seeding limits: an `f64`'s bits, then seconds; [`NO_LIMIT`] for none.
const S_RATIO_LIMIT: usize = 21;
const S_SEED_TIME_LIMIT: usize = 22;
const S_IDLE_LIMIT: usize = 23;
/// A seeding limit that is not set.
const NO_LIMIT: u64 = u64::MAX;
const S_NAME_INLINE: usize = 24;
const S_FOLDER_INLINE: usize = S_NAME_INLINE + NAME_INLINE / 8;
const _: () = assert!(NAME_INLINE % 8 == 0 && FOLDER_INLINE % 8 == 0);

// Extra words: the texts too long for the slot (each region used only when flagged).
const X_NAME: usize = 0;
const X_FOLDER: usize = X_NAME + NAME_BYTES / 8;
const X_ERROR: usize = X_FOLDER + FOLDER_BYTES / 8;
const X_LABELS: usize = X_ERROR + ERROR_BYTES / 8;

// Line words: its own sequence, the torrent's id, the length, the text.
const L_SEQ: usize = 0;
const L_ID: usize = 1;
const L_LEN: usize = 2;
const L_TEXT: usize = 3;
/// In `L_LEN`: the line did not fit; format it from the slot.
const TOO_LONG: u64 = u64::MAX;

// Slot flags.
const OCCUPIED: u64 = 1;
const COMPLETE: u64 = 2;
const HAS_ETA: u64 = 4;
const EPHEMERAL: u64 = 8;
const NAME_CUT: u64 = 16;
const FOLDER_CUT: u64 = 32;
const ERROR_CUT: u64 = 64;
const LABELS_CUT: u64 = 128;
/// The name is in the slot's extra, not in the slot.
const NAME_LONG: u64 = 256;
/// The save folder is in the slot's extra, not in the slot.
const FOLDER_LONG: u64 = 512;

/// Bytes a board of `capacity` slots takes.
pub fn board_bytes(capacity: usize) -> usize {
    (HEADER_WORDS + capacity * (SLOT_WORDS + LINE_WORDS + EXTRA_WORDS)) * 8
}

/// One slot: its own words (the sequence in word 0) and its extra, read and written under
/// the slot's sequence.
#[derive(Clone, Copy)]
struct Slot<'a> {
    words: &'a [AtomicU64],
    extra: &'a [AtomicU64],
}

/// A shared mapping, seen only as words.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain memory that lives until `Drop`; every access goes through
// atomics (see `words`), so sharing it between threads is as safe as sharing an
// `&[AtomicU64]`.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, writable: bool) -> io::Result<Mapping> {
        let length = NonZeroUsize::new(len).ok_or_else(|| invalid("an empty board"))?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // A fresh shared mapping at an address the kernel picks: it aliases no Rust object.
        // The caller checked that the file is at least `len` bytes long and sealed against
        // shrinking (the broker) or that the broker sealed it (a patron).
        // SAFETY: no Rust object is aliased, and no access within `len` can fault.
        let ptr = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) }?;
        Ok(Mapping { ptr, len })
    }

    /// The whole mapping as 64-bit atomics.
    fn words(&self) -> &[AtomicU64] {
        // Only ever accessed through these atomics (and `futex` below, which never overlaps
        // a word read as u64); another process writing the same memory is what atomics are
        // for. A read-only mapping is fine: atomic `load`s of 64 bits or less are plain
        // loads that never write (std documents this as sound for such sizes).
        // SAFETY: page-aligned (so aligned for u64) and valid for `len` bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// The futex word.
    fn futex(&self) -> &AtomicU32 {
        // The mapping is at least a header long, as checked at creation and at mapping; the
        // word is never accessed as an `AtomicU64` (see `H_FUTEX`).
        // SAFETY: `H_FUTEX` is within the header and 8-byte aligned; no mixed-size access.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .cast::<u64>()
                .add(H_FUTEX)
                .cast::<AtomicU32>()
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Every reference into the mapping borrows `self`.
        // SAFETY: `ptr`/`len` are exactly what mmap returned; no reference outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a status board: {why}"),
    )
}

/// The header: who publishes this board and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The broker's pid.
    pub broker_pid: u32,
    /// Changes at every restart and every resize.
    pub generation: u64,
    /// The broker stopped.
    pub stopped: bool,
    /// A newer board replaced this one.
    pub superseded: bool,
    /// Bumped once per batch of changes.
    pub changes: u64,
    /// Slots on this board.
    pub capacity: usize,
}

/// The broker's side: creates a board and writes it.
pub struct BoardWriter {
    memfd: OwnedFd,
    map: Mapping,
    capacity: usize,
}

impl BoardWriter {
    /// Creates a sealed board of `capacity` empty slots for broker `pid`, generation
    /// `generation`.
    pub fn create(capacity: usize, pid: u32, generation: u64) -> io::Result<BoardWriter> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let len = board_bytes(capacity);
        let memfd = memfd_create(
            c"torrent-patron-board",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        nix::unistd::ftruncate(&memfd, len as libc::off_t)?;
        let map = Mapping::new(&memfd, len, true)?;
        // From here on no one (the broker included) can map it writable again, write to it
        // with write(2), punch holes in it, shrink or grow it: our mapping is the only way in.
        fcntl(
            memfd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_FUTURE_WRITE
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let board = BoardWriter {
            memfd,
            map,
            capacity,
        };
        let w = board.map.words();
        w[H_LAYOUT].store(LAYOUT_VERSION, Ordering::Relaxed);
        w[H_PID].store(u64::from(pid), Ordering::Relaxed);
        w[H_GENERATION].store(generation, Ordering::Relaxed);
        w[H_CAPACITY].store(capacity as u64, Ordering::Relaxed);
        w[H_SLOT_WORDS].store(SLOT_WORDS as u64, Ordering::Relaxed);
        // The magic last: a board with it is complete.
        w[H_MAGIC].store(MAGIC, Ordering::Release);
        Ok(board)
    }

    /// A read-only descriptor of the board, for a patron.
    pub fn reader_fd(&self) -> io::Result<OwnedFd> {
        // Reopening through /proc gives a new open file description with O_RDONLY; with
        // the seals that makes a writable mapping doubly impossible.
        let path = format!("/proc/self/fd/{}", self.memfd.as_raw_fd());
        let file = std::fs::OpenOptions::new().read(true).open(path)?;
        Ok(OwnedFd::from(file))
    }

    /// Slots on this board.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes `summary` into slot `index` (seqlock: readers never see half of it).
    pub fn write(&self, index: usize, summary: &TorrentSummary) {
        let Some(slot) = self.slot(index) else { return };
        let status = &summary.status;
        let (name, name_cut) = cut(&status.name, NAME_BYTES);
        let (folder, folder_cut) = cut(&summary.info.save_folder, FOLDER_BYTES);
        let (state, error) = match &status.state {
            TorrentState::ResolvingMetadata => (0, ""),
            TorrentState::Checking => (1, ""),
            TorrentState::Downloading => (2, ""),
            TorrentState::Seeding => (3, ""),
            TorrentState::Paused => (4, ""),
            TorrentState::Error(message) => (5, message.as_str()),
            TorrentState::Queued => (6, ""),
            TorrentState::Moving => (7, ""),
        };
        let (error, error_cut) = cut(error, ERROR_BYTES);
        let labels = status.labels.join(",");
        let (labels, labels_cut) = cut(&labels, LABELS_BYTES);
        let name_long = name.len() > NAME_INLINE;
        let folder_long = folder.len() > FOLDER_INLINE;
        let mut flags = OCCUPIED;
        for (on, flag) in [
            (name_long, NAME_LONG),
            (folder_long, FOLDER_LONG),
            (status.complete, COMPLETE),
            (status.eta_secs.is_some(), HAS_ETA),
            (summary.ephemeral, EPHEMERAL),
            (name_cut, NAME_CUT),
            (folder_cut, FOLDER_CUT),
            (error_cut, ERROR_CUT),
            (labels_cut, LABELS_CUT),
        ] {
            if on {
                flags |= flag;
            }
        }
        let hash = hash_words(&status.info_hash);
        let Slot { words: slot, extra } = slot;
        let seq = slot[S_SEQ].load(Ordering::Relaxed);
        slot[S_SEQ].store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let put = |word: usize, value: u64| slot[word].store(value, Ordering::Relaxed);
        put(S_FLAGS, flags);
        put(S_ID, status.id.0);
        for (i, word) in hash.into_iter().enumerate() {
            put(S_HASH + i, word);
        }
        put(S_STATE, state);
        put(S_PROGRESS, status.progress.to_bits());
        put(S_DONE, status.bytes_done);
        put(S_TOTAL, status.bytes_total);
        put(S_DOWN, status.download_rate);
        put(S_UP, status.upload_rate);
        put(S_UPLOADED, status.uploaded);
        put(
            S_PEERS,
            u64::from(status.peers) | u64::from(status.seeds) << 32,
        );
        put(S_ETA, status.eta_secs.unwrap_or(0));
        put(S_HOLDERS, u64::from(summary.holders));
        put(
            S_LENGTHS,
            name.len() as u64
                | (folder.len() as u64) << 16
                | (error.len() as u64) << 32
                | (labels.len() as u64) << 48,
        );
        put(S_INFO_TOTAL, summary.info.total_bytes);
        put(S_QUEUE, status.queue_position.map_or(0, u64::from));
        put(S_DOWNLOADED, status.downloaded);
        put(S_SEEDING_SECS, status.seeding_secs);
        let limits = &status.seed_limits;
        put(S_RATIO_LIMIT, limits.ratio.map_or(NO_LIMIT, f64::to_bits));
        put(S_SEED_TIME_LIMIT, limits.seed_time_secs.unwrap_or(NO_LIMIT));
        put(S_IDLE_LIMIT, limits.idle_secs.unwrap_or(NO_LIMIT));
        // (A text that is empty, or fits the slot, leaves the extra's pages unwritten.)
        match name_long {
            false => put_text(&slot[S_NAME_INLINE..S_FOLDER_INLINE], name),
            true => put_text(&extra[X_NAME..X_FOLDER], name),
        }
        match folder_long {
            false => put_text(&slot[S_FOLDER_INLINE..], folder),
            true => put_text(&extra[X_FOLDER..X_ERROR], folder),
        }
        put_text(&extra[X_ERROR..X_LABELS], error);
        put_text(&extra[X_LABELS..], labels);
        slot[S_SEQ].store(seq.wrapping_add(2) & !1, Ordering::Release);
        let line = crate::text::status_line(status);
        self.write_line(index, status.id, &line);
    }

    fn write_line(&self, index: usize, id: TorrentId, text: &str) {
        let Some(line) = line_of(self.map.words(), self.capacity, index) else {
            return;
        };
        let seq = line[L_SEQ].load(Ordering::Relaxed);
        line[L_SEQ].store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        line[L_ID].store(id.0, Ordering::Relaxed);
        if text.len() <= LINE_BYTES {
            line[L_LEN].store(text.len() as u64, Ordering::Relaxed);
            put_text(&line[L_TEXT..], text);
        } else {
            line[L_LEN].store(TOO_LONG, Ordering::Relaxed);
        }
        line[L_SEQ].store(seq.wrapping_add(2) & !1, Ordering::Release);
    }

    /// Copies slot `index` of `old` (a board of this layout the caller wrote) into the same
    /// slot here, with its line, as they are: a board that grows takes its slots over with
    /// their cut texts still marked cut, and writes no extra it does not use.
    pub fn copy_from(&self, old: &BoardWriter, index: usize) {
        let (Some(from), Some(to)) = (old.slot(index), self.slot(index)) else {
            return;
        };
        let get = |word: usize| from.words[word].load(Ordering::Relaxed);
        let (flags, lengths) = (get(S_FLAGS), get(S_LENGTHS));
        let copy = |from: &[AtomicU64], to: &[AtomicU64], bytes: u64| {
            let words = usize::try_from(bytes).unwrap_or(0).div_ceil(8);
            for (a, b) in from.iter().zip(to).take(words) {
                b.store(a.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        };
        let seq = to.words[S_SEQ].load(Ordering::Relaxed);
        to.words[S_SEQ].store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        copy(
            &from.words[1..],
            &to.words[1..],
            (SLOT_WORDS as u64 - 1) * 8,
        );
        if flags & NAME_LONG != 0 {
            copy(&from.extra[X_NAME..], &to.extra[X_NAME..], lengths & 0xffff);
        }
        if flags & FOLDER_LONG != 0 {
            copy(
                &from.extra[X_FOLDER..],
                &to.extra[X_FOLDER..],
                lengths >> 16 & 0xffff,
            );
        }
        copy(
            &from.extra[X_ERROR..],
            &to.extra[X_ERROR..],
            lengths >> 32 & 0xffff,
        );
        copy(
            &from.extra[X_LABELS..],
            &to.extra[X_LABELS..],
            lengths >> 48,
        );
        to.words[S_SEQ].store(seq.wrapping_add(2) & !1, Ordering::Release);

        let (Some(from), Some(to)) = (
            line_of(old.map.words(), old.capacity, index),
            line_of(self.map.words(), self.capacity, index),
        ) else {
            return;
        };
        let len = from[L_LEN].load(Ordering::Relaxed);
        let seq = to[L_SEQ].load(Ordering::Relaxed);
        to[L_SEQ].store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        to[L_ID].store(from[L_ID].load(Ordering::Relaxed), Ordering::Relaxed);
        to[L_LEN].store(len, Ordering::Relaxed);
        if len != TOO_LONG {
            copy(&from[L_TEXT..], &to[L_TEXT..], len);
        }
        to[L_SEQ].store(seq.wrapping_add(2) & !1, Ordering::Release);
    }

    /// Empties slot `index`.
    pub fn clear(&self, index: usize) {
        let Some(Slot { words: slot, .. }) = self.slot(index) else {
            return;
        };
        let seq = slot[S_SEQ].load(Ordering::Relaxed);
        slot[S_SEQ].store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        slot[S_FLAGS].store(0, Ordering::Relaxed);
        slot[S_SEQ].store(seq.wrapping_add(2) & !1, Ordering::Release);
        self.write_line(index, TorrentId(0), "");
    }

    /// Readers need look at slots below `in_use` only.
    pub fn set_in_use(&self, in_use: usize) {
        self.map.words()[H_IN_USE].store(in_use.min(self.capacity) as u64, Ordering::Release);
    }

    /// Ends a batch of changes: bumps the change counter and wakes every waiter once.
    pub fn publish(&self) {
        self.publish_quietly();
        self.wake();
    }

    /// Ends a batch of changes without waking anyone: a reader that looks (or starts
    /// waiting) sees the counter moved; one asleep wakes at the next [`BoardWriter::wake`].
    pub fn publish_quietly(&self) {
        self.map.words()[H_CHANGES].fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes every waiter once.
    pub fn wake(&self) {
        let futex = self.map.futex();
        futex.fetch_add(1, Ordering::SeqCst);
        futex_wake(futex);
    }

    /// Marks the board [`STOPPED`] or [`SUPERSEDED`] and wakes every waiter.
    pub fn mark(&self, flag: u64) {
        self.map.words()[H_FLAGS].fetch_or(flag, Ordering::SeqCst);
        self.publish();
    }

    /// Reads the board back, as a patron would (tests use it).
    pub fn reader(&self) -> io::Result<BoardReader> {
        BoardReader::map(self.reader_fd()?)
    }

    fn slot(&self, index: usize) -> Option<Slot<'_>> {
        slot_of(self.map.words(), self.capacity, index)
    }
}

fn line_of(words: &[AtomicU64], capacity: usize, index: usize) -> Option<&[AtomicU64]> {
    if index >= capacity {
        return None;
    }
    let start = HEADER_WORDS + capacity * SLOT_WORDS + index * LINE_WORDS;
    words.get(start..start + LINE_WORDS)
}

fn slot_of(words: &[AtomicU64], capacity: usize, index: usize) -> Option<Slot<'_>> {
    if index >= capacity {
        return None;
    }
    let start = HEADER_WORDS + index * SLOT_WORDS;
    let extra = HEADER_WORDS + capacity * (SLOT_WORDS + LINE_WORDS) + index * EXTRA_WORDS;
    Some(Slot {
        words: words.get(start..start + SLOT_WORDS)?,
        extra: words.get(extra..extra + EXTRA_WORDS)?,
    })
}

/// A patron's read-only view of a board.
pub struct BoardReader {
    map: Mapping,
    capacity: usize,
    /// The slot of the torrent looked up last (a reader polling one torrent finds it at once).
    hint: std::sync::atomic::AtomicUsize,
    /// How the broker that writes it is watched.
    broker: BrokerWatch,
}

/// How a board reader tells whether its broker still runs.
enum BrokerWatch {
    /// Through a pidfd of it.
    Pidfd(OwnedFd),
    /// It had gone when the board was mapped.
    Gone,
    /// By its pid in `/proc` (a kernel without pidfds, or not allowed one).
    Proc,
}

/// How often a reader retries a slot the writer is busy with before giving up on it for
/// this read (a writer killed in the middle of a slot leaves it odd forever).
const MAX_RETRIES: u32 = 10_000;

impl BoardReader {
    /// Maps the board behind `fd` (from the broker) read-only, after checking it is one.
    pub fn map(fd: OwnedFd) -> io::Result<BoardReader> {
        let len = usize::try_from(nix::sys::stat::fstat(fd.as_raw_fd())?.st_size)
            .map_err(|_| invalid("negative size"))?;
        if len < board_bytes(0) {
            return Err(invalid("too small"));
        }
        // Without the shrink seal the file could be cut under our mapping (SIGBUS).
        let seals = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS)?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(invalid("not sealed against shrinking"));
        }
        let map = Mapping::new(&fd, len, false)?;
        let w = map.words();
        if w[H_MAGIC].load(Ordering::Acquire) != MAGIC {
            return Err(invalid("wrong magic"));
        }
        let layout = w[H_LAYOUT].load(Ordering::Relaxed);
        if layout != LAYOUT_VERSION || w[H_SLOT_WORDS].load(Ordering::Relaxed) != SLOT_WORDS as u64
        {
            return Err(invalid(&format!(
                "layout {layout}, this patron reads layout {LAYOUT_VERSION}"
            )));
        }
        let capacity = usize::try_from(w[H_CAPACITY].load(Ordering::Relaxed)).unwrap_or(0);
        if capacity > MAX_CAPACITY || board_bytes(capacity) > len {
            return Err(invalid("more slots than bytes"));
        }
        let broker = broker_watch(w[H_PID].load(Ordering::Relaxed) as u32);
        Ok(BoardReader {
            map,
            capacity,
            hint: std::sync::atomic::AtomicUsize::new(0),
            broker,
        })
    }

    /// Whether the broker that writes this board still runs (exists and is not a zombie).
    /// Asked before every read a patron keeps its board for: a poll of a pidfd (well
    /// under a microsecond), not a read of `/proc` (several: the Python package's
    /// `status()` spent most of its time there).
    pub fn broker_alive(&self) -> bool {
        match &self.broker {
            // A pidfd reads as ready once its process has ended, reaped or not.
            BrokerWatch::Pidfd(pidfd) => {
                let mut fds = [nix::poll::PollFd::new(
                    pidfd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                !matches!(
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
                    Ok(n) if n > 0
                )
            }
            BrokerWatch::Gone => false,
            BrokerWatch::Proc => process_alive(self.header().broker_pid),
        }
    }

    /// The header, now.
    pub fn header(&self) -> Header {
        let w = self.map.words();
        let flags = w[H_FLAGS].load(Ordering::Acquire);
        Header {
            broker_pid: w[H_PID].load(Ordering::Relaxed) as u32,
            generation: w[H_GENERATION].load(Ordering::Relaxed),
            stopped: flags & STOPPED != 0,
            superseded: flags & SUPERSEDED != 0,
            changes: w[H_CHANGES].load(Ordering::Acquire),
            capacity: self.capacity,
        }
    }

    /// Whether this board is still the live one: not stopped, not superseded, and its
    /// broker still runs (a SIGKILLed broker marks nothing).
    pub fn is_current(&self) -> bool {
        let header = self.header();
        !header.stopped && !header.superseded && self.broker_alive()
    }

    /// Slots worth looking at.
    fn in_use(&self) -> usize {
        let in_use = self.map.words()[H_IN_USE].load(Ordering::Acquire);
        usize::try_from(in_use).unwrap_or(0).min(self.capacity)
    }

    /// The torrent `id`, if it is on the board.
    pub fn get(&self, id: TorrentId) -> Option<TorrentSummary> {
        let index = self.index_of(id)?;
        self.read(index).filter(|summary| summary.info.id == id)
    }

    /// Only the status of torrent `id` (no save folder: a read of a few dozen words).
    pub fn status(&self, id: TorrentId) -> Option<TorrentStatus> {
        let index = self.index_of(id)?;
        self.consistent(index, decode_status)
            .flatten()
            .filter(|status| status.id == id)
    }

    /// The torrent with this info hash, if it is on the board.
    pub fn find(&self, info_hash: &InfoHash) -> Option<TorrentSummary> {
        let wanted = hash_words(info_hash);
        (0..self.in_use()).find_map(|index| {
            let slot = slot_of(self.map.words(), self.capacity, index)?.words;
            let hash = [0, 1, 2].map(|i| slot[S_HASH + i].load(Ordering::Relaxed));
            if hash != wanted {
                return None;
            }
            self.read(index)
                .filter(|summary| &summary.info.info_hash == info_hash)
        })
    }

    /// Whether no torrent on the board had a text cut to fit its slot.
    pub fn all_texts_whole(&self) -> bool {
        let words = self.map.words();
        (0..self.in_use()).all(|index| {
            slot_of(words, self.capacity, index).is_none_or(|slot| texts_whole(slot.words))
        })
    }

    /// Torrent `id`'s line, and whether its texts are whole (none cut to fit its slot),
    /// from one write: what one torrent's status needs, a few loads whatever the number of
    /// torrents on the board ([`Self::all_texts_whole`] looks at every slot).
    pub fn get_whole(&self, id: TorrentId) -> Option<(TorrentSummary, bool)> {
        let index = self.index_of(id)?;
        let (summary, whole) =
            self.consistent(index, |slot| (decode(slot), texts_whole(slot.words)))?;
        summary
            .filter(|summary| summary.info.id == id)
            .map(|summary| (summary, whole))
    }

    /// Every torrent on the board, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = TorrentSummary> + '_ {
        (0..self.in_use()).filter_map(|index| self.read(index))
    }

    /// Reads slot `index`: `None` if it is empty (or its writer died in the middle of it).
    pub fn read(&self, index: usize) -> Option<TorrentSummary> {
        self.consistent(index, decode).flatten()
    }

    /// Writes every torrent's `list` line, each ended by a newline, in id order, to `out`:
    /// what `patron-client list` prints, copied rather than formatted, through one small
    /// buffer (ten thousand lines are a megabyte: no need to hold them all).
    pub fn write_list(&self, out: &mut dyn std::io::Write) -> io::Result<()> {
        let words = self.map.words();
        // The order first, from the ids alone; slots are taken lowest first, so it is
        // mostly in id order already. A slot reused meanwhile just lands out of place.
        let mut order: Vec<(u64, usize)> = (0..self.in_use())
            .filter_map(|index| {
                let line = line_of(words, self.capacity, index)?;
                (line[L_LEN].load(Ordering::Relaxed) != 0)
                    .then(|| (line[L_ID].load(Ordering::Relaxed), index))
            })
            .collect();
        if !order.is_sorted() {
            order.sort_unstable();
        }
        let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut buffer = [0u8; LINE_BYTES.div_ceil(8) * 8];
        for (_, index) in order {
            let Some(line) = line_of(words, self.capacity, index) else {
                continue;
            };
            let read = consistent(line, |line| {
                let len = line[L_LEN].load(Ordering::Relaxed);
                let Some(len) = usize::try_from(len).ok().filter(|l| *l <= LINE_BYTES) else {
                    return Err(len == TOO_LONG);
                };
                for (i, word) in line[L_TEXT..L_TEXT + len.div_ceil(8)].iter().enumerate() {
                    buffer[i * 8..i * 8 + 8]
                        .copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
                }
                Ok(len)
            });
            match read {
                Some(Ok(len)) if len > 0 => chunk.extend_from_slice(&buffer[..len]),
                // Too long for the lines region: formatted here, from the slot.
                Some(Err(true)) => match self.consistent(index, decode_status).flatten() {
                    Some(status) => {
                        chunk.extend_from_slice(crate::text::status_line(&status).as_bytes())
                    }
                    None => continue,
                },
                // Emptied meanwhile, or its writer died halfway.
                _ => continue,
            }
            chunk.push(b'\n');
            if chunk.len() > 60 * 1024 {
                out.write_all(&chunk)?;
                chunk.clear();
            }
        }
        out.write_all(&chunk)
    }

    /// The slot that seems to hold `id` (a cheap look; the seqlock read confirms it).
    fn index_of(&self, id: TorrentId) -> Option<usize> {
        let words = self.map.words();
        // The hint first (where it was last time), then the lines region's ids: six times
        // denser than the slots'.
        let hint = self.hint.load(Ordering::Relaxed);
        let holds = |index: usize| {
            line_of(words, self.capacity, index).is_some_and(|line| {
                line[L_ID].load(Ordering::Relaxed) == id.0
                    && line[L_LEN].load(Ordering::Relaxed) != 0
            })
        };
        if hint < self.in_use() && holds(hint) {
            return Some(hint);
        }
        let found = (0..self.in_use()).find(|&index| holds(index))?;
        self.hint.store(found, Ordering::Relaxed);
        Some(found)
    }

    /// `read` applied to slot `index` between two equal, even sequence numbers: what it
    /// returns comes from one write, never from two.
    fn consistent<T>(&self, index: usize, mut read: impl FnMut(Slot<'_>) -> T) -> Option<T> {
        let slot = slot_of(self.map.words(), self.capacity, index)?;
        consistent(slot.words, |_| read(slot))
    }

    /// Waits until the change counter differs from `seen` or `timeout` passes; returns the
    /// counter. Sleeps in the kernel (futex), woken once per batch of changes.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now().checked_add(timeout);
        let changes = &self.map.words()[H_CHANGES];
        let futex = self.map.futex();
        loop {
            // The futex word first: a change after this load makes the wait return at once.
            let word = futex.load(Ordering::SeqCst);
            let now = changes.load(Ordering::SeqCst);
            if now != seen {
                return now;
            }
            let left = deadline.map_or(Duration::from_secs(3600), |deadline| {
                deadline.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return now;
            }
            futex_wait(futex, word, left);
        }
    }
}

/// Whether the slot `words` holds no text cut to fit it (an empty slot holds none).
fn texts_whole(words: &[AtomicU64]) -> bool {
    let flags = words[S_FLAGS].load(Ordering::Relaxed);
    flags & OCCUPIED == 0 || flags & (NAME_CUT | FOLDER_CUT | ERROR_CUT | LABELS_CUT) == 0
}

/// `read` applied to `words` (a slot or a line, its sequence in word 0) between two equal,
/// even sequence numbers: what it returns comes from one write, never from two.
fn consistent<T>(words: &[AtomicU64], mut read: impl FnMut(&[AtomicU64]) -> T) -> Option<T> {
    for attempt in 0..MAX_RETRIES {
        let before = words[0].load(Ordering::Acquire);
        if before & 1 == 0 {
            let value = read(words);
            fence(Ordering::Acquire);
            if words[0].load(Ordering::Relaxed) == before {
                return Some(value);
            }
        }
        if attempt > 64 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    None
}

/// Reads a slot's status (the caller checks the sequence around this).
fn decode_status(slot: Slot<'_>) -> Option<TorrentStatus> {
    let Slot { words: slot, extra } = slot;
    let get = |word: usize| slot[word].load(Ordering::Relaxed);
    let flags = get(S_FLAGS);
    if flags & OCCUPIED == 0 {
        return None;
    }
    let lengths = get(S_LENGTHS);
    let name = get_text(
        match flags & NAME_LONG {
            0 => &slot[S_NAME_INLINE..S_FOLDER_INLINE],
            _ => &extra[X_NAME..X_FOLDER],
        },
        lengths & 0xffff,
        flags & NAME_CUT != 0,
    );
    let state = match get(S_STATE) {
        0 => TorrentState::ResolvingMetadata,
        1 => TorrentState::Checking,
        2 => TorrentState::Downloading,
        3 => TorrentState::Seeding,
        4 => TorrentState::Paused,
        6 => TorrentState::Queued,
        7 => TorrentState::Moving,
        _ => TorrentState::Error(get_text(
            &extra[X_ERROR..X_LABELS],
            lengths >> 32 & 0xffff,
            flags & ERROR_CUT != 0,
        )),
    };
    let mut hash = [0u8; 24];
    for i in 0..3 {
        hash[i * 8..i * 8 + 8].copy_from_slice(&get(S_HASH + i).to_le_bytes());
    }
    let mut info_hash = [0u8; 20];
    info_hash.copy_from_slice(&hash[..20]);
    let peers = get(S_PEERS);
    Some(TorrentStatus {
        id: TorrentId(get(S_ID)),
        info_hash: InfoHash(info_hash),
        name,
        state,
        progress: f64::from_bits(get(S_PROGRESS)),
        bytes_done: get(S_DONE),
        bytes_total: get(S_TOTAL),
        download_rate: get(S_DOWN),
        upload_rate: get(S_UP),
        uploaded: get(S_UPLOADED),
        peers: peers as u32,
        seeds: (peers >> 32) as u32,
        eta_secs: (flags & HAS_ETA != 0).then(|| get(S_ETA)),
        complete: flags & COMPLETE != 0,
        queue_position: u32::try_from(get(S_QUEUE)).ok().filter(|&p| p != 0),
        downloaded: get(S_DOWNLOADED),
        seeding_secs: get(S_SEEDING_SECS),
        seed_limits: crate::SeedingLimits {
            ratio: Some(get(S_RATIO_LIMIT))
                .filter(|&bits| bits != NO_LIMIT)
                .map(f64::from_bits),
            seed_time_secs: Some(get(S_SEED_TIME_LIMIT)).filter(|&s| s != NO_LIMIT),
            idle_secs: Some(get(S_IDLE_LIMIT)).filter(|&s| s != NO_LIMIT),
        },
        labels: match lengths >> 48 {
            0 => Vec::new(),
            n => get_text(&extra[X_LABELS..], n, flags & LABELS_CUT != 0)
                .split(',')
                .map(str::to_owned)
                .collect(),
        },
    })
}

/// Reads a slot's whole summary (the caller checks the sequence around this).
fn decode(slot: Slot<'_>) -> Option<TorrentSummary> {
    let status = decode_status(slot)?;
    let Slot { words: slot, extra } = slot;
    let get = |word: usize| slot[word].load(Ordering::Relaxed);
    let flags = get(S_FLAGS);
    let folder = get_text(
        match flags & FOLDER_LONG {
            0 => &slot[S_FOLDER_INLINE..],
            _ => &extra[X_FOLDER..X_ERROR],
        },
        get(S_LENGTHS) >> 16 & 0xffff,
        flags & FOLDER_CUT != 0,
    );
    Some(TorrentSummary {
        info: TorrentInfo {
            id: status.id,
            info_hash: status.info_hash,
            name: status.name.clone(),
            save_folder: folder,
            total_bytes: get(S_INFO_TOTAL),
        },
        status,
        holders: get(S_HOLDERS) as u32,
        held_by_you: false,
        ephemeral: flags & EPHEMERAL != 0,
    })
}

fn hash_words(info_hash: &InfoHash) -> [u64; 3] {
    let mut bytes = [0u8; 24];
    bytes[..20].copy_from_slice(&info_hash.0);
    [0, 1, 2].map(|i| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(word)
    })
}

/// `text` cut to at most `room` bytes at a character boundary, leaving room for the mark.
fn cut(text: &str, room: usize) -> (&str, bool) {
    if text.len() <= room {
        return (text, false);
    }
    let mut end = room - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

fn put_text(words: &[AtomicU64], text: &str) {
    for (word, chunk) in words.iter().zip(text.as_bytes().chunks(8)) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    }
}

fn get_text(words: &[AtomicU64], len: u64, cut: bool) -> String {
    let len = usize::try_from(len).unwrap_or(0).min(words.len() * 8);
    let mut bytes = Vec::with_capacity(len);
    for word in &words[..len.div_ceil(8)] {
        bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    bytes.truncate(len);
    // A torn read is thrown away by the caller; lossy keeps even that from failing here.
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        text.push('…');
    }
    text
}

/// How to watch the broker with this pid (see [`BoardReader::broker_alive`]): a pidfd of it
/// (close-on-exec, as every pidfd), or gone already. (Like `/proc`, a pidfd would name
/// another process only if the broker died and its pid were taken again before this runs;
/// once open, it names that process whatever becomes of the pid.)
fn broker_watch(pid: u32) -> BrokerWatch {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return BrokerWatch::Gone;
    };
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => BrokerWatch::Pidfd(pidfd),
        Err(rustix::io::Errno::SRCH) => BrokerWatch::Gone,
        Err(_) => BrokerWatch::Proc,
    }
}

/// Whether a process with this pid runs (exists and is not a zombie waiting to be reaped).
pub fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if let Err(nix::errno::Errno::ESRCH) =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None)
    {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')' (comm may hold anything).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        // No /proc: kill(2) said it exists.
        Err(_) => true,
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // Shared, hence not FUTEX_PRIVATE: the broker wakes it from another process. It sleeps
    // while the word equals `expected`, at most `timeout`; any error (EAGAIN, EINTR,
    // ETIMEDOUT) just returns to the caller's loop.
    // SAFETY: reads one valid, aligned u32 of our mapping; `timeout` lives across the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only looks up waiters keyed by this valid, aligned address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests;
