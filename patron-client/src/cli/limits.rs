//! `patron-client limits`: the broker's rate limits for all torrents together, shown or
//! changed now (kept across restarts; a flag given to the broker's next start wins).

use super::{Context, Exit};
use patron_client::json::limits_json;
use patron_client::proto::{text, RateLimits, SetLimits};
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Download limit for all torrents, bytes per second (512K, 2M: powers of 1024), or
    /// `none`
    #[arg(long, value_name = "RATE|none", value_parser = limit)]
    down: Option<u64>,
    /// Upload limit for all torrents, bytes per second, or `none`
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
        download: args.down,
        upload: args.up,
    };
    // Only looking starts no broker; a change does, as any command that changes something.
    let mut patron = match change == SetLimits::default() {
        true => ctx.reader()?,
        false => ctx.patron()?,
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
