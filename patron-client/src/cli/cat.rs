//! `patron-client cat`: one file of a torrent to stdout, in order, while it downloads.
//!
//! Each byte is written as soon as its piece is verified, and the pieces at the read
//! position are fetched first, so `patron-client cat 3 | mpv -` plays while the torrent
//! downloads. A consumer that goes (`| head`) ends it quietly with exit 0.

use super::{torrent_ref, Context, Exit};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use patron_client::proto::{ErrorKind as ProtoKind, FileRef, ProtoError, TorrentRef};
use patron_client::{Error, Stream};
use std::io::{ErrorKind, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
    /// The file: its index or its path in the torrent (see `files`; `./5` is a file whose
    /// path is `5`); may be left out when the torrent has one file
    #[arg(value_name = "FILE")]
    file: Option<String>,
    /// Start this many bytes into the file (K, M, G suffixes accepted)
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = offset)]
    offset: u64,
    /// Have the broker send the bytes over its channel, even where this program could read
    /// the file itself (slower; for testing, or a broker whose disk is not this one's)
    #[arg(long)]
    over_channel: bool,
    /// Write the bytes even when stdout is a terminal (by default cat refuses, as curl
    /// does: a video's bytes would fill the screen)
    #[arg(long)]
    to_terminal: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    if std::io::stdout().is_terminal() && !args.to_terminal {
        eprintln!(
            "patron-client: cat writes the file's bytes to stdout, which is a terminal: pipe them (`| mpv -`) or redirect them (`> FILE`); --to-terminal writes them anyway"
        );
        return Ok(Exit::Usage);
    }
    let file = args.file.as_deref().map(file_ref);
    // Never starts a broker where no torrent was ever recorded (none could be read).
    let mut stream = Stream::open(&ctx.for_torrent(), args.torrent, file, args.offset)
        .map_err(|e| super::none_runs(e, &ctx.command_line()))?;
    if args.over_channel {
        stream.read_over_channel();
    } else if let Some(why) = stream.over_channel() {
        let why = patron_client::proto::text::shown(why);
        eprintln!("patron-client: {why}: the bytes come over the broker's channel instead");
    }
    copy(&mut stream, &mut std::io::stdout().lock(), None)?;
    Ok(Exit::Success)
}

/// A file named as users type it: digits are an index, anything else a path (`./5` is the
/// file whose path is `5`).
pub fn file_ref(s: &str) -> FileRef {
    if let Some(path) = s.strip_prefix("./") {
        return FileRef::Path(path.to_owned());
    }
    match s.parse::<u32>() {
        Ok(index) => FileRef::Index(index),
        Err(_) => FileRef::Path(s.to_owned()),
    }
}

/// Copies the stream to `out` until the file ends; returns the bytes written. A consumer
/// that goes (broken pipe) ends the copy quietly, as a success, even while the stream waits
/// for bytes: `out` is looked at every quarter second then. So is `cancel`, when given.
pub fn copy(
    stream: &mut Stream,
    out: &mut (impl Write + AsFd),
    cancel: Option<&AtomicBool>,
) -> Result<u64, Error> {
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let cancelled = |written: u64| {
        Error::Request(ProtoError::new(
            ProtoKind::ShuttingDown,
            format!("stopped after {written} bytes: the session shut down"),
        ))
    };
    let is_cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    loop {
        if is_cancelled() {
            return Err(cancelled(written));
        }
        match stream.wait_readable_for(LOOK_EVERY) {
            Ok(Some(0)) => break,
            Ok(Some(_)) => {}
            Ok(None) => {
                if consumer_gone(out.as_fd()) {
                    return Ok(written);
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(e)),
        };
        // Flushed at once: each byte goes out as soon as it is verified, not when a later
        // piece fills a buffer.
        match out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            Ok(()) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(written),
            Err(_) if is_cancelled() => return Err(cancelled(written)),
            Err(source) => {
                return Err(Error::Io {
                    context: "cannot write the file out".into(),
                    source,
                })
            }
        }
    }
    Ok(written)
}

/// How often a waiting copy looks whether its consumer went.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Whether nobody reads `fd` any more (the read end of its pipe or FIFO closed, the
/// terminal hung up). A regular file never goes.
fn consumer_gone(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// The patron error inside a read's I/O error, when there is one.
fn stream_error(e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(error) = inner.downcast::<Error>() {
                return *error;
            }
        }
        return Error::Protocol("lost the stream's error".into());
    }
    Error::Io {
        context: "cannot read the file".into(),
        source: e,
    }
}

/// `--offset`: bytes, with an optional K, M or G (binary) suffix.
fn offset(s: &str) -> Result<u64, String> {
    super::bytes(s).ok_or_else(|| format!("{s:?} is not a byte offset (try 1048576 or 1M)"))
}
