//! `tp-bench`: the measurements `scripts/bench` combines into its table.
//!
//! Each subcommand prints one JSON object on stdout. Latencies are measured per operation and
//! reported as percentiles, because this machine is shared and noisy: compare medians, and
//! compare only figures taken in the same run.

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
    },
    /// (internal) the echoing side of ipc-round-trip
    IpcEcho { server: String },
    /// Request → reply round trips through a running broker (a `List` of its torrents)
    BrokerRoundTrip {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// Wall time of a whole command, run `count` times (e.g. `patron-client list`)
    CommandTime {
        #[arg(long, default_value_t = 50)]
        count: usize,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
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
        Bench::IpcRoundTrip { count } => ipc_round_trip(count),
        Bench::IpcEcho { server } => ipc_echo(server),
        Bench::BrokerRoundTrip { state_dir, count } => broker_round_trip(state_dir, count),
        Bench::CommandTime { count, command } => command_time(count, &command),
    }
}

fn ipc_round_trip(count: usize) -> anyhow::Result<()> {
    let (server, name) = IpcOneShotServer::<EchoChannels>::new()?;
    let mut echo = Command::new(std::env::current_exe()?)
        .args(["ipc-echo", &name])
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

fn ipc_echo(server: String) -> anyhow::Result<()> {
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

fn broker_round_trip(state_dir: PathBuf, count: usize) -> anyhow::Result<()> {
    let options = ConnectOptions {
        state_dir: Some(state_dir),
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut patron = Patron::connect_with(&options)?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        patron.request(RequestBody::List)?;
        samples.push(started.elapsed());
    }
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
