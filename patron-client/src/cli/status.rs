//! `patron-client status`: one torrent's status, read off the board (or asked).

use super::output::{status_json, status_line};
use super::{torrent_ref, Context, Exit, Source};
use patron_client::proto::text::list_header;
use patron_client::proto::TorrentRef;
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let status = match ctx.status_source()? {
        Source::Board(board) => match board.get(args.torrent) {
            // A name or error message too long for its slot was cut (and marked `…`): the
            // broker has it whole.
            Some(status) if !maybe_cut(&status) => status,
            // Not on the board: the broker says why (unknown id, and so on).
            _ => ctx.reader()?.status(args.torrent)?,
        },
        Source::Requests(mut patron) => patron.status(args.torrent)?,
    };
    // Under the same header as `list`'s lines.
    ctx.out.emit(
        || format!("{}\n{}", list_header(), status_line(&status)),
        status_json(&status),
    );
    Ok(Exit::Success)
}

/// Whether a text of `status` may have been cut to fit its slot on the board (the board
/// marks a cut text with a trailing `…`; a whole one that ends so is only asked again).
pub fn maybe_cut(status: &patron_client::proto::TorrentStatus) -> bool {
    let error = match &status.state {
        patron_client::proto::TorrentState::Error(why) => why.as_str(),
        _ => "",
    };
    status.name.ends_with('…') || error.ends_with('…')
}
