//! `patron-client add`: start a torrent (or join it), and with `--wait` stay until complete.

use super::output::{info_human, info_json, status_json};
use super::{absolute, Context, Exit};
use indicatif::{ProgressBar, ProgressStyle};
use patron_client::proto::{
    CreateNewTorrent, Event, ProtoError, SeedLimit, TorrentId, TorrentRef, TorrentSeeding,
    TorrentSource, TorrentState, TorrentStatus,
};
use patron_client::{Created, Error, Patron};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .torrent file or a magnet link
    #[arg(value_name = "FILE.torrent|MAGNET")]
    source: String,
    /// Folder to save into [default: the current folder]
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
    /// A peer to connect to: IP:PORT or HOST:PORT (repeatable)
    #[arg(long = "peer", value_name = "HOST:PORT", value_parser = super::peer)]
    peers: Vec<String>,
    /// Add it paused
    #[arg(long)]
    paused: bool,
    /// Close the torrent when its last patron goes (by default it keeps running in the
    /// broker); this command is then its patron until --wait ends, so it needs --wait
    #[arg(long, requires = "wait")]
    ephemeral: bool,
    /// Reuse files that already exist where the torrent saves (verified; mismatching pieces are rewritten)
    #[arg(long)]
    overwrite: bool,
    /// Download only these files (indices or paths as `files` shows them: 0,2,5 or sub/a.mkv)
    #[arg(long, value_name = "LIST", value_parser = super::file_list)]
    only: Option<super::FileRefs>,
    /// This torrent's download limit, bytes per second (suffixes K, M, G: powers of 1024)
    #[arg(long, value_name = "BYTES", value_parser = super::rate)]
    max_download_rate: Option<u64>,
    /// This torrent's upload limit, bytes per second (suffixes K, M, G: powers of 1024)
    #[arg(long, value_name = "BYTES", value_parser = super::rate)]
    max_upload_rate: Option<u64>,
    /// This torrent stops seeding at this ratio (uploaded over downloaded), or `none`
    /// (else the broker's limit, `set --ratio`)
    #[arg(long, value_name = "RATIO|none", value_parser = own_ratio)]
    ratio: Option<SeedLimit<f64>>,
    /// This torrent stops seeding after seeding this long (90m, 3d), or `none`
    #[arg(long, value_name = "DURATION|none", value_parser = own_time)]
    seed_time: Option<SeedLimit<u64>>,
    /// This torrent stops seeding after this long with nothing uploaded, or `none`
    #[arg(long, value_name = "DURATION|none", value_parser = own_time)]
    idle: Option<SeedLimit<u64>>,
    /// A label for it (repeatable): a label's folder is where it is saved when no --output is
    /// given, and its limits apply where the torrent has none of its own (`labels`)
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Move the data into DIR once it completes (inside the broker's download roots; else
    /// the broker's --move-completed-to, if any)
    #[arg(long, value_name = "DIR")]
    move_completed_to: Option<PathBuf>,
    /// Stay until the torrent is complete (progress bar on a terminal, status lines with --json)
    #[arg(long)]
    wait: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let source = read_source(&args.source)?;
    let defaulted = args.output.is_none();
    let output = match args.output {
        Some(dir) => absolute(&dir)?,
        None => std::env::current_dir().map_err(|source| Error::Io {
            context: "cannot read the current folder".into(),
            source,
        })?,
    };
    let mut request = CreateNewTorrent::new(source);
    request.output = Some(output.display().to_string());
    request.peers = args.peers;
    request.paused = args.paused;
    request.ephemeral = args.ephemeral;
    request.overwrite = args.overwrite;
    request.only_files = args.only.map(|only| only.0);
    request.max_download_rate = args.max_download_rate;
    request.max_upload_rate = args.max_upload_rate;
    request.labels = args.labels.clone();
    request.move_completed_to = match &args.move_completed_to {
        Some(dir) => Some(super::absolute(dir)?.display().to_string()),
        None => None,
    };
    request.seeding = TorrentSeeding {
        ratio: args.ratio,
        seed_time_secs: args.seed_time,
        idle_secs: args.idle,
    };

    let paused = request.paused;
    let mut patron = ctx.patron()?;
    // No --output, and a label that carries a folder: the label's folder, not the current
    // one (the broker picks it).
    if defaulted && !request.labels.is_empty() {
        let labels = patron.configure_label(Default::default())?;
        let has_folder =
            |name: &String| labels.iter().any(|l| &l.name == name && l.folder.is_some());
        if request.labels.iter().any(has_folder) {
            request.output = None;
        }
    }
    let created = patron.create(request).map_err(|error| match error {
        // The folder was not named: say it was the current one, and what to do.
        Error::StartFailed(mut refusal)
            if defaulted
                && refusal.kind == patron_client::proto::ErrorKind::PathNotAllowed
                && refusal.message.contains("outside the broker's download roots") =>
        {
            refusal.message = format!(
                "the current folder is where a torrent is saved unless --output names another, and {}; add with --output DIR inside one of the roots",
                refusal.message
            );
            Error::StartFailed(refusal)
        }
        other => other,
    })?;
    // With the broker's queue full, a new torrent waits for its turn: say where. A torrent
    // joined may be waiting too (its status says so).
    let waiting = match &created {
        Created::Queued(info) | Created::AlreadyDownloading(info, _) => {
            match patron.status(TorrentRef::Id(info.id)) {
                Ok(TorrentStatus {
                    state: TorrentState::Queued,
                    queue_position,
                    ..
                }) => Some(queue_position),
                _ if matches!(created, Created::Queued(_)) => Some(None),
                _ => None,
            }
        }
        Created::New(_) => None,
    };
    let place = |queue_position: Option<u32>| {
        queue_position
            .map(|p| format!(" (#{p} in the queue)"))
            .unwrap_or_default()
    };
    let queued_verb = match (&created, waiting) {
        (Created::Queued(_), Some(at)) => format!("Added, queued{}:", place(at)),
        (Created::AlreadyDownloading(..), Some(at)) => {
            format!("Already running, queued{}: joined", place(at))
        }
        _ => String::new(),
    };
    let (verb, event, exit) = match &created {
        Created::New(_) if paused => ("Added, paused:", "created", Exit::Success),
        Created::New(_) => ("Started", "created", Exit::Success),
        Created::Queued(_) => (queued_verb.as_str(), "created", Exit::Success),
        Created::AlreadyDownloading(..) if waiting.is_some() => (
            queued_verb.as_str(),
            "already-downloading",
            Exit::AlreadyDownloading,
        ),
        Created::AlreadyDownloading(..) => (
            "Already running: joined",
            "already-downloading",
            Exit::AlreadyDownloading,
        ),
    };
    let info = created.info();
    let not_applied = match &created {
        Created::AlreadyDownloading(_, not_applied) => not_applied.clone(),
        Created::New(_) | Created::Queued(_) => Vec::new(),
    };
    let mut value = info_json(event, info);
    value["not_applied"] = not_applied.clone().into();
    value["queued"] = waiting.is_some().into();
    ctx.out.emit(
        || {
            let mut text = info_human(verb, info);
            if !not_applied.is_empty() {
                // The save folder may not have been typed: it was the current one.
                let options: Vec<String> = not_applied
                    .iter()
                    .map(|o| match (o.as_str(), defaulted) {
                        ("output", true) => "the current folder as save folder".to_owned(),
                        _ => option_name(o),
                    })
                    .collect();
                text.push_str(&format!(
                    "\n  not applied: {} (one torrent runs once, as shown)",
                    options.join(", ")
                ));
            }
            text
        },
        value,
    );
    if !args.wait {
        return Ok(exit);
    }
    wait_until_complete(ctx, &mut patron, info.id, info.total_bytes)?;
    Ok(exit)
}

/// A torrent's own limit from what `parse` takes: `none` is no limit, whatever the
/// broker's.
fn own<T>(parsed: Option<Option<T>>) -> Option<SeedLimit<T>> {
    Some(parsed?.map_or(SeedLimit::Unlimited, SeedLimit::At))
}

fn own_ratio(s: &str) -> Result<SeedLimit<f64>, String> {
    own(patron_client::proto::text::parse_ratio_limit(s))
        .ok_or_else(|| format!("{s:?} is not a ratio: 0.001 to a million (2, 1.5), or none"))
}

fn own_time(s: &str) -> Result<SeedLimit<u64>, String> {
    own(patron_client::proto::text::parse_time_limit(s)).ok_or_else(|| {
        format!("{s:?} is not a time: 90m, 3d, 1h30m (a bare number is minutes), or none")
    })
}

fn read_source(source: &str) -> Result<TorrentSource, Error> {
    let is_hash = source.len() == 40 && source.bytes().all(|b| b.is_ascii_hexdigit());
    if source.starts_with("magnet:") || (is_hash && !Path::new(source).exists()) {
        return Ok(TorrentSource::Magnet(source.to_owned()));
    }
    let refused = |why: String| Err(Error::StartFailed(ProtoError::invalid_torrent(why)));
    if source.starts_with("http://") || source.starts_with("https://") {
        return refused(format!(
            "{source} is a web address: patron-client adds .torrent files and magnet links, and fetches nothing from the web itself; download it first (curl -o file.torrent URL), then add the file"
        ));
    }
    if Path::new(source).is_dir() {
        return refused(format!(
            "{source} is a folder, not a .torrent file; to share it, make a torrent of it: patron-client make {source} --seed"
        ));
    }
    let bytes = std::fs::read(source).map_err(|e| Error::Io {
        context: format!("cannot read {source}"),
        source: e,
    })?;
    Ok(TorrentSource::TorrentFile(bytes))
}

/// Follows status until the torrent completes. Errors if it fails, vanishes, or the broker stops.
pub fn wait_until_complete(
    ctx: &Context,
    patron: &mut Patron,
    id: TorrentId,
    total: u64,
) -> Result<(), Error> {
    let bar = (!ctx.out.json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(total);
        // The rate and the time left are the broker's (indicatif's own would be computed
        // from the bar's jumps: joining a complete torrent showed tens of GiB/s).
        // The figures come first on a narrow terminal: the bar gives way (32 down to 10).
        let columns = console::Term::stderr()
            .size_checked()
            .map_or(80, |(_, columns)| usize::from(columns));
        let width = columns.saturating_sub(WAIT_FIGURES_COLUMNS).clamp(10, 32);
        let template =
            format!("{{spinner}} [{{bar:{width}}}] {{bytes}}/{{total_bytes}}  {{wide_msg}}");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    // Since when it has been downloading with no peer (for the hint), and what was last
    // shown: a torrent nobody seeds gets no new status, so the line is redrawn every second.
    let mut alone_since: Option<std::time::Instant> = None;
    let mut last: Option<TorrentStatus> = None;
    // Neither a terminal nor --json (a log, a pipe): a plain line now and then, and at
    // every change of state, so a wait is never silent.
    let plain = bar.is_none() && !ctx.out.json;
    let mut printed: Option<(std::time::Instant, TorrentState)> = None;
    loop {
        let event = match patron.next_event_timeout(std::time::Duration::from_secs(1))? {
            Some(event) => event,
            None => {
                if let (Some(bar), Some(status)) = (&bar, &last) {
                    let alone_for = alone_since.map(|since| since.elapsed());
                    bar.set_message(wait_message(status, alone_for));
                }
                continue;
            }
        };
        match event {
            Event::TorrentStatusUpdate(status) if status.id == id => {
                if ctx.out.json {
                    out!("{}", status_json(&status));
                }
                let due = printed.as_ref().is_none_or(|(at, state)| {
                    at.elapsed() >= PLAIN_EVERY || *state != status.state
                });
                if plain && due && !status.complete {
                    out!("{}", plain_progress(&status));
                    printed = Some((std::time::Instant::now(), status.state.clone()));
                }
                let alone = status.peers == 0 && status.state == TorrentState::Downloading;
                alone_since = match (alone, alone_since) {
                    (true, None) => Some(std::time::Instant::now()),
                    (true, since) => since,
                    (false, _) => None,
                };
                if let Some(bar) = &bar {
                    bar.set_length(status.bytes_total);
                    bar.set_position(status.bytes_done);
                    let alone_for = alone_since.map(|since| since.elapsed());
                    bar.set_message(wait_message(&status, alone_for));
                }
                last = Some(status.clone());
                if status.complete {
                    if let Some(bar) = bar {
                        bar.finish_with_message("complete");
                    } else if !ctx.out.json {
                        out!("Complete: {}", super::output::shown(&status.name));
                    }
                    return Ok(());
                }
                if let TorrentState::Error(message) = status.state {
                    if let Some(bar) = bar {
                        bar.abandon_with_message("error");
                    }
                    return Err(Error::Request(patron_client::proto::ProtoError::new(
                        patron_client::proto::ErrorKind::Engine,
                        format!("torrent {id} failed: {message}"),
                    )));
                }
            }
            Event::TorrentGone { id: gone, reason } if gone == id => {
                return Err(Error::Request(patron_client::proto::ProtoError::new(
                    patron_client::proto::ErrorKind::UnknownTorrent,
                    format!("torrent {id} was closed: {reason}"),
                )));
            }
            Event::BrokerStopping { reason } => return Err(Error::BrokerStopped(reason)),
            Event::Disconnected { reason } => return Err(Error::BrokerStopped(reason)),
            _ => {}
        }
    }
}

/// What `add --wait`'s line takes besides its bar: spinner, brackets, `12.3 MiB/1.2 GiB`,
/// and `downloading  down 1.2 MiB/s  3 peers  eta 1m 5s`.
const WAIT_FIGURES_COLUMNS: usize = 1 + 1 + 2 + 20 + 2 + 44;

/// How often `add --wait` writes a progress line where there is no bar (a log, a pipe).
const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A progress line for a log: `12.5% of 1.2 GiB, downloading, down 3.1 MiB/s, 4 peers, eta 5m10s`.
fn plain_progress(status: &TorrentStatus) -> String {
    let peers = match status.peers {
        1 => "1 peer".to_owned(),
        n => format!("{n} peers"),
    };
    let eta = status
        .eta_secs
        .map(|s| format!(", eta {}", super::output::duration(s)))
        .unwrap_or_default();
    format!(
        "{:.1}% of {}, {}, down {}/s, {peers}{eta}",
        status.progress * 100.0,
        super::output::bytes(status.bytes_total),
        status.state.as_str(),
        super::output::bytes(status.download_rate)
    )
}

/// How long a download may have no peer before `add --wait` says what to do about it.
const ALONE_HINT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What `add --wait` shows beside its bar: the state, the broker's rate, the peers, and the
/// time left (`-` while nothing comes); a hint once it has had no peer for a while. ASCII
/// only: indicatif cuts a message too wide for the terminal by bytes, not columns.
fn wait_message(status: &TorrentStatus, alone_for: Option<std::time::Duration>) -> String {
    let peers = match status.peers {
        1 => "1 peer".to_owned(),
        n => format!("{n} peers"),
    };
    let eta = match status.eta_secs {
        Some(secs) if !status.complete => super::output::duration(secs),
        _ if status.complete => "0s".to_owned(),
        _ => "-".to_owned(),
    };
    let mut message = format!(
        "{}  down {}/s  {peers}  eta {eta}",
        status.state.as_str(),
        super::output::bytes(status.download_rate)
    );
    // First when it shows: a line too wide for the terminal is cut at its end.
    if alone_for.is_some_and(|alone| alone >= ALONE_HINT_AFTER) {
        message = format!(
            "no peer yet: name one with `patron-client peers {} --add HOST:PORT` (or add with --peer)  {message}",
            status.id
        );
    }
    message
}

/// The command-line option for a request field the broker did not apply.
fn option_name(field: &str) -> String {
    match field {
        "peers" => "--peer".to_owned(),
        "only_files" => "--only".to_owned(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patron_client::proto::{InfoHash, TorrentId, TorrentInfo};
    use std::time::Duration;

    fn downloading(peers: u32, rate: u64, eta: Option<u64>) -> TorrentStatus {
        let info = TorrentInfo {
            id: TorrentId(7),
            info_hash: InfoHash([0; 20]),
            name: "film".into(),
            save_folder: "/d".into(),
            total_bytes: 100,
        };
        TorrentStatus {
            peers,
            download_rate: rate,
            eta_secs: eta,
            ..TorrentStatus::idle(&info, TorrentState::Downloading)
        }
    }

    #[test]
    fn the_wait_line_shows_the_brokers_figures_and_a_hint_when_nobody_seeds() {
        let line = wait_message(&downloading(1, 2048, Some(90)), None);
        assert!(
            line.contains("1 peer ") && line.contains("2.0 KiB/s") && line.contains("eta 1m30s"),
            "{line}"
        );
        // Nobody to download from: no made-up time left, and after a while a hint.
        let alone = downloading(0, 0, None);
        let line = wait_message(&alone, Some(Duration::from_secs(2)));
        assert!(
            line.contains("0 peers") && line.contains("eta -") && !line.contains("--add"),
            "{line}"
        );
        let line = wait_message(&alone, Some(Duration::from_secs(30)));
        assert!(
            line.contains("peers 7 --add") && line.contains("--peer"),
            "{line}"
        );
    }
}
