//! `tp-bench`: the measurements `scripts/bench` combines into its table.
//!
//! Each subcommand prints one JSON object on stdout. Latencies are measured per operation and
//! reported as percentiles, because this machine is shared and noisy: compare medians, and
//! compare only figures taken in the same run.

mod board;
mod download;
mod fanout;
mod limit_change;
mod many_files;
mod many_seeds;
mod move_data;
mod placement;
mod queue;
mod restart;
mod scaling;
mod stream;
mod swarm;
mod wake;
mod web;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use patron_client::{ConnectOptions, Patron};
use proto::RequestBody;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "tp-bench", about = "Measurements behind scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Anchor: round trips of a small message over raw ipc-channel between two processes
    IpcRoundTrip {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[command(flatten)]
        placement: Placement,
    },
    /// (internal) the echoing side of ipc-round-trip
    IpcEcho {
        server: String,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// A download's rate after a global limit is set while it runs
    LimitChange {
        #[arg(long)]
        seeder_state: PathBuf,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        #[arg(long, default_value_t = 1024)]
        limit_kib: u64,
        #[arg(long, default_value_t = 32)]
        seeder_mib: u64,
    },
    /// A torrent's data moved across file systems (copied, synced, verified), beside
    /// cp + sync + sha1sum of the same
    MoveData {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The queue advancing after a completion, with 10 torrents held and with `torrents`
    QueueAdvance {
        #[arg(long)]
        seeder_state: PathBuf,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 1000)]
        torrents: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Request → reply round trips through a running broker (the status of its first torrent)
    BrokerRoundTrip {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[command(flatten)]
        placement: Placement,
    },
    /// Broker memory per idle connected patron: RSS before and after connecting `count`
    IdlePatrons {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// `count` patron processes started at once: how many were served, by how many brokers
    ConcurrentStart {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The patron-client program
        #[arg(long)]
        client: PathBuf,
    },
    /// N tiny torrents all seeding, idle: time to all seeding, idle CPU, RSS, descriptors
    /// and restart, for the broker and for transmission-daemon holding the same torrents
    ManySeeds {
        /// Scratch folder (inside the broker's download roots)
        #[arg(long)]
        work: PathBuf,
        /// The torrent-broker program
        #[arg(long)]
        broker: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        broker_levels: Vec<usize>,
        /// Empty: no anchor
        #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
        transmission_levels: Vec<usize>,
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
    },
    /// A broker seeding `torrents` × `size_mib` restarted until all seed, beside
    /// transmission-daemon restarted on the same data
    Restart {
        /// Scratch folder (inside the broker's download roots)
        #[arg(long)]
        work: PathBuf,
        /// The torrent-broker program
        #[arg(long)]
        broker: PathBuf,
        #[arg(long, default_value_t = 4)]
        torrents: usize,
        #[arg(long, default_value_t = 512)]
        size_mib: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Streaming while downloading: the first MiB at an offset from a rate-limited seeder
    /// (beside the whole download at that rate), and in-order read throughput from an
    /// unthrottled one (beside the plain download)
    Stream(stream::StreamBench),
    /// The web patron: torrent-get of many torrents beside transmission-daemon's, the first
    /// MiB of a Range near the end of a throttled torrent, a state change reaching the page
    Web(web::WebBench),
    /// Download speed through the broker beside a raw librqbit session, aria2c and
    /// libtorrent, all fetching from one raw librqbit seeder on 127.0.0.1
    Download {
        #[arg(long)]
        state_dir: PathBuf,
        /// Scratch folder (inside the broker's download roots)
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Broker CPU while `count` patrons hold one torrent whose status changes every tick
    Fanout {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Seconds per measuring window
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Round trip and broker memory as patrons and torrents grow
    Scaling {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        patrons: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "10,1000")]
        torrents: Vec<usize>,
        #[arg(long, default_value_t = 2000)]
        samples: usize,
    },
    /// p50 of one torrent's status read from the broker's shared board
    BoardRead {
        #[arg(long)]
        state_dir: PathBuf,
        /// Timed batches (of 100 reads each)
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// `patron-client list` wall time as a fresh broker's torrents grow to each level
    ListScale {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "10,10000")]
        levels: Vec<usize>,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The patron-client program
        #[arg(long)]
        client: PathBuf,
        /// A Python with torrent_patron: `list()` of the largest level is timed too, while
        /// this bench still holds the (ephemeral) torrents
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Broker CPU with board watchers, none, and per-holder followers of changing torrents
    Watch {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 1000)]
        torrents: usize,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Seconds per measuring window
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// How soon a completion is seen (event and board) after the engine verified it
    Completion {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        /// The broker's log file
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Create request → reply of a ~10 MiB .torrent beside a ~10 KiB one
    AddSize {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 11)]
        rounds: usize,
    },
    /// A board change reaching sleeping readers while one abuses the board's futex word
    Wake {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        readers: usize,
        /// The futex abuser (tests/python/futex_requeuer.py)
        #[arg(long)]
        requeuer: PathBuf,
    },
    /// A torrent of thousands of one-byte files added: the broker's descriptors after
    ManyFiles {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        files: usize,
    },
    /// Wall time of a whole command, run `count` times (e.g. `patron-client list`)
    CommandTime {
        #[arg(long, default_value_t = 50)]
        count: usize,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

/// Where a round trip's two processes run (see `placement`).
#[derive(clap::Args, Clone, Copy)]
struct Placement {
    /// Pin the measuring process to this CPU
    #[arg(long)]
    client_cpu: Option<usize>,
    /// Pin the answering process (the echo, or every broker thread until the end) to this CPU
    #[arg(long)]
    server_cpu: Option<usize>,
}

/// A small request-sized message, so the anchor moves what a patron's request moves.
#[derive(Serialize, Deserialize)]
struct Ping {
    id: u64,
    payload: [u8; 16],
}

/// The echo process's channels, handed to the measuring process through its one-shot server.
#[derive(Serialize, Deserialize)]
struct EchoChannels {
    /// Where the measuring process sends pings.
    to_echo: IpcSender<Ping>,
    /// Where it receives them back.
    from_echo: IpcReceiver<Ping>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::IpcRoundTrip { count, placement } => ipc_round_trip(count, placement),
        Bench::IpcEcho { server, cpu } => ipc_echo(server, cpu),
        Bench::BrokerRoundTrip {
            state_dir,
            count,
            placement,
        } => broker_round_trip(state_dir, count, placement),
        Bench::CommandTime { count, command } => command_time(count, &command),
        Bench::BoardRead { state_dir, count } => board::board_read(state_dir, count),
        Bench::ListScale {
            state_dir,
            work,
            levels,
            runs,
            client,
            python,
        } => board::list_scale(state_dir, work, levels, runs, client, python),
        Bench::Watch {
            state_dir,
            work,
            torrents,
            watchers,
            secs,
        } => board::watch(board::WatchBench {
            state_dir,
            work,
            torrents,
            watchers,
            window: Duration::from_secs(secs),
        }),
        Bench::AddSize {
            state_dir,
            work,
            rounds,
        } => board::add_size(state_dir, work, rounds),
        Bench::Wake {
            state_dir,
            readers,
            requeuer,
        } => wake::wake(state_dir, readers, requeuer),
        Bench::ManyFiles {
            state_dir,
            work,
            files,
        } => many_files::many_files(state_dir, work, files),
        Bench::Completion {
            state_dir,
            work,
            log,
            rounds,
        } => board::completion(state_dir, work, log, rounds),
        Bench::IdlePatrons { state_dir, count } => idle_patrons(state_dir, count),
        Bench::LimitChange {
            seeder_state,
            state_dir,
            work,
            size_mib,
            limit_kib,
            seeder_mib,
        } => limit_change::run(limit_change::LimitChangeBench {
            seeder_state,
            state_dir,
            work,
            size_mib,
            limit_kib,
            seeder_mib,
        }),
        Bench::MoveData {
            state_dir,
            from,
            to,
            size_mib,
            rounds,
        } => move_data::run(move_data::MoveBench {
            state_dir,
            from,
            to,
            size_mib,
            rounds,
        }),
        Bench::QueueAdvance {
            seeder_state,
            state_dir,
            work,
            torrents,
            rounds,
        } => queue::run(queue::QueueBench {
            seeder_state,
            state_dir,
            work,
            torrents,
            rounds,
        }),
        Bench::ConcurrentStart {
            state_dir,
            count,
            client,
        } => concurrent_start(state_dir, count, client),
        Bench::Stream(bench) => stream::run(bench),
        Bench::Web(bench) => web::run(bench),
        Bench::Download {
            state_dir,
            work,
            size_mib,
            rounds,
        } => download::run(download::DownloadBench {
            state_dir,
            work,
            size_mib,
            rounds,
        }),
        Bench::ManySeeds {
            work,
            broker,
            broker_levels,
            transmission_levels,
            idle_secs,
        } => many_seeds::run(many_seeds::ManySeedsBench {
            work,
            broker,
            broker_levels,
            transmission_levels,
            idle_secs,
        }),
        Bench::Restart {
            work,
            broker,
            torrents,
            size_mib,
            rounds,
        } => restart::run(restart::RestartBench {
            work,
            broker,
            torrents,
            size_mib,
            rounds,
        }),
        Bench::Fanout {
            state_dir,
            work,
            count,
            secs,
        } => fanout::run(fanout::FanoutBench {
            state_dir,
            work,
            count,
            window: Duration::from_secs(secs),
        }),
        Bench::Scaling {
            state_dir,
            work,
            patrons,
            torrents,
            samples,
        } => scaling::run(scaling::ScalingBench {
            state_dir,
            work,
            patron_levels: patrons,
            torrent_levels: torrents,
            samples,
        }),
    }
}

fn ipc_round_trip(count: usize, placement: Placement) -> anyhow::Result<()> {
    if let Some(cpu) = placement.client_cpu {
        placement::pin(0, cpu)?;
    }
    let (server, name) = IpcOneShotServer::<EchoChannels>::new()?;
    let mut echo = Command::new(std::env::current_exe()?);
    echo.args(["ipc-echo", &name]);
    if let Some(cpu) = placement.server_cpu {
        echo.arg("--cpu").arg(cpu.to_string());
    }
    let mut echo = echo
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the echo process")?;
    let (_, EchoChannels { to_echo, from_echo }) = server.accept()?;
    let mut samples = Vec::with_capacity(count);
    for id in 0..count as u64 {
        let started = Instant::now();
        to_echo.send(Ping {
            id,
            payload: [7; 16],
        })?;
        let pong = from_echo.recv().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        samples.push(started.elapsed());
        if pong.id != id {
            bail!("echo answered {} to {id}", pong.id);
        }
    }
    drop(to_echo);
    let _ = echo.wait();
    print_latency("ipc-round-trip", samples);
    Ok(())
}

fn ipc_echo(server: String, cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        placement::pin(0, cpu)?;
    }
    let (to_echo, pings) = ipc::channel::<Ping>()?;
    let (pongs, from_echo) = ipc::channel::<Ping>()?;
    IpcSender::<EchoChannels>::connect(server)?.send(EchoChannels { to_echo, from_echo })?;
    while let Ok(ping) = pings.recv() {
        if pongs.send(ping).is_err() {
            break;
        }
    }
    Ok(())
}

fn broker_round_trip(state_dir: PathBuf, count: usize, placement: Placement) -> anyhow::Result<()> {
    if let Some(cpu) = placement.client_cpu {
        placement::pin(0, cpu)?;
    }
    let options = ConnectOptions {
        state_dir: Some(state_dir),
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut patron = Patron::connect_with(&options)?;
    // A typical small request: one torrent's status (a reply of ~150 bytes, like a poll).
    let request = match patron.list()?.first() {
        Some(torrent) => RequestBody::Status(proto::TorrentRef::Id(torrent.info.id)),
        None => RequestBody::BrokerInfo,
    };
    let broker = patron.broker_pid() as i32;
    let pinned = placement
        .server_cpu
        .map(|cpu| placement::pin(broker, cpu))
        .transpose()?;
    let mut samples = Vec::with_capacity(count);
    let measured = (0..count).try_for_each(|_| {
        let started = Instant::now();
        patron.request(request.clone())?;
        samples.push(started.elapsed());
        Ok::<_, patron_client::Error>(())
    });
    if let Some(mask) = pinned {
        placement::restore(broker, &mask)?;
    }
    measured?;
    print_latency("broker-round-trip", samples);
    Ok(())
}

fn command_time(count: usize, command: &[String]) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let status = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", command[0]))?;
        samples.push(started.elapsed());
        if !status.success() {
            bail!("{} failed: {status}", command.join(" "));
        }
    }
    print_latency("command-time", samples);
    Ok(())
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// CPU seconds (user + system) a process (`pid`) or one of its threads (`pid/task/tid`) has
/// used so far.
pub(crate) fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no CLK_TCK")? as u64;
    Ok(ticks as f64 / per_second as f64)
}

/// Each patron holds two descriptors here, as in the broker: lift the soft limit.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn idle_patrons(state_dir: PathBuf, count: usize) -> anyhow::Result<()> {
    raise_fd_limit();
    let options = ConnectOptions {
        state_dir: Some(state_dir),
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut first = Patron::connect_with(&options)?;
    let pid = first.broker_pid();
    // Warm the broker's allocator with one round of connects before the baseline.
    drop(
        (0..count.min(50))
            .map(|_| Patron::connect_with(&options))
            .collect::<Vec<_>>(),
    );
    first.request(RequestBody::List)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid)?;
    let mut patrons = Vec::with_capacity(count);
    for _ in 0..count {
        patrons.push(Patron::connect_with(&options)?);
    }
    // Every one of them is served (and so fully set up in the broker).
    for patron in &mut patrons {
        patron.request(RequestBody::List)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid)?;
    println!(
        "{}",
        json!({
            "bench": "idle-patrons",
            "count": count,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_patron": after.saturating_sub(before) as f64 / count as f64,
        })
    );
    Ok(())
}

fn concurrent_start(state_dir: PathBuf, count: usize, client: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let children: Vec<_> = (0..count)
        .map(|_| {
            Command::new(&client)
                .arg("--state-dir")
                .arg(&state_dir)
                .args(["--json", "broker", "start"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("cannot start patron-client")?;
    let mut served = 0;
    let mut pids = std::collections::BTreeSet::new();
    for child in children {
        let out = child.wait_with_output()?;
        if out.status.success() {
            served += 1;
            if let Ok(line) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if let Some(pid) = line["pid"].as_u64() {
                    pids.insert(pid);
                }
            }
        }
    }
    println!(
        "{}",
        json!({
            "bench": "concurrent-start",
            "count": count,
            "served": served,
            "brokers": pids.len(),
            "wall_ms": started.elapsed().as_secs_f64() * 1e3,
        })
    );
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn print_latency(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{}",
        json!({
            "bench": what,
            "count": samples.len(),
            "p50_us": percentile(&samples, 0.5),
            "p90_us": percentile(&samples, 0.9),
            "p99_us": percentile(&samples, 0.99),
        })
    );
}
