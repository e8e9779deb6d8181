//! TIPC: the messages a patron and the `torrent-broker` exchange.
//!
//! torrent-patron lets many independent processes share one BitTorrent engine. Each of those
//! processes (a *patron*) talks to the broker over [ipc-channel], which serializes with
//! postcard. Postcard is not self-describing, so everything in this crate sticks to plain
//! structs and externally tagged enums: no `flatten`, no untagged enums, no
//! `skip_serializing_if`, and no foreign types (librqbit's `Id20` cannot be decoded by
//! postcard). The types here are the whole contract; both sides depend on this crate and on
//! nothing else of each other.
//!
//! # The conversation
//!
//! 1. **Connect.** The patron creates an [`ipc_channel::ipc::IpcOneShotServer`] for a
//!    [`Welcome`], connects an `IpcSender<ToBroker>` to the broker's socket
//!    (`IpcSender::connect`) and sends [`ToBroker::Hello`]: its [`PROTOCOL_VERSION`] and the
//!    one-shot server's name.
//! 2. **Welcome.** The broker checks the peer's uid and the version and answers through the
//!    one-shot server: [`Welcome::Accepted`] carries the receiver of this patron's private
//!    event channel; [`Welcome::Refused`] says why not.
//! 3. **Requests.** Every [`Request`] (sent as [`ToBroker::Request`]) carries a patron-chosen
//!    [`RequestId`]; the broker answers each with exactly one reply [`Event`] echoing that
//!    id, in request order.
//! 4. **Status.** [`Event::TorrentStatusUpdate`] arrives for every torrent the patron holds
//!    (it created or joined it) whenever something changed, and once when it completes.
//! 5. **Goodbye.** Dropping the sender is the disconnect: the broker sees the socket close
//!    and releases the patron's holds. If the broker stops it sends [`Event::BrokerStopping`].
//!
//! The broker reads what patrons send with its own parser of ipc-channel's datagram format
//! ([`wire`]), so that sizes are checked before anything is allocated: see that module.
//!
//! # Example
//!
//! A patron asking for one torrent's status, as the broker receives it:
//!
//! ```
//! use proto::wire::{self, Datagram};
//! use proto::{Request, RequestBody, RequestId, ToBroker, TorrentId, TorrentRef};
//!
//! let message = ToBroker::Request(Request {
//!     id: RequestId(1),
//!     body: RequestBody::Status(TorrentRef::Id(TorrentId(0))),
//! });
//! // `IpcSender::send` writes it as one postcard-encoded datagram...
//! let datagram = wire::encode_frames(&message).expect("encodes").first;
//! // ...which the broker checks (size, descriptors) before decoding anything.
//! match wire::parse_datagram(&datagram, 0, proto::MAX_REQUEST_BYTES) {
//!     Ok(Datagram::Complete(payload)) => {
//!         let ToBroker::Request(request) = wire::decode(payload).expect("decodes") else {
//!             panic!("not a request");
//!         };
//!         assert_eq!(request.id, RequestId(1));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
//!
//! [ipc-channel]: https://docs.rs/ipc-channel

#![deny(missing_docs)]

pub mod board;
pub mod bounded;
mod bytes;
pub mod paths;
mod shared;
mod status;
pub mod text;
pub mod wire;

use ipc_channel::ipc::IpcReceiver;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use shared::{SharedBytes, LARGE_MESSAGE_BYTES};
pub use status::{TorrentState, TorrentStatus};

/// The protocol version spoken by this build. Bumped on any incompatible wire change;
/// the broker refuses a patron whose version differs, with a clear error on both sides.
pub const PROTOCOL_VERSION: u32 = 12;

/// The largest serialized request the broker accepts (a .torrent file rides inside one).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Everything a patron sends the broker, on the one channel it connected.
///
/// The first message must be [`ToBroker::Hello`], every later one a [`ToBroker::Request`].
/// `Hello` is variant 0 with the version first, and must stay so: that is what lets a broker
/// read the version of a patron from any release and refuse it clearly.
// Nearly every message is a `Request`: boxing it to shrink the rare `Hello` would cost an
// allocation per request and save no memory.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToBroker {
    /// Opens the conversation.
    Hello(Hello),
    /// A request, answered by exactly one reply [`Event`].
    Request(Request),
    /// Instead of a [`Hello`], on a connection of its own: "give me the status board". The
    /// broker answers on the same connection with one [`BoardAnswer`] datagram (carrying the
    /// board's read-only descriptor when granted) and closes it. See [`board`].
    Board(BoardHello),
    /// A [`ToBroker::Request`] too large for a datagram or two ([`LARGE_MESSAGE_BYTES`]),
    /// postcard-encoded in shared memory.
    Large(SharedBytes),
}

/// Asks for the status board ([`ToBroker::Board`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardHello {
    /// The patron's [`PROTOCOL_VERSION`].
    pub version: u32,
}

/// The broker's answer to a [`BoardHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoardAnswer {
    /// The datagram carries one descriptor: the board, read-only.
    Granted {
        /// The broker's process id.
        broker_pid: u32,
        /// Whether the eventfd that came with the request is kept to wake this reader at
        /// every change (for as long as this connection stays open). A reader woken through
        /// its own eventfd cannot be held asleep by another reader, as the board's shared
        /// futex word can (DESIGN §10).
        waker: bool,
    },
    /// No board for this patron.
    Refused {
        /// A stable word: `version`, `stopping`, `internal`.
        kind: String,
        /// What to tell the user.
        message: String,
    },
}

/// The patron's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The patron's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The name of the patron's `IpcOneShotServer<Welcome>`, where the answer goes.
    pub server_name: String,
}

/// The broker's answer to a [`Hello`], sent through the patron's one-shot server.
#[derive(Debug, Serialize, Deserialize)]
pub enum Welcome {
    /// Connected: events arrive on `events` from now on.
    Accepted {
        /// The broker's process id.
        broker_pid: u32,
        /// The broker's number for this patron, as it appears in the broker's log.
        patron_id: u64,
        /// Where this patron receives replies and status events.
        events: IpcReceiver<Event>,
    },
    /// Refused, with a reason for the person running the patron.
    Refused {
        /// A stable word: `version`, `user`, `limit`, `stopping`, `internal`.
        kind: String,
        /// What to tell the user.
        message: String,
    },
}

/// A patron-chosen number echoed in the reply to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The broker's identifier for a torrent. Stable across broker restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TorrentId(pub u64);

impl fmt::Display for TorrentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A BitTorrent v1 info hash (SHA-1 of the info dictionary).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Parses 40 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<InfoHash> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(InfoHash(out))
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

/// How a request names a torrent: by the broker's id or by info hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TorrentRef {
    /// The broker's id, as returned by [`Event::NewTorrentCreated`].
    Id(TorrentId),
    /// The torrent's info hash.
    InfoHash(InfoHash),
}

impl TorrentRef {
    /// Parses what a user types: a decimal id or a 40-digit hex info hash.
    pub fn parse(s: &str) -> Option<TorrentRef> {
        if s.len() == 40 {
            return InfoHash::from_hex(s).map(TorrentRef::InfoHash);
        }
        s.parse().ok().map(|id| TorrentRef::Id(TorrentId(id)))
    }
}

impl fmt::Display for TorrentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorrentRef::Id(id) => write!(f, "{id}"),
            TorrentRef::InfoHash(h) => write!(f, "{h}"),
        }
    }
}

/// One request from a patron. Answered by exactly one reply [`Event`] carrying `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply.
    pub id: RequestId,
    /// What is asked.
    pub body: RequestBody,
}

/// What a patron can ask of the broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RequestBody {
    /// Start a torrent (or join it if it already runs). Replied to with
    /// [`Event::NewTorrentCreated`], [`Event::TorrentAlreadyDownloading`] or
    /// [`Event::TorrentStartFail`].
    CreateNewTorrent(CreateNewTorrent),
    /// Release this patron's hold on a torrent, stopping it if nobody else holds it.
    /// Replied to with [`Event::TorrentClosed`] or [`Event::Error`].
    CloseTorrent(CloseTorrent),
    /// Every torrent the broker runs. Replied to with [`Event::TorrentList`].
    List,
    /// One torrent's status now. Replied to with [`Event::Status`] or [`Event::Error`].
    Status(TorrentRef),
    /// Hold a running torrent (receive its status) without adding it.
    /// Replied to with [`Event::Following`] or [`Event::Error`].
    Follow(TorrentRef),
    /// Hash a local file or folder into a .torrent, optionally seeding it.
    /// Replied to with [`Event::TorrentMade`] or [`Event::Error`].
    MakeTorrent(MakeTorrent),
    /// Ask the broker to stop gracefully. Replied to with [`Event::Ok`] before it stops.
    StopBroker,
    /// Who the broker is and how it runs. Replied to with [`Event::BrokerInfo`].
    BrokerInfo,
    /// Pause a torrent: no peer traffic until it is resumed, across broker restarts too.
    /// Replied to with [`Event::Status`] (its status once paused) or [`Event::Error`].
    Pause(TorrentRef),
    /// Resume a paused torrent (one added paused too). Replied to with [`Event::Status`] or
    /// [`Event::Error`].
    Resume(TorrentRef),
    /// Verify a torrent's data on disk again, piece by piece (fast-resume state is dropped).
    /// Replied to with [`Event::Status`] once the check has started, or [`Event::Error`].
    Recheck(TorrentRef),
    /// A torrent's files, optionally choosing which of them to download first. Replied to
    /// with [`Event::Files`] or [`Event::Error`].
    Files(FilesRequest),
    /// A torrent's connected peers, optionally dialling more first. Replied to with
    /// [`Event::Peers`] or [`Event::Error`].
    Peers(PeersRequest),
    /// Read one file of a torrent in order while it downloads (DESIGN §8): the pieces at the
    /// reader's position are fetched first. Replied to with [`Event::StreamOpened`] or
    /// [`Event::Error`]. See [`StreamInfo`] for how the bytes are read.
    OpenStream(OpenStream),
    /// "I read here": the reader of a stream is at `position` (after reading up to it, or a
    /// seek). The stream's priority window moves there. Replied to with
    /// [`Event::StreamVerified`] (what is verified from there now), and later with one
    /// [`Event::StreamProgress`] once more is.
    StreamAt(StreamAt),
    /// Verified bytes of a stream, sent over the channel: for a reader that cannot read the
    /// file itself. Replied to with [`Event::StreamData`] or [`Event::Error`].
    StreamRead(StreamRead),
    /// Ends a stream, releasing its priority window (disconnecting ends them all too).
    /// Replied to with [`Event::Ok`] or [`Event::Error`].
    CloseStream(StreamId),
    /// Changes rate limits now and across restarts: the broker's for all torrents together
    /// (recorded; a flag given at the next start wins), or one torrent's own. Replied to
    /// with [`Event::Limits`] (the limits then in force) or [`Event::Error`]; with nothing
    /// to change, it only asks.
    SetLimits(SetLimits),
    /// Changes the broker's queue (how many torrents download and seed at once) now and
    /// across restarts. Replied to with [`Event::Queue`] (the queue's settings then in
    /// force) or [`Event::Error`]; with nothing to change, it only asks.
    SetQueue(SetQueue),
    /// Moves a torrent in the broker's queue (the order in which queued torrents start).
    /// Replied to with [`Event::Status`] (its status after the move) or [`Event::Error`].
    MoveInQueue(MoveInQueue),
    /// Changes when torrents stop seeding: the broker's limits and action (recorded, a flag
    /// at the next start wins), or one torrent's own. Replied to with [`Event::Seeding`]
    /// (the limits then in force: the broker's, or the torrent's own where it has them and
    /// the broker's elsewhere) or [`Event::Error`]; with nothing to change, it only asks.
    SetSeeding(SetSeeding),
    /// Moves a torrent's data to another folder inside the download roots (DESIGN §13): a
    /// rename on the same file system; across file systems a copy, synced and verified by
    /// hash, before the old files go. Replied to with [`Event::Status`] (its status once it
    /// runs from the new place) or [`Event::Error`] (then it runs from the old place, its
    /// data whole there).
    MoveStorage(MoveStorage),
    /// Gives a torrent its labels (replacing those it had). Replied to with
    /// [`Event::Status`] (its status, labels included) or [`Event::Error`].
    SetLabels(SetLabels),
    /// Changes what a label carries: a save folder, rate limits and seeding limits for its
    /// torrents (qBittorrent's categories), recorded. Replied to with [`Event::Labels`]
    /// (every label the broker keeps settings for or sees on a torrent) or
    /// [`Event::Error`]; with no name, it only asks.
    ConfigureLabel(Box<ConfigureLabel>),
}

/// A move of a torrent's data ([`RequestBody::MoveStorage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveStorage {
    /// The torrent.
    pub torrent: TorrentRef,
    /// The absolute folder to save it in from now on (its own folder, for a torrent of
    /// several files, is made inside it), inside one of the broker's download roots.
    pub to: String,
}

/// A change of seeding limits ([`RequestBody::SetSeeding`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SetSeeding {
    /// One torrent's own; `None`: the broker's.
    pub torrent: Option<TorrentRef>,
    /// The broker's limits (`Some(None)` lifts one; `None` leaves it). Refused with a
    /// torrent named: use `own`.
    pub ratio: Option<Option<f64>>,
    /// The broker's seeding time limit, in seconds, as `ratio`.
    pub seed_time_secs: Option<Option<u64>>,
    /// The broker's idle seeding limit, in seconds, as `ratio`.
    pub idle_secs: Option<Option<u64>>,
    /// What the broker does to a torrent past a limit.
    pub action: Option<SeedAction>,
    /// The torrent's own limits, for a torrent named: `Some(None)` in a field gives it the
    /// broker's again, `Some(Some(limit))` its own; `None` leaves it.
    pub own: OwnSeedingChange,
}

/// A change of a torrent's own seeding limits (see [`SetSeeding::own`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnSeedingChange {
    /// Its ratio limit.
    pub ratio: Option<Option<SeedLimit<f64>>>,
    /// Its seeding time limit.
    pub seed_time_secs: Option<Option<SeedLimit<u64>>>,
    /// Its idle seeding limit.
    pub idle_secs: Option<Option<SeedLimit<u64>>>,
}

/// What the broker does to a torrent that reached a seeding limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedAction {
    /// Pause it (transmission's and qBittorrent's default). Resumed by hand, it seeds on:
    /// the limit it reached is lifted for it, as transmission does.
    #[default]
    Pause,
    /// Close it, its data kept.
    Close,
}

impl SeedAction {
    /// Its word: `pause` or `close`.
    pub fn as_str(self) -> &'static str {
        match self {
            SeedAction::Pause => "pause",
            SeedAction::Close => "close",
        }
    }

    /// Parses [`SeedAction::as_str`]'s words.
    pub fn parse(s: &str) -> Option<SeedAction> {
        match s {
            "pause" => Some(SeedAction::Pause),
            "close" => Some(SeedAction::Close),
            _ => None,
        }
    }
}

/// The ratio limits the broker keeps: from a thousandth to a million.
pub fn valid_ratio_limit(ratio: f64) -> bool {
    ratio.is_finite() && (0.001..=1e6).contains(&ratio)
}

/// The longest seeding time limit the broker keeps, in seconds: a century.
pub const MAX_SEED_SECS: u64 = 100 * 365 * 86_400;

/// The seeding time limits the broker keeps: a second to a century.
pub fn valid_seed_secs(secs: u64) -> bool {
    (1..=MAX_SEED_SECS).contains(&secs)
}

/// Seeding limits in force (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedingLimits {
    /// Uploaded over downloaded.
    pub ratio: Option<f64>,
    /// Seconds seeding in all.
    pub seed_time_secs: Option<u64>,
    /// Seconds seeding with nothing uploaded.
    pub idle_secs: Option<u64>,
}

/// A change of the broker's queue ([`RequestBody::SetQueue`]). For each field, `None`
/// leaves it as it is and `Some(None)` lifts the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetQueue {
    /// How many unfinished torrents run at once; the others are [`TorrentState::Queued`].
    pub max_active_downloads: Option<Option<u32>>,
    /// How many finished torrents seed at once; the others are [`TorrentState::Queued`].
    pub max_active_seeds: Option<Option<u32>>,
    /// After how many seconds without a byte moved a running torrent stops counting against
    /// those limits (it keeps running, and the next in the queue starts), as transmission's
    /// stalled torrents do.
    pub stalled_after_secs: Option<Option<u64>>,
}

/// The broker's queue settings in force (`None`: no limit; for stalls, never stalled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// How many unfinished torrents run at once.
    pub max_active_downloads: Option<u32>,
    /// How many finished torrents seed at once.
    pub max_active_seeds: Option<u32>,
    /// Seconds without a byte moved after which a running torrent stops counting.
    pub stalled_after_secs: Option<u64>,
}

/// Where a torrent goes in the queue ([`RequestBody::MoveInQueue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueMove {
    /// First.
    Top,
    /// One place earlier.
    Up,
    /// One place later.
    Down,
    /// Last.
    Bottom,
}

impl QueueMove {
    /// Parses what a user types: `top`, `up`, `down` or `bottom`.
    pub fn parse(s: &str) -> Option<QueueMove> {
        match s {
            "top" => Some(QueueMove::Top),
            "up" => Some(QueueMove::Up),
            "down" => Some(QueueMove::Down),
            "bottom" => Some(QueueMove::Bottom),
            _ => None,
        }
    }

    /// Its word, as [`QueueMove::parse`] takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMove::Top => "top",
            QueueMove::Up => "up",
            QueueMove::Down => "down",
            QueueMove::Bottom => "bottom",
        }
    }
}

/// A move in the queue ([`RequestBody::MoveInQueue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveInQueue {
    /// The torrent.
    pub torrent: TorrentRef,
    /// Where it goes.
    pub to: QueueMove,
}

/// A change of rate limits ([`RequestBody::SetLimits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLimits {
    /// One torrent's own limits; `None`: the broker's, for all torrents together.
    pub torrent: Option<TorrentRef>,
    /// The download limit in bytes per second: `Some(0)` lifts it, `None` leaves it.
    pub download: Option<u64>,
    /// The upload limit in bytes per second: `Some(0)` lifts it, `None` leaves it.
    pub upload: Option<u64>,
    /// The broker's alternative limits ("turtle mode": refused with a torrent named).
    pub alt: AltChange,
}

/// A change of the broker's alternative limits (see [`AltSpeed`]); `None` leaves a field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltChange {
    /// The alternative download limit, bytes per second (`Some(0)` lifts it).
    pub download: Option<u64>,
    /// The alternative upload limit, as `download`.
    pub upload: Option<u64>,
    /// When they turn on and off by themselves (`Some(None)`: never; the hours are kept).
    pub schedule: Option<Option<AltSchedule>>,
    /// New hours for the schedule, kept whether it is on or not (transmission's
    /// `alt-speed-time-begin` while its scheduler is off); `schedule` wins when both are given.
    pub hours: Option<AltSchedule>,
    /// Turns them on or off now (until the schedule's next edge).
    pub on: Option<bool>,
}

/// The broker's alternative rate limits, used instead of its usual ones while on (a switch,
/// or a schedule), as transmission's "turtle mode".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltSpeed {
    /// Download limit, bytes per second (`None`: none).
    pub download: Option<u64>,
    /// Upload limit, bytes per second (`None`: none).
    pub upload: Option<u64>,
    /// When they turn on and off by themselves (`None`: never).
    pub schedule: Option<AltSchedule>,
    /// The schedule's hours, kept while it is off too.
    pub hours: Option<AltSchedule>,
    /// On now.
    pub on: bool,
}

/// Days and hours, in the broker's local time, when alternative limits are on: from
/// `begin` to `end` (minutes after midnight; an `end` at or before `begin` runs past
/// midnight, into the next day) on the days of `days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltSchedule {
    /// One bit a day, Monday first (bit 0) to Sunday (bit 6).
    pub days: u8,
    /// Minutes after midnight it begins.
    pub begin: u16,
    /// Minutes after midnight it ends.
    pub end: u16,
}

impl AltSchedule {
    const DAYS: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    /// Parses what users type: days (`mon-fri`, `sat,sun`, `daily`, `weekends`) then
    /// hours (`09:00-18:00`; `22:00-06:00` runs past midnight).
    pub fn parse(s: &str) -> Option<AltSchedule> {
        let mut words = s.split_whitespace();
        let (days, hours) = match (words.next()?, words.next(), words.next()) {
            (days, Some(hours), None) => (days.to_ascii_lowercase(), hours),
            (hours, None, None) => ("daily".to_owned(), hours),
            _ => return None,
        };
        let day = |name: &str| Self::DAYS.iter().position(|d| *d == name);
        let mut mask = 0u8;
        for part in days.split(',') {
            match part {
                "daily" | "everyday" => mask |= 0x7f,
                "weekdays" => mask |= 0x1f,
                "weekends" => mask |= 0x60,
                range => match range.split_once('-') {
                    Some((from, to)) => {
                        let (from, to) = (day(from)?, day(to)?);
                        let mut d = from;
                        loop {
                            mask |= 1 << d;
                            if d == to {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => mask |= 1 << day(range)?,
                },
            }
        }
        let (begin, end) = hours.split_once('-')?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
        };
        let (begin, end) = (minute(begin)?, minute(end)?);
        (mask != 0 && begin < 24 * 60).then_some(AltSchedule {
            days: mask,
            begin,
            end: end % (24 * 60),
        })
    }

    /// Whether it is one [`AltSchedule::parse`] can give: some day, minutes within a day.
    pub fn is_valid(&self) -> bool {
        self.days & 0x7f != 0 && self.days & 0x80 == 0 && self.begin < 24 * 60 && self.end < 24 * 60
    }

    /// Whether it is on at `minute` after midnight of `weekday` (0 Monday to 6 Sunday).
    /// A span past midnight belongs to the day it began.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        let on = |day: u8| self.days & (1 << (day % 7)) != 0;
        if self.begin < self.end {
            on(weekday) && (self.begin..self.end).contains(&minute)
        } else {
            (on(weekday) && minute >= self.begin) || (on((weekday + 6) % 7) && minute < self.end)
        }
    }
}

impl fmt::Display for AltSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| Self::DAYS[d])
            .collect();
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let days = if days.len() == 7 {
            "daily".to_owned()
        } else {
            days.join(",")
        };
        write!(f, "{days} {}-{}", hm(self.begin), hm(self.end))
    }
}

/// Rate limits in force (the broker's, or a torrent's own), bytes per second (`None`: no
/// limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// For all torrents' downloads together.
    pub download: Option<u64>,
    /// For all torrents' uploads together.
    pub upload: Option<u64>,
}

impl RequestBody {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestBody::CreateNewTorrent(_) => "create",
            RequestBody::CloseTorrent(_) => "close",
            RequestBody::List => "list",
            RequestBody::Status(_) => "status",
            RequestBody::Follow(_) => "follow",
            RequestBody::MakeTorrent(_) => "make",
            RequestBody::StopBroker => "stop-broker",
            RequestBody::BrokerInfo => "broker-info",
            RequestBody::Pause(_) => "pause",
            RequestBody::Resume(_) => "resume",
            RequestBody::Recheck(_) => "recheck",
            RequestBody::Files(_) => "files",
            RequestBody::Peers(_) => "peers",
            RequestBody::OpenStream(_) => "open-stream",
            RequestBody::StreamAt(_) => "stream-at",
            RequestBody::StreamRead(_) => "stream-read",
            RequestBody::CloseStream(_) => "close-stream",
            RequestBody::SetLimits(_) => "limits",
            RequestBody::SetQueue(_) => "queue",
            RequestBody::MoveInQueue(_) => "queue-move",
            RequestBody::SetSeeding(_) => "seeding",
            RequestBody::MoveStorage(_) => "move",
            RequestBody::SetLabels(_) => "label",
            RequestBody::ConfigureLabel(_) => "labels",
        }
    }
}

/// Where a new torrent comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TorrentSource {
    /// The contents of a .torrent file.
    TorrentFile(#[serde(with = "bytes")] Vec<u8>),
    /// A `magnet:` link (or a bare 40-digit info hash).
    Magnet(String),
}

/// Options of [`RequestBody::CreateNewTorrent`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateNewTorrent {
    /// The torrent itself.
    pub source: TorrentSource,
    /// Absolute folder to save into; `None` means the broker's default download folder.
    /// Must lie inside one of the broker's download roots.
    pub output: Option<String>,
    /// Only download these files (by index into the torrent's file list, or by path; at
    /// most [`bounded::MAX_FILES_NAMED`]).
    #[serde(deserialize_with = "bounded::files")]
    pub only_files: Option<Vec<FileRef>>,
    /// Add it paused.
    pub paused: bool,
    /// Extra peers to dial, as `HOST:PORT` (at most [`bounded::MAX_ADDRESSES_NAMED`]).
    #[serde(deserialize_with = "bounded::addresses")]
    pub peers: Vec<String>,
    /// Close the torrent when its last holder goes (default: it outlives its patrons).
    pub ephemeral: bool,
    /// Allow the torrent to open files that already exist where it would write, verifying and
    /// reusing their pieces (pieces that don't match are rewritten). Without it an existing
    /// file is a [`ErrorKind::FileExists`] start failure.
    pub overwrite: bool,
    /// This torrent's download limit in bytes per second (1 to 2³²−1); `None`: no limit of
    /// its own (the broker's, if any, still applies).
    pub max_download_rate: Option<u64>,
    /// This torrent's upload limit in bytes per second, as `max_download_rate`.
    pub max_upload_rate: Option<u64>,
    /// When it stops seeding ([`RequestBody::SetSeeding`]'s limits, its own); `None` for
    /// each: the broker's.
    pub seeding: TorrentSeeding,
    /// The absolute folder (inside the download roots) its data moves to once it completes
    /// (as [`RequestBody::MoveStorage`]); `None`: the broker's `--move-completed-to`, if any.
    #[serde(default)]
    pub move_completed_to: Option<String>,
    /// Its labels (at most [`MAX_LABELS`], each a [`valid_label`]): a label's folder is where
    /// it is saved when `output` is `None`, and a label's limits apply where it has none of
    /// its own ([`RequestBody::ConfigureLabel`]).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Labels a torrent may have.
pub const MAX_LABELS: usize = 8;
/// Bytes a label may have.
pub const MAX_LABEL_BYTES: usize = 32;
/// Labels the broker keeps settings for.
pub const MAX_CONFIGURED_LABELS: usize = 256;

/// Refuses a label that is empty, longer than [`MAX_LABEL_BYTES`], has spaces at its ends,
/// a control character or a comma (labels are listed joined by commas).
pub fn valid_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL_BYTES {
        return Err(format!(
            "a label has 1 to {MAX_LABEL_BYTES} bytes, not {}",
            label.len()
        ));
    }
    if label.trim() != label || label.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "label {label:?} has a comma, a control character or spaces at an end"
        ));
    }
    Ok(())
}

/// Refuses a set of labels that is too long or has a bad or repeated label.
pub fn valid_labels(labels: &[String]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "a torrent has at most {MAX_LABELS} labels, not {}",
            labels.len()
        ));
    }
    for (n, label) in labels.iter().enumerate() {
        valid_label(label)?;
        if labels[..n].contains(label) {
            return Err(format!("label {label:?} is named twice"));
        }
    }
    Ok(())
}

/// A change of a torrent's labels ([`RequestBody::SetLabels`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetLabels {
    /// The torrent.
    pub torrent: TorrentRef,
    /// Its labels from now on (empty: none).
    pub labels: Vec<String>,
}

/// A change of what a label carries ([`RequestBody::ConfigureLabel`]); each field `None`
/// leaves it, `Some(None)` lifts it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigureLabel {
    /// The label; `None`: only ask for every label's settings.
    pub name: Option<String>,
    /// Where its torrents are saved when their add names no folder.
    pub folder: Option<Option<String>>,
    /// Its torrents' download limit in bytes per second, where they have none of their own.
    pub download: Option<Option<u64>>,
    /// Its torrents' upload limit, as `download`.
    pub upload: Option<Option<u64>>,
    /// Its torrents' seeding limits, where they have none of their own.
    pub seeding: OwnSeedingChange,
    /// Forget the label's settings (its torrents keep the label).
    pub remove: bool,
}

/// What a label carries ([`Event::Labels`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSettings {
    /// The label.
    pub name: String,
    /// Where its torrents are saved when their add names no folder.
    pub folder: Option<String>,
    /// Its torrents' rate limits, where they have none of their own.
    pub limits: RateLimits,
    /// Its torrents' seeding limits, where they have none of their own.
    pub seeding: TorrentSeeding,
    /// How many torrents have it.
    pub torrents: u32,
}

/// A torrent's own seeding limits, each `None` (the broker's), [`SeedLimit::Unlimited`], or
/// its own value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TorrentSeeding {
    /// Uploaded bytes over downloaded bytes (over its size, for what it never downloaded).
    pub ratio: Option<SeedLimit<f64>>,
    /// Seconds seeding, in all.
    pub seed_time_secs: Option<SeedLimit<u64>>,
    /// Seconds seeding with no byte uploaded.
    pub idle_secs: Option<SeedLimit<u64>>,
}

/// One seeding limit of a torrent's own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum SeedLimit<T> {
    /// None at all, whatever the broker's.
    Unlimited,
    /// This one.
    At(T),
}

impl CreateNewTorrent {
    /// A request with default options for `source`.
    pub fn new(source: TorrentSource) -> CreateNewTorrent {
        CreateNewTorrent {
            source,
            output: None,
            only_files: None,
            paused: false,
            peers: Vec::new(),
            ephemeral: false,
            overwrite: false,
            max_download_rate: None,
            max_upload_rate: None,
            seeding: TorrentSeeding::default(),
            move_completed_to: None,
            labels: Vec::new(),
        }
    }
}

/// Options of [`RequestBody::CloseTorrent`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloseTorrent {
    /// Which torrent.
    pub torrent: TorrentRef,
    /// Also delete the downloaded data (only when the torrent actually stops).
    pub delete_data: bool,
    /// Stop it even if other patrons hold it, and even if this patron does not.
    pub force: bool,
}

/// Options of [`RequestBody::Files`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesRequest {
    /// Which torrent.
    pub torrent: TorrentRef,
    /// When set, download only these files (by [`FileEntry::index`] or path) from now on;
    /// the choice is kept across restarts (at most [`bounded::MAX_FILES_NAMED`]). `None`
    /// only lists.
    #[serde(deserialize_with = "bounded::files")]
    pub only: Option<Vec<FileRef>>,
}

/// One file of a torrent ([`Event::Files`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its index in the torrent (what `only` and `--only` take).
    pub index: u32,
    /// Its path inside the torrent, `/`-separated.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes of it verified so far.
    pub bytes_done: u64,
    /// Whether it is downloaded.
    pub selected: bool,
}

/// Options of [`RequestBody::Peers`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersRequest {
    /// Which torrent.
    pub torrent: TorrentRef,
    /// Peers to dial now, as `IP:PORT` (a peer seen before and dropped is dialled again).
    /// They are remembered with the torrent, so a restarted broker dials them too.
    #[serde(deserialize_with = "bounded::addresses")]
    pub add: Vec<String>,
}

/// One connected peer of a torrent ([`Event::Peers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Its address.
    pub address: String,
    /// Its client, as it names itself (when it does).
    pub client: Option<String>,
    /// Whether it ever dialled us (else we dialled it).
    pub incoming: bool,
    /// Bytes per second received from it (measured over a short window).
    pub download_rate: u64,
    /// Bytes per second sent to it.
    pub upload_rate: u64,
    /// Bytes received from it, over every connection with it.
    pub downloaded: u64,
    /// Bytes sent to it, over every connection with it.
    pub uploaded: u64,
    /// The fraction of the torrent it has (0.0–1.0), when it said.
    pub progress: Option<f64>,
}

/// A peer a torrent banned ([`Event::Peers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BannedPeer {
    /// Its address: `IP:PORT` on loopback (where every peer shares the address), else
    /// `IP:0` (the whole address is banned, whatever port it comes from).
    pub address: String,
    /// Why, as a phrase ("sent piece 3 with data that failed its hash check").
    pub reason: String,
}

/// The broker's number for an open stream, unique for the broker's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a request names one file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileRef {
    /// Its index ([`FileEntry::index`]).
    Index(u32),
    /// Its path inside the torrent, `/`-separated ([`FileEntry::path`]).
    Path(String),
}

/// Options of [`RequestBody::OpenStream`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenStream {
    /// Which torrent.
    pub torrent: TorrentRef,
    /// Which of its files; `None` for the only one (an error when it has several).
    pub file: Option<FileRef>,
    /// Where the reader starts, in bytes from the file's start.
    pub position: u64,
}

/// Options of [`RequestBody::StreamAt`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StreamAt {
    /// Which stream.
    pub stream: StreamId,
    /// Where its reader is, in bytes from the file's start.
    pub position: u64,
}

/// Options of [`RequestBody::StreamRead`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StreamRead {
    /// Which stream.
    pub stream: StreamId,
    /// The first byte wanted; it must be verified already.
    pub position: u64,
    /// How many bytes at most ([`MAX_STREAM_READ`] at most are sent; fewer where the
    /// verified bytes end).
    pub length: u32,
}

/// The most bytes one [`RequestBody::StreamRead`] returns.
pub const MAX_STREAM_READ: u32 = 1024 * 1024;

/// An open stream ([`Event::StreamOpened`]).
///
/// The broker never copies the file's bytes to a reader that can read the file itself:
/// the reader opens `local_path` read-only, checks that it is the file the engine writes
/// (`local_file`), and reads from it (the page cache) only bytes the broker said are
/// verified. Where that fails, it asks for them with [`RequestBody::StreamRead`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream's number.
    pub id: StreamId,
    /// The torrent.
    pub torrent: TorrentId,
    /// The file.
    pub file: FileEntry,
    /// The file's absolute path on the broker's machine.
    pub local_path: String,
    /// Device and inode of the file the engine writes, when the broker could see them: a
    /// reader that opens another file there must not trust its bytes.
    pub local_file: Option<FileIdentity>,
    /// Bytes verified in a row from the opening position: the reader may read up to here.
    pub verified_to: u64,
}

/// Which file a path names: device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// `st_dev`.
    pub device: u64,
    /// `st_ino`.
    pub inode: u64,
}

/// Options of [`RequestBody::MakeTorrent`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MakeTorrent {
    /// Absolute path of the file or folder to hash.
    pub path: String,
    /// Piece size in bytes (a power of two, 16 KiB or more); `None` picks one by size.
    pub piece_size: Option<u64>,
    /// Announce URLs to put in the torrent.
    #[serde(deserialize_with = "bounded::addresses")]
    pub trackers: Vec<String>,
    /// Also start seeding it; this patron then holds it.
    pub seed: bool,
}

/// What the broker says about a torrent when it starts or is joined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorrentInfo {
    /// The broker's id.
    pub id: TorrentId,
    /// The info hash.
    pub info_hash: InfoHash,
    /// The torrent's name (its file or top folder).
    pub name: String,
    /// The folder its files are saved in.
    pub save_folder: String,
    /// Total size of the selected files, in bytes (0 while a magnet's metadata is unknown).
    pub total_bytes: u64,
}

/// A .torrent the broker made from local data ([`RequestBody::MakeTorrent`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadeTorrent {
    /// The .torrent file's bytes.
    #[serde(with = "bytes")]
    pub torrent_file: Vec<u8>,
    /// Its info hash.
    pub info_hash: InfoHash,
    /// Its name.
    pub name: String,
    /// Number of pieces.
    pub pieces: u64,
    /// Piece size in bytes.
    pub piece_size: u64,
    /// Total size in bytes.
    pub total_bytes: u64,
    /// When seeding was asked: the torrent now running.
    pub seeding: Option<TorrentInfo>,
}

/// The broker's answer to [`RequestBody::BrokerInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Its process id.
    pub pid: u32,
    /// Its version (the `torrent-broker` crate's).
    pub version: String,
    /// Its state directory.
    pub state_dir: String,
    /// Its BitTorrent listen address.
    pub listen: String,
    /// Whether it keeps all traffic on loopback.
    pub loopback_only: bool,
    /// Folders torrents may be saved under.
    pub download_roots: Vec<String>,
    /// Connected patrons.
    pub patrons: u32,
    /// Running torrents.
    pub torrents: u32,
    /// Torrents remembered but not running: records that could not be restored (shown in
    /// `list` in error, tried again at the next start).
    pub kept: u32,
    /// Open streams (readers of a file while it downloads), all patrons together.
    pub streams: u32,
    /// Torrents' data files held open now, all torrents together.
    pub open_files: u32,
    /// The most it holds open (`--open-files`): the least recently used closes first.
    pub open_files_limit: u32,
    /// Large requests (in shared memory) read from patrons and not yet answered, all
    /// patrons together, and the most there may be (`--max-large-requests`).
    pub large_requests: (u32, u32),
    /// Their bytes, and the most there may be (`--max-large-request-bytes`).
    pub large_request_bytes: (u64, u64),
    /// Files of all the torrents run or kept, and the most there may be (`--max-files`).
    pub files: (u64, u64),
    /// Board readers woken through eventfds of their own, and the most there may be.
    pub board_waiters: (u32, u32),
    /// Bytes of events all patrons leave unread in the broker's memory, and the most there
    /// may be (`--max-unread-bytes`; past it the patron leaving the most is cut off).
    pub unread_bytes: (u64, u64),
    /// Large events' shared memory regions not yet read, all patrons together, and the most
    /// there may be (past it, large events go as fragments).
    pub unread_regions: (u32, u32),
    /// The broker's usual rate limits (in force unless the alternative ones are on).
    pub limits: RateLimits,
    /// Its alternative rate limits.
    pub alt: AltSpeed,
    /// The queue's settings in force.
    pub queue: QueueSettings,
    /// The broker's seeding limits, and what it does past one.
    pub seeding: (SeedingLimits, SeedAction),
    /// The watch folder (`--watch-dir`), if any.
    pub watch_dir: Option<String>,
    /// Where completed torrents move (`--move-completed-to`), if anywhere.
    pub move_completed_to: Option<String>,
}

/// One line of [`Event::TorrentList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorrentSummary {
    /// Who it is.
    pub info: TorrentInfo,
    /// How it is doing.
    pub status: TorrentStatus,
    /// How many connected patrons hold it.
    pub holders: u32,
    /// Whether the asking patron is one of them.
    pub held_by_you: bool,
    /// Whether it closes when its last holder goes.
    pub ephemeral: bool,
}

/// What kind of failure an error reply reports, so programs can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The .torrent bytes could not be decoded or are not a valid torrent.
    InvalidTorrent,
    /// The magnet link could not be parsed.
    InvalidMagnet,
    /// A magnet's metadata could not be fetched: no peer sent it in time, or every peer
    /// it could reach was tried and none had it.
    MetadataTimeout,
    /// The save folder lies outside the broker's download roots, or escapes with `..`.
    PathNotAllowed,
    /// A file the torrent would write already exists and the request did not allow reuse.
    FileExists,
    /// No torrent with that id or info hash runs.
    UnknownTorrent,
    /// The torrent runs, but this patron does not hold it (close without `force`).
    NotHolder,
    /// A peer address was malformed or not allowed (e.g. off loopback in loopback-only mode).
    InvalidPeer,
    /// The save folder's file system has less free space than the torrent needs.
    NoSpace,
    /// A limit was reached (torrents, message size, patrons).
    LimitReached,
    /// The request itself was malformed.
    BadRequest,
    /// Reading or writing a local file failed.
    Io,
    /// The engine refused or failed.
    Engine,
    /// The broker is stopping.
    ShuttingDown,
    /// A file the torrent would have is another torrent's (one owner per file, DESIGN §4).
    FileOwned,
}

impl ErrorKind {
    /// A stable lowercase name, used in JSON output and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::InvalidTorrent => "invalid-torrent",
            ErrorKind::InvalidMagnet => "invalid-magnet",
            ErrorKind::MetadataTimeout => "metadata-timeout",
            ErrorKind::PathNotAllowed => "path-not-allowed",
            ErrorKind::FileExists => "file-exists",
            ErrorKind::UnknownTorrent => "unknown-torrent",
            ErrorKind::NotHolder => "not-holder",
            ErrorKind::InvalidPeer => "invalid-peer",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::LimitReached => "limit-reached",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Io => "io",
            ErrorKind::Engine => "engine",
            ErrorKind::ShuttingDown => "shutting-down",
            ErrorKind::FileOwned => "file-owned",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with its kind and a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, specifically.
    pub message: String,
}

impl ProtoError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ProtoError {
        ProtoError {
            kind,
            message: message.into(),
        }
    }

    /// A [`ErrorKind::InvalidTorrent`] error.
    pub fn invalid_torrent(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::InvalidTorrent, message)
    }

    /// A [`ErrorKind::InvalidMagnet`] error.
    pub fn invalid_magnet(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::InvalidMagnet, message)
    }

    /// A [`ErrorKind::MetadataTimeout`] error.
    pub fn metadata_timeout(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::MetadataTimeout, message)
    }

    /// A [`ErrorKind::PathNotAllowed`] error.
    pub fn path_not_allowed(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::PathNotAllowed, message)
    }

    /// A [`ErrorKind::FileExists`] error.
    pub fn file_exists(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::FileExists, message)
    }

    /// A [`ErrorKind::UnknownTorrent`] error.
    pub fn unknown_torrent(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::UnknownTorrent, message)
    }

    /// A [`ErrorKind::NotHolder`] error.
    pub fn not_holder(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::NotHolder, message)
    }

    /// A [`ErrorKind::InvalidPeer`] error.
    pub fn invalid_peer(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::InvalidPeer, message)
    }

    /// A [`ErrorKind::NoSpace`] error.
    pub fn no_space(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::NoSpace, message)
    }

    /// A [`ErrorKind::LimitReached`] error.
    pub fn limit_reached(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::LimitReached, message)
    }

    /// A [`ErrorKind::BadRequest`] error.
    pub fn bad_request(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::BadRequest, message)
    }

    /// A [`ErrorKind::Io`] error.
    pub fn io(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::Io, message)
    }

    /// A [`ErrorKind::Engine`] error.
    pub fn engine(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::Engine, message)
    }

    /// A [`ErrorKind::ShuttingDown`] error.
    pub fn shutting_down(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::ShuttingDown, message)
    }

    /// A [`ErrorKind::FileOwned`] error.
    pub fn file_owned(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorKind::FileOwned, message)
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for ProtoError {}

/// Everything the broker sends a patron: one reply per request, plus status and notices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    /// The torrent of that create request runs now, held by this patron.
    NewTorrentCreated {
        /// The create request.
        request: RequestId,
        /// The torrent.
        torrent: TorrentInfo,
        /// It waits in the broker's queue for its turn ([`TorrentState::Queued`]): the
        /// queue's downloads were all taken.
        queued: bool,
    },
    /// That torrent (same info hash) already ran; this patron now holds it too.
    TorrentAlreadyDownloading {
        /// The create request.
        request: RequestId,
        /// The torrent that was already running.
        torrent: TorrentInfo,
        /// Options of the request that the running torrent does not take: `output` (it
        /// saves elsewhere), `paused`, `ephemeral`, `peers`, `only_files`. Said, never
        /// silently dropped.
        not_applied: Vec<String>,
    },
    /// That create request could not be started.
    TorrentStartFail {
        /// The create request.
        request: RequestId,
        /// Why.
        error: ProtoError,
    },
    /// A close request was carried out.
    TorrentClosed {
        /// The close request.
        request: RequestId,
        /// The torrent.
        id: TorrentId,
        /// True when the torrent stopped; false when only this patron's hold was released
        /// because other patrons still hold it.
        stopped: bool,
        /// True when its data was deleted.
        data_deleted: bool,
    },
    /// Reply to [`RequestBody::List`].
    TorrentList {
        /// The list request.
        request: RequestId,
        /// Every torrent the broker runs, by id.
        torrents: Vec<TorrentSummary>,
    },
    /// Reply to [`RequestBody::Status`].
    Status {
        /// The status request.
        request: RequestId,
        /// The torrent's status now.
        status: TorrentStatus,
    },
    /// Reply to [`RequestBody::Follow`]: this patron now holds the torrent.
    Following {
        /// The follow request.
        request: RequestId,
        /// The torrent.
        torrent: TorrentInfo,
    },
    /// Reply to [`RequestBody::MakeTorrent`].
    TorrentMade {
        /// The make request.
        request: RequestId,
        /// The torrent made.
        made: MadeTorrent,
    },
    /// Reply to [`RequestBody::BrokerInfo`].
    BrokerInfo {
        /// The request.
        request: RequestId,
        /// The broker.
        info: BrokerInfo,
    },
    /// A request without a more specific reply succeeded.
    Ok {
        /// The request.
        request: RequestId,
    },
    /// A request (other than create) failed.
    Error {
        /// The request.
        request: RequestId,
        /// Why.
        error: ProtoError,
    },
    /// Status of a torrent this patron holds.
    TorrentStatusUpdate(TorrentStatus),
    /// A torrent this patron held was closed by someone else (`--force`) or failed for good.
    TorrentGone {
        /// The torrent.
        id: TorrentId,
        /// Why.
        reason: String,
    },
    /// The broker is stopping; the connection ends after this.
    BrokerStopping {
        /// Why (e.g. "received SIGTERM").
        reason: String,
    },
    /// The broker cut this patron off (it read too slowly or broke a limit).
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A message from this patron could not be decoded, so it has no request id to answer.
    ProtocolError {
        /// What was wrong with it.
        message: String,
    },
    /// An event too large for a datagram or two ([`LARGE_MESSAGE_BYTES`]), postcard-encoded
    /// in shared memory: the patron library unpacks it.
    Large(SharedBytes),
    /// Reply to [`RequestBody::Files`].
    Files {
        /// The request.
        request: RequestId,
        /// The torrent.
        torrent: TorrentId,
        /// Its files, by index (padding files left out).
        files: Vec<FileEntry>,
    },
    /// Reply to [`RequestBody::Peers`].
    Peers {
        /// The request.
        request: RequestId,
        /// The torrent.
        torrent: TorrentId,
        /// The peers of [`PeersRequest::add`] that were dialled (the others were already
        /// connected or being dialled).
        dialled: Vec<String>,
        /// Its connected peers, by address.
        peers: Vec<PeerEntry>,
        /// The peers it banned while it runs (each sent a piece that failed its hash check):
        /// they are not dialled again and their connections are refused.
        banned: Vec<BannedPeer>,
    },
    /// Reply to [`RequestBody::OpenStream`].
    StreamOpened {
        /// The request.
        request: RequestId,
        /// The stream.
        stream: StreamInfo,
    },
    /// Reply to [`RequestBody::StreamAt`]: bytes `position..verified_to` of the file are
    /// verified (`verified_to == position` when the byte there is not yet).
    StreamVerified {
        /// The request.
        request: RequestId,
        /// The stream.
        stream: StreamId,
        /// The reader's position, as the request said.
        position: u64,
        /// Where the bytes verified in a row from there end.
        verified_to: u64,
    },
    /// Not a reply: after a [`RequestBody::StreamAt`], more bytes from its position are
    /// verified than its reply said. One at most per `StreamAt`.
    StreamProgress {
        /// The stream.
        stream: StreamId,
        /// The position of the `StreamAt` it follows.
        position: u64,
        /// Where the bytes verified in a row from there end now.
        verified_to: u64,
    },
    /// Reply to [`RequestBody::StreamRead`]: verified bytes of the file from `position`.
    StreamData {
        /// The request.
        request: RequestId,
        /// The stream.
        stream: StreamId,
        /// Where `bytes` start in the file.
        position: u64,
        /// The bytes.
        #[serde(with = "bytes")]
        bytes: Vec<u8>,
    },
    /// Not a reply: the stream gives no more bytes (its torrent failed, was closed, or is
    /// being checked again). The stream is closed. (A broker that stops says
    /// [`Event::BrokerStopping`] instead.)
    StreamEnded {
        /// The stream.
        stream: StreamId,
        /// Why.
        error: ProtoError,
    },
    /// Reply to [`RequestBody::SetLimits`]: the limits now set (the broker's usual ones, or
    /// a torrent's own).
    Limits {
        /// The request.
        request: RequestId,
        /// The limits.
        limits: RateLimits,
        /// The broker's alternative limits (`None` for a torrent's own).
        alt: Option<AltSpeed>,
    },
    /// Reply to [`RequestBody::SetQueue`]: the queue's settings now in force.
    Queue {
        /// The request.
        request: RequestId,
        /// The settings.
        queue: QueueSettings,
    },
    /// Reply to [`RequestBody::SetSeeding`]: the seeding limits now in force.
    Seeding {
        /// The request.
        request: RequestId,
        /// The limits (a torrent's: its own where it has them, else the broker's).
        limits: SeedingLimits,
        /// What the broker does past one.
        action: SeedAction,
    },
    /// Reply to [`RequestBody::ConfigureLabel`]: every label, by name.
    Labels {
        /// The request.
        request: RequestId,
        /// The labels.
        labels: Vec<LabelSettings>,
    },
}

impl Event {
    /// The request this event answers, if it is a reply.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Event::NewTorrentCreated { request, .. }
            | Event::TorrentAlreadyDownloading { request, .. }
            | Event::TorrentStartFail { request, .. }
            | Event::TorrentClosed { request, .. }
            | Event::TorrentList { request, .. }
            | Event::Status { request, .. }
            | Event::Following { request, .. }
            | Event::TorrentMade { request, .. }
            | Event::BrokerInfo { request, .. }
            | Event::Ok { request }
            | Event::Files { request, .. }
            | Event::Peers { request, .. }
            | Event::StreamOpened { request, .. }
            | Event::StreamVerified { request, .. }
            | Event::StreamData { request, .. }
            | Event::Limits { request, .. }
            | Event::Queue { request, .. }
            | Event::Seeding { request, .. }
            | Event::Labels { request, .. }
            | Event::Error { request, .. } => Some(*request),
            Event::TorrentStatusUpdate(_)
            | Event::TorrentGone { .. }
            | Event::BrokerStopping { .. }
            | Event::Disconnected { .. }
            | Event::ProtocolError { .. }
            | Event::StreamProgress { .. }
            | Event::StreamEnded { .. } => None,
            // Unpacked by the patron library before anyone asks.
            Event::Large(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;

/// Feeds `value`'s wire form (postcard, as sent) to `hasher`, through a small buffer on the
/// stack: a fingerprint of what would be sent, to tell whether it changed without keeping a
/// copy of it. Whether all of it went in (a value that cannot be serialized fed only its
/// first fields: the caller must not take that fingerprint for the value's).
///
/// (Buffered: postcard hands over a field at a time, a few bytes each, and a hasher's
/// `write` costs about as much for a few bytes as for a hundred. The same value always
/// feeds the same bytes in the same pieces, so its fingerprint does not change.)
#[must_use]
pub fn hash_wire<T: serde::Serialize + ?Sized>(
    value: &T,
    hasher: &mut impl std::hash::Hasher,
) -> bool {
    const BUFFER: usize = 128;
    struct Feed<'a, H> {
        hasher: &'a mut H,
        buffer: [u8; BUFFER],
        len: usize,
    }
    impl<H: std::hash::Hasher> Feed<'_, H> {
        fn flush(&mut self) {
            self.hasher.write(&self.buffer[..self.len]);
            self.len = 0;
        }
    }
    impl<H: std::hash::Hasher> postcard::ser_flavors::Flavor for Feed<'_, H> {
        type Output = ();
        fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
            if self.len == BUFFER {
                self.flush();
            }
            self.buffer[self.len] = byte;
            self.len += 1;
            Ok(())
        }
        fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
            if bytes.len() > BUFFER - self.len {
                self.flush();
                if bytes.len() > BUFFER {
                    self.hasher.write(bytes);
                    return Ok(());
                }
            }
            self.buffer[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            Ok(())
        }
        fn finalize(mut self) -> postcard::Result<()> {
            self.flush();
            Ok(())
        }
    }
    // (Into a hasher: no size limit; only the value itself can refuse.)
    let feed = Feed {
        hasher,
        buffer: [0; BUFFER],
        len: 0,
    };
    postcard::serialize_with_flavor(value, feed).is_ok()
}
