//! `patron-client watch`: status updates as they come. On a terminal, one live line per
//! torrent (name, bar, %, rates, peers, ETA, state) redrawn in place; otherwise (or with
//! `--json`) one plain line per update, for logs and scripts. With torrents named it follows
//! those and ends when they are all closed; with none it follows the broker, as a dashboard
//! does: torrents added later appear, closed ones go, and it runs until interrupted.
//!
//! It reads the broker's shared board, asleep between the broker's batches of changes: a
//! thousand `watch`es cost the broker nothing more than one. Where the board cannot be
//! mapped it follows the torrents instead and gets their updates as events.

use super::output::{bytes, duration, status_json, status_line, truncate};
use super::{torrent_ref, Context, Exit, Source};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use patron_client::proto::{Event, TorrentId, TorrentRef, TorrentStatus, TorrentSummary};
use patron_client::{Board, Error, Patron};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrents to watch (id or info hash) [default: every torrent, those added later too,
    /// until interrupted]
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrents: Vec<TorrentRef>,
}

/// How long a quiet board is waited on before looking again (a broker killed without a
/// word is noticed then).
const QUIET: Duration = Duration::from_secs(1);

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    match ctx.status_source()? {
        Source::Board(board) => watch_board(ctx, args, board),
        Source::Requests(patron) => watch_events(ctx, args, patron),
    }
}

fn watch_board(ctx: &Context, args: Args, mut board: Board) -> Result<Exit, Error> {
    let follow_all = args.torrents.is_empty();
    let targets: Vec<TorrentSummary> = if follow_all {
        board.list()
    } else {
        let mut found = Vec::new();
        for &target in &args.torrents {
            // Just added, it may be a pulse away from the board.
            let mut summary = board.summary(target);
            if summary.is_none() && board.wait_for_change(QUIET)? {
                summary = board.summary(target);
            }
            match summary {
                Some(summary) => found.push(summary),
                // Not on the board: the broker says why, or (a race) follow it by events.
                None => return watch_events(ctx, args, ctx.reader()?),
            }
        }
        found
    };
    if targets.is_empty() {
        say_idle(ctx, follow_all);
        if !follow_all {
            return Ok(Exit::Success);
        }
    }
    let mut screen = (!ctx.out.json && std::io::stdout().is_terminal()).then(Screen::new);
    let mut shown: BTreeMap<TorrentId, Option<TorrentStatus>> = BTreeMap::new();
    // Connected only if a text on the board was cut (see `whole_status`).
    let mut asker: Option<Patron> = None;
    for summary in &targets {
        if let Some(screen) = &mut screen {
            screen.add(
                summary.info.id,
                &summary.info.name,
                summary.info.total_bytes,
            );
        }
        shown.insert(summary.info.id, None);
    }
    loop {
        // One pass over the board per wake, not one search per watched torrent; following
        // the broker, a torrent not seen before joins the watched ones.
        let mut now: BTreeMap<TorrentId, TorrentStatus> = BTreeMap::new();
        for summary in board.iter() {
            let id = summary.info.id;
            if follow_all && !shown.contains_key(&id) {
                if let Some(screen) = &mut screen {
                    screen.add(id, &summary.info.name, summary.info.total_bytes);
                }
                shown.insert(id, None);
            }
            if shown.contains_key(&id) {
                now.insert(id, summary.status);
            }
        }
        let ids: Vec<TorrentId> = shown.keys().copied().collect();
        for id in ids {
            let Some(status) = now.remove(&id) else {
                let reason = "no longer runs";
                match &mut screen {
                    Some(screen) => screen.gone(id, reason, follow_all),
                    None => ctx.out.emit(
                        || format!("{id:>4}  closed: {reason}"),
                        json!({"event": "gone", "id": id.0, "reason": reason}),
                    ),
                }
                shown.remove(&id);
                continue;
            };
            let last = shown.get(&id).and_then(Option::as_ref);
            if last.is_none_or(|last| status.differs_meaningfully(last)) {
                match &mut screen {
                    Some(screen) => screen.update(&status),
                    None => {
                        // A line for logs and scripts says a text the board cut (marked …)
                        // whole: the broker has it (a rare, one-off ask per change).
                        let printed = match super::status::maybe_cut(&status) {
                            true => whole_status(ctx, &mut asker, id).unwrap_or(status.clone()),
                            false => status.clone(),
                        };
                        ctx.out
                            .emit(|| status_line(&printed), status_json(&printed))
                    }
                }
                shown.insert(id, Some(status));
            }
        }
        if shown.is_empty() && !follow_all {
            return Ok(Exit::Success);
        }
        if let Err(stopped) = board.wait_for_change(QUIET) {
            wait_for_restart(&mut board, stopped)?;
        }
    }
}

/// How long `watch` waits for a stopped broker to be replaced (a restart) before it ends.
const RESTART_WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded) for a broker to take the stopped one's place, then goes on with its board.
fn wait_for_restart(board: &mut Board, stopped: Error) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + RESTART_WAIT;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if board.refresh().is_ok() {
            return Ok(());
        }
    }
    Err(stopped)
}

fn watch_events(ctx: &Context, args: Args, mut patron: Patron) -> Result<Exit, Error> {
    let follow_all = args.torrents.is_empty();
    let targets: Vec<TorrentRef> = if follow_all {
        patron
            .list()?
            .into_iter()
            .map(|t| TorrentRef::Id(t.info.id))
            .collect()
    } else {
        args.torrents
    };
    if targets.is_empty() {
        say_idle(ctx, follow_all);
        if !follow_all {
            return Ok(Exit::Success);
        }
    }
    let mut screen = (!ctx.out.json && std::io::stdout().is_terminal()).then(Screen::new);
    let mut watched: Vec<TorrentId> = Vec::new();
    for target in targets {
        let info = patron.follow(target)?;
        if let Some(screen) = &mut screen {
            screen.add(info.id, &info.name, info.total_bytes);
        }
        watched.push(info.id);
    }
    // Following the broker without its board: torrents added since are looked for now and
    // then (a list), and followed like the first.
    let mut looked = std::time::Instant::now();
    loop {
        if follow_all && looked.elapsed() >= QUIET {
            looked = std::time::Instant::now();
            for torrent in patron.list()? {
                let id = torrent.info.id;
                if watched.contains(&id) || patron.follow(TorrentRef::Id(id)).is_err() {
                    continue;
                }
                if let Some(screen) = &mut screen {
                    screen.add(id, &torrent.info.name, torrent.info.total_bytes);
                }
                watched.push(id);
            }
        }
        let event = match follow_all {
            true => match patron.next_event_timeout(QUIET)? {
                Some(event) => event,
                None => continue,
            },
            false => patron.next_event()?,
        };
        match event {
            Event::TorrentStatusUpdate(status) => match &mut screen {
                Some(screen) => screen.update(&status),
                None => ctx.out.emit(|| status_line(&status), status_json(&status)),
            },
            Event::TorrentGone { id, reason } => {
                match &mut screen {
                    Some(screen) => screen.gone(id, &reason, follow_all),
                    None => ctx.out.emit(
                        || format!("{id:>4}  closed: {reason}"),
                        json!({"event": "gone", "id": id.0, "reason": reason}),
                    ),
                }
                watched.retain(|w| *w != id);
                if watched.is_empty() && !follow_all {
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

/// A torrent's status as the broker has it (texts whole), through a patron connected the
/// first time it is needed; `None` if it cannot be had (the board's then stands).
fn whole_status(ctx: &Context, asker: &mut Option<Patron>, id: TorrentId) -> Option<TorrentStatus> {
    if asker.is_none() {
        *asker = ctx.reader().ok();
    }
    asker.as_mut()?.status(TorrentRef::Id(id)).ok()
}

/// Says there is nothing to watch: the end, or (following the broker) a wait for torrents.
fn say_idle(ctx: &Context, follow_all: bool) {
    let text = match follow_all {
        true => "No torrents yet: waiting for some (Ctrl-C to stop).",
        false => "No torrents to watch.",
    };
    ctx.out.emit(
        || text.into(),
        json!({"event": "idle", "waiting": follow_all}),
    );
}

/// The live view: one line per torrent, in id order, redrawn where it stands.
struct Screen {
    lines: MultiProgress,
    bars: BTreeMap<TorrentId, Line>,
}

/// One torrent's line: its bar, and the terminal width it was laid out for.
struct Line {
    bar: ProgressBar,
    name: String,
    width: Option<usize>,
}

/// The figures' usual width (`seeding     down 0 B/s  3 peers  up 12.0 KiB/s`): they come
/// first on a narrow terminal; the name and the bar give way.
const FIGURES_COLUMNS: usize = 44;

/// The name's and the bar's widths on a terminal `width` columns wide. A line is
/// `{id:4} {name} [{bar}] {percent:4} {figures}`: the figures get their room first, then a
/// name of 12 and a bar of 8, then the name up to 28, then the bar up to 24. Where even
/// that does not fit, the bar goes and the name takes what is left (at least 8), so that
/// the figures are not cut and no line wraps (a wrapped line breaks the redraw in place).
fn layout(width: usize) -> (usize, Option<usize>) {
    const WITH_BAR: usize = 4 + 1 + 2 + 2 + 4 + 1;
    const WITHOUT_BAR: usize = 4 + 1 + 1 + 4 + 1;
    let room = width.saturating_sub(FIGURES_COLUMNS);
    match room.checked_sub(WITH_BAR + 12 + 8) {
        Some(_) => {
            let free = room - WITH_BAR;
            let name = (free - 8).min(28);
            (name, Some((free - name).min(24)))
        }
        None => (room.saturating_sub(WITHOUT_BAR).clamp(8, 28), None),
    }
}

impl Line {
    /// Lays the line out again when the terminal's width changed.
    fn fit(&mut self, id: TorrentId) {
        let width = console::Term::stdout()
            .size_checked()
            .map_or(80, |(_, columns)| usize::from(columns));
        if self.width == Some(width) {
            return;
        }
        self.width = Some(width);
        let (name, bar) = layout(width);
        // indicatif has one free-form field per side of the bar: the name goes before it,
        // the figures after (cut by indicatif if the terminal is narrower still).
        let template = match bar {
            Some(bar) => format!("{{prefix}} [{{bar:{bar}}}] {{percent:>3}}% {{wide_msg}}"),
            None => "{prefix} {percent:>3}% {wide_msg}".to_owned(),
        };
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar
            .set_prefix(format!("{:>4} {:<name$}", id.0, truncate(&self.name, name)));
    }
}

impl Screen {
    fn new() -> Screen {
        Screen {
            lines: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: BTreeMap::new(),
        }
    }

    fn add(&mut self, id: TorrentId, name: &str, total: u64) {
        let bar = self.lines.add(ProgressBar::new(total.max(1)));
        bar.set_message("waiting for status");
        let mut line = Line {
            bar,
            name: super::output::shown(name),
            width: None,
        };
        line.fit(id);
        self.bars.insert(id, line);
    }

    fn update(&mut self, status: &TorrentStatus) {
        let Some(line) = self.bars.get_mut(&status.id) else {
            return;
        };
        line.fit(status.id);
        let bar = &line.bar;
        bar.set_length(status.bytes_total.max(1));
        bar.set_position(status.bytes_done);
        let eta = status
            .eta_secs
            .filter(|_| !status.complete)
            .map(|s| format!("  eta {}", duration(s)))
            .unwrap_or_default();
        let peers = match status.peers {
            1 => "1 peer".to_owned(),
            n => format!("{n} peers"),
        };
        // What a user looks for first comes first: a narrow terminal cuts the upload rate.
        let message = format!(
            "{:<11} down {}/s  {peers}{eta}  up {}/s",
            super::output::shown(&status.state.to_string()),
            bytes(status.download_rate),
            bytes(status.upload_rate),
        );
        // ASCII only: indicatif cuts a message too wide for the terminal by bytes, not
        // columns (a wider character would push the line past the edge, and a cut inside
        // one leaves the message whole). An error's own text may have any.
        let message: String = message
            .chars()
            .map(|c| if c.is_ascii() { c } else { '?' })
            .collect();
        bar.set_message(message);
    }

    /// A torrent that closed: following the broker, its line goes (a dashboard shows what
    /// runs); following named torrents, it stays, saying why, without a bar.
    fn gone(&mut self, id: TorrentId, reason: &str, follow_all: bool) {
        let Some(line) = self.bars.remove(&id) else {
            return;
        };
        if follow_all {
            line.bar.finish_and_clear();
            self.lines.remove(&line.bar);
            return;
        }
        if let Ok(style) = ProgressStyle::with_template("{prefix} closed: {wide_msg}") {
            line.bar.set_style(style);
        }
        line.bar
            .abandon_with_message(super::output::shown(reason).to_string());
    }
}
