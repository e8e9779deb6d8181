//! Human output on a terminal, JSON for scripts: every command prints through here.

pub use patron_client::proto::text::{
    bytes, duration, shown, status_line, terminal_safe, truncate,
};
use patron_client::proto::{TorrentInfo, TorrentStatus};
use patron_client::Error;
use serde_json::Value;

pub use patron_client::json::{
    broker_json, error_json, info_json, made_json, status_json, summary_json,
};

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

/// What a change to a torrent did, in a sentence: `Paused torrent 3 (name): paused, 41.20% of 1.2 GiB`.
pub fn changed_human(verb: &str, status: &TorrentStatus) -> String {
    let state = match &status.state {
        patron_client::proto::TorrentState::Error(why) => format!("error ({})", shown(why)),
        other => other.as_str().to_owned(),
    };
    format!(
        "{verb} torrent {} ({}): {state}, {:.2}% of {}",
        status.id,
        shown(&status.name),
        status.progress * 100.0,
        bytes(status.bytes_total)
    )
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
