//! The broker's status board, read straight from shared memory (DESIGN §7).
//!
//! A status request is a socket round trip and broker work; a read of the board is a few
//! hundred atomic loads in this process. [`Board`] maps the broker's board read-only and
//! keeps following it: when the broker outgrows it (a new, larger board) it maps the new one;
//! when the broker stops it says so. Getting the board needs no handshake: one datagram to
//! the broker's socket, answered with the board's read-only descriptor.

use crate::connect::ConnectOptions;
use crate::error::{Error, Result};
use nix::sys::socket::{
    connect, recvmsg, send, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};
use proto::board::{BoardReader, Header};
use proto::wire::{self, Datagram};
use proto::{
    BoardAnswer, BoardHello, ToBroker, TorrentId, TorrentRef, TorrentStatus, TorrentSummary,
    PROTOCOL_VERSION,
};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Set to `0` to never read the board (every read becomes a request), e.g. to compare.
pub const BOARD_ENV: &str = "TORRENT_PATRON_BOARD";

/// A read-only view of the broker's status board.
pub struct Board {
    reader: BoardReader,
    socket: PathBuf,
    timeout: Duration,
    /// The change counter this reader has seen, for [`Board::wait_for_change`].
    seen: u64,
    /// This reader's own wake-up, once it has waited (see [`Waker`]).
    waker: Option<Waker>,
    /// The broker would not take a waker: sleep on the board's futex instead.
    no_waker: bool,
}

/// An eventfd the broker writes at every change, and the connection that keeps it
/// registered (its closing, or the broker's, ends that). Another reader can requeue the
/// sleepers of the board's shared futex word onto a word of its own; it cannot touch this.
struct Waker {
    socket: OwnedFd,
    event: nix::sys::eventfd::EventFd,
}

/// Whether the board may be used at all in this process ([`BOARD_ENV`]).
pub fn board_enabled() -> bool {
    std::env::var_os(BOARD_ENV).is_none_or(|v| v != "0")
}

impl Board {
    /// Maps the board of the broker running for `options`' state directory. Never starts a
    /// broker: with none running this is [`Error::BrokerUnreachable`].
    pub fn open(options: &ConnectOptions) -> Result<Board> {
        let state_dir = crate::connect::state_dir(options)?;
        Board::fetch(&proto::paths::socket_path(&state_dir), options.timeout)
    }

    /// Maps the board of the broker listening at `socket`.
    pub(crate) fn fetch(socket: &Path, timeout: Duration) -> Result<Board> {
        if !board_enabled() {
            return Err(Error::BrokerUnreachable(format!(
                "the status board is turned off ({BOARD_ENV}=0)"
            )));
        }
        let (reader, _) = fetch_board(socket, timeout, None)?;
        let seen = reader.header().changes;
        Ok(Board {
            reader,
            socket: socket.to_path_buf(),
            timeout,
            seen,
            waker: None,
            no_waker: false,
        })
    }

    /// The header now: broker pid, generation, flags, change counter.
    pub fn header(&self) -> Header {
        self.reader.header()
    }

    /// One torrent's status, by id or info hash.
    pub fn get(&self, torrent: TorrentRef) -> Option<TorrentStatus> {
        match torrent {
            TorrentRef::Id(id) => self.reader.status(id),
            TorrentRef::InfoHash(hash) => self.reader.find(&hash).map(|summary| summary.status),
        }
    }

    /// One torrent's line as `list` shows it, by id or info hash.
    pub fn summary(&self, torrent: TorrentRef) -> Option<TorrentSummary> {
        match torrent {
            TorrentRef::Id(id) => self.reader.get(id),
            TorrentRef::InfoHash(hash) => self.reader.find(&hash),
        }
    }

    /// Every torrent on the board, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = TorrentSummary> + '_ {
        self.reader.iter()
    }

    /// One torrent's line, by id or info hash, and whether its texts are whole (none was
    /// cut to fit its slot): what one torrent's status needs, without looking at the others.
    pub fn summary_whole(&self, torrent: TorrentRef) -> Option<(TorrentSummary, bool)> {
        match torrent {
            TorrentRef::Id(id) => self.reader.get_whole(id),
            TorrentRef::InfoHash(hash) => {
                let id = self.reader.find(&hash)?.info.id;
                self.reader.get_whole(id)
            }
        }
    }

    /// Whether every text on the board is whole (none was cut to fit its slot: a save
    /// folder, name or error message too long for it). A few loads, not a list.
    pub fn texts_whole(&self) -> bool {
        self.reader.all_texts_whole()
    }

    /// Every torrent on the board in id order, if no text on it was cut to fit (a save
    /// folder, name or error message too long for its slot): what `list --json` prints.
    pub fn list_exact(&self) -> Option<Vec<TorrentSummary>> {
        self.texts_whole().then(|| self.list())
    }

    /// Every torrent on the board, in id order (as `list` answers).
    pub fn list(&self) -> Vec<TorrentSummary> {
        let mut all: Vec<_> = self.iter().collect();
        all.sort_by_key(|summary| summary.info.id);
        all
    }

    /// Writes what `patron-client list` prints (one line per torrent, in id order) to `out`,
    /// copied from lines the broker formatted once per change.
    pub fn write_list(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.reader.write_list(out)
    }

    /// Whether `id` is on the board.
    pub fn contains(&self, id: TorrentId) -> bool {
        self.reader.get(id).is_some()
    }

    /// Waits (asleep, on the board's futex) until the board changed since the last call, or
    /// `timeout` passed; returns whether it changed. A board the broker outgrew is replaced
    /// by the new one (a change). A broker that stopped or died is
    /// [`Error::BrokerStopped`].
    pub fn wait_for_change(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now().checked_add(timeout);
        if self.waker.is_none() && !self.no_waker {
            self.register_waker();
        }
        loop {
            self.refresh()?;
            let left = deadline.map_or(Duration::MAX, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            });
            // Wake now and then to notice a broker killed without marking its board.
            let slice = left.min(Duration::from_millis(500));
            let now = match &self.waker {
                Some(waker) => {
                    // Drained before the look: a change after it leaves the eventfd set,
                    // and the poll returns at once.
                    let _ = waker.event.read();
                    let now = self.reader.header().changes;
                    if now == self.seen && !left.is_zero() && waker.wait(slice) == Woken::BrokerGone
                    {
                        self.waker = None; // refresh() finds out what became of it
                    }
                    self.reader.header().changes
                }
                None => self.reader.wait_for_change(self.seen, slice),
            };
            if now != self.seen {
                self.seen = now;
                self.refresh()?;
                return Ok(true);
            }
            if left.is_zero() {
                return Ok(false);
            }
        }
    }

    /// A descriptor that becomes readable when the board changes (this reader's eventfd,
    /// which the broker writes), for an event loop to watch; then [`Board::changed`] says
    /// what happened. `None` where the broker would not take a waker: poll then. It may
    /// differ after [`Board::changed`] (a restarted broker takes a new one).
    pub fn change_fd(&mut self) -> Option<RawFd> {
        if self.waker.is_none() && !self.no_waker {
            self.register_waker();
        }
        self.waker
            .as_ref()
            .map(|waker| waker.event.as_fd().as_raw_fd())
    }

    /// Whether the board changed since this reader last looked (here or in
    /// [`Board::wait_for_change`]), without waiting; clears the wake-up of
    /// [`Board::change_fd`]. A broker that stopped and none took its place is
    /// [`Error::BrokerStopped`].
    pub fn changed(&mut self) -> Result<bool> {
        self.refresh()?;
        if let Some(waker) = &self.waker {
            let _ = waker.event.read();
        }
        let now = self.reader.header().changes;
        let changed = now != self.seen;
        self.seen = now;
        Ok(changed)
    }

    /// Maps the current board if the broker outgrew this one (reads of a superseded board
    /// show it as it was), or the board of the broker that replaced a stopped one; fails if
    /// the broker stopped and none took its place. [`Board::wait_for_change`] does this
    /// itself; a reader that keeps a board between reads without waiting calls this first.
    pub fn refresh(&mut self) -> Result<()> {
        let header = self.reader.header();
        if header.stopped || !self.reader.broker_alive() {
            // The waker belonged to that broker.
            self.waker = None;
            self.no_waker = false;
            // A broker that took its place (a restart) publishes a board of its own.
            return match fetch_board(&self.socket, self.timeout, None).map(|(r, _)| r) {
                Ok(reader) => {
                    self.reader = reader;
                    self.seen = self.reader.header().changes.wrapping_sub(1);
                    Ok(())
                }
                Err(_) => Err(Error::BrokerStopped(format!(
                    "the broker (pid {}) stopped",
                    header.broker_pid
                ))),
            };
        }
        if header.superseded {
            self.reader = fetch_board(&self.socket, self.timeout, None)?.0;
            // Whatever this reader saw, the new board is news.
            self.seen = self.reader.header().changes.wrapping_sub(1);
        }
        Ok(())
    }
}

impl Board {
    /// Gives the broker an eventfd to wake this reader through (once; a broker that would
    /// not take it leaves this reader on the futex).
    fn register_waker(&mut self) {
        let event = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        );
        let Ok(event) = event else {
            self.no_waker = true;
            return;
        };
        match fetch_board(&self.socket, self.timeout, Some(&event)) {
            Ok((_, Some(socket))) => self.waker = Some(Waker { socket, event }),
            _ => self.no_waker = true,
        }
    }
}

/// How a waker's wait ended.
#[derive(PartialEq, Eq)]
enum Woken {
    /// Its eventfd was written, or the slice ended.
    Maybe,
    /// The broker closed the connection (it stopped or died).
    BrokerGone,
}

impl Waker {
    /// Sleeps until the eventfd is written, the broker goes, or `slice` ends.
    fn wait(&self, slice: Duration) -> Woken {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [
            PollFd::new(self.event.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
        ];
        let millis = slice.as_millis().min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) if fds[1].revents().is_some_and(|r| !r.is_empty()) => Woken::BrokerGone,
            _ => Woken::Maybe,
        }
    }
}

/// Asks the broker at `socket` for its board and maps it. With `waker`, asks it to write
/// that eventfd at every change: the connection is then returned, kept open, if it took it.
fn fetch_board(
    socket_path: &Path,
    timeout: Duration,
    waker: Option<&nix::sys::eventfd::EventFd>,
) -> Result<(BoardReader, Option<OwnedFd>)> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Error::BrokerUnreachable(format!("{}: {e}", socket_path.display()))
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| unreachable(&e))?;
    let addr = UnixAddr::new(socket_path).map_err(|e| unreachable(&e))?;
    connect(fd.as_raw_fd(), &addr).map_err(|e| unreachable(&e))?;
    let receive_for = nix::sys::time::TimeVal::new(
        timeout.as_secs().min(i32::MAX as u64) as _,
        timeout.subsec_micros() as _,
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &receive_for).map_err(|e| unreachable(&e))?;
    let hello = ToBroker::Board(BoardHello {
        version: PROTOCOL_VERSION,
    });
    let frames =
        wire::encode_frames(&hello).map_err(|e| Error::Protocol(format!("board request: {e}")))?;
    match waker {
        None => send(fd.as_raw_fd(), &frames.first, MsgFlags::MSG_NOSIGNAL).map(|_| ()),
        Some(event) => {
            let rights = [event.as_raw_fd()];
            let cmsgs = [nix::sys::socket::ControlMessage::ScmRights(&rights)];
            nix::sys::socket::sendmsg::<()>(
                fd.as_raw_fd(),
                &[std::io::IoSlice::new(&frames.first)],
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map(|_| ())
        }
    }
    .map_err(|e| unreachable(&e))?;
    let (answer, board) = receive_answer(&fd).map_err(|e| match e {
        // The receive timeout passed: a broker is there (it took the connection), silent.
        Unanswered::Silent(e) => Error::TimedOut(format!(
            "{}: no answer to the board request within {timeout:?}: {e}",
            socket_path.display()
        )),
        Unanswered::Other(e) => unreachable(&e),
    })?;
    match (answer, board) {
        (BoardAnswer::Granted { waker: taken, .. }, Some(board)) => {
            let reader =
                BoardReader::map(board).map_err(Error::io("cannot map the status board"))?;
            Ok((reader, (taken && waker.is_some()).then_some(fd)))
        }
        (BoardAnswer::Granted { .. }, None) => Err(Error::Protocol(
            "the broker granted a board but sent no descriptor".into(),
        )),
        (BoardAnswer::Refused { kind, message }, _) => Err(Error::Refused { kind, message }),
    }
}

/// The one datagram the broker answers with, and the descriptor it carries. Every received
/// descriptor is owned at once, so extras are closed rather than leaked.
/// Why a board request got no answer.
enum Unanswered {
    /// Nothing came within the receive timeout.
    Silent(nix::Error),
    Other(String),
}

impl From<String> for Unanswered {
    fn from(why: String) -> Unanswered {
        Unanswered::Other(why)
    }
}

impl From<&str> for Unanswered {
    fn from(why: &str) -> Unanswered {
        Unanswered::Other(why.to_owned())
    }
}

fn receive_answer(fd: &OwnedFd) -> std::result::Result<(BoardAnswer, Option<OwnedFd>), Unanswered> {
    let mut buffer = [0u8; 4096];
    // Room for more than the one descriptor expected: extras are owned, then closed.
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let message = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| match e {
        nix::Error::EAGAIN => Unanswered::Silent(e),
        e => Unanswered::Other(format!("no answer to the board request: {e}")),
    })?;
    let mut descriptors = Vec::new();
    if let Ok(cmsgs) = message.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // The kernel just installed this descriptor in this process for us;
                    // owning it here closes it exactly once.
                    // SAFETY: `fd` is open, and nothing else in this process owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    descriptors.push(owned);
                }
            }
        }
    }
    let len = message.bytes;
    if len == 0 {
        return Err("the broker closed the connection without an answer".into());
    }
    // Descriptors are checked here, not by the parser (which is for requests, that carry none).
    let payload = match wire::parse_datagram(&buffer[..len], 0, buffer.len()) {
        Ok(Datagram::Complete(payload)) => payload,
        Ok(_) => return Err("a fragmented board answer".into()),
        Err(e) => return Err(e.to_string().into()),
    };
    let answer: BoardAnswer =
        postcard::from_bytes(payload).map_err(|e| format!("a bad board answer: {e}"))?;
    Ok((answer, descriptors.into_iter().next()))
}
