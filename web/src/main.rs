//! `torrent-web`: the web patron (see the crate's documentation). `patron-client web` runs
//! it; its first line on stdout says where it serves.

use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A browser page, HTTP streaming with Range, and Transmission's RPC for a torrent-patron
/// broker, as one more patron of it.
#[derive(Debug, Parser)]
#[command(name = "torrent-web", version)]
struct Args {
    /// State directory of the broker to serve (default: $TORRENT_PATRON_STATE, else
    /// ~/.local/state/torrent-patron)
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve HTTP on this address (e.g. 127.0.0.1:9091; port 0 picks one), with a token;
    /// without it, a unix socket in the state dir
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// The unix socket's path (default: <state dir>/run/web.sock)
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Do not start a broker when none runs
    #[arg(long)]
    no_autostart: bool,
    /// Seconds a client may take no bytes of a file before its answer is cut (a client that
    /// never reads would hold one of the 64 file answers for ever)
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    stall_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Every HTTP client is a descriptor: take what the hard limit allows (the listener
    // bounds connections itself, at listen::MAX_CONNECTIONS).
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let options = torrent_web::Options {
        connect: patron_client::ConnectOptions {
            state_dir: args.state_dir,
            auto_start: !args.no_autostart,
            ..Default::default()
        },
        listen: match args.listen {
            Some(addr) => torrent_web::Listen::Tcp(addr),
            None => torrent_web::Listen::Unix(args.socket),
        },
        stall: std::time::Duration::from_secs(args.stall_secs),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("torrent-web: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let served = runtime.block_on(torrent_web::serve(options, |at| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{at}").and_then(|()| out.flush());
    }));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torrent-web: {e:#}");
            ExitCode::from(1)
        }
    }
}
