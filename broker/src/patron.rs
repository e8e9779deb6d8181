//! One connected patron, seen from the broker: who it is and its outbox.
//!
//! `IpcSender::send` blocks once the patron's socket buffer is full, so nothing in the broker
//! ever calls it outside a patron's own writer thread. Events go into the patron's [`Outbox`]
//! — in the order they were produced, replies never dropped, a torrent's status coalesced to
//! its latest while it waits (keeping its place in line) — and the writer does the blocking
//! sends. A patron that stops reading only ever stalls its own
//! writer; past [`MAX_QUEUED_REPLIES`] it is cut off.
//!
//! One shortcut: a small reply to a patron with nothing queued is sent at once by whoever
//! produced it, with a non-blocking send of the same datagram ipc-channel would write. Waking
//! the writer thread cost ~50 µs of a ~65 µs round trip on this machine's 2 vCPUs; a full
//! socket just means the reply is queued as before.

use crate::socket::{self, Sent};
use ipc_channel::ipc::IpcSender;
use proto::{Event, TorrentId, TorrentStatus};
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Replies queued for a patron that does not read, before it is cut off.
pub const MAX_QUEUED_REPLIES: usize = 4096;

/// The writer thread's stack: it only serializes one event at a time.
const WRITER_STACK_BYTES: usize = 128 * 1024;

/// Largest reply sent directly (one datagram, far below ipc-channel's fragment size).
const DIRECT_MAX_BYTES: usize = 16 * 1024;

/// The broker's number for a patron (shown in logs; also sent in the `Welcome`).
pub type PatronId = u64;

/// A connected patron.
#[derive(Debug, Clone)]
pub struct PatronConnection {
    /// The broker's number for it.
    pub id: PatronId,
    /// Its process id (from the socket's peer credentials).
    pub pid: i32,
    /// Where its events go.
    pub outbox: Arc<Outbox>,
}

/// One place in a patron's queue.
#[derive(Debug)]
enum Item {
    /// A reply or notice, sent as it is.
    Event(Event),
    /// The latest status of this torrent, whatever it is by the time its turn comes.
    Status(TorrentId),
}

#[derive(Debug, Default)]
struct Queue {
    /// Everything waiting, in the order it was produced.
    items: VecDeque<Item>,
    /// How many of `items` are events (the cut-off counts those).
    events: usize,
    /// Latest status of each torrent with an [`Item::Status`] waiting.
    statuses: HashMap<TorrentId, TorrentStatus>,
    /// Set once nothing more may be queued; the writer drains what is left, then exits.
    closed: bool,
    /// The writer is sending an event it took: a direct send now could overtake it.
    sending: bool,
    /// Set when the writer has exited.
    finished: bool,
}

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Pushed {
    /// Queued for the writer.
    Queued,
    /// Dropped: the outbox is closed (the patron left or was cut off earlier).
    Closed,
    /// Dropped, and the patron cut off just now: it left [`MAX_QUEUED_REPLIES`] replies unread.
    /// The caller must drop the patron.
    CutOff,
}

/// Events waiting for one patron, and the condition its writer thread waits on.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Condvar,
    direct: Option<DirectSend>,
}

/// The patron's socket for non-blocking sends of small replies.
#[derive(Debug)]
struct DirectSend {
    fd: RawFd,
    /// Owns `fd` (a clone of the writer's sender: the socket stays open while either lives).
    _sender: IpcSender<Event>,
}

impl Outbox {
    /// Starts the writer thread for `sender` and returns the outbox feeding it.
    pub fn start(patron: PatronId, sender: IpcSender<Event>) -> std::io::Result<Arc<Outbox>> {
        let direct = socket::ipc_sender_fd(&sender).map(|fd| DirectSend {
            fd,
            _sender: sender.clone(),
        });
        let outbox = Arc::new(Outbox {
            direct,
            ..Outbox::default()
        });
        let writer = outbox.clone();
        std::thread::Builder::new()
            .name(format!("patron-{patron}-writer"))
            .stack_size(WRITER_STACK_BYTES)
            .spawn(move || writer.write_until_closed(patron, sender))?;
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent (plain pushes
        // and pops), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply (or any event that must not be coalesced).
    pub fn push(&self, event: Event) -> Pushed {
        let mut queue = self.lock();
        if queue.closed {
            return Pushed::Closed;
        }
        if queue.events >= MAX_QUEUED_REPLIES {
            queue.items.clear();
            queue.statuses.clear();
            queue.events = 1;
            queue.items.push_back(Item::Event(Event::Disconnected {
                reason: format!("more than {MAX_QUEUED_REPLIES} replies unread"),
            }));
            queue.closed = true;
            self.ready.notify_one();
            return Pushed::CutOff;
        }
        let event = if queue.items.is_empty() && !queue.sending {
            self.try_direct(event)
        } else {
            Some(event)
        };
        if let Some(event) = event {
            queue.items.push_back(Item::Event(event));
            queue.events += 1;
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Sends a small reply at once, without blocking; hands it back when it must be queued
    /// (too big, no direct socket, or the patron's socket is full). Called with the queue
    /// locked and empty, and the writer idle, so it cannot overtake anything.
    fn try_direct(&self, event: Event) -> Option<Event> {
        let Some(direct) = &self.direct else {
            return Some(event);
        };
        match proto::wire::encode_complete(&event) {
            Ok(datagram) if datagram.len() <= DIRECT_MAX_BYTES => {
                match socket::send_nonblocking(direct.fd, &datagram) {
                    Ok(Sent::Sent) => None,
                    // Full, or gone: the writer sends it (or finds the patron gone).
                    Ok(Sent::WouldBlock) | Err(_) => Some(event),
                }
            }
            _ => Some(event),
        }
    }

    /// Queues a status, replacing any not yet sent for the same torrent.
    pub fn push_status(&self, status: TorrentStatus) {
        let mut queue = self.lock();
        if queue.closed {
            return;
        }
        let id = status.id;
        if queue.statuses.insert(id, status).is_none() {
            queue.items.push_back(Item::Status(id));
        }
        self.ready.notify_one();
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

    /// Lets the writer send what is queued, then stop. Idempotent.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Queues a last event, closes, and waits (bounded) until the writer has sent everything.
    pub fn close_with(&self, last: Event, wait: Duration) {
        {
            let mut queue = self.lock();
            if !queue.closed {
                queue.items.push_back(Item::Event(last));
                queue.events += 1;
                queue.closed = true;
            }
        }
        self.ready.notify_one();
        let deadline = Instant::now() + wait;
        let mut queue = self.lock();
        while !queue.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            queue = match self.ready.wait_timeout(queue, left) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Number of events waiting (for tests and diagnostics).
    pub fn queued(&self) -> usize {
        let queue = self.lock();
        queue.items.len()
    }

    /// The next event to write, marking the writer busy until [`Outbox::sent`].
    fn next(&self) -> Option<Event> {
        let mut queue = self.lock();
        loop {
            match queue.items.pop_front() {
                Some(Item::Event(event)) => {
                    queue.events -= 1;
                    queue.sending = true;
                    return Some(event);
                }
                Some(Item::Status(id)) => {
                    if let Some(status) = queue.statuses.remove(&id) {
                        queue.sending = true;
                        return Some(Event::TorrentStatusUpdate(status));
                    }
                    continue;
                }
                None => {}
            }
            if queue.closed {
                return None;
            }
            queue = match self.ready.wait(queue) {
                Ok(q) => q,
                Err(e) => e.into_inner(),
            };
        }
    }

    fn write_until_closed(&self, patron: PatronId, sender: IpcSender<Event>) {
        while let Some(event) = self.next() {
            let sent = sender.send(event);
            self.lock().sending = false;
            if let Err(e) = sent {
                tracing::debug!(patron, "stopped writing to patron: {e}");
                break;
            }
        }
        let mut queue = self.lock();
        queue.closed = true;
        queue.finished = true;
        queue.items.clear();
        queue.events = 0;
        queue.statuses.clear();
        drop(queue);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{InfoHash, RequestId, TorrentState};

    fn status(id: u64, bytes_done: u64) -> TorrentStatus {
        TorrentStatus {
            id: TorrentId(id),
            info_hash: InfoHash([0; 20]),
            name: String::new(),
            state: TorrentState::Downloading,
            progress: 0.0,
            bytes_done,
            bytes_total: 100,
            download_rate: 0,
            upload_rate: 0,
            uploaded: 0,
            peers: 0,
            seeds: 0,
            eta_secs: None,
            complete: false,
        }
    }

    #[test]
    fn statuses_coalesce_in_place_and_everything_keeps_its_order() {
        let outbox = Outbox::default();
        outbox.push_status(status(1, 10));
        let reply = |n| Event::Ok {
            request: RequestId(n),
        };
        assert_eq!(outbox.push(reply(1)), Pushed::Queued);
        outbox.push_status(status(2, 10));
        // Replaces torrent 1's waiting status where it stands: first in line.
        outbox.push_status(status(1, 20));
        assert_eq!(outbox.push(reply(2)), Pushed::Queued);
        assert_eq!(outbox.queued(), 4);
        outbox.close();
        let mut seen = Vec::new();
        while let Some(event) = outbox.next() {
            seen.push(event);
        }
        assert_eq!(seen.len(), 4);
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
        let outbox = Outbox::default();
        outbox.push_status(status(1, 10));
        outbox.push_status(status(2, 10));
        outbox.forget_status(TorrentId(1));
        outbox.close();
        assert!(
            matches!(outbox.next(), Some(Event::TorrentStatusUpdate(s)) if s.id == TorrentId(2))
        );
        assert!(outbox.next().is_none());
    }

    #[test]
    fn a_patron_that_never_reads_is_cut_off_not_buffered_forever() {
        let outbox = Outbox::default();
        for n in 0..MAX_QUEUED_REPLIES as u64 {
            let pushed = outbox.push(Event::Ok {
                request: RequestId(n),
            });
            assert_eq!(pushed, Pushed::Queued);
        }
        let last = Event::Ok {
            request: RequestId(u64::MAX),
        };
        assert_eq!(outbox.push(last.clone()), Pushed::CutOff);
        assert_eq!(outbox.push(last), Pushed::Closed);
        assert!(matches!(outbox.next(), Some(Event::Disconnected { .. })));
        assert!(outbox.next().is_none());
    }

    #[test]
    fn the_ipc_sender_descriptor_is_found_for_direct_sends() {
        // Fails if an ipc-channel upgrade hides it: replies would still flow (through the
        // writer thread), only slower.
        let (sender, _receiver) = ipc_channel::ipc::channel::<Event>().unwrap();
        assert!(socket::ipc_sender_fd(&sender).is_some());
    }

    #[test]
    fn direct_and_queued_replies_reach_an_ipc_channel_receiver_whole_and_in_order() {
        let (sender, receiver) = ipc_channel::ipc::channel::<Event>().unwrap();
        let outbox = Outbox::start(1, sender).unwrap();
        assert!(outbox.direct.is_some());
        // Nothing is read until all are pushed: the first go straight into the socket, the
        // rest queue for the writer once it is full. None may block the caller.
        let count = 2_000u64;
        for n in 0..count {
            assert_eq!(
                outbox.push(Event::Ok {
                    request: RequestId(n)
                }),
                Pushed::Queued
            );
        }
        // A reply bigger than a direct send takes the writer's path, after the others.
        let big = Event::ProtocolError {
            message: "x".repeat(4 * DIRECT_MAX_BYTES),
        };
        assert_eq!(outbox.push(big), Pushed::Queued);
        assert!(
            outbox.queued() > 0,
            "the socket never filled: nothing was queued"
        );
        for n in 0..count {
            match receiver.recv().unwrap() {
                Event::Ok { request } => assert_eq!(request, RequestId(n)),
                other => panic!("expected reply {n}, got {other:?}"),
            }
        }
        assert!(
            matches!(receiver.recv().unwrap(), Event::ProtocolError { message } if message.len() == 4 * DIRECT_MAX_BYTES)
        );
        outbox.close();
    }
}
