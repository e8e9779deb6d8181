//! Reading every patron's requests on one thread.
//!
//! Each patron's channel is a SOCK_SEQPACKET connection its `IpcSender` made to the broker's
//! socket. One thread waits on all of them with epoll, reads datagrams without blocking and
//! checks them with [`proto::wire`] before anything is decoded or allocated: ipc-channel's
//! own receive path would reserve whatever size a patron declares, unwrap a missing
//! continuation channel, and block until every fragment came — one hostile patron could
//! stall or kill every other's requests. Here a bad datagram costs its sender a
//! `ProtocolError` event and nobody else anything.
//!
//! A message too large for one datagram (a big .torrent) arrives as a first fragment plus a
//! continuation channel; while it is reassembled (at most [`proto::MAX_REQUEST_BYTES`], for
//! at most [`REASSEMBLY_TIMEOUT`]) that patron's other datagrams wait, so its requests keep
//! their order. A closed socket is how a crash is seen, within a millisecond.

use crate::dispatch::{Dispatched, Dispatcher, Transport};
use crate::patron::{Flushed, GoneHook, Lane, WatchWritable};
use crate::sink::PatronId;
use crate::socket::{self, Received};
use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use proto::wire::{self, Datagram};
use proto::ToBroker;
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a fragmented message may take to arrive in full.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams read from one patron before the others get a turn.
const FAIR_SHARE: usize = 64;
/// The receive buffer: larger than any datagram ipc-channel sends (its fragments are at most
/// the socket send buffer, 208 KiB by default, 4 MiB at the system maximum). Pages are only
/// touched as far as datagrams reach.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024 + proto::wire::HEADER_BYTES;
const WAKE: u64 = u64::MAX;

/// What the reader thread is told from other threads.
enum Command {
    /// Read this newly connected patron's channel.
    Add(PatronId, OwnedFd),
    /// The patron was dropped (cut off): close its channel now.
    Forget(PatronId),
    /// The patron's requests in flight fell back under the limit: read its channel again.
    Resume(PatronId),
    /// A push found the patron gone (cut off, socket broken): drop it.
    Gone(PatronId),
    /// All outboxes together queue more than the broker's budget: cut off the patrons that
    /// leave the most unread until they are back under it.
    Shed,
}

/// Hands newly connected patrons' channels to the reader thread, and lets outboxes wait for
/// their sockets on its epoll.
#[derive(Clone)]
pub struct RequestReader {
    incoming: mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    epoll: Arc<Epoll>,
}

impl RequestReader {
    /// Starts the reader thread.
    pub fn start(dispatcher: Arc<Dispatcher>) -> anyhow::Result<RequestReader> {
        let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?);
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .context("eventfd")?,
        );
        epoll
            .add(&*wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
            .context("epoll add")?;
        let (incoming, patrons) = mpsc::channel();
        // One shedding asked at a time, however many pushes find the budget passed.
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shed = (incoming.clone(), wake.clone(), asked.clone());
        dispatcher.unread().on_over(Box::new(move || {
            let (incoming, wake, asked) = &shed;
            if !asked.swap(true, std::sync::atomic::Ordering::AcqRel)
                && incoming.send(Command::Shed).is_ok()
            {
                let _ = wake.write(1);
            }
        }));
        let reader = Reader {
            dispatcher,
            shed_asked: asked,
            shed_again: None,
            epoll: epoll.clone(),
            wake: wake.clone(),
            patrons,
            conns: HashMap::new(),
            buffer: vec![0u8; RECEIVE_BUFFER],
        };
        std::thread::Builder::new()
            .name("requests".into())
            .spawn(move || reader.run())?;
        Ok(RequestReader {
            incoming,
            wake,
            epoll,
        })
    }

    /// Starts reading a patron's requests from its connected channel.
    pub fn add(&self, patron: PatronId, channel: OwnedFd) -> anyhow::Result<()> {
        self.tell(Command::Add(patron, channel))
    }

    /// Stops reading a patron that was dropped, closing its channel at once.
    pub fn forget(&self, patron: PatronId) {
        if let Err(e) = self.tell(Command::Forget(patron)) {
            tracing::debug!(patron, "cannot forget a patron: {e}");
        }
    }

    /// Reads a held-back patron's channel again.
    pub fn resume(&self, patron: PatronId) {
        if let Err(e) = self.tell(Command::Resume(patron)) {
            tracing::debug!(patron, "cannot resume a patron: {e}");
        }
    }

    /// What an outbox calls when it finds its patron gone: the reader thread drops the
    /// patron (outside any lock the pusher may hold).
    pub fn gone_hook(&self) -> GoneHook {
        let (incoming, wake) = (self.incoming.clone(), self.wake.clone());
        Arc::new(move |patron| {
            if incoming.send(Command::Gone(patron)).is_ok() {
                let _ = wake.write(1);
            }
        })
    }

    fn tell(&self, command: Command) -> anyhow::Result<()> {
        self.incoming
            .send(command)
            .map_err(|_| anyhow::anyhow!("the request reader is gone"))?;
        self.wake.write(1).context("waking the request reader")?;
        Ok(())
    }

    /// How `patron`'s outbox asks to be flushed once a full socket of its is writable again:
    /// a one-shot EPOLLOUT on this thread's epoll.
    pub fn watch_writable(&self, patron: PatronId) -> WatchWritable {
        let epoll = self.epoll.clone();
        Arc::new(move |fd: BorrowedFd<'_>, lane: Lane| {
            let kind = match lane {
                Lane::Events => EVENTS_WRITABLE,
                Lane::Continuation => EVENTS_CONTINUATION_WRITABLE,
            };
            let flags = EpollFlags::EPOLLOUT | EpollFlags::EPOLLONESHOT;
            let mut event = EpollEvent::new(flags, token(patron, kind));
            match epoll.add(fd, event) {
                Err(nix::errno::Errno::EEXIST) => epoll.modify(fd, &mut event),
                other => other,
            }
        })
    }
}

struct Conn {
    channel: OwnedFd,
    assembly: Option<Assembly>,
    /// Not read while too many of its requests are in flight (back-pressure: its sends
    /// block, and the broker's memory for it stays bounded).
    held_back: bool,
}

/// A fragmented message being put back together.
struct Assembly {
    continuation: OwnedFd,
    payload: Vec<u8>,
    total: usize,
    deadline: Instant,
}

enum Outcome {
    KeepGoing,
    Gone(&'static str),
}

impl Transport for RequestReader {
    fn resume(&self, patron: PatronId) {
        RequestReader::resume(self, patron);
    }

    fn forget(&self, patron: PatronId) {
        RequestReader::forget(self, patron);
    }
}

struct Reader {
    dispatcher: Arc<Dispatcher>,
    /// Set while a [`Command::Shed`] waits to be handled.
    shed_asked: Arc<std::sync::atomic::AtomicBool>,
    /// When to look again at a budget still passed with no patron stalled long enough to
    /// be cut off yet.
    shed_again: Option<Instant>,
    epoll: Arc<Epoll>,
    wake: Arc<EventFd>,
    patrons: mpsc::Receiver<Command>,
    conns: HashMap<PatronId, Conn>,
    buffer: Vec<u8>,
}

/// How long the broker must have held events for a patron without a break before it may
/// cut the patron off to bring all patrons back under `--max-unread-bytes`.
const STALLED: Duration = Duration::from_secs(1);

// An epoll token is a patron number and, in its two low bits, which of its sockets.
const REQUESTS: u64 = 0;
const REQUESTS_CONTINUATION: u64 = 1;
const EVENTS_WRITABLE: u64 = 2;
const EVENTS_CONTINUATION_WRITABLE: u64 = 3;

fn token(patron: PatronId, kind: u64) -> u64 {
    (patron << 2) | kind
}

fn channel_token(patron: PatronId) -> u64 {
    token(patron, REQUESTS)
}

fn continuation_token(patron: PatronId) -> u64 {
    token(patron, REQUESTS_CONTINUATION)
}

fn readable() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP
}

impl Reader {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let timeout = self
                .conns
                .values()
                .filter_map(|c| c.assembly.as_ref().map(|a| a.deadline))
                .chain(self.shed_again)
                .min()
                .map(|deadline| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    EpollTimeout::try_from(left.max(Duration::from_millis(1)))
                        .unwrap_or(EpollTimeout::NONE)
                })
                .unwrap_or(EpollTimeout::NONE);
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("request reader failed: {e}");
                    self.dispatcher
                        .service()
                        .shutdown
                        .trigger(format!("request reader failed: {e}"));
                    return;
                }
            };
            for event in &events[..ready] {
                let token = event.data();
                if token == WAKE {
                    self.admit_new_patrons();
                    continue;
                }
                let patron = token >> 2;
                let outcome = match token & 3 {
                    REQUESTS => self.read_channel(patron, event.events()),
                    REQUESTS_CONTINUATION => self.read_continuation(patron),
                    _ => self.write_events(patron),
                };
                if let Outcome::Gone(why) = outcome {
                    self.drop_patron(patron, why);
                }
            }
            self.expire_assemblies();
            if self.shed_again.is_some_and(|at| at <= Instant::now()) {
                self.shed();
            }
        }
    }

    /// A full socket of this patron's became writable: write what waits.
    fn write_events(&mut self, patron: PatronId) -> Outcome {
        let Some(outbox) = self.dispatcher.outbox(patron) else {
            return Outcome::KeepGoing;
        };
        match outbox.flush() {
            Flushed::Broken => Outcome::Gone("its event channel closed"),
            Flushed::Idle | Flushed::Blocked => Outcome::KeepGoing,
        }
    }

    fn admit_new_patrons(&mut self) {
        let _ = self.wake.read();
        while let Ok(command) = self.patrons.try_recv() {
            let (patron, channel) = match command {
                // Dropped before its channel got here: close it now.
                Command::Add(patron, _) if !self.dispatcher.is_connected(patron) => continue,
                Command::Add(patron, channel) => (patron, channel),
                Command::Forget(patron) => {
                    self.forget(patron);
                    continue;
                }
                Command::Resume(patron) => {
                    self.resume(patron);
                    continue;
                }
                Command::Gone(patron) => {
                    self.drop_patron(patron, "a push found it gone");
                    continue;
                }
                Command::Shed => {
                    self.shed();
                    continue;
                }
            };
            // Accepted non-blocking (accept4 with SOCK_NONBLOCK).
            let added = self
                .epoll
                .add(&channel, EpollEvent::new(readable(), channel_token(patron)));
            match added {
                Ok(()) => {
                    self.conns.insert(
                        patron,
                        Conn {
                            channel,
                            assembly: None,
                            held_back: false,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(patron, "cannot watch patron's channel: {e}");
                    self.dispatcher.patron_gone(patron);
                }
            }
        }
    }

    fn read_channel(&mut self, patron: PatronId, flags: EpollFlags) -> Outcome {
        for _ in 0..FAIR_SHARE {
            let Some(conn) = self.conns.get_mut(&patron) else {
                return Outcome::KeepGoing;
            };
            if conn.assembly.is_some() || conn.held_back {
                // Only a hang-up matters while a fragmented message is being assembled or
                // the patron is held back.
                if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                    return Outcome::Gone("its channel closed");
                }
                return Outcome::KeepGoing;
            }
            let received = match socket::receive(&conn.channel, &mut self.buffer) {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(patron, "receive failed: {e}");
                    return Outcome::Gone("its channel failed");
                }
            };
            let (len, mut descriptors) = match received {
                Received::WouldBlock => return Outcome::KeepGoing,
                Received::Closed => return Outcome::Gone("its channel closed"),
                Received::Datagram {
                    truncated: true, ..
                } => {
                    self.dispatcher.protocol_error(
                        patron,
                        "a datagram larger than any ipc-channel sends".into(),
                    );
                    continue;
                }
                Received::Datagram {
                    len, descriptors, ..
                } => (len, descriptors),
            };
            let parsed = wire::parse_datagram(
                &self.buffer[..len],
                descriptors.len(),
                proto::MAX_REQUEST_BYTES,
            );
            match parsed {
                Err(e) => self.dispatcher.protocol_error(patron, e.to_string()),
                Ok(Datagram::Complete(payload)) => {
                    if let Some(region) = descriptors.pop() {
                        // Only looked at here (is it memory, how large): it is read on the
                        // patron's own task, counted against what the patron has in flight.
                        let size = socket::region_size(&region, proto::MAX_REQUEST_BYTES);
                        let dispatched = size.map(|size| {
                            self.dispatcher
                                .dispatch_large(patron, payload.to_vec(), region, size)
                        });
                        match dispatched {
                            Ok(Dispatched::Taken) => {}
                            Ok(Dispatched::HoldBack) => {
                                self.hold_back(patron);
                                return Outcome::KeepGoing;
                            }
                            Ok(Dispatched::Gone) => return Outcome::Gone("it was cut off"),
                            Err(e) => self.dispatcher.protocol_error(patron, e),
                        }
                        continue;
                    }
                    let size = payload.len();
                    let message = wire::decode(payload);
                    if let Some(stop) = self.deliver(patron, message, size) {
                        return stop;
                    }
                }
                Ok(Datagram::First { payload, total }) => {
                    let Some(continuation) = descriptors.pop() else {
                        continue; // parse_datagram guarantees one; be safe anyway
                    };
                    let mut assembled = Vec::with_capacity(total);
                    assembled.extend_from_slice(payload);
                    return self.start_assembly(patron, continuation, assembled, total);
                }
            }
        }
        Outcome::KeepGoing
    }

    fn start_assembly(
        &mut self,
        patron: PatronId,
        continuation: OwnedFd,
        payload: Vec<u8>,
        total: usize,
    ) -> Outcome {
        let Some(conn) = self.conns.get_mut(&patron) else {
            return Outcome::KeepGoing;
        };
        let watched = socket::set_nonblocking(&continuation).and_then(|()| {
            self.epoll.add(
                &continuation,
                EpollEvent::new(readable(), continuation_token(patron)),
            )
        });
        if let Err(e) = watched {
            tracing::warn!(patron, "cannot watch a continuation channel: {e}");
            return Outcome::Gone("its continuation channel failed");
        }
        // Its later messages wait until this one is whole.
        if let Err(e) = self.epoll.modify(
            &conn.channel,
            &mut EpollEvent::new(EpollFlags::empty(), channel_token(patron)),
        ) {
            tracing::warn!(patron, "cannot pause a channel: {e}");
            return Outcome::Gone("its channel failed");
        }
        conn.assembly = Some(Assembly {
            continuation,
            payload,
            total,
            deadline: Instant::now() + REASSEMBLY_TIMEOUT,
        });
        Outcome::KeepGoing
    }

    fn read_continuation(&mut self, patron: PatronId) -> Outcome {
        loop {
            let Some(assembly) = self
                .conns
                .get_mut(&patron)
                .and_then(|c| c.assembly.as_mut())
            else {
                return Outcome::KeepGoing;
            };
            let received = socket::receive(&assembly.continuation, &mut self.buffer);
            let len = match received {
                Ok(Received::WouldBlock) => return Outcome::KeepGoing,
                Ok(Received::Datagram {
                    len,
                    descriptors,
                    truncated: false,
                }) if descriptors.is_empty() => len,
                Ok(Received::Closed) => {
                    return self.abandon_assembly(patron, "the message's fragments stopped early")
                }
                Ok(_) => {
                    return self
                        .abandon_assembly(patron, "a fragment carried descriptors or was cut")
                }
                Err(_) => return self.abandon_assembly(patron, "its continuation channel failed"),
            };
            let missing = assembly.total - assembly.payload.len();
            if len > missing {
                return self.abandon_assembly(patron, "fragments added up to more than announced");
            }
            assembly.payload.extend_from_slice(&self.buffer[..len]);
            if assembly.payload.len() == assembly.total {
                let Some(assembly) = self.finish_assembly(patron) else {
                    return Outcome::KeepGoing;
                };
                let message = wire::decode(&assembly.payload);
                if let Some(stop) = self.deliver(patron, message, assembly.total) {
                    return stop;
                }
                // Datagrams that queued up meanwhile: read them now (level-triggered epoll
                // would report them anyway; this keeps their latency low).
                return self.read_channel(patron, EpollFlags::empty());
            }
        }
    }

    /// Ends a patron's reassembly, resuming its channel; returns the assembly.
    fn finish_assembly(&mut self, patron: PatronId) -> Option<Assembly> {
        let conn = self.conns.get_mut(&patron)?;
        let assembly = conn.assembly.take()?;
        let _ = self.epoll.delete(&assembly.continuation);
        if !conn.held_back {
            let resumed = self.epoll.modify(
                &conn.channel,
                &mut EpollEvent::new(readable(), channel_token(patron)),
            );
            if let Err(e) = resumed {
                tracing::warn!(patron, "cannot resume a channel: {e}");
            }
        }
        Some(assembly)
    }

    /// Stops reading a patron's channel until [`Command::Resume`].
    fn hold_back(&mut self, patron: PatronId) {
        let Some(conn) = self.conns.get_mut(&patron) else {
            return;
        };
        conn.held_back = true;
        let paused = self.epoll.modify(
            &conn.channel,
            &mut EpollEvent::new(EpollFlags::empty(), channel_token(patron)),
        );
        if let Err(e) = paused {
            tracing::warn!(patron, "cannot hold a channel back: {e}");
        }
    }

    fn resume(&mut self, patron: PatronId) {
        let Some(conn) = self.conns.get_mut(&patron) else {
            return;
        };
        if !conn.held_back {
            return;
        }
        conn.held_back = false;
        if conn.assembly.is_none() {
            let resumed = self.epoll.modify(
                &conn.channel,
                &mut EpollEvent::new(readable(), channel_token(patron)),
            );
            if let Err(e) = resumed {
                tracing::warn!(patron, "cannot resume a channel: {e}");
            }
        }
    }

    fn abandon_assembly(&mut self, patron: PatronId, why: &str) -> Outcome {
        self.finish_assembly(patron);
        self.dispatcher.protocol_error(patron, why.to_owned());
        Outcome::KeepGoing
    }

    fn expire_assemblies(&mut self) {
        let now = Instant::now();
        let late: Vec<PatronId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.assembly.as_ref().is_some_and(|a| a.deadline <= now))
            .map(|(patron, _)| *patron)
            .collect();
        for patron in late {
            self.abandon_assembly(
                patron,
                "a fragmented message did not arrive in full in time",
            );
        }
    }

    /// Hands a decoded message of `size` bytes to the dispatcher. Returns `Some` when this
    /// patron's channel is not to be read on now: dropped, or held back.
    fn deliver(
        &mut self,
        patron: PatronId,
        message: Result<ToBroker, wire::WireError>,
        size: usize,
    ) -> Option<Outcome> {
        match message {
            Ok(ToBroker::Request(request)) => match self.dispatcher.dispatch(patron, request, size)
            {
                Dispatched::Taken => {}
                Dispatched::HoldBack => {
                    self.hold_back(patron);
                    return Some(Outcome::KeepGoing);
                }
                // Cut off meanwhile: stop reading it.
                Dispatched::Gone => return Some(Outcome::Gone("it was cut off")),
            },
            Ok(ToBroker::Hello(_) | ToBroker::Board(_)) => self
                .dispatcher
                .protocol_error(patron, "a hello after the handshake".into()),
            Ok(ToBroker::Large(_)) => self
                .dispatcher
                .protocol_error(patron, "a large message without its region".into()),
            Err(e) => self.dispatcher.protocol_error(patron, e.to_string()),
        }
        None
    }

    /// All outboxes together queue more than the broker's budget: the patrons that leave
    /// the most unread are cut off, largest first, until the rest fit. Only a patron the
    /// broker has held events for without a break for [`STALLED`] may be: one that reads
    /// empties its queue within moments, however large its replies. If none has yet, the
    /// budget is looked at again then.
    fn shed(&mut self) {
        self.shed_asked
            .store(false, std::sync::atomic::Ordering::Release);
        self.shed_again = None;
        let unread = self.dispatcher.unread().clone();
        while unread.is_over() {
            let Some((patron, outbox)) = self.dispatcher.largest_stalled(STALLED) else {
                self.shed_again = Some(Instant::now() + STALLED / 4);
                break;
            };
            let (queued, max) = unread.queued_now();
            outbox.cut_off(format!(
                "the broker's patrons leave {} MiB of events unread, past its bound of {} MiB, and this patron leaves the most",
                queued >> 20,
                max >> 20
            ));
            self.drop_patron(patron, "it left the most unread");
        }
    }

    fn drop_patron(&mut self, patron: PatronId, why: &str) {
        self.forget(patron);
        tracing::debug!(patron, "stopped reading: {why}");
        self.dispatcher.patron_gone(patron);
    }

    /// Closes a patron's request channel (and any message half-received).
    fn forget(&mut self, patron: PatronId) {
        if let Some(conn) = self.conns.remove(&patron) {
            let _ = self.epoll.delete(&conn.channel);
            if let Some(assembly) = conn.assembly {
                let _ = self.epoll.delete(&assembly.continuation);
            }
        }
    }
}
