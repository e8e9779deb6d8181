//! `patron-client set [ID]`: when torrents stop seeding (ratio, seeding time, idle time,
//! and what is done then), and their rate limits: the broker's for all torrents, or one
//! torrent's own. Kept across restarts.

use super::{Context, Exit};
use patron_client::json::{limits_json, seeding_json};
use patron_client::proto::text::{self, bytes, duration};
use patron_client::proto::{
    OwnSeedingChange, SeedAction, SeedLimit, SetLimits, SetSeeding, TorrentRef,
};
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One torrent (id or info hash) whose own settings these are; without it, the
    /// broker's for all torrents
    #[arg(value_name = "ID|INFOHASH", value_parser = super::torrent_ref)]
    torrent: Option<TorrentRef>,
    /// Stop seeding at this ratio (uploaded over downloaded: 2, 1.5), or `none`; for a
    /// torrent, `default` gives it the broker's again
    #[arg(long, value_name = "RATIO|none|default", value_parser = ratio)]
    ratio: Option<Given<f64>>,
    /// Stop seeding after seeding this long in all (90m, 3d), or `none`, or `default`
    #[arg(long, value_name = "DURATION|none|default", value_parser = time)]
    seed_time: Option<Given<u64>>,
    /// Stop seeding after this long with nothing uploaded (30m, 2h), or `none`, or `default`
    #[arg(long, value_name = "DURATION|none|default", value_parser = time)]
    idle: Option<Given<u64>>,
    /// What is done past a limit, for all torrents: pause (resumed by hand, it seeds on) or
    /// close (its data kept)
    #[arg(long, value_name = "pause|close", value_parser = action, conflicts_with = "torrent")]
    action: Option<SeedAction>,
    /// Download limit, bytes per second (512K, 2M), or `none` (as `limits --down`)
    #[arg(long, value_name = "RATE|none", value_parser = rate)]
    max_download_rate: Option<u64>,
    /// Upload limit, bytes per second, or `none` (as `limits --up`)
    #[arg(long, value_name = "RATE|none", value_parser = rate)]
    max_upload_rate: Option<u64>,
}

/// A limit as typed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Given<T> {
    Value(T),
    None,
    Default,
}

impl<T> Given<T> {
    /// For the broker: `Some(limit)`, `None` meaning none (`default` is refused before).
    fn broker(self) -> Option<T> {
        match self {
            Given::Value(value) => Some(value),
            Given::None | Given::Default => None,
        }
    }

    fn is_default(&self) -> bool {
        matches!(self, Given::Default)
    }

    /// For a torrent: `None` gives it the broker's again.
    pub(super) fn own(self) -> Option<SeedLimit<T>> {
        match self {
            Given::Value(value) => Some(SeedLimit::At(value)),
            Given::None => Some(SeedLimit::Unlimited),
            Given::Default => None,
        }
    }
}

/// A limit as typed: `default`, or what `parse` takes (`none` among it).
fn given<T>(s: &str, parse: fn(&str) -> Option<Option<T>>) -> Option<Given<T>> {
    if s.trim() == "default" {
        return Some(Given::Default);
    }
    Some(match parse(s)? {
        Some(value) => Given::Value(value),
        None => Given::None,
    })
}

pub(super) fn ratio(s: &str) -> Result<Given<f64>, String> {
    given(s, text::parse_ratio_limit).ok_or_else(|| {
        format!("{s:?} is not a ratio: 0.001 to a million (2, 1.5), none or default")
    })
}

pub(super) fn time(s: &str) -> Result<Given<u64>, String> {
    given(s, text::parse_time_limit).ok_or_else(|| {
        format!("{s:?} is not a time: 90m, 3d, 1h30m (a bare number is minutes), none or default")
    })
}

fn action(s: &str) -> Result<SeedAction, String> {
    SeedAction::parse(s.trim()).ok_or_else(|| format!("{s:?} is not pause or close"))
}

/// A rate as typed: bytes per second, or `none` (sent as 0, which lifts it).
pub(super) fn rate(s: &str) -> Result<u64, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" | "unlimited" | "off" => Ok(0),
        _ => super::rate(s).map_err(|e| format!("{e}, or none")),
    }
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let defaulted = args.ratio.is_some_and(|g| g.is_default())
        || args.seed_time.is_some_and(|g| g.is_default())
        || args.idle.is_some_and(|g| g.is_default());
    if args.torrent.is_none() && defaulted {
        eprintln!(
            "patron-client: `default` gives a torrent the broker's limit again (set ID --ratio default); the broker's own limit is a value or none"
        );
        return Ok(Exit::Usage);
    }
    let mut seeding = SetSeeding {
        torrent: args.torrent,
        action: args.action,
        ..SetSeeding::default()
    };
    match args.torrent {
        Some(_) => {
            seeding.own = OwnSeedingChange {
                ratio: args.ratio.map(Given::own),
                seed_time_secs: args.seed_time.map(Given::own),
                idle_secs: args.idle.map(Given::own),
            }
        }
        None => {
            seeding.ratio = args.ratio.map(Given::broker);
            seeding.seed_time_secs = args.seed_time.map(Given::broker);
            seeding.idle_secs = args.idle.map(Given::broker);
        }
    }
    let rates = SetLimits {
        torrent: args.torrent,
        download: args.max_download_rate,
        upload: args.max_upload_rate,
        alt: Default::default(),
    };
    let changes = seeding
        != SetSeeding {
            torrent: args.torrent,
            ..SetSeeding::default()
        }
        || rates.download.is_some()
        || rates.upload.is_some();
    // Only looking starts no broker; a change does.
    let mut patron = match (changes, args.torrent.is_some()) {
        (false, _) => ctx.reader()?,
        (true, true) => ctx.patron_for_torrent()?,
        (true, false) => ctx.patron()?,
    };
    let (limits, action) = patron.set_seeding(seeding)?;
    let rates = patron.set_limits(rates)?;
    let mut value = seeding_json(&limits, action);
    value["event"] = "settings".into();
    if let (Some(object), Some(more)) = (
        value.as_object_mut(),
        limits_json(&rates.0, None).as_object().cloned(),
    ) {
        object.extend(more.into_iter().filter(|(key, _)| key != "event"));
    }
    ctx.out.emit(
        || {
            let limit = |v: Option<String>| v.unwrap_or_else(|| "none".into());
            let rate = |r: Option<u64>| limit(r.map(|r| format!("{}/s", bytes(r))));
            format!(
                "Seeding stops: ratio {}, seeding time {}, idle {}; then {}\nRates:         down {}, up {}",
                limit(limits.ratio.map(|r| format!("{r:.2}"))),
                limit(limits.seed_time_secs.map(duration)),
                limit(limits.idle_secs.map(duration)),
                match action {
                    SeedAction::Pause => "paused",
                    SeedAction::Close => "closed (data kept)",
                },
                rate(rates.0.download),
                rate(rates.0.upload),
            )
        },
        value,
    );
    Ok(Exit::Success)
}
