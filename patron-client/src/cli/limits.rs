//! `patron-client limits [ID]`: rate limits shown or changed now and kept across restarts:
//! the broker's for all torrents together (a flag given to its next start wins), or one
//! torrent's own.

use super::{Context, Exit};
use patron_client::json::limits_json;
use patron_client::proto::{
    text, AltChange, AltSchedule, AltSpeed, RateLimits, SetLimits, TorrentRef,
};
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
    /// The broker's alternative limits ("turtle mode"), used instead while on: DOWN:UP,
    /// each a rate or `none` (1M:256K)
    #[arg(long, value_name = "DOWN:UP", value_parser = alt_limits, conflicts_with = "torrent")]
    alt_limits: Option<(u64, u64)>,
    /// When the alternative limits turn on by themselves, in local time: days and hours
    /// ('mon-fri 09:00-18:00', 'daily 22:00-06:00'), or `none`
    #[arg(long, value_name = "SCHEDULE|none", value_parser = alt_schedule, conflicts_with = "torrent")]
    alt_schedule: Option<Schedule>,
    /// Turn the alternative limits on or off now (until the schedule's next edge)
    #[arg(long, value_name = "on|off", value_parser = on_off, conflicts_with = "torrent")]
    alt: Option<bool>,
}

/// A schedule as typed (`None`: none). (A newtype: clap reads `Option<Option<_>>` as a flag
/// whose value may be left out.)
#[derive(Debug, Clone, Copy)]
struct Schedule(Option<AltSchedule>);

fn alt_limits(s: &str) -> Result<(u64, u64), String> {
    let (down, up) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not DOWN:UP (1M:256K; none for either)"))?;
    Ok((limit(down)?, limit(up)?))
}

fn alt_schedule(s: &str) -> Result<Schedule, String> {
    if matches!(s.trim(), "none" | "never" | "off") {
        return Ok(Schedule(None));
    }
    AltSchedule::parse(s).map(|s| Schedule(Some(s))).ok_or_else(|| {
        format!("{s:?} is not days and hours in local time: 'mon-fri 09:00-18:00', 'daily 22:00-06:00', or none")
    })
}

fn on_off(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not on or off")),
    }
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
        alt: AltChange {
            download: args.alt_limits.map(|(down, _)| down),
            upload: args.alt_limits.map(|(_, up)| up),
            schedule: args.alt_schedule.map(|s| s.0),
            hours: None,
            on: args.alt,
        },
    };
    // Only looking starts no broker; a change does, as any command that changes something
    // (one of a torrent's, where torrents are recorded).
    let asks =
        change.download.is_none() && change.upload.is_none() && change.alt == AltChange::default();
    let mut patron = match (asks, change.torrent.is_some()) {
        (true, _) => ctx.reader()?,
        (false, true) => ctx.patron_for_torrent()?,
        (false, false) => ctx.patron()?,
    };
    let (limits, alt) = patron.set_limits(change)?;
    ctx.out.emit(
        || human(&limits, alt.as_ref()),
        limits_json(&limits, alt.as_ref()),
    );
    Ok(Exit::Success)
}

fn human(limits: &RateLimits, alt: Option<&AltSpeed>) -> String {
    let shown = |rate: Option<u64>| match rate {
        Some(rate) => format!("{}/s", text::bytes(rate)),
        None => "no limit".into(),
    };
    let mut text = format!(
        "Download: {}\nUpload:   {}",
        shown(limits.download),
        shown(limits.upload)
    );
    if let Some(alt) = alt {
        let schedule = match alt.schedule {
            Some(schedule) => format!("on {schedule}"),
            None => "no schedule".to_owned(),
        };
        text.push_str(&format!(
            "\nAlternative ({}, {schedule}): down {}, up {}",
            if alt.on { "ON now: in force" } else { "off" },
            shown(alt.download),
            shown(alt.upload)
        ));
    }
    text
}
