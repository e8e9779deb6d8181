//! patron-client: use the machine's one BitTorrent engine from any process.
//!
//! Only one BitTorrent client may own a machine's port, state and files, so torrent-patron
//! runs one `torrent-broker` per state directory and lets any number of processes — patrons —
//! share it. This crate is the patron side: [`Patron::connect`] finds the broker (starting
//! one if none runs, safely even when many patrons race to do so), and the methods below send
//! TIPC requests and wait for their replies. Status updates for the torrents this patron
//! holds arrive in between; [`Patron::next_event`] hands them out in order.
//!
//! [`Patron::stream`] reads one file of a torrent in order while it downloads ([`Stream`]:
//! `Read + Seek`), from the file itself, with the pieces at its position fetched first.
//!
//! A patron is a plain blocking object: no async runtime is needed. Dropping it disconnects,
//! and the broker releases whatever it held (ephemeral torrents close; others keep running).
//!
//! ```no_run
//! use patron_client::{Patron, Created};
//! use proto::{CreateNewTorrent, Event, TorrentSource};
//!
//! # fn main() -> Result<(), patron_client::Error> {
//! let mut patron = Patron::connect()?;
//! let bytes = std::fs::read("debian.iso.torrent").expect("read the .torrent");
//! let mut request = CreateNewTorrent::new(TorrentSource::TorrentFile(bytes));
//! request.output = Some("/home/me/Downloads".into());
//! let torrent = patron.create(request)?.info().clone();
//! loop {
//!     if let Event::TorrentStatusUpdate(status) = patron.next_event()? {
//!         if status.id == torrent.id && status.complete {
//!             break;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod board;
mod connect;
mod error;
pub mod json;
mod stream;

pub use board::{Board, BOARD_ENV};
pub use connect::{state_dir, ConnectOptions, BROKER_PROGRAM_ENV};
pub use error::{plain as plain_io_error, Error, Result};
pub use proto;
pub use stream::Stream;

use ipc_channel::ipc::{IpcReceiver, IpcSender};
use ipc_channel::{IpcError, TryRecvError};
use proto::{
    CloseTorrent, CreateNewTorrent, Event, MadeTorrent, MakeTorrent, ProtoError, Request,
    RequestBody, RequestId, ToBroker, TorrentId, TorrentInfo, TorrentRef, TorrentStatus,
    TorrentSummary,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A connection to the broker.
pub struct Patron {
    requester: Requester,
    events: IpcReceiver<Event>,
    /// Events that arrived while waiting for a reply, handed out by `next_event`.
    backlog: VecDeque<Event>,
    broker_pid: u32,
    patron_id: u64,
    /// The broker's socket and the handshake timeout, to fetch its board.
    socket: std::path::PathBuf,
    timeout: Duration,
    /// How this patron connected: a stream connects the same way.
    options: ConnectOptions,
}

/// Sends a [`Patron`]'s requests from another thread — say one reading commands while the
/// patron's own thread waits in [`Patron::next_event`], where the replies arrive. Clones
/// share one sequence of request ids with the patron.
#[derive(Clone)]
pub struct Requester {
    requests: IpcSender<ToBroker>,
    next_request: Arc<AtomicU64>,
}

impl Requester {
    /// Sends a request without waiting; see [`Patron::send`].
    pub fn send(&self, body: RequestBody) -> Result<RequestId> {
        let id = self.reserve();
        self.send_as(id, body)?;
        Ok(id)
    }

    /// A fresh request id, for [`Requester::send_as`]: a caller that must be ready for the
    /// reply before the request goes (its reader runs on another thread) records it first,
    /// and holds no lock while the send waits on the broker's back-pressure.
    pub fn reserve(&self) -> RequestId {
        // An id refused by `send_as` is simply never used.
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends a request under an id from [`Requester::reserve`], without waiting for its
    /// reply.
    pub fn send_as(&self, id: RequestId, body: RequestBody) -> Result<()> {
        if let Some(why) = past_bounds(&body) {
            return Err(Error::Request(ProtoError::bad_request(why)));
        }
        let mut message = ToBroker::Request(Request { id, body });
        if might_be_large(&message) {
            let bytes = proto::wire::encode_payload(&message)
                .map_err(|e| Error::Protocol(format!("cannot encode the request: {e}")))?;
            if bytes.len() > proto::MAX_REQUEST_BYTES {
                return Err(Error::Request(ProtoError::limit_reached(format!(
                    "the request is {} bytes; the broker accepts at most {}",
                    bytes.len(),
                    proto::MAX_REQUEST_BYTES
                ))));
            }
            // One small datagram and a memory region, not a train of fragments.
            if bytes.len() > proto::LARGE_MESSAGE_BYTES {
                message = ToBroker::Large(proto::SharedBytes::new(&bytes));
            }
        }
        self.requests
            .send(message)
            .map_err(|e| Error::BrokerStopped(format!("cannot send to the broker: {e}")))
    }
}

/// The outcome of a successful create request.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The torrent was started for this request.
    New(TorrentInfo),
    /// The torrent was added for this request, and waits for its turn in the broker's
    /// queue (its downloads were all taken): it starts when one ends.
    Queued(TorrentInfo),
    /// It already ran (same info hash); this patron now holds it too. The list names the
    /// options of the request the running torrent does not take (`output`, `paused`, …).
    AlreadyDownloading(TorrentInfo, Vec<String>),
}

impl Created {
    /// The torrent, either way.
    pub fn info(&self) -> &TorrentInfo {
        match self {
            Created::New(info) | Created::Queued(info) | Created::AlreadyDownloading(info, _) => {
                info
            }
        }
    }
}

/// The outcome of a close request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The torrent.
    pub id: TorrentId,
    /// False when only this patron's hold was released (others still hold it).
    pub stopped: bool,
    /// Whether its data was deleted.
    pub data_deleted: bool,
}

impl Patron {
    /// Connects to the broker of the default state directory, starting one if none runs.
    pub fn connect() -> Result<Patron> {
        Patron::connect_with(&ConnectOptions::default())
    }

    /// Connects with explicit options.
    pub fn connect_with(options: &ConnectOptions) -> Result<Patron> {
        let connected = connect::connect(options)?;
        Ok(Patron {
            requester: Requester {
                requests: connected.requests,
                next_request: Arc::new(AtomicU64::new(1)),
            },
            events: connected.events,
            backlog: VecDeque::new(),
            broker_pid: connected.broker_pid,
            patron_id: connected.patron_id,
            socket: connected.socket,
            timeout: options.timeout,
            options: options.clone(),
        })
    }

    /// The broker's status board, mapped read-only: every torrent's status, read in this
    /// process without a request (see [`Board`]). Fails where shared memory cannot be had
    /// (then [`Patron::status`] and [`Patron::list`] still work, by request).
    pub fn board(&self) -> Result<Board> {
        Board::fetch(&self.socket, self.timeout)
    }

    /// The broker's process id.
    pub fn broker_pid(&self) -> u32 {
        self.broker_pid
    }

    /// This patron's number in the broker's log.
    pub fn patron_id(&self) -> u64 {
        self.patron_id
    }

    /// Sends a request without waiting; its reply comes through [`Patron::next_event`].
    ///
    /// A request larger than [`proto::MAX_REQUEST_BYTES`] is refused here, with
    /// [`ErrorKind::LimitReached`](proto::ErrorKind::LimitReached): the broker would refuse it
    /// anyway, and ipc-channel's sender would wait forever for it to be read.
    pub fn send(&mut self, body: RequestBody) -> Result<RequestId> {
        self.requester.send(body)
    }

    /// A handle that sends this patron's requests from another thread.
    pub fn requester(&self) -> Requester {
        self.requester.clone()
    }

    /// This patron in two halves: what sends its requests, and what receives its events
    /// (replies included), for a program that reads on one thread and sends from others.
    /// The connection closes — the broker releases what this patron held, even with
    /// requests in flight — once every [`Requester`] of it is dropped.
    pub fn split(self) -> (Requester, Events) {
        let events = Events {
            events: self.events,
            backlog: self.backlog,
        };
        (self.requester, events)
    }

    /// Sends a request and waits for its reply. Other events that arrive meanwhile are kept
    /// for [`Patron::next_event`].
    pub fn request(&mut self, body: RequestBody) -> Result<Event> {
        let id = self.send(body)?;
        loop {
            let event = self.receive()?;
            if event.request() == Some(id) {
                return Ok(event);
            }
            check_fatal(&event)?;
            self.backlog.push_back(event);
        }
    }

    /// The next event: a status update, a notice, or a reply to a request sent with
    /// [`Patron::send`]. Blocks until one arrives.
    pub fn next_event(&mut self) -> Result<Event> {
        match self.backlog.pop_front() {
            Some(event) => Ok(event),
            None => self.receive(),
        }
    }

    /// Like [`Patron::next_event`], but gives up after `timeout` with `Ok(None)`.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(Some(event));
        }
        let now = std::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400));
        self.receive_until(deadline)
    }

    /// The next event off the channel, waiting for it.
    pub(crate) fn receive(&mut self) -> Result<Event> {
        receive(&self.events)
    }

    /// The next event off the channel, or `None` once `deadline` passed.
    pub(crate) fn receive_until(&mut self, deadline: std::time::Instant) -> Result<Option<Event>> {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            return match self.events.try_recv_timeout(left) {
                Ok(event) => unpack(event).map(Some),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::IpcError(e)) if interrupted(&e) => {
                    if left.is_zero() {
                        return Ok(None);
                    }
                    continue;
                }
                Err(TryRecvError::IpcError(e)) => Err(lost(e)),
            };
        }
    }

    /// Starts (or joins) a torrent. A start failure is [`Error::StartFailed`].
    pub fn create(&mut self, create: CreateNewTorrent) -> Result<Created> {
        match self.request(RequestBody::CreateNewTorrent(create))? {
            Event::NewTorrentCreated {
                torrent,
                queued: false,
                ..
            } => Ok(Created::New(torrent)),
            Event::NewTorrentCreated { torrent, .. } => Ok(Created::Queued(torrent)),
            Event::TorrentAlreadyDownloading {
                torrent,
                not_applied,
                ..
            } => Ok(Created::AlreadyDownloading(torrent, not_applied)),
            Event::TorrentStartFail { error, .. } => Err(Error::StartFailed(error)),
            other => Err(unexpected(other)),
        }
    }

    /// Releases this patron's hold on a torrent; stops it if nobody else holds it or `force`.
    pub fn close(&mut self, torrent: TorrentRef, delete_data: bool, force: bool) -> Result<Closed> {
        let body = RequestBody::CloseTorrent(CloseTorrent {
            torrent,
            delete_data,
            force,
        });
        match self.request(body)? {
            Event::TorrentClosed {
                id,
                stopped,
                data_deleted,
                ..
            } => Ok(Closed {
                id,
                stopped,
                data_deleted,
            }),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Every torrent the broker runs.
    pub fn list(&mut self) -> Result<Vec<TorrentSummary>> {
        match self.request(RequestBody::List)? {
            Event::TorrentList { torrents, .. } => Ok(torrents),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// One torrent's status now.
    pub fn status(&mut self, torrent: TorrentRef) -> Result<TorrentStatus> {
        match self.request(RequestBody::Status(torrent))? {
            Event::Status { status, .. } => Ok(status),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Holds a running torrent, to receive its status updates.
    pub fn follow(&mut self, torrent: TorrentRef) -> Result<TorrentInfo> {
        match self.request(RequestBody::Follow(torrent))? {
            Event::Following { torrent, .. } => Ok(torrent),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Has the broker hash a local file or folder into a .torrent (and seed it, if asked).
    pub fn make(&mut self, make: MakeTorrent) -> Result<MadeTorrent> {
        match self.request(RequestBody::MakeTorrent(make))? {
            Event::TorrentMade { made, .. } => Ok(made),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Who the broker is and how it runs.
    pub fn broker_info(&mut self) -> Result<proto::BrokerInfo> {
        match self.request(RequestBody::BrokerInfo)? {
            Event::BrokerInfo { info, .. } => Ok(info),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Pauses a torrent (no traffic until resumed; kept across broker restarts). Returns its
    /// status once paused. Pausing a paused torrent is not an error.
    pub fn pause(&mut self, torrent: TorrentRef) -> Result<TorrentStatus> {
        self.status_reply(RequestBody::Pause(torrent))
    }

    /// Resumes a paused torrent (one added paused too). Returns its status once running.
    pub fn resume(&mut self, torrent: TorrentRef) -> Result<TorrentStatus> {
        self.status_reply(RequestBody::Resume(torrent))
    }

    /// Has the broker verify a torrent's data on disk again, every piece. Returns its status
    /// as the check starts; follow it (or read the board) to see the check end.
    pub fn recheck(&mut self, torrent: TorrentRef) -> Result<TorrentStatus> {
        self.status_reply(RequestBody::Recheck(torrent))
    }

    /// Moves a torrent's data to folder `to` (absolute, inside the broker's download roots)
    /// and runs it from there: a rename on one file system; across two a copy, synced and
    /// verified by hash, before the old files go. Returns its status once it runs from the
    /// new place; on an error it runs from the old one, its data whole there.
    pub fn move_storage(&mut self, torrent: TorrentRef, to: String) -> Result<TorrentStatus> {
        self.status_reply(RequestBody::MoveStorage(proto::MoveStorage { torrent, to }))
    }

    /// Gives a torrent its labels (replacing those it had). Returns its status.
    pub fn set_labels(&mut self, change: proto::SetLabels) -> Result<TorrentStatus> {
        self.status_reply(RequestBody::SetLabels(change))
    }

    /// Changes what a label carries for its torrents (with `change.name` set), and returns
    /// every label, configured or carried by a torrent.
    pub fn configure_label(
        &mut self,
        change: proto::ConfigureLabel,
    ) -> Result<Vec<proto::LabelSettings>> {
        match self.request(RequestBody::ConfigureLabel(Box::new(change)))? {
            Event::Labels { labels, .. } => Ok(labels),
            other => Err(error_or_unexpected(other)),
        }
    }

    fn status_reply(&mut self, body: RequestBody) -> Result<TorrentStatus> {
        match self.request(body)? {
            Event::Status { status, .. } => Ok(status),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// A torrent's files: index, path, size, bytes verified, whether selected.
    pub fn files(&mut self, torrent: TorrentRef) -> Result<FileList> {
        self.files_request(proto::FilesRequest {
            torrent,
            only: None,
        })
    }

    /// Downloads only these files (by index or path) from now on (kept across broker
    /// restarts); returns the files as they are then.
    pub fn select_files(
        &mut self,
        torrent: TorrentRef,
        only: Vec<proto::FileRef>,
    ) -> Result<FileList> {
        self.files_request(proto::FilesRequest {
            torrent,
            only: Some(only),
        })
    }

    fn files_request(&mut self, request: proto::FilesRequest) -> Result<FileList> {
        match self.request(RequestBody::Files(request))? {
            Event::Files { torrent, files, .. } => Ok(FileList { torrent, files }),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// A torrent's connected peers (address, client, rates, progress).
    pub fn peers(&mut self, torrent: TorrentRef) -> Result<PeerList> {
        self.add_peers(torrent, Vec::new())
    }

    /// Dials `peers` (`IP:PORT`) for a running torrent, seeding or not, and remembers them
    /// with it (a restarted broker dials them too). [`PeerList::dialled`] says which were
    /// dialled (the others were already connected or being dialled).
    pub fn add_peers(&mut self, torrent: TorrentRef, peers: Vec<String>) -> Result<PeerList> {
        let body = RequestBody::Peers(proto::PeersRequest {
            torrent,
            add: peers,
        });
        match self.request(body)? {
            Event::Peers {
                torrent,
                dialled,
                peers,
                banned,
                ..
            } => Ok(PeerList {
                torrent,
                dialled,
                peers,
                banned,
            }),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Reads `file` of `torrent` (the only file when `None`) in order while it downloads:
    /// reads block until the bytes at the position are verified, and the pieces there are
    /// fetched first. The stream has a connection of its own (see [`Stream`]); seek it to
    /// start elsewhere, or open it at an offset with [`Stream::open`].
    ///
    /// ```no_run
    /// use std::io::Read;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let patron = patron_client::Patron::connect()?;
    /// let torrent = proto::TorrentRef::parse("3").expect("an id");
    /// let mut video = patron.stream(torrent, None)?;
    /// let mut head = vec![0; 1 << 20];
    /// video.read_exact(&mut head)?; // the first MiB, as soon as it is verified
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream(&self, torrent: TorrentRef, file: Option<proto::FileRef>) -> Result<Stream> {
        Stream::open(&self.options, torrent, file, 0)
    }

    /// Changes rate limits now and across restarts: the broker's for all torrents together
    /// (its usual ones and its alternative ones, [`proto::AltChange`]), or one torrent's own
    /// (`Some(0)` lifts one; `None` leaves it). Returns those set, with the broker's
    /// alternative ones (`None` for a torrent's own). With nothing to change, it only asks.
    pub fn set_limits(
        &mut self,
        change: proto::SetLimits,
    ) -> Result<(proto::RateLimits, Option<proto::AltSpeed>)> {
        match self.request(RequestBody::SetLimits(change))? {
            Event::Limits { limits, alt, .. } => Ok((limits, alt)),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Changes the broker's queue (how many torrents download and seed at once, and when a
    /// running one is stalled), now and across restarts (`Some(None)` lifts a limit; `None`
    /// leaves it); returns the settings in force. With nothing to change, it only asks.
    pub fn set_queue(&mut self, change: proto::SetQueue) -> Result<proto::QueueSettings> {
        match self.request(RequestBody::SetQueue(change))? {
            Event::Queue { queue, .. } => Ok(queue),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Changes when torrents stop seeding: the broker's limits and action, or (with a
    /// torrent named) that torrent's own; returns those in force and the action. With
    /// nothing to change, it only asks.
    pub fn set_seeding(
        &mut self,
        change: proto::SetSeeding,
    ) -> Result<(proto::SeedingLimits, proto::SeedAction)> {
        match self.request(RequestBody::SetSeeding(change))? {
            Event::Seeding { limits, action, .. } => Ok((limits, action)),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Moves a torrent in the broker's queue (queued torrents start in its order); returns
    /// its status after the move (it may have started, or been queued, by it).
    pub fn move_in_queue(
        &mut self,
        torrent: TorrentRef,
        to: proto::QueueMove,
    ) -> Result<TorrentStatus> {
        let body = RequestBody::MoveInQueue(proto::MoveInQueue { torrent, to });
        match self.request(body)? {
            Event::Status { status, .. } => Ok(status),
            other => Err(error_or_unexpected(other)),
        }
    }

    /// Asks the broker to stop gracefully. Returns once it has acknowledged.
    pub fn stop_broker(&mut self) -> Result<()> {
        match self.request(RequestBody::StopBroker)? {
            Event::Ok { .. } => Ok(()),
            other => Err(error_or_unexpected(other)),
        }
    }
}

/// A torrent's files ([`Patron::files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileList {
    /// The torrent.
    pub torrent: TorrentId,
    /// Its files, by index (padding files left out).
    pub files: Vec<proto::FileEntry>,
}

/// A torrent's peers ([`Patron::peers`], [`Patron::add_peers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerList {
    /// The torrent.
    pub torrent: TorrentId,
    /// The peers asked for that were dialled.
    pub dialled: Vec<String>,
    /// Its connected peers, by address.
    pub peers: Vec<proto::PeerEntry>,
    /// The peers it banned while it runs (each sent data that failed a hash check).
    pub banned: Vec<proto::BannedPeer>,
}

/// Why a request's lists are longer than the broker decodes (it would refuse the request
/// whole, saying only that it cannot decode it), if they are.
fn past_bounds(body: &RequestBody) -> Option<String> {
    use proto::bounded::{MAX_ADDRESSES_NAMED, MAX_FILES_NAMED};
    let (files, addresses) = match body {
        RequestBody::CreateNewTorrent(create) => (
            create.only_files.as_ref().map_or(0, Vec::len),
            create.peers.len(),
        ),
        RequestBody::Files(request) => (request.only.as_ref().map_or(0, Vec::len), 0),
        RequestBody::Peers(request) => (0, request.add.len()),
        RequestBody::MakeTorrent(make) => (0, make.trackers.len()),
        _ => (0, 0),
    };
    if files > MAX_FILES_NAMED {
        return Some(format!(
            "{files} files named in one request; at most {MAX_FILES_NAMED} (more than a torrent may have)"
        ));
    }
    (addresses > MAX_ADDRESSES_NAMED).then(|| {
        format!("{addresses} peers or trackers named in one request; at most {MAX_ADDRESSES_NAMED}")
    })
}

/// Whether a request may be too large for one datagram (then it is measured, and sent in
/// shared memory if it is): a .torrent's bytes, or a long list of files, peers or trackers
/// (`--only 0-99999` is a few characters typed and 100,000 entries sent). Measuring every
/// request would be wasted work.
fn might_be_large(message: &ToBroker) -> bool {
    const WORTH_MEASURING: usize = proto::LARGE_MESSAGE_BYTES / 2;
    // An entry's bytes on the wire, at most: its text and a few of framing.
    let files = |only: &Option<Vec<proto::FileRef>>| {
        only.iter()
            .flatten()
            .map(|f| match f {
                proto::FileRef::Index(_) => 6,
                proto::FileRef::Path(p) => p.len() + 6,
            })
            .sum::<usize>()
    };
    let texts = |list: &[String]| list.iter().map(|s| s.len() + 6).sum::<usize>();
    let ToBroker::Request(Request { body, .. }) = message else {
        return false;
    };
    let size = match body {
        RequestBody::CreateNewTorrent(create) => {
            let source = match &create.source {
                proto::TorrentSource::TorrentFile(bytes) => bytes.len(),
                proto::TorrentSource::Magnet(link) => link.len(),
            };
            source + files(&create.only_files) + texts(&create.peers)
        }
        RequestBody::Files(request) => files(&request.only),
        RequestBody::Peers(request) => texts(&request.add),
        RequestBody::MakeTorrent(make) => make.path.len() + texts(&make.trackers),
        _ => 0,
    };
    size > WORTH_MEASURING
}

/// The receiving half of a [`Patron`] ([`Patron::split`]).
pub struct Events {
    events: IpcReceiver<Event>,
    backlog: VecDeque<Event>,
}

impl Events {
    /// The next event, replies included (the broker's last word too, such as
    /// [`Event::BrokerStopping`]); blocks until one arrives. Once the connection ended,
    /// [`Error::BrokerStopped`].
    pub fn next_event(&mut self) -> Result<Event> {
        match self.backlog.pop_front() {
            Some(event) => Ok(event),
            None => receive(&self.events),
        }
    }
}

/// The next event off `events`, waiting for it.
fn receive(events: &IpcReceiver<Event>) -> Result<Event> {
    loop {
        match events.recv() {
            // A signal's handler ran on this thread (a Python program's Ctrl-C, say):
            // nothing was lost, and whoever handles it has its own way to hear of it.
            Err(e) if interrupted(&e) => continue,
            received => return received.map_err(lost).and_then(unpack),
        }
    }
}

/// The event inside a large one ([`Event::Large`]: it came in shared memory).
fn unpack(event: Event) -> Result<Event> {
    let Event::Large(shared) = event else {
        return Ok(event);
    };
    match proto::wire::decode_payload::<Event>(shared.bytes()) {
        Ok(Event::Large(_)) => Err(Error::Protocol("a large event inside a large event".into())),
        Ok(inner) => Ok(inner),
        Err(e) => Err(Error::Protocol(format!("cannot decode a large event: {e}"))),
    }
}

/// Whether a receive failed only because a signal's handler interrupted it.
fn interrupted(e: &IpcError) -> bool {
    matches!(e, IpcError::Io(io) if io.kind() == std::io::ErrorKind::Interrupted)
}

fn lost(e: IpcError) -> Error {
    match e {
        IpcError::Disconnected => Error::BrokerStopped("the broker closed the connection".into()),
        other => Error::Protocol(format!("cannot receive from the broker: {other:?}")),
    }
}

/// Events after which no reply will ever come.
fn check_fatal(event: &Event) -> Result<()> {
    match event {
        Event::BrokerStopping { reason } => Err(Error::BrokerStopped(reason.clone())),
        Event::Disconnected { reason } => Err(Error::BrokerStopped(format!(
            "the broker disconnected this patron: {reason}"
        ))),
        Event::ProtocolError { message } => Err(Error::Protocol(message.clone())),
        _ => Ok(()),
    }
}

fn error_or_unexpected(event: Event) -> Error {
    match event {
        Event::Error { error, .. } => Error::Request(error),
        other => unexpected(other),
    }
}

fn unexpected(event: Event) -> Error {
    Error::Protocol(format!("unexpected reply {event:?}"))
}

/// The error a request failure carries, if any (for callers sorting errors by kind).
pub fn proto_error(error: &Error) -> Option<&ProtoError> {
    match error {
        Error::StartFailed(e) | Error::Request(e) | Error::StreamEnded(e) => Some(e),
        _ => None,
    }
}
