//! `patron-client watch`: print status updates as they come.

use super::output::{status_json, status_line};
use super::{torrent_ref, Context, Exit};
use patron_client::proto::{Event, TorrentId, TorrentRef};
use patron_client::Error;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrents to watch (id or info hash) [default: every running torrent]
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrents: Vec<TorrentRef>,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let mut patron = ctx.patron()?;
    let targets: Vec<TorrentRef> = if args.torrents.is_empty() {
        patron
            .list()?
            .into_iter()
            .map(|t| TorrentRef::Id(t.info.id))
            .collect()
    } else {
        args.torrents
    };
    if targets.is_empty() {
        ctx.out
            .emit(|| "No torrents to watch.".into(), json!({"event": "idle"}));
        return Ok(Exit::Success);
    }
    let mut watched: Vec<TorrentId> = Vec::new();
    for target in targets {
        watched.push(patron.follow(target)?.id);
    }
    loop {
        match patron.next_event()? {
            Event::TorrentStatusUpdate(status) => {
                ctx.out.emit(|| status_line(&status), status_json(&status));
            }
            Event::TorrentGone { id, reason } => {
                ctx.out.emit(
                    || format!("{id:>4}  closed: {reason}"),
                    json!({"event": "gone", "id": id.0, "reason": reason}),
                );
                watched.retain(|w| *w != id);
                if watched.is_empty() {
                    return Ok(Exit::Success);
                }
            }
            Event::BrokerStopping { reason } | Event::Disconnected { reason } => {
                return Err(Error::BrokerStopped(reason));
            }
            _ => {}
        }
    }
}
