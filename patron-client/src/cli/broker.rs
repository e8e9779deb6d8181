//! `patron-client broker start|stop|status`.

use super::output::{broker_json, shown};
use super::{Context, Exit};
use patron_client::{ConnectOptions, Error, Patron};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Start the broker for the state directory (no-op if it runs)
    Start,
    /// Stop the broker gracefully and wait until it has exited
    Stop,
    /// Tell whether a broker runs (exit 5 if not)
    Status,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let no_start = ConnectOptions {
        auto_start: false,
        ..ctx.connect.clone()
    };
    match args.action {
        Action::Start => match Patron::connect_with(&no_start) {
            Ok(mut running) => report(ctx, &mut running, Some(false)),
            Err(Error::BrokerUnreachable(_)) => report(ctx, &mut ctx.patron()?, Some(true)),
            Err(e) => Err(e),
        },
        Action::Status => report(ctx, &mut ctx.reader()?, None),
        Action::Stop => {
            let mut patron = match Patron::connect_with(&no_start) {
                Ok(patron) => patron,
                Err(Error::BrokerUnreachable(_)) => {
                    ctx.out.emit(
                        || "No broker runs.".into(),
                        json!({"event": "broker", "state": "stopped"}),
                    );
                    return Ok(Exit::Success);
                }
                Err(e) => return Err(e),
            };
            let pid = patron.broker_pid();
            patron.stop_broker()?;
            drop(patron);
            wait_for_exit(pid, Duration::from_secs(30))?;
            ctx.out.emit(
                || format!("Broker (pid {pid}) stopped."),
                json!({"event": "broker", "state": "stopped", "pid": pid}),
            );
            Ok(Exit::Success)
        }
    }
}

/// Shows the broker; `started`: whether `broker start` started it (`Some(false)`: it ran
/// already), `None` for `broker status`.
fn report(ctx: &Context, patron: &mut Patron, started: Option<bool>) -> Result<Exit, Error> {
    let info = patron.broker_info()?;
    let headline = match started {
        Some(true) => "Broker started",
        Some(false) => "Broker already running",
        None => "Broker running",
    };
    // This patron is one of the connected ones.
    let others = info.patrons.saturating_sub(1);
    ctx.out.emit(
        || {
            use super::output::bytes;
            let kept = match info.kept {
                0 => String::new(),
                kept => format!(", {kept} kept, not restored (see list)"),
            };
            let programs = match others {
                1 => "1 other program".to_owned(),
                n => format!("{n} other programs"),
            };
            [
                format!("{headline}: pid {}, version {}", info.pid, info.version),
                format!("  state dir:      {}", info.state_dir),
                format!(
                    "  listening on:   {}{}",
                    info.listen,
                    if info.loopback_only { " (loopback only)" } else { "" }
                ),
                format!("  download roots: {}", info.download_roots.join(", ")),
                format!("  torrents:       {} running{kept}", info.torrents),
                format!("  connected:      {programs}; {} streams open", info.streams),
                format!(
                    "  files:          {} of {} open, {} of {} in all torrents",
                    info.open_files, info.open_files_limit, info.files.0, info.files.1
                ),
                // The broker's own bounds, for diagnosis (see `--json` for each figure).
                format!(
                    "  budgets in use: large requests {} of {} ({} of {}); unread events {} of {} in {} of {} regions; board waiters {} of {}",
                    info.large_requests.0,
                    info.large_requests.1,
                    bytes(info.large_request_bytes.0),
                    bytes(info.large_request_bytes.1),
                    bytes(info.unread_bytes.0),
                    bytes(info.unread_bytes.1),
                    info.unread_regions.0,
                    info.unread_regions.1,
                    info.board_waiters.0,
                    info.board_waiters.1
                ),
            ]
            .into_iter()
            .chain(info.watch_dir.as_ref().map(|d| format!("  watch folder:   {}", shown(d))))
            .chain(
                info.move_completed_to
                    .as_ref()
                    .map(|d| format!("  completed to:   {}", shown(d))),
            )
            .collect::<Vec<_>>()
            .join("\n")
        },
        broker_json(&info, started, others),
    );
    Ok(Exit::Success)
}

fn wait_for_exit(pid: u32, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    while nix::sys::signal::kill(pid, None).is_ok() && !is_zombie(pid) {
        if Instant::now() >= deadline {
            return Err(Error::BrokerUnreachable(format!(
                "the broker (pid {pid}) did not exit within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An exited process its parent has not reaped yet still answers `kill(pid, 0)`.
fn is_zombie(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
