//! `patron-client list`: every torrent the broker runs, read off the board (or asked).

use super::output::{print_lines, status_line, summary_json};
use super::{Context, Exit, Source};
use patron_client::Error;

pub fn run(ctx: &Context) -> Result<Exit, Error> {
    let torrents = match ctx.status_source()? {
        Source::Board(board) => board.list(),
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
