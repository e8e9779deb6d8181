//! `patron-client move`: move a torrent's data to another folder, and run it from there.

use super::output::{changed_human, shown, status_json};
use super::{absolute, torrent_ref, Context, Exit};
use patron_client::proto::TorrentRef;
use patron_client::Error;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
    /// The folder to save it in from now on (inside the broker's download roots; a torrent
    /// of several files keeps its own folder inside it)
    #[arg(value_name = "DEST")]
    to: PathBuf,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let to = absolute(&args.to)?.display().to_string();
    let status = ctx
        .patron_for_torrent()?
        .move_storage(args.torrent, to.clone())?;
    let mut value = status_json(&status);
    value["save_folder"] = to.clone().into();
    ctx.out.emit(
        || {
            format!(
                "{} (now in {})",
                changed_human("Moved", &status),
                shown(&to)
            )
        },
        value,
    );
    Ok(Exit::Success)
}
