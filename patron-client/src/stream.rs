//! Reading one file of a torrent in order while it downloads (DESIGN §8).
//!
//! A [`Stream`] is its own connection to the broker, so that a program may read several
//! files at once and a reader that goes (dropped, crashed, killed) takes its priority
//! window out of the engine at once: the broker sees the connection close.
//!
//! The bytes do not cross the socket. The broker says which bytes are verified ("verified up
//! to here"); the stream reads them from the file itself, which the engine wrote into the
//! page cache, and tells the broker where it reads ("I read here") only when it has read
//! everything it was told of, or seeked past it. Where the file cannot be opened (another
//! mount namespace, its permissions), or is not the file the engine writes, the bytes come
//! over the channel instead, a MiB at a time.

use crate::{ConnectOptions, Error, Patron, Result};
use proto::{
    ErrorKind, Event, FileRef, OpenStream, ProtoError, RequestBody, StreamAt, StreamInfo,
    StreamRead, TorrentRef,
};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

/// One file of a torrent, read in order as its pieces are verified: [`Read`] blocks until
/// the bytes at the position are verified, and [`Seek`] moves the position (and, at the
/// next read, the broker's priority window). Reads return 0 at the end of the file.
pub struct Stream {
    patron: Patron,
    info: StreamInfo,
    /// How bytes are read.
    source: Source,
    position: u64,
    /// Bytes `verified.0..verified.1` of the file are verified (the broker said so).
    verified: (u64, u64),
    /// The position last said to the broker ("I read here").
    asked: Option<u64>,
}

enum Source {
    /// The file itself, checked to be the one the engine writes.
    File(File),
    /// Over the channel, with why, and bytes read ahead (from `at`).
    Channel {
        why: String,
        at: u64,
        bytes: Vec<u8>,
    },
}

impl Stream {
    /// Opens a stream of `file` (the only file when `None`) of `torrent`, starting at byte
    /// `position`, on a connection of its own.
    pub fn open(
        options: &ConnectOptions,
        torrent: TorrentRef,
        file: Option<FileRef>,
        position: u64,
    ) -> Result<Stream> {
        let mut patron = Patron::connect_with(options)?;
        let body = RequestBody::OpenStream(OpenStream {
            torrent,
            file,
            position,
        });
        let info = match patron.request(body)? {
            Event::StreamOpened { stream, .. } => stream,
            Event::Error { error, .. } => return Err(Error::Request(error)),
            other => return Err(crate::unexpected(other)),
        };
        let source = match open_local(&info) {
            Ok(file) => Source::File(file),
            Err(why) => Source::Channel {
                why,
                at: 0,
                bytes: Vec::new(),
            },
        };
        Ok(Stream {
            patron,
            verified: (position, info.verified_to),
            info,
            source,
            position,
            asked: None,
        })
    }

    /// What the broker said of the stream when it opened: its file, where that is on disk.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.info.file.size
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file the bytes are read from, checked to be the one the engine writes (`None`
    /// when they come over the channel): for a caller that reads verified bytes itself,
    /// into a buffer of its own, then moves the position past them with [`Seek`].
    pub fn local_file(&self) -> Option<&File> {
        match &self.source {
            Source::File(file) => Some(file),
            Source::Channel { .. } => None,
        }
    }

    /// Why the bytes come over the channel rather than from the file, if they do.
    pub fn over_channel(&self) -> Option<&str> {
        match &self.source {
            Source::File(_) => None,
            Source::Channel { why, .. } => Some(why),
        }
    }

    /// Reads the bytes over the channel from now on, even where the file could be read (for
    /// a reader on a machine that sees the broker's socket but not its disk).
    pub fn read_over_channel(&mut self) {
        if let Source::File(_) = self.source {
            self.source = Source::Channel {
                why: "asked for".into(),
                at: 0,
                bytes: Vec::new(),
            };
        }
    }

    /// Blocks until the byte at the position is verified, and returns how many bytes from
    /// there are (0 at the end of the file).
    pub fn wait_readable(&mut self) -> Result<u64> {
        loop {
            if let Some(ready) = self.wait_readable_for(Duration::from_secs(3600))? {
                return Ok(ready);
            }
        }
    }

    /// Like [`Stream::wait_readable`], but gives up after `limit` with `Ok(None)` (say, to
    /// look whether whoever consumes the bytes is still there). Nothing is lost by giving
    /// up: the next call goes on waiting for the same bytes.
    pub fn wait_readable_for(&mut self, limit: Duration) -> Result<Option<u64>> {
        let now = Instant::now();
        let deadline = now
            .checked_add(limit)
            .unwrap_or_else(|| now + Duration::from_secs(86_400));
        loop {
            let len = self.len();
            if self.position >= len {
                return Ok(Some(0));
            }
            let (from, to) = self.verified;
            if from <= self.position && self.position < to {
                return Ok(Some(to - self.position));
            }
            // "I read here", unless it was said for this position already: its reply, or
            // the progress owed after it, is still to come.
            if self.asked != Some(self.position) {
                let (stream, position) = (self.info.id, self.position);
                self.patron
                    .send(RequestBody::StreamAt(StreamAt { stream, position }))?;
                self.asked = Some(position);
            }
            match self.next_event_until(deadline)? {
                Some(event) => self.take(event)?,
                None => return Ok(None),
            }
        }
    }

    /// Learns what an event says of this stream. Every request on this connection is the
    /// stream's own, so any error ends it.
    fn take(&mut self, event: Event) -> Result<()> {
        let stream = self.info.id;
        match event {
            Event::StreamVerified {
                stream: s,
                position,
                verified_to,
                ..
            }
            | Event::StreamProgress {
                stream: s,
                position,
                verified_to,
            } if s == stream => self.learn(position, verified_to),
            Event::StreamEnded { stream: s, error } if s == stream => {
                return Err(Error::StreamEnded(error))
            }
            Event::Error { error, .. } => return Err(Error::Request(error)),
            // Replies to CloseStream, status of torrents this connection does not hold.
            _ => {}
        }
        Ok(())
    }

    /// Bytes `position..verified_to` are verified: kept when they cover the position.
    fn learn(&mut self, position: u64, verified_to: u64) {
        if position <= self.position && self.position < verified_to {
            self.verified = (position, verified_to);
        }
    }

    fn next_event(&mut self) -> Result<Event> {
        if let Some(event) = self.patron.backlog.pop_front() {
            return Ok(event);
        }
        let event = self.patron.receive()?;
        crate::check_fatal(&event)?;
        Ok(event)
    }

    fn next_event_until(&mut self, deadline: Instant) -> Result<Option<Event>> {
        if let Some(event) = self.patron.backlog.pop_front() {
            return Ok(Some(event));
        }
        let Some(event) = self.patron.receive_until(deadline)? else {
            return Ok(None);
        };
        crate::check_fatal(&event)?;
        Ok(Some(event))
    }

    /// Reads from the channel: serves from what was read ahead, else asks for up to a MiB.
    fn read_channel(&mut self, buf: &mut [u8], ready: u64) -> Result<usize> {
        let position = self.position;
        if let Source::Channel { at, bytes, .. } = &self.source {
            if *at <= position && position < *at + bytes.len() as u64 {
                let start = (position - *at) as usize;
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                return Ok(n);
            }
        }
        let length = ready.min(u64::from(proto::MAX_STREAM_READ)) as u32;
        let stream = self.info.id;
        let mut refused = 0;
        let data = 'asking: loop {
            let id = self.patron.send(RequestBody::StreamRead(StreamRead {
                stream,
                position,
                length,
            }))?;
            loop {
                match self.next_event()? {
                    Event::StreamData { request, bytes, .. } if request == id => {
                        break 'asking bytes
                    }
                    // The broker sends stream bytes only while few of its replies wait
                    // unread; the last one may not count as read yet: ask again shortly.
                    Event::Error { request, error }
                        if request == id
                            && error.kind == ErrorKind::LimitReached
                            && refused < 100 =>
                    {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(10));
                        continue 'asking;
                    }
                    other => self.take(other)?,
                }
            }
        };
        if data.is_empty() {
            return Err(Error::Protocol(
                "the broker sent no bytes of a verified range".into(),
            ));
        }
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        if let Source::Channel { at, bytes, .. } = &mut self.source {
            *at = position;
            *bytes = data;
        }
        Ok(n)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let ready = self.wait_readable().map_err(into_io)?;
        if ready == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
        let n = match &self.source {
            Source::File(file) => {
                let n = file.read_at(&mut buf[..want], self.position)?;
                if n == 0 {
                    // Verified bytes the file does not have: it was cut short under us.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ends before byte {}, which the broker verified",
                            self.info.local_path, self.position
                        ),
                    ));
                }
                n
            }
            Source::Channel { .. } => self
                .read_channel(&mut buf[..want], ready)
                .map_err(into_io)?,
        };
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for Stream {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        // The window moves at the next read, if it must: a seek inside what is verified
        // costs no message. Whatever was said before, a position sought is said afresh.
        self.position = target;
        self.asked = None;
        Ok(target)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the connection closes the stream; saying so first is only polite.
        let _ = self.patron.send(RequestBody::CloseStream(self.info.id));
    }
}

/// Opens the stream's file read-only, not through a symlink, and checks that it is the one
/// the engine writes (the broker gave its device and inode).
fn open_local(info: &StreamInfo) -> std::result::Result<File, String> {
    let Some(identity) = info.local_file else {
        return Err(format!("the broker cannot see {}", info.local_path));
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Not through a symlink; and a FIFO or a terminal planted there must not block the
        // open or become our terminal (regular files ignore O_NONBLOCK).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&info.local_path)
        .map_err(|e| format!("cannot open {}: {e}", info.local_path))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot look at {}: {e}", info.local_path))?;
    if (meta.dev(), meta.ino()) != (identity.device, identity.inode) {
        return Err(format!(
            "{} is not the file the broker writes",
            info.local_path
        ));
    }
    Ok(file)
}

fn into_io(error: Error) -> io::Error {
    let kind = match &error {
        Error::Request(ProtoError {
            kind: ErrorKind::BadRequest,
            ..
        }) => io::ErrorKind::InvalidInput,
        Error::BrokerStopped(_) => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}
