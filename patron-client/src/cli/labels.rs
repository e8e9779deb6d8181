//! `patron-client label ID L...` gives a torrent its labels; `patron-client labels [NAME]`
//! shows every label, or changes what one carries for its torrents (qBittorrent's
//! categories): a save folder for adds that name none, rate limits and seeding limits for
//! torrents with none of their own. Kept across restarts.

use super::output::{changed_human, shown};
use super::set::{rate, ratio, time, Given};
use super::{absolute, Context, Exit};
use patron_client::json::label_json;
use patron_client::proto::text::{bytes, duration};
use patron_client::proto::{ConfigureLabel, OwnSeedingChange, SeedLimit, SetLabels, TorrentRef};
use patron_client::Error;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = super::torrent_ref)]
    torrent: TorrentRef,
    /// Its labels from now on (replacing those it has; at most 8, up to 32 bytes each, no
    /// commas)
    #[arg(value_name = "LABEL", required_unless_present = "clear")]
    labels: Vec<String>,
    /// Take every label off it
    #[arg(long, conflicts_with = "labels")]
    clear: bool,
}

pub fn label(ctx: &Context, args: LabelArgs) -> Result<Exit, Error> {
    let status = ctx.patron_for_torrent()?.set_labels(SetLabels {
        torrent: args.torrent,
        labels: args.labels,
    })?;
    let value = super::output::status_json(&status);
    ctx.out.emit(
        || {
            let labels = match status.labels.is_empty() {
                true => "no labels".to_owned(),
                false => shown(&status.labels.join(", ")),
            };
            format!("{} — {labels}", changed_human("Labelled", &status))
        },
        value,
    );
    Ok(Exit::Success)
}

#[derive(Debug, clap::Args)]
pub struct LabelsArgs {
    /// The label whose settings change; without it, every label is shown
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// Where its torrents are saved when their add names no folder, or `none`
    #[arg(long, value_name = "DIR|none", requires = "name")]
    folder: Option<String>,
    /// Its torrents' download limit (512K, 2M), where they have none of their own, or `none`
    #[arg(long, value_name = "RATE|none", value_parser = rate, requires = "name")]
    max_download_rate: Option<u64>,
    /// Its torrents' upload limit, or `none`
    #[arg(long, value_name = "RATE|none", value_parser = rate, requires = "name")]
    max_upload_rate: Option<u64>,
    /// Its torrents stop seeding at this ratio, or `none`, or `default` (the broker's)
    #[arg(long, value_name = "RATIO|none|default", value_parser = ratio, requires = "name")]
    ratio: Option<Given<f64>>,
    /// Its torrents stop seeding after seeding this long (90m, 3d), or none, or default
    #[arg(long, value_name = "DURATION|none|default", value_parser = time, requires = "name")]
    seed_time: Option<Given<u64>>,
    /// Its torrents stop seeding after this long with nothing uploaded, or none, or default
    #[arg(long, value_name = "DURATION|none|default", value_parser = time, requires = "name")]
    idle: Option<Given<u64>>,
    /// Forget what the label carries (its torrents keep it)
    #[arg(long, requires = "name")]
    remove: bool,
}

pub fn labels(ctx: &Context, args: LabelsArgs) -> Result<Exit, Error> {
    let folder = match args.folder.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(dir) => Some(Some(absolute(&PathBuf::from(dir))?.display().to_string())),
    };
    // 0 from `rate` is `none`.
    let limit = |given: Option<u64>| given.map(|r| (r != 0).then_some(r));
    let own = |given: Option<Given<f64>>| given.map(Given::own);
    let own_secs = |given: Option<Given<u64>>| given.map(Given::own);
    let change = ConfigureLabel {
        name: args.name,
        folder,
        download: limit(args.max_download_rate),
        upload: limit(args.max_upload_rate),
        seeding: OwnSeedingChange {
            ratio: own(args.ratio),
            seed_time_secs: own_secs(args.seed_time),
            idle_secs: own_secs(args.idle),
        },
        remove: args.remove,
    };
    let name = change.name.clone();
    let mut patron = match name.is_some() {
        true => ctx.patron()?,
        false => ctx.reader()?,
    };
    let mut labels = patron.configure_label(change)?;
    // With a name, what that label carries now (unless it was removed).
    if let Some(name) = &name {
        labels.retain(|l| &l.name == name);
    }
    if ctx.out.json {
        for label in &labels {
            out!("{}", label_json(label));
        }
        return Ok(Exit::Success);
    }
    if labels.is_empty() {
        out!("No labels.");
    }
    for label in &labels {
        let mut parts = vec![format!("{} torrent(s)", label.torrents)];
        if let Some(folder) = &label.folder {
            parts.push(format!("folder {}", shown(folder)));
        }
        if let Some(down) = label.limits.download {
            parts.push(format!("down {}/s", bytes(down)));
        }
        if let Some(up) = label.limits.upload {
            parts.push(format!("up {}/s", bytes(up)));
        }
        let seeding = &label.seeding;
        match seeding.ratio {
            Some(SeedLimit::At(r)) => parts.push(format!("ratio {r}")),
            Some(SeedLimit::Unlimited) => parts.push("no ratio limit".into()),
            None => {}
        }
        for (what, limit) in [
            ("seed time", seeding.seed_time_secs),
            ("idle", seeding.idle_secs),
        ] {
            match limit {
                Some(SeedLimit::At(secs)) => parts.push(format!("{what} {}", duration(secs))),
                Some(SeedLimit::Unlimited) => parts.push(format!("no {what} limit")),
                None => {}
            }
        }
        out!("{}: {}", shown(&label.name), parts.join(", "));
    }
    Ok(Exit::Success)
}
