//! `patron-client list`: every torrent the broker runs, read off the board (or asked).

use super::output::{print_lines, status_line, stream_stdout, summary_json};
use super::{Context, Exit, Source};
use patron_client::Error;

pub fn run(ctx: &Context) -> Result<Exit, Error> {
    let torrents = match ctx.status_source()? {
        // The broker formatted these lines already: copy them out.
        Source::Board(board) if !ctx.out.json => {
            if stream_stdout(|out| board.write_list(out)) == 0 {
                out!("No torrents.");
            }
            return Ok(Exit::Success);
        }
        // A text cut to fit the board (a very long save folder) is asked for whole.
        Source::Board(board) => match board.list_exact() {
            Some(torrents) => torrents,
            None => ctx.patron()?.list()?,
        },
        Source::Requests(mut patron) => patron.list()?,
    };
    if ctx.out.json {
        print_lines(torrents.iter().map(|t| summary_json(t).to_string()));
    } else if torrents.is_empty() {
        out!("No torrents.");
    } else {
        print_lines(torrents.iter().map(|t| status_line(&t.status)));
    }
    Ok(Exit::Success)
}
