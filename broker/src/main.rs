//! `torrent-broker`: parse the settings, take the state lock, serve.

use clap::{CommandFactory, Parser};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use torrent_broker::lock::{LockError, StateLock};
use torrent_broker::{BrokerArgs, BrokerConfig};

/// Exit code: the broker could not start (reason on stderr).
const EXIT_START_FAILED: u8 = 1;
/// Exit code: another broker owns the state directory.
const EXIT_LOCKED: u8 = 3;

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = BrokerArgs::parse();
    if let Some(shell) = args.completions {
        clap_complete::generate(
            shell,
            &mut BrokerArgs::command(),
            "torrent-broker",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    if args.manpage {
        let mut page = Vec::new();
        return match clap_mangen::Man::new(BrokerArgs::command()).render(&mut page) {
            Ok(()) if std::io::stdout().write_all(&page).is_ok() => ExitCode::SUCCESS,
            _ => ExitCode::from(EXIT_START_FAILED),
        };
    }
    let config = match BrokerConfig::resolve(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("torrent-broker: {e:#}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("torrent-broker: {e:#}");
        return ExitCode::from(EXIT_START_FAILED);
    }
    // Where the environment (an auto-starting patron's) overrides broker.toml.
    for note in &config.notes {
        tracing::warn!("{note}");
    }
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

/// Logs to stderr, or appended to `--log-file`; the level comes from `RUST_LOG`.
fn init_logging(config: &BrokerConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,librqbit=warn,librqbit_core=warn".into());
    let logger = tracing_subscriber::fmt().with_env_filter(filter);
    match &config.log_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            logger
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .init();
        }
        None => logger
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
    Ok(())
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
