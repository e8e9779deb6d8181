//! `patron-client status`: one torrent's status.

use super::output::{status_json, status_line};
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
    let mut patron = ctx.patron()?;
    let status = patron.status(args.torrent)?;
    ctx.out.emit(|| status_line(&status), status_json(&status));
    Ok(Exit::Success)
}
