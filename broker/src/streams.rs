//! Streams: readers of one file of a torrent while it downloads (DESIGN §8).
//!
//! For each open stream the broker holds one librqbit `FileStream`, in a task of its own.
//! The broker does not read the file for the reader: the `FileStream` is there for its
//! *priority window* (the engine fetches the 32 MiB ahead of every open stream first) and
//! to be woken when the piece at its position is verified. The reader reads the file itself
//! and tells the broker where it is ("I read here", [`proto::StreamAt`]); the task keeps the
//! window at the first byte not yet verified from there, and says once when more is
//! verified ([`Event::StreamProgress`]). Only a reader that cannot open the file gets bytes
//! over the channel ([`proto::StreamRead`]).
//!
//! A stream lives as long as its reader: a patron that goes (exit, crash, SIGKILL) has its
//! streams' command channels dropped at once, and each task ends and drops its
//! `FileStream`, which takes its window out of the engine's piece picker.

use crate::engine::{self, FileStream, ManagedTorrentHandle};
use crate::registry::Life;
use crate::sink::{PatronConnection, PatronId};
use proto::{Event, ProtoError, StreamId, TorrentId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// Streams one patron may have open at once.
pub const MAX_STREAMS_PER_PATRON: usize = 16;
/// Streams open at once, all patrons together: the engine walks every window at every
/// piece it hands a peer.
pub const MAX_STREAMS: usize = 256;
/// Bytes of replies a patron may leave unread and still be sent stream bytes
/// ([`proto::StreamRead`]): four reads' worth (a region the patron read counts until the
/// broker next finds its socket drained).
pub const MAX_UNREAD_STREAM_BYTES: usize = 4 * proto::MAX_STREAM_READ as usize;
/// How often a stream's task looks whether its torrent failed, went or was re-added.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What a stream's task is asked, each with where its answer goes.
enum Command {
    /// "I read here": the answer is where the verified bytes from there end.
    At {
        position: u64,
        reply: oneshot::Sender<Result<u64, ProtoError>>,
    },
    /// Verified bytes from `position`, for a reader that cannot read the file.
    Read {
        position: u64,
        length: u32,
        reply: oneshot::Sender<Result<Vec<u8>, ProtoError>>,
    },
}

struct OpenStream {
    patron: PatronId,
    /// The torrent it reads (kept in the engine while a stream reads it).
    torrent: TorrentId,
    commands: mpsc::UnboundedSender<Command>,
}

/// What a stream asks of the torrents above it (the service), without depending on it.
pub trait Torrents: Send + Sync {
    /// Where a torrent is in the engine: `None` when it no longer runs.
    fn life(&self, id: TorrentId) -> Option<Life>;
    /// Whether a patron is still connected.
    fn is_connected(&self, patron: PatronId) -> bool;
}

type OpenStreams = Arc<Mutex<HashMap<StreamId, OpenStream>>>;

/// Every open stream, by number.
#[derive(Default)]
pub struct Streams {
    next: AtomicU64,
    open: OpenStreams,
    /// Tasks still holding a `FileStream` (a closed stream counts until its window is out
    /// of the engine).
    live: Arc<AtomicUsize>,
}

/// A reader's stream, as the engine sees it, and where the reader is.
struct Reader {
    stream: FileStream,
    handle: ManagedTorrentHandle,
    /// Where the reader last said it is.
    position: u64,
    /// Where the verified bytes from `position` ended when the reader was last told, while
    /// a [`Event::StreamProgress`] is owed (one per "I read here").
    owed: Option<u64>,
}

/// What woke a stream's task.
enum Woke {
    Command(Option<Command>),
    Verified(anyhow::Result<()>),
    Look,
}

fn lock(open: &OpenStreams) -> MutexGuard<'_, HashMap<StreamId, OpenStream>> {
    // Plain inserts and removals: a poisoned lock is still consistent.
    open.lock().unwrap_or_else(|e| e.into_inner())
}

/// Refuses one more stream for `patron` past the limits (`open` locked).
fn room_in(open: &HashMap<StreamId, OpenStream>, patron: PatronId) -> Result<(), ProtoError> {
    let mine = open.values().filter(|s| s.patron == patron).count();
    if mine >= MAX_STREAMS_PER_PATRON {
        return Err(ProtoError::limit_reached(format!(
            "a patron may have {MAX_STREAMS_PER_PATRON} streams open at once"
        )));
    }
    if open.len() >= MAX_STREAMS {
        return Err(ProtoError::limit_reached(format!(
            "the broker has {MAX_STREAMS} streams open, its most"
        )));
    }
    Ok(())
}

impl Streams {
    fn open(&self) -> MutexGuard<'_, HashMap<StreamId, OpenStream>> {
        lock(&self.open)
    }

    /// The torrents streams are open on.
    pub fn torrents_read(&self) -> std::collections::HashSet<TorrentId> {
        self.open().values().map(|stream| stream.torrent).collect()
    }

    /// Whether a stream is open on torrent `id`.
    pub fn reads(&self, id: TorrentId) -> bool {
        self.open().values().any(|stream| stream.torrent == id)
    }

    /// Open streams whose window is still in the engine.
    pub fn count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Refuses one more stream for `patron` past the limits.
    pub fn room_for_one_more(&self, patron: PatronId) -> Result<(), ProtoError> {
        room_in(&self.open(), patron)
    }

    /// Starts the task that keeps `stream` for `patron`, the reader being at `position`.
    /// Returns the stream's number and where the verified bytes from `position` end.
    pub fn start(
        &self,
        torrents: Arc<dyn Torrents>,
        patron: &PatronConnection,
        torrent: TorrentId,
        handle: ManagedTorrentHandle,
        stream: FileStream,
        position: u64,
    ) -> Result<(StreamId, u64), ProtoError> {
        let mut reader = Reader {
            stream,
            handle,
            position,
            owed: None,
        };
        let verified_to = reader.move_to(position)?;
        let id = StreamId(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let (commands, inbox) = mpsc::unbounded_channel();
        {
            let mut open = self.open();
            // Checked again under the lock: the patron may have gone while the engine opened
            // the stream, and nothing would ever close it then.
            if !torrents.is_connected(patron.id) {
                return Err(ProtoError::bad_request("the patron left"));
            }
            // Again under the lock: other opens finished while this one waited on the engine.
            room_in(&open, patron.id)?;
            open.insert(
                id,
                OpenStream {
                    patron: patron.id,
                    torrent,
                    commands,
                },
            );
        }
        self.live.fetch_add(1, Ordering::AcqRel);
        let guard = LiveGuard(self.live.clone());
        tracing::info!(patron = patron.id, torrent = %torrent, stream = %id, position, "stream opened");
        let task = StreamTask {
            torrents,
            open: self.open.clone(),
            patron: patron.clone(),
            torrent,
            id,
        };
        tokio::spawn(task.run(reader, inbox, guard));
        Ok((id, verified_to))
    }

    /// Where the verified bytes from `position` end, the reader of `stream` being there now.
    pub async fn at(
        &self,
        patron: PatronId,
        stream: StreamId,
        position: u64,
    ) -> Result<u64, ProtoError> {
        let (reply, answer) = oneshot::channel();
        self.ask(patron, stream, Command::At { position, reply })?;
        answer.await.unwrap_or_else(|_| Err(ended(stream)))
    }

    /// Verified bytes of `stream` from `position`, `length` at most.
    pub async fn read(
        &self,
        patron: PatronId,
        stream: StreamId,
        position: u64,
        length: u32,
    ) -> Result<Vec<u8>, ProtoError> {
        let (reply, answer) = oneshot::channel();
        let read = Command::Read {
            position,
            length,
            reply,
        };
        self.ask(patron, stream, read)?;
        answer.await.unwrap_or_else(|_| Err(ended(stream)))
    }

    fn ask(&self, patron: PatronId, stream: StreamId, command: Command) -> Result<(), ProtoError> {
        let open = self.open();
        match open.get(&stream) {
            Some(s) if s.patron == patron => s.commands.send(command).map_err(|_| ended(stream)),
            _ => Err(no_such(stream)),
        }
    }

    /// Closes one stream of `patron`.
    pub fn close(&self, patron: PatronId, stream: StreamId) -> Result<(), ProtoError> {
        let mut open = self.open();
        match open.get(&stream) {
            Some(s) if s.patron == patron => {
                open.remove(&stream);
                Ok(())
            }
            _ => Err(no_such(stream)),
        }
    }

    /// Closes every stream of a patron that left: their windows leave the engine now.
    pub fn close_all_of(&self, patron: PatronId) {
        let mut open = self.open();
        let before = open.len();
        open.retain(|_, s| s.patron != patron);
        if open.len() != before {
            tracing::info!(
                patron,
                streams = before - open.len(),
                "streams closed: their reader left"
            );
        }
    }
}

/// Counts a task while it holds its `FileStream`.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn no_such(stream: StreamId) -> ProtoError {
    ProtoError::bad_request(format!("this patron has no stream {stream} open"))
}

fn ended(stream: StreamId) -> ProtoError {
    ProtoError::engine(format!("stream {stream} has ended"))
}

impl Reader {
    /// The reader is at `position`: the window moves to the first byte not verified from
    /// there. Returns where the verified bytes end.
    fn move_to(&mut self, position: u64) -> Result<u64, ProtoError> {
        let len = self.stream.len();
        if position > len {
            return Err(ProtoError::bad_request(format!(
                "position {position} is past the end of the file ({len} bytes)"
            )));
        }
        self.position = position;
        self.follow()
    }

    /// Moves the window to the first byte not verified from the reader's position, and
    /// returns where that is.
    fn follow(&mut self) -> Result<u64, ProtoError> {
        let end = self
            .stream
            .verified_end(self.position)
            .map_err(|e| ProtoError::engine(format!("{e:#}")))?;
        self.stream
            .seek_to(end)
            .map_err(|e| ProtoError::engine(format!("{e:#}")))?;
        Ok(end)
    }

    /// Verified bytes from `position`, read through the engine.
    async fn read(&mut self, position: u64, length: u32) -> Result<Vec<u8>, ProtoError> {
        let end = self
            .stream
            .verified_end(position)
            .map_err(|e| ProtoError::engine(format!("{e:#}")))?;
        if end <= position {
            return Err(ProtoError::bad_request(format!(
                "byte {position} is not verified yet"
            )));
        }
        let length = u64::from(length.min(proto::MAX_STREAM_READ)).min(end - position);
        let mut bytes = vec![0; length as usize];
        let read = async {
            self.stream.seek_to(position)?;
            self.stream.read_exact(&mut bytes).await?;
            anyhow::Ok(())
        }
        .await;
        // The window goes back to where the reader's verified bytes end, read or not.
        let back = self.follow();
        read.map_err(|e| ProtoError::io(format!("cannot read the file: {e:#}")))?;
        back?;
        Ok(bytes)
    }
}

/// What a stream's task needs besides its reader.
struct StreamTask {
    torrents: Arc<dyn Torrents>,
    open: OpenStreams,
    patron: PatronConnection,
    torrent: TorrentId,
    id: StreamId,
}

impl StreamTask {
    async fn run(
        self,
        mut reader: Reader,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        _live: LiveGuard,
    ) {
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set while the engine cannot say what is verified (checking): wait for a look.
        let mut stalled = false;
        let why_ended = loop {
            let at_end = reader.stream.position() >= reader.stream.len();
            let woke = {
                let verified = std::future::poll_fn(|cx| reader.stream.poll_position_verified(cx));
                tokio::select! {
                    biased;
                    command = inbox.recv() => Woke::Command(command),
                    result = verified, if !at_end && !stalled => Woke::Verified(result),
                    _ = look.tick() => Woke::Look,
                }
            };
            match woke {
                // Closed, or its patron left: the window goes with the `FileStream`.
                Woke::Command(None) => break None,
                Woke::Command(Some(Command::At { position, reply })) => {
                    let answer = reader.move_to(position);
                    reader.owed = answer.as_ref().ok().copied();
                    if answer.is_err() && self.ended_now(&reader) {
                        let _ = reply.send(Err(ended(self.id)));
                        break None;
                    }
                    let _ = reply.send(answer);
                }
                Woke::Command(Some(Command::Read {
                    position,
                    length,
                    reply,
                })) => {
                    let answer = reader.read(position, length).await;
                    if answer.is_err() && self.ended_now(&reader) {
                        let _ = reply.send(Err(ended(self.id)));
                        break None;
                    }
                    let _ = reply.send(answer);
                }
                Woke::Verified(Ok(())) => self.more_verified(&mut reader),
                Woke::Verified(Err(e)) => {
                    tracing::debug!(stream = %self.id, "engine cannot say what is verified: {e:#}");
                    stalled = true;
                }
                Woke::Look => {
                    if let Some(why) = self.look(&reader) {
                        break Some(why);
                    }
                    stalled = false;
                    // A piece verified while stalled wakes no one: look again.
                    if !at_end {
                        self.more_verified(&mut reader);
                    }
                }
            }
        };
        if let Some(error) = why_ended {
            tracing::info!(stream = %self.id, torrent = %self.torrent, "stream ended: {error}");
            // Said before the stream leaves the table: a request about it answered "no such
            // stream" then reaches the reader after the reason.
            self.patron.send(Event::StreamEnded {
                stream: self.id,
                error,
            });
        } else {
            tracing::info!(stream = %self.id, torrent = %self.torrent, "stream closed");
        }
        lock(&self.open).remove(&self.id);
    }

    /// After a failed answer: whether that is because the stream can give no more bytes (its
    /// torrent went, failed or was added again). If so the reader is told why now, before
    /// the failed answer reaches it.
    fn ended_now(&self, reader: &Reader) -> bool {
        let Some(error) = self.look(reader) else {
            return false;
        };
        tracing::info!(stream = %self.id, torrent = %self.torrent, "stream ended: {error}");
        self.patron.send(Event::StreamEnded {
            stream: self.id,
            error,
        });
        true
    }

    /// The piece at the window's start was verified: the window moves on, and the reader
    /// hears of it if it is owed.
    fn more_verified(&self, reader: &mut Reader) {
        let Ok(end) = reader.follow() else {
            return;
        };
        if let Some(told) = reader.owed {
            if end > told {
                reader.owed = None;
                self.patron.send(Event::StreamProgress {
                    stream: self.id,
                    position: reader.position,
                    verified_to: end,
                });
            }
        }
    }

    /// Why the stream can give no more bytes, if it cannot: its torrent went, failed, or
    /// was added again (a recheck or a move: the stream's engine handle is no longer the
    /// torrent's).
    fn look(&self, reader: &Reader) -> Option<ProtoError> {
        let Some(life) = self.torrents.life(self.torrent) else {
            return Some(ProtoError::unknown_torrent(format!(
                "torrent {} was closed",
                self.torrent
            )));
        };
        match life {
            life if life.is(&reader.handle) => engine::failure(&reader.handle)
                .map(|why| ProtoError::engine(format!("torrent {} failed: {why}", self.torrent))),
            Life::Moving(_) => Some(ProtoError::engine(format!(
                "torrent {}'s data is being moved: open the stream again once it runs from its new place",
                self.torrent
            ))),
            _ => Some(ProtoError::engine(format!(
                "torrent {} was taken out of the engine and added again (a recheck, or a move of its data): open the stream again",
                self.torrent
            ))),
        }
    }
}
