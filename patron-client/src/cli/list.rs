//! `patron-client list`: every torrent the broker runs, read off the board (or asked).

use super::output::{print_lines, status_line, stream_stdout, summary_json};
use super::{Context, Exit, Source};
use patron_client::proto::text::list_header;
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the torrents with this label
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let torrents = match ctx.status_source()? {
        // The broker formatted these lines already: copy them out.
        Source::Board(board) if !ctx.out.json && args.label.is_none() => {
            let written = stream_stdout(|out| {
                let mut headed = Headed {
                    out,
                    header: Some(list_header()),
                };
                board.write_list(&mut headed)
            });
            if written == 0 {
                out!("No torrents.");
            }
            return Ok(Exit::Success);
        }
        // A text cut to fit the board (a very long save folder) is asked for whole.
        Source::Board(board) => match board.list_exact() {
            Some(torrents) => torrents,
            None => ctx.reader()?.list()?,
        },
        Source::Requests(mut patron) => patron.list()?,
    };
    let torrents: Vec<_> = match &args.label {
        Some(label) => torrents
            .into_iter()
            .filter(|t| t.status.labels.contains(label))
            .collect(),
        None => torrents,
    };
    if ctx.out.json {
        print_lines(torrents.iter().map(|t| summary_json(t).to_string()));
    } else if torrents.is_empty() {
        out!("No torrents.");
    } else {
        let header = std::iter::once(list_header());
        print_lines(header.chain(torrents.iter().map(|t| status_line(&t.status))));
    }
    Ok(Exit::Success)
}

/// Writes `header` (and a newline) before the first bytes written, if any are.
struct Headed<'a> {
    out: &'a mut dyn std::io::Write,
    header: Option<String>,
}

impl std::io::Write for Headed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(header) = self.header.take() {
            self.out.write_all(header.as_bytes())?;
            self.out.write_all(b"\n")?;
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
