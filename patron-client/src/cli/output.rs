//! Human output on a terminal, JSON for scripts: every command prints through here.

pub use patron_client::proto::text::{
    bytes, duration, shown, status_line, terminal_safe, truncate,
};
use patron_client::proto::{MadeTorrent, TorrentInfo, TorrentStatus, TorrentSummary};
use patron_client::Error;
use serde_json::{json, Value};

/// Writes one line to stdout (see the `out!` macro).
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    written(writeln!(stdout, "{line}").and_then(|()| stdout.flush()));
}

/// Ends the command if stdout failed: quietly (exit 0) when its reader left, else with a
/// message and exit 1.
fn written(result: std::io::Result<()>) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("patron-client: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints many lines with one write where they fit (a 10,000-torrent `list` is not 10,000
/// system calls), with [`print_line`]'s handling of a reader that left.
pub fn print_lines(lines: impl Iterator<Item = String>) {
    use std::io::Write;
    let stdout = std::io::stdout().lock();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout);
    let mut lines = lines;
    written(
        lines
            .try_for_each(|line| writeln!(out, "{line}"))
            .and_then(|()| out.flush()),
    );
}

/// Lets `write` stream to stdout, with [`print_line`]'s handling of a reader that left;
/// returns how many bytes it wrote.
pub fn stream_stdout(write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> u64 {
    use std::io::Write;
    /// Stdout, counting.
    struct Counted<W>(W, u64);
    impl<W: Write> Write for Counted<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.0.write(buf)?;
            self.1 += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }
    let mut out = Counted(std::io::stdout().lock(), 0);
    written(write(&mut out).and_then(|()| out.flush()));
    out.1
}

/// Where and how to print.
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Prints one result: `human` for people, `value` (one line) with `--json`.
    pub fn emit(&self, human: impl FnOnce() -> String, value: Value) {
        if self.json {
            out!("{value}");
        } else {
            // Fields were escaped where they were put in; this catches any that were not.
            out!("{}", terminal_safe(&human()));
        }
    }

    /// Reports an error: always on stderr, and as a JSON object on stdout with `--json`.
    pub fn error(&self, error: &Error) {
        eprintln!("patron-client: {}", shown(&error.to_string()));
        if self.json {
            out!("{}", error_json(error));
        }
    }
}

/// An error as a JSON event: `kind` is the protocol's error kind when the broker refused
/// the request, else what failed on this side.
pub fn error_json(error: &Error) -> Value {
    let (kind, message) = match patron_client::proto_error(error) {
        Some(e) => (e.kind.as_str().to_owned(), e.message.clone()),
        None => {
            let kind = match error {
                Error::BrokerUnreachable(_) => "broker-unreachable".into(),
                Error::Refused { kind, .. } => format!("refused-{kind}"),
                Error::BrokerStopped(_) => "broker-stopped".into(),
                Error::Protocol(_) => "protocol".into(),
                _ => "io".into(),
            };
            (kind, error.to_string())
        }
    };
    json!({"event": "error", "kind": kind, "message": message})
}

/// A made torrent as a JSON event (callers add where its .torrent went).
pub fn made_json(made: &MadeTorrent) -> Value {
    json!({
        "event": "made",
        "info_hash": made.info_hash.to_string(),
        "name": made.name,
        "total_bytes": made.total_bytes,
        "pieces": made.pieces,
        "piece_size": made.piece_size,
        "seeding_id": made.seeding.as_ref().map(|s| s.id.0),
    })
}

pub fn info_json(event: &str, info: &TorrentInfo) -> Value {
    json!({
        "event": event,
        "id": info.id.0,
        "info_hash": info.info_hash.to_string(),
        "name": info.name,
        "save_folder": info.save_folder,
        "total_bytes": info.total_bytes,
    })
}

pub fn info_human(verb: &str, info: &TorrentInfo) -> String {
    format!(
        "{verb} torrent {}\n  info hash: {}\n  name:      {}\n  saved in:  {}\n  size:      {}",
        info.id,
        info.info_hash,
        shown(&info.name),
        shown(&info.save_folder),
        bytes(info.total_bytes)
    )
}

pub fn status_json(status: &TorrentStatus) -> Value {
    let error = match &status.state {
        patron_client::proto::TorrentState::Error(message) => Value::from(message.clone()),
        _ => Value::Null,
    };
    json!({
        "event": "status",
        "id": status.id.0,
        "info_hash": status.info_hash.to_string(),
        "name": status.name,
        "state": status.state.as_str(),
        "error": error,
        "progress": status.progress,
        "bytes_done": status.bytes_done,
        "bytes_total": status.bytes_total,
        "download_rate": status.download_rate,
        "upload_rate": status.upload_rate,
        "uploaded": status.uploaded,
        "peers": status.peers,
        "seeds": status.seeds,
        "eta_secs": status.eta_secs,
        "complete": status.complete,
    })
}

pub fn summary_json(summary: &TorrentSummary) -> Value {
    let mut value = status_json(&summary.status);
    value["event"] = "torrent".into();
    value["save_folder"] = summary.info.save_folder.clone().into();
    value["holders"] = summary.holders.into();
    value["ephemeral"] = summary.ephemeral.into();
    value
}

/// The broker as `broker status --json` and pipe mode's `info` print it: `others`, the
/// patrons connected besides the one asking; `started`, what `broker start` did.
pub fn broker_json(
    info: &patron_client::proto::BrokerInfo,
    started: Option<bool>,
    others: u32,
) -> Value {
    json!({
        "event": "broker",
        "state": "running",
        "started": started,
        "pid": info.pid,
        "version": info.version,
        "state_dir": info.state_dir,
        "listen": info.listen,
        "loopback_only": info.loopback_only,
        "download_roots": info.download_roots,
        "patrons": others,
        "torrents": info.torrents,
        "kept": info.kept,
        "streams": info.streams,
        "open_files": info.open_files,
        "open_files_limit": info.open_files_limit,
        "large_requests": info.large_requests.0,
        "large_requests_limit": info.large_requests.1,
        "large_request_bytes": info.large_request_bytes.0,
        "large_request_bytes_limit": info.large_request_bytes.1,
        "files": info.files.0,
        "files_limit": info.files.1,
        "board_waiters": info.board_waiters.0,
        "board_waiters_limit": info.board_waiters.1,
        "unread_bytes": info.unread_bytes.0,
        "unread_bytes_limit": info.unread_bytes.1,
        "unread_regions": info.unread_regions.0,
        "unread_regions_limit": info.unread_regions.1,
    })
}
