//! The broker's settings. Each comes from, in order of precedence: a flag, the environment
//! (`TORRENT_PATRON_<OPTION>`), the state directory's `broker.toml`, a default. The file
//! matters most for brokers a patron auto-starts: they get no flags, only the state dir.

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::Parser;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default BitTorrent listen port (a normal client's, when not in loopback-only mode).
pub const DEFAULT_LISTEN_PORT: u16 = 4240;

/// torrent-broker: the one BitTorrent engine for a state directory, shared by many patrons.
///
/// Patrons (any process using the patron-client library or CLI) connect over ipc-channel;
/// the broker is usually auto-started by the first of them. Every option can also be set in
/// the environment as TORRENT_PATRON_<OPTION> or in <state dir>/broker.toml (keys as the long
/// options, e.g. `loopback-only = true`, `download-root = ["/srv/torrents"]`).
///
/// Exit codes: 0 stopped cleanly; 1 failed to start (reason on stderr); 2 usage error;
/// 3 another broker owns the state directory (its pid on stderr).
#[derive(Debug, Parser)]
#[command(name = "torrent-broker", version, about, long_about)]
pub struct BrokerArgs {
    /// State directory: lock, engine state, config, logs [default: ~/.local/state/torrent-patron]
    #[arg(long, env = "TORRENT_PATRON_STATE", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// BitTorrent listen address [default: 0.0.0.0:4240; 127.0.0.1:<free port> with --loopback-only]
    #[arg(long, env = "TORRENT_PATRON_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,

    /// A folder torrents may be saved under (repeatable; the first is the default save folder)
    /// [default: ~/Downloads, with all of $HOME allowed]
    #[arg(
        long = "download-root",
        env = "TORRENT_PATRON_DOWNLOAD_ROOT",
        value_name = "DIR",
        value_delimiter = ':'
    )]
    pub download_roots: Vec<PathBuf>,

    /// Disable the DHT
    #[arg(long, env = "TORRENT_PATRON_NO_DHT", value_parser = BoolishValueParser::new())]
    pub no_dht: bool,

    /// Disable local service discovery (LSD multicast)
    #[arg(long, env = "TORRENT_PATRON_NO_LSD", value_parser = BoolishValueParser::new())]
    pub no_lsd: bool,

    /// How often to check torrents and send changed status to patrons, in milliseconds [default: 1000]
    #[arg(long, env = "TORRENT_PATRON_STATUS_INTERVAL", value_name = "MS")]
    pub status_interval: Option<u64>,

    /// Keep ALL engine traffic on 127.0.0.1: no DHT, LSD, UPnP, nor any tracker or peer off loopback
    #[arg(long, env = "TORRENT_PATRON_LOOPBACK_ONLY", value_parser = BoolishValueParser::new())]
    pub loopback_only: bool,

    /// Slots on the first shared status board; it doubles when full [default: 256]
    #[arg(long, env = "TORRENT_PATRON_BOARD_SLOTS", value_name = "N")]
    pub board_slots: Option<usize>,

    /// How long to wait for a magnet link's metadata, in seconds [default: 120]
    #[arg(long, env = "TORRENT_PATRON_MAGNET_TIMEOUT", value_name = "SECS")]
    pub magnet_timeout: Option<u64>,

    /// Upload rate limit for the whole engine, bytes per second (512K, 2M: powers of 1024)
    /// [default: none]
    #[arg(long, env = "TORRENT_PATRON_MAX_UPLOAD_RATE", value_name = "BYTES", value_parser = rate)]
    pub max_upload_rate: Option<u32>,

    /// Download rate limit for the whole engine, bytes per second (512K, 2M: powers of 1024)
    /// [default: none]
    #[arg(long, env = "TORRENT_PATRON_MAX_DOWNLOAD_RATE", value_name = "BYTES", value_parser = rate)]
    pub max_download_rate: Option<u32>,

    /// Most unfinished torrents running at once; the others wait, queued, for their turn
    /// (a number, or `none`; changed at run time with `patron-client queue`) [default: none]
    #[arg(long, env = "TORRENT_PATRON_MAX_ACTIVE_DOWNLOADS", value_name = "N|none", value_parser = count_limit)]
    pub max_active_downloads: Option<CountLimit>,

    /// Most finished torrents seeding at once; the others wait, queued (a number, or
    /// `none`) [default: none]
    #[arg(long, env = "TORRENT_PATRON_MAX_ACTIVE_SEEDS", value_name = "N|none", value_parser = count_limit)]
    pub max_active_seeds: Option<CountLimit>,

    /// A running torrent that moved no byte for this long stops counting against the
    /// active limits, and the next in the queue starts (minutes, or 90s, 2h; `never`)
    /// [default: 30]
    #[arg(long, env = "TORRENT_PATRON_STALLED_AFTER", value_name = "MINUTES|never", value_parser = stall)]
    pub stalled_after: Option<Stall>,

    /// A finished torrent stops seeding once it uploaded this many times what it downloaded
    /// (its size, for one made here), unless it has a limit of its own (`patron-client set`)
    /// [default: none]
    #[arg(long, env = "TORRENT_PATRON_RATIO_LIMIT", value_name = "RATIO|none", value_parser = ratio_limit)]
    pub ratio_limit: Option<RatioLimit>,

    /// A finished torrent stops seeding after seeding this long in all (90m, 3d; a bare
    /// number is minutes) [default: none]
    #[arg(long, env = "TORRENT_PATRON_SEED_TIME_LIMIT", value_name = "DURATION|none", value_parser = time_limit)]
    pub seed_time_limit: Option<TimeLimit>,

    /// A finished torrent stops seeding after this long with nothing uploaded [default: none]
    #[arg(long, env = "TORRENT_PATRON_IDLE_SEED_LIMIT", value_name = "DURATION|none", value_parser = time_limit)]
    pub idle_seed_limit: Option<TimeLimit>,

    /// What is done to a torrent past a seeding limit: pause it, or close it (its data
    /// kept) [default: pause]
    #[arg(long, env = "TORRENT_PATRON_SEED_LIMIT_ACTION", value_name = "pause|close", value_parser = seed_action)]
    pub seed_limit_action: Option<proto::SeedAction>,

    /// Most patrons connected at once [default: 4096]
    #[arg(long, env = "TORRENT_PATRON_MAX_PATRONS", value_name = "N")]
    pub max_patrons: Option<usize>,

    /// Most torrents run at once [default: 10000]
    #[arg(long, env = "TORRENT_PATRON_MAX_TORRENTS", value_name = "N")]
    pub max_torrents: Option<usize>,

    /// Most data files held open at once, for all torrents together (the least recently
    /// used is closed first) [default: 512]
    #[arg(long, env = "TORRENT_PATRON_OPEN_FILES", value_name = "N")]
    pub open_files: Option<usize>,

    /// Most files one torrent may have [default: 200000]
    #[arg(long, env = "TORRENT_PATRON_MAX_FILES_PER_TORRENT", value_name = "N")]
    pub max_files_per_torrent: Option<usize>,

    /// Most files of all the torrents run or kept together [default: 4000000]
    #[arg(long, env = "TORRENT_PATRON_MAX_FILES", value_name = "N")]
    pub max_files: Option<usize>,

    /// Most large requests (a big .torrent, in shared memory) read from all patrons together
    /// and not yet answered; past it they are refused (limit-reached) [default: 256]
    #[arg(long, env = "TORRENT_PATRON_MAX_LARGE_REQUESTS", value_name = "N")]
    pub max_large_requests: Option<usize>,

    /// Bytes of those large requests, all patrons together [default: 268435456 (256 MiB)]
    #[arg(
        long,
        env = "TORRENT_PATRON_MAX_LARGE_REQUEST_BYTES",
        value_name = "BYTES",
        value_parser = size
    )]
    pub max_large_request_bytes: Option<usize>,

    /// Bytes of events all patrons together may leave unread in the broker's memory; past
    /// it, the patron that leaves the most is cut off [default: 536870912 (512 MiB)]
    #[arg(long, env = "TORRENT_PATRON_MAX_UNREAD_BYTES", value_name = "BYTES", value_parser = size)]
    pub max_unread_bytes: Option<usize>,

    /// A program run when a torrent is added (the torrent in its environment: TP_EVENT,
    /// TP_TORRENT_ID, TP_INFO_HASH, TP_NAME, TP_SAVE_FOLDER; never through a shell)
    #[arg(long, env = "TORRENT_PATRON_ON_ADDED", value_name = "PROGRAM")]
    pub on_added: Option<PathBuf>,

    /// A program run when a torrent completes (as --on-added)
    #[arg(long, env = "TORRENT_PATRON_ON_COMPLETED", value_name = "PROGRAM")]
    pub on_completed: Option<PathBuf>,

    /// A program run when a torrent fails (as --on-added, with TP_ERROR)
    #[arg(long, env = "TORRENT_PATRON_ON_ERROR", value_name = "PROGRAM")]
    pub on_error: Option<PathBuf>,

    /// Add each .torrent or .magnet file put in DIR, then rename it NAME.added (or
    /// NAME.failed, the reason in NAME.failed.txt)
    #[arg(long, env = "TORRENT_PATRON_WATCH_DIR", value_name = "DIR")]
    pub watch_dir: Option<PathBuf>,

    /// Move each torrent's data into DIR once it completes (inside the download roots; a
    /// torrent's own, given at its add, wins)
    #[arg(long, env = "TORRENT_PATRON_MOVE_COMPLETED_TO", value_name = "DIR")]
    pub move_completed_to: Option<PathBuf>,

    /// Seconds a hook may run before it is killed with its process group [default: 60]
    #[arg(long, env = "TORRENT_PATRON_HOOK_TIMEOUT", value_name = "SECS")]
    pub hook_timeout: Option<u64>,

    /// A complete seed with no peer, no reader and nothing asked of it for this long
    /// leaves the engine until something needs it (an incoming peer, a request, its next
    /// announce): it costs memory, not engine state (minutes, or 90s, 2h; `never`)
    /// [default: 1]
    #[arg(long, env = "TORRENT_PATRON_SLEEP_SEEDS_AFTER", value_name = "MINUTES|never", value_parser = sleep_after)]
    pub sleep_seeds_after: Option<Stall>,

    /// Append the log to FILE instead of writing it to stderr (relative to the state dir).
    /// The level comes from RUST_LOG [default: info]
    #[arg(long, env = "TORRENT_PATRON_LOG_FILE", value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Print a completion script for SHELL and exit
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,

    /// Print the torrent-broker(1) man page (roff) and exit
    #[arg(long)]
    pub manpage: bool,
}

/// `broker.toml`: the same options as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    #[serde(default)]
    download_root: Vec<PathBuf>,
    #[serde(default)]
    no_dht: bool,
    #[serde(default)]
    no_lsd: bool,
    status_interval: Option<u64>,
    #[serde(default)]
    loopback_only: bool,
    magnet_timeout: Option<u64>,
    board_slots: Option<usize>,
    #[serde(default, deserialize_with = "file_rate")]
    max_upload_rate: Option<u32>,
    #[serde(default, deserialize_with = "file_rate")]
    max_download_rate: Option<u32>,
    #[serde(default, deserialize_with = "file_count_limit")]
    max_active_downloads: Option<CountLimit>,
    #[serde(default, deserialize_with = "file_count_limit")]
    max_active_seeds: Option<CountLimit>,
    #[serde(default, deserialize_with = "file_stall")]
    stalled_after: Option<Stall>,
    #[serde(default, deserialize_with = "file_ratio_limit")]
    ratio_limit: Option<RatioLimit>,
    #[serde(default, deserialize_with = "file_time_limit")]
    seed_time_limit: Option<TimeLimit>,
    #[serde(default, deserialize_with = "file_time_limit")]
    idle_seed_limit: Option<TimeLimit>,
    #[serde(default, deserialize_with = "file_seed_action")]
    seed_limit_action: Option<proto::SeedAction>,
    max_patrons: Option<usize>,
    max_torrents: Option<usize>,
    open_files: Option<usize>,
    max_large_requests: Option<usize>,
    #[serde(default, deserialize_with = "file_size")]
    max_large_request_bytes: Option<usize>,
    #[serde(default, deserialize_with = "file_size")]
    max_unread_bytes: Option<usize>,
    max_files_per_torrent: Option<usize>,
    max_files: Option<usize>,
    log_file: Option<PathBuf>,
    on_added: Option<PathBuf>,
    on_completed: Option<PathBuf>,
    on_error: Option<PathBuf>,
    hook_timeout: Option<u64>,
    move_completed_to: Option<PathBuf>,
    watch_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "file_sleep_after")]
    sleep_seeds_after: Option<Stall>,
}

/// The settings the broker runs with, every default resolved.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Absolute, canonical state directory.
    pub state_dir: PathBuf,
    /// Where patrons connect.
    pub socket_path: PathBuf,
    /// BitTorrent listen address (port never 0: the announce port must be the real one).
    pub listen: SocketAddr,
    /// Canonical folders torrents may be saved under.
    pub download_roots: Vec<PathBuf>,
    /// Where a torrent goes when a request names no folder.
    pub default_download_dir: PathBuf,
    /// DHT on?
    pub dht: bool,
    /// Local service discovery on?
    pub lsd: bool,
    /// Status check period.
    pub status_interval: Duration,
    /// Nothing off 127.0.0.1.
    pub loopback_only: bool,
    /// Magnet metadata wait.
    pub magnet_timeout: Duration,
    /// Slots on the first status board.
    pub board_slots: usize,
    /// Engine upload limit, bytes/s.
    pub max_upload_rate: Option<u32>,
    /// Engine download limit, bytes/s.
    pub max_download_rate: Option<u32>,
    /// The queue at start (`patron-client queue` changes it while running).
    pub queue: proto::QueueSettings,
    /// The seeding limits and their action at start (`patron-client set` changes them).
    pub seeding: (proto::SeedingLimits, proto::SeedAction),
    /// Patron limit.
    pub max_patrons: usize,
    /// Torrent limit.
    pub max_torrents: usize,
    /// Data files held open at once (the storage's file pool).
    pub open_files: usize,
    /// Files one torrent may have.
    pub max_files_per_torrent: usize,
    /// Files of all torrents run or kept together.
    pub max_files: usize,
    /// Large requests read from all patrons and not yet answered.
    pub max_large_requests: usize,
    /// Their bytes.
    pub max_large_request_bytes: usize,
    /// Bytes of events all patrons together may leave unread in the broker's memory.
    pub max_unread_bytes: usize,
    /// Where the log goes instead of stderr (absolute).
    pub log_file: Option<PathBuf>,
    /// Hooks: programs run when a torrent is added, completes, fails.
    pub hooks: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    /// How long a hook may run.
    pub hook_timeout: Duration,
    /// How long a complete seed stays idle in the engine before it leaves it (`None`:
    /// never; see `service::sleep`).
    pub sleep_seeds_after: Option<Duration>,
    /// Where completed torrents' data moves (a torrent's own wins).
    pub move_completed_to: Option<PathBuf>,
    /// The watch folder (absolute, canonical), if any.
    pub watch_dir: Option<PathBuf>,
    /// Where the download roots came from, and how to add one: said when a folder outside
    /// them is refused (an auto-started broker's come from a patron's environment).
    pub roots_advice: String,
    /// Settings the environment gives otherwise than `broker.toml`, and which won: the
    /// broker logs them at its start (an auto-started broker takes the environment of
    /// whichever patron started it).
    pub notes: Vec<String>,
}

/// `dir` as a folder inside one of `roots` (absolute, no `..`; its nearest existing folder
/// resolved, the rest made later beneath it): a folder given at start is checked at start,
/// not at the first use.
fn inside_roots(dir: &Path, roots: &[PathBuf]) -> anyhow::Result<PathBuf> {
    use std::path::Component;
    if !dir.is_absolute() || dir.components().any(|c| matches!(c, Component::ParentDir)) {
        anyhow::bail!("is not an absolute path without `..`");
    }
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let rest = dir.strip_prefix(existing).unwrap_or(Path::new(""));
    let resolved = existing.canonicalize()?.join(rest);
    if !roots.iter().any(|root| resolved.starts_with(root)) {
        anyhow::bail!(
            "is outside the download roots ({})",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(resolved)
}

impl BrokerConfig {
    /// Resolves the parsed flags/environment against the state dir's config file.
    pub fn resolve(args: BrokerArgs) -> anyhow::Result<BrokerConfig> {
        let state_dir = proto::paths::resolve_state_dir(args.state_dir.as_deref());
        create_private_dir(&state_dir)?;
        let state_dir = state_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve state dir {}", state_dir.display()))?;
        let file = read_config_file(&state_dir)?;
        let notes = differences_from_the_file(&file, &state_dir);

        let loopback_only = args.loopback_only || file.loopback_only;
        let listen = match args.listen.or(file.listen) {
            Some(addr) if loopback_only && !addr.ip().is_loopback() => bail!(
                "--listen {addr} is off loopback, but --loopback-only keeps all traffic on 127.0.0.1"
            ),
            Some(addr) if addr.port() == 0 => SocketAddr::new(addr.ip(), free_tcp_port(addr.ip())?),
            Some(addr) => addr,
            // One port per state dir, kept across restarts: peers that knew it find it again.
            None if loopback_only => {
                let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
                SocketAddr::new(ip, kept_port(&state_dir, ip)?)
            }
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_LISTEN_PORT),
        };

        let config_path = state_dir.join(proto::paths::CONFIG_FILE);
        let from_env =
            std::env::var_os("TORRENT_PATRON_DOWNLOAD_ROOT").is_some_and(|v| !v.is_empty());
        let roots_advice = if !args.download_roots.is_empty() && from_env {
            format!(
                "the roots come from TORRENT_PATRON_DOWNLOAD_ROOT in the environment of whoever started the broker (it wins over {}): add the folder there, or unset it and list the roots as download-root in that file; then restart the broker",
                config_path.display()
            )
        } else if !args.download_roots.is_empty() {
            "the roots come from --download-root: start the broker with one more --download-root"
                .to_owned()
        } else if !file.download_root.is_empty() {
            format!(
                "to allow it, add it to download-root in {}, then restart the broker",
                config_path.display()
            )
        } else {
            format!(
                "the roots are the default (your home folder): list others as download-root in {}, then restart the broker",
                config_path.display()
            )
        };
        let mut roots = if !args.download_roots.is_empty() {
            args.download_roots
        } else {
            file.download_root
        };
        let default_download_dir;
        if roots.is_empty() {
            let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
            default_download_dir = home.join("Downloads");
            roots.push(home);
        } else {
            default_download_dir = roots[0].clone();
        }
        std::fs::create_dir_all(&default_download_dir).with_context(|| {
            format!(
                "cannot create download folder {}",
                default_download_dir.display()
            )
        })?;
        let default_download_dir = default_download_dir.canonicalize()?;
        let download_roots = roots
            .iter()
            .map(|root| {
                root.canonicalize()
                    .with_context(|| format!("download root {} does not exist", root.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let move_completed_to = match args.move_completed_to.or(file.move_completed_to) {
            Some(dir) => Some(inside_roots(&dir, &download_roots).with_context(|| {
                format!(
                    "--move-completed-to {}",
                    proto::text::shown(&dir.display().to_string())
                )
            })?),
            None => None,
        };
        let watch_dir = match args.watch_dir.or(file.watch_dir) {
            Some(dir) => Some(crate::watch_dir::prepare(&dir)?),
            None => None,
        };
        // Joining keeps an absolute path as it is.
        let log_file = args.log_file.or(file.log_file).map(|f| state_dir.join(f));
        // What `patron-client limits` changed in an earlier run.
        let recorded =
            crate::settings::RunSettings::load(&state_dir).map_err(|why| anyhow::anyhow!(why))?;
        Ok(BrokerConfig {
            socket_path: proto::paths::socket_path(&state_dir),
            state_dir,
            listen,
            download_roots,
            default_download_dir,
            dht: !(loopback_only || args.no_dht || file.no_dht),
            lsd: !(loopback_only || args.no_lsd || file.no_lsd),
            status_interval: Duration::from_millis(
                args.status_interval
                    .or(file.status_interval)
                    .unwrap_or(1000)
                    .max(10),
            ),
            loopback_only,
            magnet_timeout: Duration::from_secs(
                args.magnet_timeout.or(file.magnet_timeout).unwrap_or(120),
            ),
            board_slots: args
                .board_slots
                .or(file.board_slots)
                .unwrap_or(crate::board::INITIAL_SLOTS)
                .clamp(1, proto::board::MAX_CAPACITY),
            max_upload_rate: crate::settings::effective_rate(
                args.max_upload_rate,
                recorded.max_upload_rate,
                file.max_upload_rate,
            ),
            max_download_rate: crate::settings::effective_rate(
                args.max_download_rate,
                recorded.max_download_rate,
                file.max_download_rate,
            ),
            queue: proto::QueueSettings {
                max_active_downloads: crate::settings::effective(
                    args.max_active_downloads.map(|c| c.0),
                    recorded.max_active_downloads,
                    file.max_active_downloads.map(|c| c.0),
                    None,
                ),
                max_active_seeds: crate::settings::effective(
                    args.max_active_seeds.map(|c| c.0),
                    recorded.max_active_seeds,
                    file.max_active_seeds.map(|c| c.0),
                    None,
                ),
                stalled_after_secs: crate::settings::effective(
                    args.stalled_after.map(|s| s.0),
                    recorded.stalled_after_secs,
                    file.stalled_after.map(|s| s.0),
                    Some(DEFAULT_STALLED_AFTER_SECS),
                ),
            },
            seeding: (
                proto::SeedingLimits {
                    ratio: crate::settings::effective(
                        args.ratio_limit.map(|r| r.0),
                        recorded.ratio_limit,
                        file.ratio_limit.map(|r| r.0),
                        None,
                    ),
                    seed_time_secs: crate::settings::effective(
                        args.seed_time_limit.map(|t| t.0),
                        recorded.seed_time_limit_secs,
                        file.seed_time_limit.map(|t| t.0),
                        None,
                    ),
                    idle_secs: crate::settings::effective(
                        args.idle_seed_limit.map(|t| t.0),
                        recorded.idle_seed_limit_secs,
                        file.idle_seed_limit.map(|t| t.0),
                        None,
                    ),
                },
                crate::settings::effective(
                    args.seed_limit_action,
                    recorded.seed_limit_action,
                    file.seed_limit_action,
                    proto::SeedAction::Pause,
                ),
            ),
            max_patrons: args.max_patrons.or(file.max_patrons).unwrap_or(4096),
            max_torrents: args.max_torrents.or(file.max_torrents).unwrap_or(10_000),
            open_files: args
                .open_files
                .or(file.open_files)
                .unwrap_or(crate::storage::DEFAULT_OPEN_FILES)
                .max(1),
            max_files_per_torrent: args
                .max_files_per_torrent
                .or(file.max_files_per_torrent)
                .unwrap_or(200_000)
                .max(1),
            max_files: args
                .max_files
                .or(file.max_files)
                .unwrap_or(4_000_000)
                .max(1),
            max_large_requests: args
                .max_large_requests
                .or(file.max_large_requests)
                .unwrap_or(256)
                .max(1),
            max_large_request_bytes: args
                .max_large_request_bytes
                .or(file.max_large_request_bytes)
                .unwrap_or(256 << 20)
                .max(proto::MAX_REQUEST_BYTES),
            max_unread_bytes: args
                .max_unread_bytes
                .or(file.max_unread_bytes)
                .unwrap_or(crate::patron::MAX_UNREAD_QUEUED_BYTES)
                .max(1 << 20),
            log_file,
            hooks: (
                args.on_added.or(file.on_added),
                args.on_completed.or(file.on_completed),
                args.on_error.or(file.on_error),
            ),
            hook_timeout: Duration::from_secs(
                args.hook_timeout.or(file.hook_timeout).unwrap_or(60).max(1),
            ),
            sleep_seeds_after: match args.sleep_seeds_after {
                Some(Stall(after)) => after.map(Duration::from_secs),
                None => match file.sleep_seeds_after {
                    Some(Stall(after)) => after.map(Duration::from_secs),
                    None => Some(DEFAULT_SLEEP_SEEDS_AFTER),
                },
            },
            move_completed_to,
            watch_dir,
            roots_advice,
            notes,
        })
    }

    /// Folder of the engine's own files (DHT state, the loopback allowlist).
    pub fn engine_state_dir(&self) -> PathBuf {
        self.state_dir.join("engine")
    }

    /// Folder of the .torrent files the broker restores at start.
    pub fn torrents_dir(&self) -> PathBuf {
        self.state_dir.join("torrents")
    }
}

fn read_config_file(state_dir: &Path) -> anyhow::Result<ConfigFile> {
    let path = state_dir.join(proto::paths::CONFIG_FILE);
    match crate::store::read_state_file(&path)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))
        }
        None => Ok(ConfigFile::default()),
    }
}

/// The settings `broker.toml` gives that the environment overrides, each said with which
/// wins and how to make them agree.
fn differences_from_the_file(file: &ConfigFile, state_dir: &Path) -> Vec<String> {
    let path = state_dir.join(proto::paths::CONFIG_FILE);
    let mut notes = Vec::new();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(roots) = env("TORRENT_PATRON_DOWNLOAD_ROOT") {
        let from_env: Vec<PathBuf> = std::env::split_paths(&roots).collect();
        if !file.download_root.is_empty() && from_env != file.download_root {
            notes.push(format!(
                "download roots: TORRENT_PATRON_DOWNLOAD_ROOT ({roots}) wins over download-root in {} ({}); set one of them only, or make them agree",
                path.display(),
                file.download_root
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let (Some(listen), Some(in_file)) = (env("TORRENT_PATRON_LISTEN"), file.listen) {
        if listen.parse::<SocketAddr>().ok() != Some(in_file) {
            notes.push(format!(
                "listen address: TORRENT_PATRON_LISTEN ({listen}) wins over listen in {} ({in_file})",
                path.display()
            ));
        }
    }
    notes
}

/// Where a loopback broker keeps its port for the next start.
pub fn listen_port_file(state_dir: &Path) -> PathBuf {
    state_dir.join("listen-port")
}

/// The loopback port this state dir's broker listened on before, if it is free; else a
/// free one (written to [`listen_port_file`] once the broker holds the state dir: nothing
/// is written into a folder before it is known to be the broker's own).
fn kept_port(state_dir: &Path, ip: IpAddr) -> anyhow::Result<u16> {
    let path = listen_port_file(state_dir);
    let before = crate::store::read_state_file(&path)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.trim().parse::<u16>().ok())
        .filter(|port| *port != 0);
    if let Some(port) = before {
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    free_tcp_port(ip)
}

/// Creates `dir` (and parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// A TCP port free right now on `ip`. librqbit announces the port it was told, so a
/// "port 0" listen must become a real number before the engine starts.
fn free_tcp_port(ip: IpAddr) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot find a free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// A rate as users type it (`500000`, `512K`, `2M`: powers of 1024), the parser the CLI
/// uses too; the engine counts rates in a u32.
fn rate(s: &str) -> Result<u32, String> {
    let value = proto::text::parse_bytes(s).ok_or_else(|| {
        format!("{s:?} is not a rate in bytes per second (try 500000, 512K or 2M)")
    })?;
    match u32::try_from(value) {
        Ok(0) => {
            Err("a rate limit must be at least 1 byte per second (leave it out for none)".into())
        }
        Ok(rate) => Ok(rate),
        Err(_) => Err(format!(
            "{s} is more than the engine's largest limit (4 GiB/s)"
        )),
    }
}

/// transmission's: a torrent that moved nothing for half an hour is stalled.
pub const DEFAULT_STALLED_AFTER_SECS: u64 = 30 * 60;

/// How long a complete seed stays idle in the engine, by default.
pub const DEFAULT_SLEEP_SEEDS_AFTER: Duration = Duration::from_secs(60);

/// A limit on how many torrents run at once (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountLimit(pub Option<u32>);

/// When a running torrent is stalled (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall(pub Option<u64>);

/// A count limit as users type it (`5`, `none`).
fn count_limit(s: &str) -> Result<CountLimit, String> {
    proto::text::parse_count_limit(s)
        .map(CountLimit)
        .ok_or_else(|| format!("{s:?} is not a number of torrents (or `none`)"))
}

/// A stall time as users type it: minutes (`30`), a duration (`90s`, `2h`), or `never`.
fn stall(s: &str) -> Result<Stall, String> {
    proto::text::parse_time_limit(s).map(Stall).ok_or_else(|| {
        format!("{s:?} is not a stall time: minutes (30), a duration (90s, 2h), or never")
    })
}

/// How long an idle seed stays in the engine, as users type it: minutes (`1`), a duration
/// (`90s`, `2h`), or `never`.
fn sleep_after(s: &str) -> Result<Stall, String> {
    proto::text::parse_time_limit(s)
        .map(Stall)
        .ok_or_else(|| format!("{s:?} is not a time: minutes (1), a duration (90s, 2h), or never"))
}

/// A ratio limit (`None`: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioLimit(pub Option<f64>);

/// A time limit in seconds (`None`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimit(pub Option<u64>);

/// A ratio limit as users type it (`2`, `1.5`, `none`).
pub fn ratio_limit(s: &str) -> Result<RatioLimit, String> {
    proto::text::parse_ratio_limit(s)
        .map(RatioLimit)
        .ok_or_else(|| format!("{s:?} is not a ratio limit: 0.001 to a million (2, 1.5), or none"))
}

/// A time limit as users type it (`90m`, `3d`, a bare number of minutes, `none`).
pub fn time_limit(s: &str) -> Result<TimeLimit, String> {
    proto::text::parse_time_limit(s)
        .map(TimeLimit)
        .ok_or_else(|| {
            format!("{s:?} is not a time limit: 90m, 3d, 1h30m (a bare number is minutes), or none")
        })
}

/// What is done past a seeding limit, as users type it.
fn seed_action(s: &str) -> Result<proto::SeedAction, String> {
    proto::SeedAction::parse(s.trim()).ok_or_else(|| format!("{s:?} is not pause or close"))
}

fn file_ratio_limit<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<RatioLimit>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(f64),
        Text(String),
    }
    let text = match Given::deserialize(d)? {
        Given::Number(n) => n.to_string(),
        Given::Text(s) => s,
    };
    ratio_limit(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn file_time_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TimeLimit>, D::Error> {
    let value = NumberOrText::deserialize(d)?;
    time_limit(&value.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn file_seed_action<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<proto::SeedAction>, D::Error> {
    let text = String::deserialize(d)?;
    seed_action(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A count limit in broker.toml, read as the flag reads it (`5`, `"none"`).
fn file_count_limit<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<CountLimit>, D::Error> {
    let value = NumberOrText::deserialize(d)?;
    count_limit(&value.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A stall time in broker.toml, read as the flag reads it (`30`, `"90s"`, `"never"`).
fn file_stall<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Stall>, D::Error> {
    let value = NumberOrText::deserialize(d)?;
    stall(&value.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn file_sleep_after<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Stall>, D::Error> {
    let value = NumberOrText::deserialize(d)?;
    sleep_after(&value.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A size as users type it (`268435456`, `256M`, `1G`).
fn size(s: &str) -> Result<usize, String> {
    proto::text::parse_bytes(s)
        .and_then(|value| usize::try_from(value).ok())
        .ok_or_else(|| format!("{s:?} is not a size in bytes (try 268435456, 256M or 1G)"))
}

/// A number, or a text as the flag takes it (`"2M"`), in broker.toml.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    /// `-1`: none, as the flags take it.
    Negative(i64),
    Text(String),
}

impl NumberOrText {
    fn text(self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Negative(n) => n.to_string(),
            NumberOrText::Text(s) => s,
        }
    }
}

/// A rate in broker.toml, read as the flag reads it (`2M`; 0 refused).
fn file_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = NumberOrText::deserialize(d)?;
    rate(&value.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A size in broker.toml, read as the flag reads it (`256M`).
fn file_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let value = NumberOrText::deserialize(d)?;
    size(&value.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}
