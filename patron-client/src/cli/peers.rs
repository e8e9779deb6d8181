//! `patron-client peers`: a torrent's connected peers; `--add` dials more first.

use super::output::{bytes, shown};
use super::{torrent_ref, Context, Exit};
use patron_client::json::{banned_json, peer_json};
use patron_client::proto::{PeerEntry, TorrentRef};
use patron_client::Error;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
    /// Dial this peer now, seeding or not (repeatable); it is remembered with the torrent
    #[arg(long = "add", value_name = "HOST:PORT", value_parser = super::peer)]
    add: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    // Only looking starts no broker; dialling is a change.
    let mut patron = match args.add.is_empty() {
        true => ctx.reader()?,
        false => ctx.patron_for_torrent()?,
    };
    let list = patron.add_peers(args.torrent, args.add.clone())?;
    let value = json!({
        "event": "peers",
        "id": list.torrent.0,
        "dialled": list.dialled,
        "peers": list.peers.iter().map(peer_json).collect::<Vec<_>>(),
        "banned": list.banned.iter().map(banned_json).collect::<Vec<_>>(),
    });
    ctx.out.emit(
        || {
            let mut text = table(&args.add, &list.dialled, &list.peers);
            for peer in &list.banned {
                text.push_str(&format!(
                    "\nbanned: {} ({})",
                    peer.address,
                    shown(&peer.reason)
                ));
            }
            text
        },
        value,
    );
    Ok(Exit::Success)
}

fn table(asked: &[String], dialled: &[String], peers: &[PeerEntry]) -> String {
    let mut lines = Vec::new();
    if !asked.is_empty() {
        let already = asked.len().saturating_sub(dialled.len());
        let count = |n: usize| match n {
            1 => "1 peer".to_owned(),
            n => format!("{n} peers"),
        };
        let mut said = Vec::new();
        if !dialled.is_empty() {
            said.push(format!("Dialling {}", count(dialled.len())));
        }
        if already > 0 {
            said.push(format!(
                "{} already connected or being dialled",
                count(already)
            ));
        }
        lines.push(said.join("; "));
    }
    if peers.is_empty() {
        lines.push(match asked.is_empty() {
            true => "No connected peers".into(),
            false => "No connected peers yet (a dialled peer shows here once it answers)".into(),
        });
        return lines.join("\n");
    }
    lines.push(format!(
        "{:<22} {:<20} {:>12} {:>12} {:>5}",
        "address", "client", "down", "up", "has"
    ));
    for peer in peers {
        let client = peer
            .client
            .as_deref()
            .map(shown)
            .unwrap_or_else(|| "?".into());
        let has = peer
            .progress
            .map(|p| format!("{:.0}%", p * 100.0))
            .unwrap_or_else(|| "?".into());
        lines.push(format!(
            "{:<22} {:<20} {:>12} {:>12} {:>5}",
            peer.address,
            client,
            format!("{}/s", bytes(peer.download_rate)),
            format!("{}/s", bytes(peer.upload_rate)),
            has
        ));
    }
    lines.join("\n")
}
