//! One Python `Patron`'s connection: any number of Python threads (and an asyncio loop)
//! share it.
//!
//! `patron_client::Patron` is a plain blocking object: one caller at a time waits for its
//! reply. Here one reader thread owns it and hands each reply to whoever sent the request
//! (by request id), and every other event to the event queue, so fifty threads may have
//! requests in flight at once, and an asyncio future is completed the same way a blocked
//! thread is woken: no thread per call. Status reads never come here: they read the board.

use patron_client::proto::{Event, RequestBody, RequestId, TorrentId, TorrentStatus};
use patron_client::{ConnectOptions, Error, Events, Patron, Requester};
use pyo3::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How often a thread blocked here looks whether Python wants it back (Ctrl-C).
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// Waits until `step` gives a value (`Some`) or `deadline` passes (`None`). `step` is
/// given how long it may sleep (with the GIL released), at most [`SIGNAL_SLICE`] so that
/// Ctrl-C (any signal handler that raises) is seen between steps; at the deadline it has
/// one last look, with no sleep.
pub fn sliced<T>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut step: impl FnMut(Duration) -> PyResult<Option<T>>,
) -> PyResult<Option<T>> {
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if let Some(value) = step(left.map_or(SIGNAL_SLICE, |l| l.min(SIGNAL_SLICE)))? {
            return Ok(Some(value));
        }
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

/// [`sliced`] with no deadline: waits until `step` gives a value.
pub fn until<T>(py: Python<'_>, step: impl FnMut(Duration) -> PyResult<Option<T>>) -> PyResult<T> {
    sliced(py, None, step)?
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("a wait with no deadline ended"))
}

impl From<Error> for Failure {
    /// A send that failed: refused on this side (its kind kept), or the connection gone.
    fn from(error: Error) -> Failure {
        match error {
            Error::Request(refused) => Failure::Refused(refused),
            other => Failure::Ended {
                why: other.to_string(),
                closed: false,
            },
        }
    }
}

/// Where a reply goes.
enum Waiter {
    /// A thread blocked in [`Core::request`].
    Thread(Arc<Slot>),
    /// An asyncio future, completed on its loop.
    Future {
        future: Py<PyAny>,
        event_loop: Py<PyAny>,
    },
}

/// A reply a thread waits for.
#[derive(Default)]
pub struct Slot {
    reply: Mutex<Option<Result<Event, Failure>>>,
    ready: Condvar,
}

/// Why a request got no reply from the broker.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The connection ended: the broker stopped, or this patron was closed (`closed`).
    Ended { why: String, closed: bool },
    /// Refused on this side before it was sent (too large, too many files named).
    Refused(patron_client::proto::ProtoError),
}

impl Failure {
    /// This patron was closed by its program.
    pub fn closed() -> Failure {
        Failure::Ended {
            why: "the patron is closed".into(),
            closed: true,
        }
    }
}

/// Events that are not replies, in order. A torrent's status updates are coalesced: only
/// its latest waits here (a program that never reads events holds one per torrent, not one
/// per tick).
#[derive(Default)]
struct Queue {
    order: VecDeque<Queued>,
    statuses: HashMap<TorrentId, TorrentStatus>,
    /// Why no more will come (the connection ended), once it has.
    ended: Option<Failure>,
    /// Async readers waiting for the next event: futures resolved with `None` when one
    /// arrives (they then look again).
    wakers: Vec<(Py<PyAny>, Py<PyAny>)>,
}

enum Queued {
    Status(TorrentId),
    Other(Box<Event>),
}

/// The shared state of one connection.
pub struct Core {
    requester: Mutex<Option<Requester>>,
    pending: Mutex<HashMap<RequestId, Waiter>>,
    queue: Mutex<Queue>,
    queued: Condvar,
    /// Why the connection ended (the broker stopped, `close()`), once it has.
    ended: Mutex<Option<Failure>>,
    pub options: ConnectOptions,
    pub broker_pid: u32,
    pub patron_id: u64,
    /// The process that connected: a forked child must not use the parent's connection.
    pub owner_pid: u32,
    /// Python's helper that completes a future unless it was cancelled.
    resolve: Py<PyAny>,
    /// Async requests waiting to be sent by the sender thread: a send can wait on the
    /// broker's back-pressure, which must never block an event loop.
    outbox: Mutex<Outbox>,
    outbox_ready: Condvar,
    /// Connections made for slow requests (see [`Core::adopt`]): closed with this one.
    sides: Mutex<Vec<Weak<Core>>>,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<(RequestId, RequestBody)>,
    /// The sender thread runs (started at the first async request).
    sending: bool,
}

/// Locks, going on past a panic elsewhere (the data are plain collections).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    /// Connects (starting a broker if asked and none runs) and starts the reader thread.
    pub fn connect(options: ConnectOptions, resolve: Py<PyAny>) -> Result<Arc<Core>, Error> {
        let patron = Patron::connect_with(&options)?;
        let (broker_pid, patron_id) = (patron.broker_pid(), patron.patron_id());
        // The reader thread holds only the receiving half: dropping every requester (at
        // close) closes the connection at once, even with a reply still owed.
        let (requester, events) = patron.split();
        let core = Arc::new(Core {
            requester: Mutex::new(Some(requester)),
            pending: Mutex::default(),
            queue: Mutex::default(),
            queued: Condvar::new(),
            ended: Mutex::default(),
            options,
            broker_pid,
            patron_id,
            owner_pid: std::process::id(),
            resolve,
            outbox: Mutex::default(),
            outbox_ready: Condvar::new(),
            sides: Mutex::default(),
        });
        let reader = Arc::clone(&core);
        std::thread::Builder::new()
            .name(format!("torrent-patron-{}", core.patron_id))
            .spawn(move || reader.read(events))
            .map_err(|e| Error::Protocol(format!("cannot start the reader thread: {e}")))?;
        Ok(core)
    }

    /// The reader thread: every event to its place, until the connection ends.
    fn read(self: Arc<Self>, mut events: Events) {
        let why = loop {
            if let Some(why) = lock(&self.ended).clone() {
                break why;
            }
            match events.next_event() {
                Ok(event) => match event.request() {
                    Some(id) => self.answer(id, Ok(event)),
                    None => self.push(event),
                },
                Err(e) => {
                    break Failure::Ended {
                        why: e.to_string(),
                        closed: false,
                    }
                }
            }
        };
        drop(events);
        self.end(why);
    }

    /// Marks the connection ended and wakes everyone waiting on it.
    fn end(&self, why: Failure) {
        let why = lock(&self.ended).get_or_insert(why).clone();
        lock(&self.requester).take();
        let waiters: Vec<_> = lock(&self.pending).drain().collect();
        for (_, waiter) in waiters {
            self.deliver(waiter, Err(why.clone()));
        }
        let wakers = {
            let mut queue = lock(&self.queue);
            queue.ended.get_or_insert(why);
            std::mem::take(&mut queue.wakers)
        };
        self.queued.notify_all();
        self.wake(wakers);
        // The sender thread sees the end (requests still queued were answered above).
        lock(&self.outbox).queue.clear();
        self.outbox_ready.notify_all();
    }

    fn answer(&self, id: RequestId, reply: Result<Event, Failure>) {
        // A reply nobody waits for (its caller gave up, say on Ctrl-C) is dropped.
        let waiter = lock(&self.pending).remove(&id);
        if let Some(waiter) = waiter {
            self.deliver(waiter, reply);
        }
    }

    fn deliver(&self, waiter: Waiter, reply: Result<Event, Failure>) {
        match waiter {
            Waiter::Thread(slot) => {
                *lock(&slot.reply) = Some(reply);
                slot.ready.notify_all();
            }
            Waiter::Future { future, event_loop } => {
                // Past the exit the closure is dropped unrun, and the handles' decrements are
                // only deferred (no GIL is taken for them).
                let _ = crate::attach(|py| {
                    let Ok(value) = Py::new(py, crate::calls::Reply::new(reply)) else {
                        return;
                    };
                    // A loop already closed cannot take it; nobody waits then.
                    let _ = event_loop.call_method1(
                        py,
                        "call_soon_threadsafe",
                        (self.resolve.clone_ref(py), &future, value),
                    );
                });
            }
        }
    }

    fn push(&self, event: Event) {
        let wakers = {
            let mut queue = lock(&self.queue);
            match event {
                Event::TorrentStatusUpdate(status) => {
                    let id = status.id;
                    if queue.statuses.insert(id, status).is_none() {
                        queue.order.push_back(Queued::Status(id));
                    }
                }
                other => queue.order.push_back(Queued::Other(Box::new(other))),
            }
            std::mem::take(&mut queue.wakers)
        };
        self.queued.notify_all();
        self.wake(wakers);
    }

    fn wake(&self, wakers: Vec<(Py<PyAny>, Py<PyAny>)>) {
        if wakers.is_empty() {
            return;
        }
        // Past the exit the closure is dropped unrun: its Py handles' decrements are only
        // deferred (no GIL is taken for them).
        let _ = crate::attach(|py| {
            for (future, event_loop) in wakers {
                let _ = event_loop.call_method1(
                    py,
                    "call_soon_threadsafe",
                    (self.resolve.clone_ref(py), future, py.None()),
                );
            }
        });
    }

    /// Why this connection cannot be used, if it cannot.
    pub fn ended(&self) -> Option<Failure> {
        lock(&self.ended).clone()
    }

    /// Sends `body` for a thread that will wait on the returned slot.
    pub fn send(&self, body: RequestBody) -> Result<(RequestId, Arc<Slot>), Failure> {
        let slot = Arc::new(Slot::default());
        let requester = self.requester()?;
        // The waiter is in place before the request goes: the reply may beat `send`'s return.
        let id = requester.reserve();
        lock(&self.pending).insert(id, Waiter::Thread(Arc::clone(&slot)));
        if let Err(e) = requester.send_as(id, body) {
            lock(&self.pending).remove(&id);
            return Err(e.into());
        }
        Ok((id, slot))
    }

    /// Queues `body` for the sender thread, without waiting; its reply (or why it could not
    /// be sent) completes `future` on `event_loop` (with a `Reply`).
    pub fn send_async(
        self: &Arc<Self>,
        body: RequestBody,
        future: Py<PyAny>,
        event_loop: Py<PyAny>,
    ) -> Result<RequestId, Failure> {
        let requester = self.requester()?;
        let id = requester.reserve();
        lock(&self.pending).insert(id, Waiter::Future { future, event_loop });
        let start = {
            let mut outbox = lock(&self.outbox);
            outbox.queue.push_back((id, body));
            !std::mem::replace(&mut outbox.sending, true)
        };
        self.outbox_ready.notify_one();
        if start {
            let sender = Arc::clone(self);
            let started = std::thread::Builder::new()
                .name(format!("torrent-patron-send-{}", self.patron_id))
                .spawn(move || sender.send_queued(requester));
            if let Err(e) = started {
                lock(&self.outbox).sending = false;
                lock(&self.pending).remove(&id);
                return Err(Failure::Ended {
                    why: format!("cannot start the sender thread: {e}"),
                    closed: false,
                });
            }
        }
        Ok(id)
    }

    /// The sender thread: sends queued async requests in order until the connection ends.
    fn send_queued(&self, requester: Requester) {
        loop {
            let next = {
                let mut outbox = lock(&self.outbox);
                loop {
                    if let Some(next) = outbox.queue.pop_front() {
                        break Some(next);
                    }
                    if self.ended().is_some() {
                        outbox.sending = false;
                        break None;
                    }
                    outbox = self
                        .outbox_ready
                        .wait(outbox)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some((id, body)) = next else {
                return;
            };
            if let Err(e) = requester.send_as(id, body) {
                self.answer(id, Err(e.into()));
            }
        }
    }

    fn requester(&self) -> Result<Requester, Failure> {
        lock(&self.requester)
            .clone()
            .ok_or_else(|| self.ended().unwrap_or_else(Failure::closed))
    }

    /// Gives up on a request (its caller was interrupted): its reply will be dropped.
    pub fn forget(&self, id: RequestId) {
        lock(&self.pending).remove(&id);
    }

    /// Waits up to `slice` for the slot's reply.
    pub fn wait_slot(slot: &Slot, slice: Duration) -> Option<Result<Event, Failure>> {
        let deadline = Instant::now() + slice;
        let mut reply = lock(&slot.reply);
        loop {
            if let Some(reply) = reply.take() {
                return Some(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            reply = slot
                .ready
                .wait_timeout(reply, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next event that is not a reply, waiting up to `slice`; `Err` once none will come.
    pub fn next_event(&self, slice: Duration) -> Result<Option<Event>, Failure> {
        let deadline = Instant::now() + slice;
        let mut queue = lock(&self.queue);
        loop {
            if let Some(event) = Self::pop(&mut queue) {
                return Ok(Some(event));
            }
            if let Some(why) = &queue.ended {
                return Err(why.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            queue = self
                .queued
                .wait_timeout(queue, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next event if one is queued, else registers `future` to be resolved when one
    /// comes (or the connection ends) and returns `None`.
    pub fn next_event_or_wake(
        &self,
        future: Py<PyAny>,
        event_loop: Py<PyAny>,
    ) -> Result<Option<Event>, Failure> {
        let mut queue = lock(&self.queue);
        if let Some(event) = Self::pop(&mut queue) {
            return Ok(Some(event));
        }
        if let Some(why) = &queue.ended {
            return Err(why.clone());
        }
        // Futures given up on (a cancelled wait) go, rather than pile up until an event.
        Python::attach(|py| {
            queue.wakers.retain(|(waiting, _)| {
                waiting
                    .call_method0(py, "done")
                    .and_then(|done| done.extract::<bool>(py))
                    .map_or(true, |done| !done)
            });
        });
        queue.wakers.push((future, event_loop));
        Ok(None)
    }

    fn pop(queue: &mut Queue) -> Option<Event> {
        loop {
            match queue.order.pop_front()? {
                Queued::Other(event) => return Some(*event),
                Queued::Status(id) => {
                    if let Some(status) = queue.statuses.remove(&id) {
                        return Some(Event::TorrentStatusUpdate(status));
                    }
                }
            }
        }
    }

    /// Closes the connection: the broker releases what this patron held (its ephemeral
    /// torrents close), at once, even with requests in flight; they fail here.
    pub fn close(&self) {
        let closed = Failure::closed();
        {
            let mut ended = lock(&self.ended);
            if ended.is_some() {
                return;
            }
            *ended = Some(closed.clone());
        }
        // Our requesters go (the sender thread's too, as `end` wakes it): the broker sees
        // the connection close, and the reader its end.
        self.end(closed);
        // `ended` is set before the sides are taken, and `adopt` looks at it under their
        // lock: no side connection is left open.
        let sides = std::mem::take(&mut *lock(&self.sides));
        for side in sides.iter().filter_map(Weak::upgrade) {
            side.close();
        }
    }

    /// Ties `side`, a connection made for one slow request, to this one: closing this one
    /// closes it. False (and `side` is closed) when this one is closed already.
    pub fn adopt(&self, side: &Arc<Core>) -> bool {
        let mut sides = lock(&self.sides);
        if self.ended().is_some() {
            drop(sides);
            side.close();
            return false;
        }
        sides.retain(|s| s.strong_count() > 0);
        sides.push(Arc::downgrade(side));
        true
    }

    /// Python's helper that completes futures, for a connection made beside this one.
    pub fn resolver(&self, py: Python<'_>) -> Py<PyAny> {
        self.resolve.clone_ref(py)
    }
}
