//! `torrent-broker`: parse the settings, take the state lock, serve.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use torrent_broker::lock::{LockError, StateLock};
use torrent_broker::{BrokerArgs, BrokerConfig};

/// Exit code: the broker could not start (reason on stderr).
const EXIT_START_FAILED: u8 = 1;
/// Exit code: another broker owns the state directory.
const EXIT_LOCKED: u8 = 3;

fn main() -> ExitCode {
    let args = BrokerArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librqbit=warn,librqbit_core=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match BrokerConfig::resolve(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("torrent-broker: {e:#}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let _lock = match StateLock::acquire(&config.state_dir) {
        Ok(lock) => lock,
        Err(LockError::Held { owner_pid }) => {
            let owner = owner_pid.map_or("another process".to_owned(), |p| format!("pid {p}"));
            eprintln!(
                "torrent-broker: state directory {} is already owned by torrent-broker {owner}",
                config.state_dir.display()
            );
            return ExitCode::from(EXIT_LOCKED);
        }
        Err(LockError::Io(e)) => {
            eprintln!("torrent-broker: {e:#}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    raise_fd_limit();
    match torrent_broker::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torrent-broker: {e:#}");
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}

/// Each patron costs two descriptors and each peer one: lift the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open file limit: {e}");
            }
        }
    }
}
