//! `patron-client broker start|stop|status`.

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
    let state_dir = patron_client::state_dir(&ctx.connect)?;
    let no_start = ConnectOptions {
        auto_start: false,
        ..ctx.connect.clone()
    };
    match args.action {
        Action::Start => {
            let patron = ctx.patron()?;
            report(ctx, "running", &patron, &state_dir);
            Ok(Exit::Success)
        }
        Action::Status => {
            let patron = Patron::connect_with(&no_start)?;
            report(ctx, "running", &patron, &state_dir);
            Ok(Exit::Success)
        }
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

fn report(ctx: &Context, state: &str, patron: &Patron, state_dir: &std::path::Path) {
    let pid = patron.broker_pid();
    ctx.out.emit(
        || {
            format!(
                "Broker {state}: pid {pid}, state dir {}",
                state_dir.display()
            )
        },
        json!({"event": "broker", "state": state, "pid": pid, "state_dir": state_dir}),
    );
}

fn wait_for_exit(pid: u32, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    while nix::sys::signal::kill(pid, None).is_ok() {
        if Instant::now() >= deadline {
            return Err(Error::BrokerUnreachable(format!(
                "the broker (pid {pid}) did not exit within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
