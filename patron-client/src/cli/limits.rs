//! `patron-client limits [ID]`: rate limits shown or changed now and kept across restarts:
//! the broker's for all torrents together (a flag given to its next start wins), or one
//! torrent's own.

use super::{Context, Exit};
use patron_client::json::limits_json;
use patron_client::proto::{text, RateLimits, SetLimits, TorrentRef};
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One torrent (id or info hash) whose own limits these are; without it, the limits
    /// for all torrents together
    #[arg(value_name = "ID|INFOHASH", value_parser = super::torrent_ref)]
    torrent: Option<TorrentRef>,
    /// Download limit, bytes per second (512K, 2M: powers of 1024), or `none`
    #[arg(long, value_name = "RATE|none", value_parser = limit)]
    down: Option<u64>,
    /// Upload limit, bytes per second, or `none`
    #[arg(long, value_name = "RATE|none", value_parser = limit)]
    up: Option<u64>,
}

/// A limit as typed: a rate, or `none` (sent as 0, which lifts it).
fn limit(s: &str) -> Result<u64, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" | "unlimited" | "off" => Ok(0),
        _ => super::rate(s).map_err(|e| format!("{e}, or none")),
    }
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let change = SetLimits {
        torrent: args.torrent,
        download: args.down,
        upload: args.up,
    };
    // Only looking starts no broker; a change does, as any command that changes something
    // (one of a torrent's, where torrents are recorded).
    let asks = change.download.is_none() && change.upload.is_none();
    let mut patron = match (asks, change.torrent.is_some()) {
        (true, _) => ctx.reader()?,
        (false, true) => ctx.patron_for_torrent()?,
        (false, false) => ctx.patron()?,
    };
    let limits = patron.set_limits(change)?;
    ctx.out.emit(|| human(&limits), limits_json(&limits));
    Ok(Exit::Success)
}

fn human(limits: &RateLimits) -> String {
    let shown = |rate: Option<u64>| match rate {
        Some(rate) => format!("{}/s", text::bytes(rate)),
        None => "no limit".into(),
    };
    format!(
        "Download: {}\nUpload:   {}",
        shown(limits.download),
        shown(limits.upload)
    )
}
