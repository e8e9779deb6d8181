//! `patron-client web`: runs the web patron (`torrent-web`, beside this program or on the
//! PATH; `TORRENT_PATRON_WEB` names another) in this process's place. Its first line on
//! stdout is where it serves: `http://HOST:PORT/#token=TOKEN` with `--listen`, else
//! `unix:PATH`.

use super::{Context, Exit};
use patron_client::Error;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Environment variable naming the web patron's program.
pub const WEB_PROGRAM_ENV: &str = "TORRENT_PATRON_WEB";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve HTTP on this address (e.g. 127.0.0.1:9091; port 0 picks a free one), with a
    /// token in the URL it prints; without it, a unix socket in the state dir
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// The unix socket's path (default: <state dir>/run/web.sock)
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Seconds a client may take no bytes of a file before its answer is cut (default 60)
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    stall_secs: Option<u64>,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let program = program();
    let mut command = std::process::Command::new(&program);
    if let Some(state) = &ctx.connect.state_dir {
        command.arg("--state-dir").arg(state);
    }
    if let Some(listen) = args.listen {
        command.arg("--listen").arg(listen.to_string());
    }
    if let Some(socket) = args.socket {
        command.arg("--socket").arg(socket);
    }
    if let Some(secs) = args.stall_secs {
        command.arg("--stall-secs").arg(secs.to_string());
    }
    if let Some(program) = &ctx.connect.broker_program {
        command.env(patron_client::BROKER_PROGRAM_ENV, program);
    }
    // Only returns if it could not run.
    let source = command.exec();
    Err(Error::Io {
        context: format!(
            "cannot run the web patron {} (install torrent-web beside patron-client, or set {WEB_PROGRAM_ENV} to its path)",
            program.display()
        ),
        source,
    })
}

/// `$TORRENT_PATRON_WEB`, else `torrent-web` beside this program, else on the PATH.
fn program() -> PathBuf {
    if let Some(program) = std::env::var_os(WEB_PROGRAM_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("torrent-web")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("torrent-web"))
}
