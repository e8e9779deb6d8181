//! One connected patron's outbox: where the broker writes its events (the service sees it
//! only as an [`crate::sink::EventSink`]).
//!
//! The broker writes every event itself, with non-blocking sends on a socket it made: the
//! patron received the other end, as an ipc-channel receiver, in its `Welcome`. Nothing in the
//! broker ever blocks on a patron and no thread is spent per patron. Events go into the
//! patron's [`Outbox`] — in the order they were produced, replies never dropped, a torrent's
//! status coalesced to its latest while it waits (keeping its place in line) — and are written
//! at once, as far as the socket takes them. What the socket does not take waits until the
//! event loop sees the socket writable again ([`WatchWritable`]) and flushes again. A patron
//! that stops reading only ever fills its own queue; past [`MAX_QUEUED_REPLIES`] it is cut
//! off, and its socket is closed then and there.
//!
//! A message too large for one datagram goes as ipc-channel frames it: the first datagram
//! carries the receiving end of a fresh continuation channel, and the rest of the payload
//! follows on that channel (see [`proto::wire::encode_frames`]).

use crate::budget::UnreadBudget;
use crate::sink::{EventSink, PatronId};
use crate::socket::{self, Sent};
use proto::wire::{self, Frames};
use proto::{Event, TorrentId, TorrentStatus};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Replies queued for a patron that does not read, before it is cut off.
pub const MAX_QUEUED_REPLIES: usize = 4096;
/// Bytes of replies queued for a patron that does not read, before it is cut off: however
/// large its replies (a list of thousands of torrents), the broker keeps at most this for it.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of large events' shared memory regions a patron may have queued or unread in its
/// socket (a region the patron has not read is memory the broker made, held by the
/// patron's socket). A large event past it goes in fragments, which its queue accounts.
pub const MAX_REGION_BYTES: usize = 8 * 1024 * 1024;
/// Regions a patron may have queued or unread, whatever their size: each one unread is a
/// descriptor in flight, and the kernel caps those per user (the broker's user, all patrons
/// together) at the descriptor limit.
pub const MAX_REGIONS: usize = 8;

/// Bytes of events queued in the broker's memory for all patrons together, unless
/// `--max-unread-bytes` says otherwise: past it, the patron that leaves the most unread is
/// cut off ([`UnreadBudget`]).
pub const MAX_UNREAD_QUEUED_BYTES: usize = 512 * 1024 * 1024;
/// Regions of large events all patrons together may have queued or unread, and their
/// bytes: past them, large events go as fragments.
pub const MAX_UNREAD_REGIONS: usize = 256;
/// See [`MAX_UNREAD_REGIONS`].
pub const MAX_UNREAD_REGION_BYTES: usize = 256 * 1024 * 1024;

/// Which of a patron's sockets a blocked write waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The event socket itself.
    Events,
    /// The continuation channel of a fragmented message.
    Continuation,
}

/// Asks the event loop to flush this patron's outbox once `fd` is writable (one-shot).
pub type WatchWritable = Arc<dyn Fn(BorrowedFd<'_>, Lane) -> nix::Result<()> + Send + Sync>;

/// Told when a push finds the patron gone (cut off, or its socket broken), so that it is
/// dropped. It must not block or take locks: pushes happen under the service's lock.
pub type GoneHook = Arc<dyn Fn(PatronId) + Send + Sync>;

/// One place in a patron's queue.
#[derive(Debug)]
enum Item {
    /// A reply or notice, encoded when it was queued (so its size counts at once), the
    /// shared memory region it names if it is a large one, and the bytes it was counted as
    /// (given back as counted: a fresh look at the region could read another size, or none).
    Frames(Frames, Option<OwnedFd>, usize),
    /// The latest status of this torrent, whatever it is by the time its turn comes.
    Status(TorrentId),
}

/// A message part-way out.
struct Writing {
    /// The first datagram, until it is sent.
    first: Option<Vec<u8>>,
    /// For a fragmented message: the continuation channel (our end, and the patron's end
    /// until the first datagram carried it away), and how much of the rest is sent.
    continuation: Option<Continuation>,
    rest: Vec<u8>,
    sent: usize,
    /// A large message's region, attached to the first datagram.
    region: Option<OwnedFd>,
}

struct Continuation {
    ours: OwnedFd,
    theirs: Option<OwnedFd>,
}

#[derive(Default)]
struct Queue {
    /// Everything waiting, in the order it was produced.
    items: VecDeque<Item>,
    /// How many of `items` are events, and their encoded bytes (the cut-off counts both).
    events: usize,
    bytes: usize,
    /// Latest status of each torrent with an [`Item::Status`] waiting.
    statuses: HashMap<TorrentId, TorrentStatus>,
    /// The message being written.
    writing: Option<Writing>,
    /// Our end of the event socket; `None` once the patron is gone or cut off.
    socket: Option<OwnedFd>,
    /// Set once nothing more may be queued.
    closed: bool,
    /// Bytes and count of regions queued, or sent since the socket was last seen drained
    /// (see [`MAX_REGION_BYTES`], [`MAX_REGIONS`]).
    region_bytes: usize,
    regions: usize,
    /// The queued bytes last counted in the whole broker's budget.
    counted: usize,
    /// Since when the broker has held bytes for the patron without a break (`None` while it
    /// holds none): a patron that reads empties its queue within moments, one that does not
    /// (or reads a byte now and then) never does.
    busy_since: Option<Instant>,
}

impl Queue {
    /// Bytes of events the broker holds for the patron in its own memory: those queued, and
    /// the one being written (a fragmented event is held whole until its last fragment is
    /// sent, which waits for the patron to read).
    fn held(&self) -> usize {
        let writing = self
            .writing
            .as_ref()
            .map_or(0, |w| w.first.as_ref().map_or(0, Vec::len) + w.rest.len());
        self.bytes + writing
    }
}

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Pushed {
    /// Sent, or queued to be sent.
    Queued,
    /// Dropped: the outbox is closed (the patron left or was cut off earlier).
    Closed,
    /// Dropped, and the patron cut off just now: it left [`MAX_QUEUED_REPLIES`] replies unread.
    /// The caller must drop the patron.
    CutOff,
    /// Dropped: the patron's socket failed (it closed its receiver). The caller must drop the
    /// patron.
    Broken,
}

/// How far a flush got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is written.
    Idle,
    /// The socket is full; the rest goes when it is writable again.
    Blocked,
    /// The socket failed or is closed: the patron is gone.
    Broken,
}

/// Events waiting for one patron, and its socket.
pub struct Outbox {
    patron: PatronId,
    queue: Mutex<Queue>,
    watch: Option<WatchWritable>,
    gone: Option<GoneHook>,
    /// The whole broker's bounds, shared by every outbox.
    unread: Arc<UnreadBudget>,
}

impl Outbox {
    /// An outbox writing to `socket` (non-blocking). `watch` is how a blocked write asks to
    /// be resumed (without one, the owner calls [`Outbox::flush`] itself); `gone` is told
    /// when a push finds the patron gone; `unread` is the whole broker's budget it counts in.
    pub fn new(
        patron: PatronId,
        socket: OwnedFd,
        watch: Option<WatchWritable>,
        gone: Option<GoneHook>,
        unread: Arc<UnreadBudget>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            patron,
            queue: Mutex::new(Queue {
                socket: Some(socket),
                ..Queue::default()
            }),
            watch,
            gone,
            unread,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent (plain pushes
        // and pops), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply (or any event that must not be coalesced) and writes what it can.
    pub fn push(&self, event: Event) -> Pushed {
        let pushed = {
            let mut queue = self.lock();
            let pushed = self.push_into(&mut queue, event);
            self.recount(&mut queue);
            pushed
        };
        match pushed {
            Pushed::CutOff => {
                tracing::warn!(
                    patron = self.patron,
                    "cut off: it left {MAX_QUEUED_REPLIES} events unread"
                );
                self.tell_gone();
            }
            Pushed::Broken => self.tell_gone(),
            Pushed::Queued | Pushed::Closed => {}
        }
        pushed
    }

    fn tell_gone(&self) {
        if let Some(gone) = &self.gone {
            gone(self.patron);
        }
    }

    /// Counts what is queued now in the whole broker's budget (which cuts off the patron
    /// that leaves the most unread when all of them together pass it).
    fn recount(&self, queue: &mut Queue) {
        let held = queue.held();
        match (held, queue.busy_since) {
            (0, _) => queue.busy_since = None,
            (_, None) => queue.busy_since = Some(Instant::now()),
            _ => {}
        }
        if held != queue.counted {
            self.unread.requeued(queue.counted, held);
            queue.counted = held;
        }
    }

    fn push_into(&self, queue: &mut Queue, event: Event) -> Pushed {
        if queue.closed {
            return Pushed::Closed;
        }
        let frames = match wire::encode_frames(&event) {
            Ok(frames) => frames,
            Err(e) => {
                // Our own event failed to encode: a bug, not the patron's doing.
                tracing::error!(patron = self.patron, "cannot encode an event: {e}");
                return Pushed::Queued;
            }
        };
        if queue.regions > 0 && queue.socket.as_ref().is_some_and(socket::drained) {
            // The patron has read every region sent.
            queue.region_bytes = 0;
            queue.regions = 0;
        }
        let mut room = if queue.regions < MAX_REGIONS {
            MAX_REGION_BYTES.saturating_sub(queue.region_bytes)
        } else {
            0
        };
        // A region also needs room in the whole broker's budget; without it, fragments.
        let region_size = region_size(&frames);
        if region_size > proto::LARGE_MESSAGE_BYTES && region_size <= room {
            let socket = queue.socket.as_ref();
            if !socket.is_some_and(|socket| self.unread.take_region(region_size, socket)) {
                room = 0;
            }
        }
        let (frames, region, size) = match large(&frames, room) {
            Some((small, region, size)) => {
                tracing::debug!(
                    patron = self.patron,
                    bytes = size,
                    "a large event, in shared memory"
                );
                queue.region_bytes += size;
                queue.regions += 1;
                (small, Some(region), size)
            }
            None => {
                let size = frames.first.len() + frames.rest.len();
                (frames, None, size)
            }
        };
        if queue.events >= MAX_QUEUED_REPLIES || queue.held() + size > MAX_QUEUED_BYTES {
            // Best effort: its socket is full, so this rarely gets through.
            let reason = format!(
                "more than {MAX_QUEUED_REPLIES} replies or {} MiB unread",
                MAX_QUEUED_BYTES >> 20
            );
            self.shut(queue, Some(Event::Disconnected { reason }));
            return Pushed::CutOff;
        }
        queue.items.push_back(Item::Frames(frames, region, size));
        queue.events += 1;
        queue.bytes += size;
        match self.flush_locked(queue) {
            Flushed::Broken => Pushed::Broken,
            Flushed::Idle | Flushed::Blocked => Pushed::Queued,
        }
    }

    /// Queues a status, replacing any not yet sent for the same torrent, and writes what it
    /// can.
    pub fn push_status(&self, status: TorrentStatus) {
        let mut queue = self.lock();
        if queue.closed {
            return;
        }
        let id = status.id;
        if queue.statuses.insert(id, status).is_none() {
            queue.items.push_back(Item::Status(id));
        }
        let flushed = self.flush_locked(&mut queue);
        self.recount(&mut queue);
        if flushed == Flushed::Broken {
            drop(queue);
            self.tell_gone();
        }
    }

    /// Drops a status still queued for `torrent` (the patron no longer holds it).
    pub fn forget_status(&self, torrent: TorrentId) {
        let mut queue = self.lock();
        if queue.statuses.remove(&torrent).is_some() {
            queue
                .items
                .retain(|item| !matches!(item, Item::Status(id) if *id == torrent));
        }
    }

    /// Writes what the socket takes now. The event loop calls this when a socket this outbox
    /// waits on became writable.
    pub fn flush(&self) -> Flushed {
        let mut queue = self.lock();
        let flushed = self.flush_locked(&mut queue);
        self.recount(&mut queue);
        flushed
    }

    /// Closes at once: nothing more is sent, and the socket is shut down now, so the patron
    /// sees its channel close. The broker keeps nothing of it but, while the patron has not
    /// read them, the count of the large events' regions it was sent (see
    /// [`UnreadBudget::take_region`]). Idempotent.
    pub fn close(&self) {
        let mut queue = self.lock();
        self.shut(&mut queue, None);
        self.recount(&mut queue);
        drop(queue);
        // A patron that left has let go of what it was sent: so does the budget, now.
        self.unread.sweep();
    }

    /// Cuts the patron off (the whole broker's budget for unread events is spent and it
    /// leaves the most unread), telling it why if its socket takes one more event. The
    /// caller drops the patron.
    pub fn cut_off(&self, reason: String) {
        let mut queue = self.lock();
        if queue.closed {
            return;
        }
        tracing::warn!(patron = self.patron, "cut off: {reason}");
        self.shut(&mut queue, Some(Event::Disconnected { reason }));
        self.recount(&mut queue);
    }

    /// Bytes of events queued in the broker's memory for this patron.
    pub fn queued_bytes(&self) -> usize {
        self.lock().held()
    }

    /// Bytes of events held for this patron, if the broker has held some without a break
    /// for at least `stalled`: what the shedder may take back (see [`UnreadBudget`]).
    pub fn stalled_bytes(&self, stalled: Duration) -> Option<usize> {
        let queue = self.lock();
        let since = queue.busy_since?;
        (since.elapsed() >= stalled).then(|| queue.held())
    }

    /// Number of items waiting (for tests and diagnostics).
    pub fn queued(&self) -> usize {
        let queue = self.lock();
        queue.items.len() + usize::from(queue.writing.is_some())
    }

    /// Bytes of events waiting for this patron: queued, and in shared memory regions it has
    /// not read yet.
    pub fn pending_bytes(&self) -> usize {
        let queue = self.lock();
        queue.held() + queue.region_bytes
    }

    /// Queues a last event and lets nothing more in; the socket stays open until what is
    /// queued is written (see [`say_goodbye`]).
    fn close_after(&self, last: Event) {
        let mut queue = self.lock();
        if queue.closed {
            return;
        }
        if let Ok(frames) = wire::encode_frames(&last) {
            let size = frames.first.len() + frames.rest.len();
            queue.bytes += size;
            queue.items.push_back(Item::Frames(frames, None, size));
            queue.events += 1;
        }
        queue.closed = true;
        let _ = self.flush_locked(&mut queue);
        self.recount(&mut queue);
    }

    fn shut(&self, queue: &mut Queue, last_words: Option<Event>) {
        queue.closed = true;
        queue.items.clear();
        queue.statuses.clear();
        queue.events = 0;
        queue.bytes = 0;
        let partly_written = queue.writing.take().is_some_and(|w| w.first.is_none());
        if let (Some(event), Some(fd), false) = (last_words, &queue.socket, partly_written) {
            if let Ok(frames) = wire::encode_frames(&event) {
                if !frames.is_fragmented() {
                    let _ = socket::send_nonblocking(fd.as_fd(), &frames.first, None);
                }
            }
        }
        // The patron sees its channel end now, even while the whole broker's budget keeps
        // a duplicate of the socket to watch the regions it has not read.
        if let Some(socket) = queue.socket.take() {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                nix::sys::socket::Shutdown::Both,
            );
        }
    }

    fn flush_locked(&self, queue: &mut Queue) -> Flushed {
        loop {
            if queue.socket.is_none() {
                return Flushed::Broken;
            }
            if queue.writing.is_none() {
                let Some((frames, region)) = Self::next_frames(queue) else {
                    return Flushed::Idle;
                };
                match Self::start_writing(frames, region) {
                    Ok(writing) => queue.writing = Some(writing),
                    Err(e) => {
                        // No channel for the rest of it (the broker is out of descriptors):
                        // dropping it would leave the patron waiting for its reply forever,
                        // so it is told why and let go, its waits ended.
                        tracing::warn!(patron = self.patron, "cannot send an event: {e}");
                        let reason = format!("the broker could not send a reply: {e}");
                        self.shut(queue, Some(Event::Disconnected { reason }));
                        return Flushed::Broken;
                    }
                }
            }
            match Self::write_some(queue) {
                Ok(None) => queue.writing = None,
                Ok(Some(lane)) => return self.wait_writable(queue, lane),
                Err(e) => {
                    tracing::debug!(patron = self.patron, "stopped writing to patron: {e}");
                    self.shut(queue, None);
                    return Flushed::Broken;
                }
            }
        }
    }

    fn next_frames(queue: &mut Queue) -> Option<(Frames, Option<OwnedFd>)> {
        loop {
            match queue.items.pop_front()? {
                Item::Frames(frames, region, size) => {
                    queue.events -= 1;
                    queue.bytes = queue.bytes.saturating_sub(size);
                    return Some((frames, region));
                }
                Item::Status(id) => {
                    let Some(status) = queue.statuses.remove(&id) else {
                        continue;
                    };
                    match wire::encode_frames(&Event::TorrentStatusUpdate(status)) {
                        Ok(frames) => return Some((frames, None)),
                        Err(e) => tracing::error!("cannot encode a status: {e}"),
                    }
                }
            }
        }
    }

    fn start_writing(frames: Frames, region: Option<OwnedFd>) -> Result<Writing, String> {
        let Frames { first, rest } = frames;
        let continuation = if rest.is_empty() {
            None
        } else {
            let (ours, theirs) = socket::seqpacket_pair()
                .map_err(|e| format!("cannot make a continuation channel: {e}"))?;
            Some(Continuation {
                ours,
                theirs: Some(theirs),
            })
        };
        Ok(Writing {
            first: Some(first),
            continuation,
            rest,
            sent: 0,
            region,
        })
    }

    /// Writes the current message as far as it goes: `None` when it is all out, else the
    /// lane that is full.
    fn write_some(queue: &mut Queue) -> nix::Result<Option<Lane>> {
        let (Some(fd), Some(writing)) = (&queue.socket, &mut queue.writing) else {
            return Ok(None);
        };
        if let Some(first) = &writing.first {
            let attach = writing
                .continuation
                .as_ref()
                .and_then(|c| c.theirs.as_ref())
                .or(writing.region.as_ref())
                .map(|t| t.as_fd());
            match socket::send_nonblocking(fd.as_fd(), first, attach)? {
                Sent::WouldBlock => return Ok(Some(Lane::Events)),
                Sent::Sent => {
                    writing.first = None;
                    if let Some(c) = &mut writing.continuation {
                        c.theirs = None; // the patron has it now
                    }
                    writing.region = None; // likewise
                }
            }
        }
        let Some(continuation) = &writing.continuation else {
            return Ok(None);
        };
        while writing.sent < writing.rest.len() {
            let end = (writing.sent + wire::MAX_DATAGRAM_PAYLOAD).min(writing.rest.len());
            let chunk = &writing.rest[writing.sent..end];
            match socket::send_nonblocking(continuation.ours.as_fd(), chunk, None)? {
                Sent::WouldBlock => return Ok(Some(Lane::Continuation)),
                Sent::Sent => writing.sent = end,
            }
        }
        Ok(None)
    }

    fn wait_writable(&self, queue: &Queue, lane: Lane) -> Flushed {
        let fd = match lane {
            Lane::Events => queue.socket.as_ref(),
            Lane::Continuation => queue
                .writing
                .as_ref()
                .and_then(|w| w.continuation.as_ref())
                .map(|c| &c.ours),
        };
        if let (Some(watch), Some(fd)) = (&self.watch, fd) {
            if let Err(e) = watch(fd.as_fd(), lane) {
                tracing::warn!(patron = self.patron, "cannot wait for a full socket: {e}");
            }
        }
        Flushed::Blocked
    }
}

impl EventSink for Outbox {
    fn send(&self, event: Event) {
        // A patron found gone is dropped by the outbox's [`GoneHook`].
        let _ = self.push(event);
    }

    fn push_status(&self, status: TorrentStatus) {
        Outbox::push_status(self, status);
    }

    fn forget_status(&self, torrent: TorrentId) {
        Outbox::forget_status(self, torrent);
    }

    fn pending_bytes(&self) -> usize {
        Outbox::pending_bytes(self)
    }

    fn close(&self) {
        Outbox::close(self);
    }
}

/// Queues `goodbye` for every outbox, then flushes them (bounded by `wait`) until each has
/// written everything, and closes them all.
pub fn say_goodbye(outboxes: &[Arc<Outbox>], goodbye: Event, wait: Duration) {
    for outbox in outboxes {
        outbox.close_after(goodbye.clone());
    }
    let deadline = Instant::now() + wait;
    let mut waiting: Vec<&Arc<Outbox>> = outboxes.iter().collect();
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|outbox| outbox.flush() == Flushed::Blocked);
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for outbox in outboxes {
        outbox.close();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let queue = self.queue.get_mut().unwrap_or_else(|e| e.into_inner());
        self.unread.requeued(queue.counted, 0);
        if let Some(socket) = queue.socket.take() {
            // Its patron sees the end even while the budget watches a duplicate.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                nix::sys::socket::Shutdown::Both,
            );
        }
        self.unread.sweep();
    }
}

/// The bytes an event would take as a region ([`large`]).
fn region_size(frames: &Frames) -> usize {
    frames.first.len().saturating_sub(wire::HEADER_BYTES) + frames.rest.len()
}

/// A large event ([`proto::LARGE_MESSAGE_BYTES`], judged by its `frames`) as shared memory:
/// a small frame naming region 0, the region (a fresh memfd holding the event, given away with
/// the frame) and its size. `None` for a small event, one larger than `room`, or if no memfd
/// can be had: the event then goes as fragments.
fn large(frames: &Frames, room: usize) -> Option<(Frames, OwnedFd, usize)> {
    let size = frames.first.len() - wire::HEADER_BYTES + frames.rest.len();
    if size <= proto::LARGE_MESSAGE_BYTES || size > room {
        return None;
    }
    let made = (|| -> std::io::Result<_> {
        let region = nix::sys::memfd::memfd_create(
            c"torrent-patron-event",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        // The frames hold the event's payload already: the region takes it as it is.
        let mut file = std::fs::File::from(region.try_clone()?);
        std::io::Write::write_all(&mut file, &frames.first[wire::HEADER_BYTES..])?;
        std::io::Write::write_all(&mut file, &frames.rest)?;
        let small = wire::encode_frames(&Event::Large(proto::SharedBytes::region(0)))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok((small, region, size))
    })();
    match made {
        Ok(large) => Some(large),
        Err(e) => {
            tracing::warn!(
                "cannot put a large event in shared memory, sending it in fragments: {e}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_channel::ipc::IpcReceiver;
    use proto::{InfoHash, RequestId, TorrentState};

    fn status(id: u64, bytes_done: u64) -> TorrentStatus {
        let info = proto::TorrentInfo {
            id: TorrentId(id),
            info_hash: InfoHash([0; 20]),
            name: String::new(),
            save_folder: String::new(),
            total_bytes: 100,
        };
        TorrentStatus {
            bytes_done,
            ..TorrentStatus::idle(&info, TorrentState::Downloading)
        }
    }

    fn reply(n: u64) -> Event {
        Event::Ok {
            request: RequestId(n),
        }
    }

    /// An outbox whose patron end is a real ipc-channel receiver, as in a Welcome.
    fn outbox() -> (Arc<Outbox>, IpcReceiver<Event>) {
        let unread = UnreadBudget::new(
            MAX_UNREAD_REGIONS,
            MAX_UNREAD_REGION_BYTES,
            MAX_UNREAD_QUEUED_BYTES,
        );
        outbox_in(&unread)
    }

    /// An outbox counting in `unread`, as every outbox of one broker does.
    fn outbox_in(unread: &Arc<UnreadBudget>) -> (Arc<Outbox>, IpcReceiver<Event>) {
        let (ours, theirs) = socket::seqpacket_pair().unwrap();
        let outbox = Outbox::new(1, ours, None, None, unread.clone());
        (outbox, receiver_from(theirs))
    }

    fn large_event(tag: &str) -> Event {
        Event::ProtocolError {
            message: format!("{tag}{}", "x".repeat(3 * proto::LARGE_MESSAGE_BYTES)),
        }
    }

    /// Reads every event `outbox` has for `events` until none comes for a moment.
    fn read_all(outbox: &Outbox, events: &IpcReceiver<Event>) -> Vec<Event> {
        let mut read = Vec::new();
        loop {
            let _ = outbox.flush();
            match events.try_recv_timeout(Duration::from_millis(300)) {
                Ok(event) => read.push(event),
                Err(_) => return read,
            }
        }
    }

    #[test]
    fn large_events_past_the_whole_brokers_region_budget_go_as_fragments_until_regions_are_read() {
        let unread = UnreadBudget::new(2, 64 << 20, MAX_UNREAD_QUEUED_BYTES);
        let (hog, hog_events) = outbox_in(&unread);
        let (other, other_events) = outbox_in(&unread);
        // A patron that does not read takes the whole budget's regions...
        for n in 0..3 {
            assert_eq!(hog.push(large_event(&format!("hog {n} "))), Pushed::Queued);
        }
        assert_eq!(unread.regions.use_now().0, 2);
        // ...and another's large event still arrives whole, as fragments.
        assert_eq!(other.push(large_event("other ")), Pushed::Queued);
        assert_eq!(unread.regions.use_now().0, 2);
        let got = read_all(&other, &other_events);
        assert!(
            matches!(got.as_slice(), [Event::ProtocolError { message }] if message.starts_with("other ") && message.len() > 3 * proto::LARGE_MESSAGE_BYTES),
            "{} events",
            got.len()
        );
        // Once the regions are read, the budget has room again.
        assert_eq!(read_all(&hog, &hog_events).len(), 3);
        assert_eq!(other.push(large_event("again ")), Pushed::Queued);
        assert_eq!(
            unread.regions.use_now().0,
            1,
            "the hog's two let go, one taken"
        );
        assert_eq!(read_all(&other, &other_events).len(), 1);
    }

    #[test]
    fn a_cut_off_patrons_unread_regions_count_until_it_lets_go_and_its_channel_still_ends() {
        let unread = UnreadBudget::new(8, 64 << 20, MAX_UNREAD_QUEUED_BYTES);
        let (outbox, events) = outbox_in(&unread);
        assert_eq!(outbox.push(large_event("unread ")), Pushed::Queued);
        outbox.cut_off("a test".into());
        drop(outbox);
        unread.sweep();
        // The region is in the patron's socket, unread: still the broker's memory to count.
        assert_eq!(unread.regions.use_now().0, 1);
        // The patron still sees its event (in shared memory), then its channel end (not a
        // wait for ever).
        let first = events.try_recv_timeout(Duration::from_secs(5));
        assert!(matches!(first, Ok(Event::Large(_))), "{first:?}");
        loop {
            match events.try_recv_timeout(Duration::from_secs(5)) {
                Ok(Event::Disconnected { .. }) => {}
                Err(ipc_channel::TryRecvError::IpcError(ipc_channel::IpcError::Disconnected)) => {
                    break
                }
                other => panic!("expected the channel to end, got {other:?}"),
            }
        }
        drop(events);
        unread.sweep();
        assert_eq!(
            unread.regions.use_now().0,
            0,
            "let go once the patron let go"
        );
    }

    #[test]
    fn past_the_whole_brokers_bound_on_queued_bytes_the_shedder_is_told_and_a_cut_off_frees_it() {
        let unread = UnreadBudget::new(0, 0, 1 << 20);
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = told.clone();
        unread.on_over(Box::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }));
        let (reader, reader_events) = outbox_in(&unread);
        let (hog, _hog_events) = outbox_in(&unread);
        fill(&hog);
        let big = || Event::ProtocolError {
            message: "x".repeat(64 * 1024),
        };
        while !unread.is_over() {
            assert_eq!(hog.push(big()), Pushed::Queued);
        }
        assert!(told.load(std::sync::atomic::Ordering::Acquire) >= 1);
        // A patron that reads holds nothing queued: the hog is the largest.
        assert_eq!(reader.push(reply(1)), Pushed::Queued);
        assert_eq!(read_all(&reader, &reader_events).len(), 1);
        assert_eq!(reader.queued_bytes(), 0);
        assert!(hog.queued_bytes() > 1 << 20);
        hog.cut_off("a test".into());
        assert_eq!(unread.queued_now().0, 0);
        assert!(!unread.is_over());
    }

    /// Hands `fd` to ipc-channel the only way it takes one: inside a message.
    fn receiver_from(fd: OwnedFd) -> IpcReceiver<Event> {
        let (server, name) = ipc_channel::ipc::IpcOneShotServer::<proto::Welcome>::new().unwrap();
        let answer = socket::connect_nonblocking(std::path::Path::new(&name)).unwrap();
        let welcome = wire::encode_frames(&wire::WelcomeFrame::Accepted {
            broker_pid: 1,
            patron_id: 1,
            events: 0,
        })
        .unwrap();
        socket::send_nonblocking(answer.as_fd(), &welcome.first, Some(fd.as_fd())).unwrap();
        match server.accept().unwrap().1 {
            proto::Welcome::Accepted { events, .. } => events,
            proto::Welcome::Refused { .. } => unreachable!(),
        }
    }

    /// Fills a socket with a status so that later items queue.
    fn fill(outbox: &Outbox) {
        for n in 0..10_000 {
            if outbox.queued() > 0 {
                return;
            }
            let _ = outbox.push(Event::ProtocolError {
                message: format!("filler {n} {}", "x".repeat(1000)),
            });
        }
        panic!("the socket never filled");
    }

    #[test]
    fn a_reply_that_cannot_get_its_channel_ends_the_patron_with_a_reason() {
        // Runs in a child process of its own: it lowers the descriptor limit.
        const CHILD: &str = "TORRENT_PATRON_TEST_EMFILE_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let me = std::env::current_exe().unwrap();
            let status = std::process::Command::new(me)
                .args([
                    "--exact",
                    "patron::tests::a_reply_that_cannot_get_its_channel_ends_the_patron_with_a_reason",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the child failed: {status}");
            return;
        }
        let (outbox, events) = outbox();
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, hard)
            .unwrap();
        let mut hogs = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            hogs.push(file);
        }
        // Too large for one datagram, too small for shared memory: it needs a continuation
        // channel, and no descriptor is left to make one.
        let pushed = outbox.push(Event::ProtocolError {
            message: "x".repeat(40_000),
        });
        drop(hogs);
        assert_ne!(pushed, Pushed::Queued);
        // Before: the event was dropped and the patron waited for it forever.
        match events.try_recv_timeout(Duration::from_secs(5)) {
            Ok(Event::Disconnected { reason }) => {
                assert!(reason.contains("could not send a reply"), "{reason}")
            }
            other => panic!("expected to be let go with a reason, got {other:?}"),
        }
    }

    #[test]
    fn statuses_coalesce_in_place_and_everything_keeps_its_order() {
        let (outbox, events) = outbox();
        fill(&outbox);
        outbox.push_status(status(1, 10));
        assert_eq!(outbox.push(reply(1)), Pushed::Queued);
        outbox.push_status(status(2, 10));
        // Replaces torrent 1's waiting status where it stands: first in line.
        outbox.push_status(status(1, 20));
        assert_eq!(outbox.push(reply(2)), Pushed::Queued);
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let _ = outbox.flush();
            match events.try_recv_timeout(Duration::from_secs(5)).unwrap() {
                Event::ProtocolError { .. } => {}
                event => seen.push(event),
            }
        }
        assert!(
            matches!(&seen[0], Event::TorrentStatusUpdate(s) if s.id == TorrentId(1) && s.bytes_done == 20)
        );
        assert!(matches!(
            seen[1],
            Event::Ok {
                request: RequestId(1)
            }
        ));
        assert!(matches!(&seen[2], Event::TorrentStatusUpdate(s) if s.id == TorrentId(2)));
        assert!(matches!(
            seen[3],
            Event::Ok {
                request: RequestId(2)
            }
        ));
    }

    #[test]
    fn a_forgotten_status_is_not_sent() {
        let (outbox, events) = outbox();
        fill(&outbox);
        outbox.push_status(status(1, 10));
        outbox.push_status(status(2, 10));
        outbox.forget_status(TorrentId(1));
        assert_eq!(outbox.push(reply(9)), Pushed::Queued);
        let mut statuses = Vec::new();
        loop {
            let _ = outbox.flush();
            match events.try_recv_timeout(Duration::from_secs(5)).unwrap() {
                Event::TorrentStatusUpdate(s) => statuses.push(s.id),
                Event::Ok { .. } => break,
                _ => {}
            }
        }
        assert_eq!(statuses, vec![TorrentId(2)]);
    }

    #[test]
    fn a_patron_that_never_reads_is_cut_off_and_its_socket_closed_at_once() {
        let (outbox, events) = outbox();
        fill(&outbox);
        let mut pushed = 0;
        while outbox.push(reply(pushed)) == Pushed::Queued {
            pushed += 1;
            assert!(pushed <= MAX_QUEUED_REPLIES as u64, "never cut off");
        }
        assert!(
            pushed >= MAX_QUEUED_REPLIES as u64 - 1,
            "cut off early, at {pushed}"
        );
        assert_eq!(outbox.push(reply(u64::MAX)), Pushed::Closed);
        assert_eq!(outbox.queued(), 0);
        // What was written before is still readable; then the channel is closed.
        loop {
            match events.try_recv_timeout(Duration::from_secs(5)) {
                Ok(_) => {}
                Err(ipc_channel::TryRecvError::IpcError(ipc_channel::IpcError::Disconnected)) => {
                    break
                }
                Err(e) => panic!("expected the channel to close, got {e:?}"),
            }
        }
    }

    #[test]
    fn a_patron_that_never_reads_big_replies_is_cut_off_by_bytes_not_only_by_count() {
        let (outbox, _events) = outbox();
        let big = || Event::ProtocolError {
            message: "x".repeat(64 * 1024),
        };
        let mut pushed = 0usize;
        while outbox.push(big()) == Pushed::Queued {
            pushed += 1;
            assert!(pushed < MAX_QUEUED_REPLIES, "never cut off");
        }
        // 64 KiB replies: the byte limits, not the count, end it: some went as shared
        // memory regions (at most MAX_REGION_BYTES of them), the rest queued as fragments.
        assert!(
            pushed * 64 * 1024 <= MAX_QUEUED_BYTES + MAX_REGION_BYTES + 2 * 1024 * 1024,
            "{pushed} replies of 64 KiB queued"
        );
        assert_eq!(outbox.queued(), 0, "what was queued is let go at once");
    }

    #[test]
    fn small_fragmented_and_large_events_reach_an_ipc_channel_receiver_whole_and_in_order() {
        let (outbox, events) = outbox();
        // Nothing is read until all are pushed: the first go straight into the socket, the
        // rest queue. None may block the caller.
        let count = 2_000u64;
        let fragmented = wire::MAX_DATAGRAM_PAYLOAD * 3 / 2; // over a datagram, not large
        let large = 5 * proto::LARGE_MESSAGE_BYTES; // as shared memory
        for n in 0..count {
            assert_eq!(outbox.push(reply(n)), Pushed::Queued);
            if n == 10 || n == 20 {
                let size = if n == 10 { fragmented } else { large };
                let big = Event::ProtocolError {
                    message: "x".repeat(size),
                };
                assert_eq!(outbox.push(big), Pushed::Queued);
            }
        }
        assert!(outbox.queued() > 0, "the socket never filled");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..count + 2 {
                got.push(events.recv().unwrap());
            }
            got
        });
        while outbox.queued() > 0 {
            let _ = outbox.flush();
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        let mut n = 0;
        for event in got {
            match event {
                Event::Ok { request } => {
                    assert_eq!(request, RequestId(n));
                    n += 1;
                }
                Event::ProtocolError { message } => {
                    assert_eq!(n, 11, "the fragmented event keeps its place");
                    assert_eq!(message.len(), fragmented);
                }
                Event::Large(shared) => {
                    assert_eq!(n, 21, "the large event keeps its place");
                    let inner: Event = wire::decode_payload(shared.bytes()).unwrap();
                    let Event::ProtocolError { message } = inner else {
                        panic!("unexpected {inner:?}")
                    };
                    assert_eq!(message.len(), large);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(n, count);
    }
}
