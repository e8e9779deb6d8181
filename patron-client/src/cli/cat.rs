//! `patron-client cat`: one file of a torrent to stdout, in order, while it downloads.
//!
//! Each byte is written as soon as its piece is verified, and the pieces at the read
//! position are fetched first, so `patron-client cat 3 | mpv -` plays while the torrent
//! downloads. A consumer that goes (`| head`) ends it quietly with exit 0.

use super::{torrent_ref, Context, Exit};
use patron_client::proto::{FileRef, TorrentRef};
use patron_client::{Error, Stream};
use std::io::{ErrorKind, Read, Write};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
    /// The file: its index or its path in the torrent (see `files`); may be left out when
    /// the torrent has one file
    #[arg(value_name = "FILE")]
    file: Option<String>,
    /// Start this many bytes into the file (K, M, G suffixes accepted)
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = offset)]
    offset: u64,
    /// Have the broker send the bytes over its channel, even where this program could read
    /// the file itself (slower; for testing, or a broker whose disk is not this one's)
    #[arg(long)]
    over_channel: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let file = args.file.as_deref().map(file_ref);
    let mut stream = Stream::open(&ctx.connect, args.torrent, file, args.offset)?;
    if args.over_channel {
        stream.read_over_channel();
    } else if let Some(why) = stream.over_channel() {
        eprintln!("patron-client: {why}: the bytes come over the broker's channel instead");
    }
    copy(&mut stream, &mut std::io::stdout().lock())?;
    Ok(Exit::Success)
}

/// A file named as users type it: digits are an index, anything else a path.
pub fn file_ref(s: &str) -> FileRef {
    match s.parse::<u32>() {
        Ok(index) => FileRef::Index(index),
        Err(_) => FileRef::Path(s.to_owned()),
    }
}

/// Copies the stream to `out` until the file ends; returns the bytes written. A consumer
/// that goes (broken pipe) ends the copy quietly, as a success.
pub fn copy(stream: &mut Stream, out: &mut impl Write) -> Result<u64, Error> {
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(e)),
        };
        match out.write_all(&buf[..n]) {
            Ok(()) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(written),
            Err(source) => {
                return Err(Error::Io {
                    context: "cannot write the file out".into(),
                    source,
                })
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(Error::Io {
            context: "cannot write the file out".into(),
            source: e,
        }),
        _ => Ok(written),
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
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => t.split_at(at),
        None => (t, ""),
    };
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        _ => return Err(format!("{s:?} is not a byte offset (try 1048576 or 1M)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{s:?} is not a byte offset (try 1048576 or 1M)"))
}
