//! A connected patron as the service sees it: a number, a process, and where its events go.
//!
//! The service never writes to a socket. It hands each event to the patron's [`EventSink`]:
//! in the broker that is the transport's [`crate::patron::Outbox`], which writes without ever
//! blocking; in the service's own tests it is a sink that keeps what it was given. So the
//! service depends on this trait, not on the transport.

use proto::{Event, TorrentId, TorrentStatus};
use std::sync::Arc;

/// The broker's number for a patron (shown in logs; also sent in the `Welcome`).
pub type PatronId = u64;

/// Where one patron's events go, in the order they are given.
pub trait EventSink: Send + Sync {
    /// Queues a reply or a notice (never coalesced, never dropped while the patron is
    /// there). A sink that finds its patron gone has it dropped; no caller needs to.
    fn send(&self, event: Event);
    /// Queues a torrent's status, replacing one of the same torrent not yet sent.
    fn push_status(&self, status: TorrentStatus);
    /// Drops a status still queued for `torrent` (the patron no longer holds it).
    fn forget_status(&self, torrent: TorrentId);
    /// Bytes of events waiting for the patron (queued, or sent and not yet read).
    fn pending_bytes(&self) -> usize;
    /// Closes at once: nothing more is sent. Idempotent.
    fn close(&self);
}

/// A connected patron.
#[derive(Clone)]
pub struct PatronConnection {
    /// The broker's number for it.
    pub id: PatronId,
    /// Its process id (from the socket's peer credentials).
    pub pid: i32,
    /// Where its events go.
    pub events: Arc<dyn EventSink>,
}

impl PatronConnection {
    /// Queues an event for it (see [`EventSink::send`]).
    pub fn send(&self, event: Event) {
        self.events.send(event);
    }
}

impl std::fmt::Debug for PatronConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatronConnection")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish()
    }
}
