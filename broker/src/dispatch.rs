//! Dispatch: each patron's requests, in order, with a bound on what is in flight.
//!
//! The transport hands every decoded request here. A request that never waits on the engine
//! is answered at once when nothing of its patron is in flight; any other goes to a task of
//! the patron's own, which serves its requests one at a time, so replies leave in request
//! order. A patron may have at most [`MAX_IN_FLIGHT_REQUESTS`] requests or
//! [`MAX_IN_FLIGHT_BYTES`] read and not answered: past that, the transport is told to stop
//! reading it until it has drained to half (back-pressure: its own sends block). All
//! patrons together may have [`MAX_IN_FLIGHT_BYTES_ALL`]: past that, a patron whose request
//! is read is held back until that request is served, one request at a time each.

use crate::budget::{RegionBudget, RegionTicket, UnreadBudget};
use crate::commands;
use crate::patron::Outbox;
use crate::service::Service;
use crate::sink::{PatronConnection, PatronId};
use proto::{Event, Request, RequestBody, ToBroker};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Requests of one patron read and not yet answered, past which its channel is not read until
/// it falls back to half (its own sends then block: back-pressure, DESIGN §4).
pub const MAX_IN_FLIGHT_REQUESTS: usize = 256;
/// Bytes of one patron's requests read and not yet answered, with the same effect.
pub const MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of all patrons' requests read and not yet answered (per-patron bounds times 4,096
/// patrons is not a bound): past it, a patron whose request is read is held back too, so
/// each goes on with one request at a time until the broker catches up.
pub const MAX_IN_FLIGHT_BYTES_ALL: usize = 64 * 1024 * 1024;
/// Large messages (each a shared memory region: a descriptor and its memory) of one patron
/// read and not yet answered, with the same effect: a patron pipelining big .torrents
/// behind a slow request holds two of them in the broker, not hundreds.
pub const MAX_REGIONS_PER_PATRON: usize = 2;

/// A large message's region read off a patron's socket and not yet served, with its share
/// of the budget. Kept in its patron's table, so that a patron that goes closes them all at
/// once, even while its task waits on a slow request.
struct HeldRegion {
    region: Arc<OwnedFd>,
    /// Its size as counted when it came (it is read no larger: the patron still holds the
    /// region and could grow it).
    size: usize,
    ticket: RegionTicket,
}

type HeldRegions = Arc<Mutex<HashMap<u64, HeldRegion>>>;

/// What became of a request handed to [`Dispatcher::dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// Answered, or queued for its patron's task.
    Taken,
    /// Queued, and its patron has as much in flight as it may: read nothing more of it until
    /// the dispatcher resumes it.
    HoldBack,
    /// The patron is no longer connected (cut off): close its channel.
    Gone,
}

/// What one patron has in flight.
struct InFlight {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    regions: AtomicUsize,
    held_back: std::sync::atomic::AtomicBool,
    /// What all patrons have in flight.
    all: Arc<AllInFlight>,
}

/// Bytes of requests all patrons have in flight, and their bound.
struct AllInFlight {
    bytes: AtomicUsize,
    max: usize,
}

impl InFlight {
    fn new(all: Arc<AllInFlight>) -> InFlight {
        InFlight {
            requests: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            regions: AtomicUsize::new(0),
            held_back: std::sync::atomic::AtomicBool::new(false),
            all,
        }
    }

    /// Counts `size` more bytes in flight; whether the patron is now at its own bound
    /// (`max_bytes`: its bytes), and whether all patrons together are at theirs.
    fn add(&self, size: usize, max_bytes: usize) -> (bool, bool) {
        let requests_now = self.requests.load(Ordering::Acquire) + 1;
        let bytes_now = self.bytes.load(Ordering::Acquire) + size;
        let all_now = self.all.bytes.load(Ordering::Acquire) + size;
        let own_full = requests_now >= MAX_IN_FLIGHT_REQUESTS || bytes_now >= max_bytes;
        let all_full = all_now >= self.all.max;
        // Held back before the counts can fall, so a resume cannot be missed.
        if own_full || all_full {
            self.held_back.store(true, Ordering::Release);
        }
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(size, Ordering::AcqRel);
        self.all.bytes.fetch_add(size, Ordering::AcqRel);
        (own_full, all_full)
    }

    /// One request of `size` bytes served (or let go).
    fn done(&self, size: usize) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        self.all.bytes.fetch_sub(size, Ordering::AcqRel);
    }
}

impl InFlight {
    /// At or under half of every limit: a held-back patron is read again.
    fn is_low(&self) -> bool {
        self.requests.load(Ordering::Acquire) <= MAX_IN_FLIGHT_REQUESTS / 2
            && self.bytes.load(Ordering::Acquire) <= MAX_IN_FLIGHT_BYTES / 2
            && self.regions.load(Ordering::Acquire) <= MAX_REGIONS_PER_PATRON / 2
    }
}

/// What the dispatcher asks of the transport below it.
pub trait Transport: Send + Sync {
    /// Read a held-back patron's channel again.
    fn resume(&self, patron: PatronId);
    /// Stop reading a patron that was dropped, closing its channel now.
    fn forget(&self, patron: PatronId);
}

/// One patron's queue of requests for its task, and what it has in flight.
struct PatronQueue {
    connection: PatronConnection,
    /// Its outbox (the service sees it only as the connection's sink).
    outbox: Arc<Outbox>,
    requests: mpsc::UnboundedSender<(Work, usize)>,
    in_flight: Arc<InFlight>,
    /// Its large messages' regions, read and not yet served.
    regions: HeldRegions,
    next_region: u64,
}

/// What a patron's task serves, in order.
// Nearly all of it is `Request`s (as [`proto::ToBroker`]): boxing them would cost an
// allocation each and save no memory.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// A decoded request.
    Request(Request),
    /// A large message: its datagram's payload and (by its key in the patron's
    /// [`HeldRegions`]) the shared memory region beside it, read and decoded by the patron's
    /// own task (not the reader thread every patron shares).
    Large { payload: Vec<u8>, region: u64 },
    /// A large message refused unread (the broker's budget was spent): its reply, in turn.
    Refused(proto::RequestId, proto::ProtoError),
}

/// Routes every patron's requests to the service, in order and bounded.
pub struct Dispatcher {
    service: Arc<Service>,
    /// Every patron's large messages, together (the service's budget).
    regions: Arc<RegionBudget>,
    /// Every patron's requests read and not yet answered, together.
    in_flight: Arc<AllInFlight>,
    queues: Mutex<HashMap<PatronId, PatronQueue>>,
    next_patron: AtomicU64,
    transport: OnceLock<Arc<dyn Transport>>,
    runtime: tokio::runtime::Handle,
}

impl Dispatcher {
    /// A dispatcher for `service`; the transport is attached once it runs.
    pub fn new(service: Arc<Service>) -> Arc<Dispatcher> {
        Dispatcher::bounded(service, MAX_IN_FLIGHT_BYTES_ALL)
    }

    /// A dispatcher whose patrons together may have `max_in_flight` bytes of requests in
    /// flight (tests use a small bound).
    pub(crate) fn bounded(service: Arc<Service>, max_in_flight: usize) -> Arc<Dispatcher> {
        let regions = service.large_requests.clone();
        Arc::new(Dispatcher {
            service,
            regions,
            in_flight: Arc::new(AllInFlight {
                bytes: AtomicUsize::new(0),
                max: max_in_flight,
            }),
            queues: Mutex::new(HashMap::new()),
            next_patron: AtomicU64::new(1),
            transport: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The whole broker's budget for what patrons leave unread, which every outbox counts in.
    pub fn unread(&self) -> &Arc<UnreadBudget> {
        &self.service.unread
    }

    /// Among the connected patrons the broker has held events for without a break for at
    /// least `stalled`, the one it holds the most for, and its outbox (to cut off when all of
    /// them together pass their budget). A patron that reads is never one: its queue empties
    /// within moments.
    pub fn largest_stalled(&self, stalled: Duration) -> Option<(PatronId, Arc<Outbox>)> {
        let outboxes: Vec<_> = self
            .queues()
            .iter()
            .map(|(id, q)| (*id, q.outbox.clone()))
            .collect();
        outboxes
            .into_iter()
            .filter_map(|(id, outbox)| Some((outbox.stalled_bytes(stalled)?, id, outbox)))
            .filter(|(bytes, _, _)| *bytes > 0)
            .max_by_key(|(bytes, _, _)| *bytes)
            .map(|(_, id, outbox)| (id, outbox))
    }

    /// Attaches the transport (once).
    pub fn attach(&self, transport: Arc<dyn Transport>) {
        let _ = self.transport.set(transport);
    }

    /// The service requests are served by.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<PatronId, PatronQueue>> {
        // Plain inserts and removals: a poisoned lock is still consistent.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh patron number.
    pub fn next_patron_id(&self) -> PatronId {
        self.next_patron.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a patron that completed the handshake (which may still be refused: the
    /// patron limit), and starts the task that serves its requests in order.
    pub fn add_patron(
        self: &Arc<Self>,
        id: PatronId,
        pid: i32,
        outbox: Arc<Outbox>,
    ) -> Result<(), String> {
        let (requests, mut queue) = mpsc::unbounded_channel::<(Work, usize)>();
        let connection = PatronConnection {
            id,
            pid,
            events: outbox.clone(),
        };
        let in_flight = Arc::new(InFlight::new(self.in_flight.clone()));
        let regions = HeldRegions::default();
        self.service.connect(connection.clone())?;
        self.queues().insert(
            id,
            PatronQueue {
                connection: connection.clone(),
                outbox,
                requests,
                in_flight: in_flight.clone(),
                regions: regions.clone(),
                next_region: 0,
            },
        );
        let dispatcher = self.clone();
        self.runtime.spawn(async move {
            let service = dispatcher.service.clone();
            while let Some((work, size)) = queue.recv().await {
                // A large request's share of the budget is held until it is served (its bytes
                // are in memory till then); its descriptor closes once it is read.
                let mut ticket = None;
                let request = match work {
                    Work::Request(request) => Some(request),
                    Work::Large { payload, region } => {
                        let held = regions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&region);
                        match held {
                            Some(HeldRegion {
                                region,
                                size,
                                ticket: taken,
                            }) => {
                                ticket = Some(taken);
                                dispatcher
                                    .unpack_large(&connection, payload, region, size)
                                    .await
                            }
                            None => None, // its patron left: closed already
                        }
                    }
                    Work::Refused(request, error) => {
                        if service.is_connected(connection.id) {
                            connection.send(Event::Error { request, error });
                        }
                        None
                    }
                };
                // A patron that left gets no more work done for it.
                match request {
                    Some(request) if service.is_connected(connection.id) => {
                        commands::serve(&service, &connection, request).await;
                    }
                    Some(request) => tracing::info!(
                        patron = connection.id,
                        request = %request.id,
                        kind = %request.body.kind(),
                        "not served: its patron left"
                    ),
                    None => {}
                }
                // After the reply is queued, so a later immediate reply cannot overtake it.
                if ticket.take().is_some() {
                    in_flight.regions.fetch_sub(1, Ordering::AcqRel);
                }
                in_flight.done(size);
                if in_flight.is_low() && in_flight.held_back.swap(false, Ordering::AcqRel) {
                    if let Some(transport) = dispatcher.transport.get() {
                        transport.resume(connection.id);
                    }
                }
            }
        });
        Ok(())
    }

    /// Answers a decoded request (of `size` bytes on the wire) at once if it never waits on
    /// the engine and nothing of its patron is in flight; otherwise queues it for the
    /// patron's task, and says when the patron has as much in flight as it may.
    pub fn dispatch(
        self: &Arc<Self>,
        patron: PatronId,
        request: Request,
        size: usize,
    ) -> Dispatched {
        let found = self.queues().get(&patron).map(|handle| {
            (
                handle.connection.clone(),
                handle.in_flight.clone(),
                handle.requests.clone(),
            )
        });
        let Some((connection, in_flight, requests)) = found else {
            return Dispatched::Gone;
        };
        tracing::info!(
            patron,
            pid = connection.pid,
            request = %request.id,
            kind = %request.body.kind(),
            "request"
        );
        // Only this thread adds to `in_flight`, so zero here means nothing can be overtaken.
        // A hop to the patron's task costs more than answering a quick request here.
        let idle = in_flight.requests.load(Ordering::Acquire) == 0;
        if idle && commands::is_immediate(&request.body) {
            commands::serve_immediate(&self.service, &connection, request);
            return Dispatched::Taken;
        }
        enqueue(
            &in_flight,
            &requests,
            Work::Request(request),
            size,
            MAX_IN_FLIGHT_BYTES,
        )
    }

    /// Queues a large message (see [`proto::SharedBytes`]) for the patron's own task: its
    /// region (`size` bytes, checked already) counts toward what the patron has in flight
    /// before a byte of it is read, so a patron gets one region read at a time, on its own
    /// time.
    pub fn dispatch_large(
        self: &Arc<Self>,
        patron: PatronId,
        payload: Vec<u8>,
        region: OwnedFd,
        size: usize,
    ) -> Dispatched {
        let ticket = self.regions.take(size);
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(&patron) else {
            return Dispatched::Gone;
        };
        let (in_flight, requests) = (queue.in_flight.clone(), queue.requests.clone());
        let work = match ticket {
            Some(ticket) => {
                let key = queue.next_region;
                queue.next_region += 1;
                let held = HeldRegion {
                    region: Arc::new(region),
                    size,
                    ticket,
                };
                queue
                    .regions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, held);
                in_flight.regions.fetch_add(1, Ordering::AcqRel);
                Work::Large {
                    payload,
                    region: key,
                }
            }
            None => {
                // Refused unread: its descriptor closes now; its request still gets its
                // one reply, in turn.
                let Some(request) = peek_request_id(&region) else {
                    drop(queues);
                    self.protocol_error(patron, "a large message must hold a request".into());
                    return Dispatched::Taken;
                };
                let (regions, max, bytes, max_bytes) = self.regions.use_now();
                let error = proto::ProtoError::limit_reached(format!(
                        "the broker holds as many large messages as it may for all patrons ({regions} of {max}, {} of {} MiB): send it again later",
                        bytes >> 20,
                        max_bytes >> 20
                    ),
                );
                Work::Refused(request, error)
            }
        };
        drop(queues);
        // Held back sooner than a small request: at half the bytes (its read is still to do),
        // and at [`MAX_REGIONS_PER_PATRON`] regions.
        let held_back = in_flight.regions.load(Ordering::Acquire) >= MAX_REGIONS_PER_PATRON;
        match enqueue(&in_flight, &requests, work, size, MAX_IN_FLIGHT_BYTES / 2) {
            Dispatched::Taken if held_back => {
                in_flight.held_back.store(true, Ordering::Release);
                // Drained meanwhile: whoever clears the flag decides (see `enqueue`).
                if in_flight.is_low() && in_flight.held_back.swap(false, Ordering::AcqRel) {
                    Dispatched::Taken
                } else {
                    Dispatched::HoldBack
                }
            }
            other => other,
        }
    }

    /// Reads and decodes a large message off the async threads; a protocol error if it is
    /// not a large request.
    async fn unpack_large(
        &self,
        connection: &PatronConnection,
        payload: Vec<u8>,
        region: Arc<OwnedFd>,
        counted: usize,
    ) -> Option<Request> {
        let unpacked =
            tokio::task::spawn_blocking(move || unpack_large(&payload, &region, counted))
                .await
                .unwrap_or_else(|e| Err(format!("cannot read a large message: {e}")));
        match unpacked {
            Ok((request, size)) => {
                tracing::debug!(
                    patron = connection.id,
                    bytes = size,
                    "a large request, in shared memory"
                );
                tracing::info!(
                    patron = connection.id,
                    pid = connection.pid,
                    request = %request.id,
                    kind = %request.body.kind(),
                    "request"
                );
                Some(request)
            }
            Err(message) => {
                self.protocol_error(connection.id, message);
                None
            }
        }
    }

    /// Tells a patron its message could not be decoded.
    pub fn protocol_error(&self, patron: PatronId, message: String) {
        let Some(connection) = self.queues().get(&patron).map(|q| q.connection.clone()) else {
            return;
        };
        tracing::warn!(
            patron,
            pid = connection.pid,
            "undecodable message: {message}"
        );
        connection.send(Event::ProtocolError { message });
    }

    /// A patron's channel closed (it exited, crashed or was killed) or it was cut off: its
    /// queue goes, the service releases what it held, and its sockets close now, not when
    /// its process exits.
    pub fn patron_gone(&self, patron: PatronId) {
        let queue = self.queues().remove(&patron);
        // Its large messages' regions close now, even while its task waits on a slow
        // request: their descriptors and memory are the broker's budget.
        if let Some(queue) = queue {
            queue
                .regions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        self.service.disconnect(patron);
        if let Some(transport) = self.transport.get() {
            transport.forget(patron);
        }
    }

    /// Whether this patron is connected.
    pub fn is_connected(&self, patron: PatronId) -> bool {
        self.service.is_connected(patron)
    }

    /// A connected patron's outbox (for the event loop to flush it).
    pub fn outbox(&self, patron: PatronId) -> Option<Arc<Outbox>> {
        self.queues().get(&patron).map(|q| q.outbox.clone())
    }

    /// Every connected patron's outbox (to say goodbye).
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.queues().values().map(|q| q.outbox.clone()).collect()
    }
}

/// The request id at the start of a region, read without reading the rest.
fn peek_request_id(region: &OwnedFd) -> Option<proto::RequestId> {
    let mut prefix = [0u8; 16];
    let read = nix::sys::uio::pread(region, &mut prefix, 0).ok()?;
    proto::wire::peek_request_id(&prefix[..read])
}

/// A large message's payload and region: the request inside and the region's size. Only a
/// request that can be large may come this way (a .torrent's bytes; a long list of files,
/// peers or trackers, each bounded where it is decoded), whole, with nothing after it.
fn unpack_large(
    payload: &[u8],
    region: &OwnedFd,
    counted: usize,
) -> Result<(Request, usize), String> {
    // No larger than it was counted as: a region grown since is refused.
    let bytes = crate::socket::read_region(region, counted.min(proto::MAX_REQUEST_BYTES))?;
    let size = bytes.len();
    let outer =
        proto::wire::decode_with_regions(payload, vec![bytes]).map_err(|e| e.to_string())?;
    let ToBroker::Large(shared) = outer else {
        return Err("a shared memory region beside a message that is not a large one".into());
    };
    let request = match proto::wire::decode_whole(shared.bytes()).map_err(|e| e.to_string())? {
        ToBroker::Request(request) => request,
        _ => return Err("a large message must hold a request".into()),
    };
    match &request.body {
        RequestBody::CreateNewTorrent(_)
        | RequestBody::Files(_)
        | RequestBody::Peers(_)
        | RequestBody::MakeTorrent(_) => Ok((request, size)),
        other => Err(format!(
            "a {} request is never large: it must not come in shared memory",
            other.kind()
        )),
    }
}

/// Queues `work` of `size` bytes for a patron's task; whether its reader must now hold back
/// (at [`MAX_IN_FLIGHT_REQUESTS`] requests or `max_bytes` bytes in flight, or all patrons
/// together at [`MAX_IN_FLIGHT_BYTES_ALL`]).
fn enqueue(
    in_flight: &InFlight,
    requests: &mpsc::UnboundedSender<(Work, usize)>,
    work: Work,
    size: usize,
    max_bytes: usize,
) -> Dispatched {
    let (own_full, all_full) = in_flight.add(size, max_bytes);
    if requests.send((work, size)).is_err() {
        return Dispatched::Gone;
    }
    if !own_full && !all_full {
        return Dispatched::Taken;
    }
    // Held back for the whole broker's sake: this request is in flight, and when the task
    // has served it (its own counts low) it clears the flag and resumes the patron.
    if !own_full {
        return Dispatched::HoldBack;
    }
    // If the task drained to the low mark meanwhile, whoever clears the flag decides: the
    // task (it sends a resume, which the reader handles after holding back) or we (nothing
    // is held back).
    if in_flight.is_low() && in_flight.held_back.swap(false, Ordering::AcqRel) {
        return Dispatched::Taken;
    }
    Dispatched::HoldBack
}
