//! `patron-client close`: release a torrent, stopping it unless other patrons hold it.

use super::{torrent_ref, Context, Exit};
use patron_client::proto::TorrentRef;
use patron_client::Error;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
    /// Also delete the downloaded data
    #[arg(long)]
    delete_data: bool,
    /// Stop it even if other patrons hold it
    #[arg(long)]
    force: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let mut patron = ctx.patron_for_torrent()?;
    let closed = patron.close(args.torrent, args.delete_data, args.force)?;
    ctx.out.emit(
        || match (closed.stopped, closed.data_deleted) {
            (true, true) => format!("Closed torrent {} and deleted its data", closed.id),
            (true, false) => format!("Closed torrent {} (data kept)", closed.id),
            (false, _) => format!(
                "Torrent {} keeps running: other patrons hold it (use --force to stop it anyway)",
                closed.id
            ),
        },
        json!({
            "event": "closed",
            "id": closed.id.0,
            "stopped": closed.stopped,
            "data_deleted": closed.data_deleted,
        }),
    );
    Ok(Exit::Success)
}
