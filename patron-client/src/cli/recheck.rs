//! `patron-client recheck`: verify a torrent's data on disk again, every piece.

use super::output::{changed_human, status_json};
use super::{torrent_ref, Context, Exit};
use patron_client::proto::TorrentRef;
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let status = ctx.patron_for_torrent()?.recheck(args.torrent)?;
    // The same event as every status, here and in pipe mode.
    let value = status_json(&status);
    ctx.out.emit(
        || {
            format!(
                "{}; `{} watch {}` shows the check end",
                changed_human("Rechecking", &status),
                ctx.command_line(),
                status.id
            )
        },
        value,
    );
    Ok(Exit::Success)
}
