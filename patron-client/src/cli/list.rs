//! `patron-client list`: every torrent the broker runs.

use super::output::{status_line, summary_json};
use super::{Context, Exit};
use patron_client::Error;

pub fn run(ctx: &Context) -> Result<Exit, Error> {
    let mut patron = ctx.patron()?;
    let torrents = patron.list()?;
    if ctx.out.json {
        for summary in &torrents {
            out!("{}", summary_json(summary));
        }
    } else if torrents.is_empty() {
        out!("No torrents.");
    } else {
        for summary in &torrents {
            out!("{}", status_line(&summary.status));
        }
    }
    Ok(Exit::Success)
}
