//! `tp-bench web`: the web patron's three rows (DESIGN §11, issue 20), each beside its
//! anchor in the same run:
//! - **`torrent-get` of `torrents` torrents** through its Transmission RPC, beside
//!   transmission-daemon's own RPC holding the same torrents (the fields
//!   transmission-remote's list asks for);
//! - **first MiB of a `Range` request 2 MiB before the end** of a torrent downloading from a
//!   throttled seeder, beside the whole torrent's download from it (the target of
//!   `cat --offset`: 1 s plus that MiB's transfer time);
//! - **a page update after a state change**: from the board's change (a pause or a resume)
//!   to the server-sent event on the wire, p99.
//!
//! The HTTP here is a few lines over a `TcpStream` (keep-alive, `Content-Length` or chunked
//! answers), so the client costs the same against both servers.

use crate::stream::{add, fresh, read_at, seed, wait_flowing, whole_download};
use anyhow::{bail, Context};
use patron_client::{Board, ConnectOptions, Patron};
use proto::{TorrentId, TorrentRef};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `tp-bench web` needs.
#[derive(clap::Args)]
pub struct WebBench {
    /// A running broker's state directory, with no torrent yet (its download roots must
    /// include `work`)
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Scratch folder
    #[arg(long)]
    pub work: PathBuf,
    /// The torrent-web program
    #[arg(long)]
    pub web: PathBuf,
    /// transmission-daemon's RPC (`127.0.0.1:PORT`), with no torrent yet, for the anchor
    #[arg(long)]
    pub transmission: Option<String>,
    /// Torrents listed by `torrent-get`
    #[arg(long, default_value_t = 1000)]
    pub torrents: usize,
    /// Timed `torrent-get`s on each side
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Size of the throttled torrent of the `Range` row
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Its seeder's upload limit
    #[arg(long, default_value_t = 4096)]
    pub rate_kib: u32,
    /// Rounds of the `Range` row
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Pauses and resumes timed for the events row
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
}

const MIB: u64 = 1 << 20;

/// The fields `transmission-remote -l` asks for.
const LIST_FIELDS: [&str; 15] = [
    "id",
    "name",
    "status",
    "percentDone",
    "rateDownload",
    "rateUpload",
    "eta",
    "sizeWhenDone",
    "leftUntilDone",
    "uploadRatio",
    "error",
    "errorString",
    "peersConnected",
    "isFinished",
    "haveValid",
];

pub fn run(bench: WebBench) -> anyhow::Result<()> {
    let connect = ConnectOptions {
        state_dir: Some(bench.state_dir.clone()),
        auto_start: false,
        ..Default::default()
    };
    let mut web = WebPatron::start(&bench)?;
    let ours = Rpc::new(&web.addr, Some(&web.token));
    let theirs = bench
        .transmission
        .as_deref()
        .map(|addr| Rpc::new(addr, None));

    // The same tiny torrents in both, paused, their data absent (nothing to verify).
    let torrents = tiny_torrents(&bench.work, bench.torrents)?;
    let empty = fresh(&bench.work, "web-rpc-empty")?;
    for rpc in std::iter::once(&ours).chain(theirs.iter()) {
        let mut http = rpc.connect()?;
        for torrent in &torrents {
            use base64::Engine;
            let metainfo = base64::engine::general_purpose::STANDARD.encode(torrent);
            let reply = rpc.call(&mut http, "torrent-add", json!({
                "metainfo": metainfo, "paused": true, "download-dir": empty.display().to_string(),
            }))?;
            if reply["result"] != "success" {
                bail!("torrent-add at {}: {reply}", rpc.addr);
            }
        }
    }
    let list = json!({"fields": LIST_FIELDS});
    let time_gets = |rpc: &Rpc| -> anyhow::Result<Vec<f64>> {
        let mut http = rpc.connect()?;
        let mut samples = Vec::with_capacity(bench.runs);
        for _ in 0..bench.runs {
            let started = Instant::now();
            let reply = rpc.call(&mut http, "torrent-get", list.clone())?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
            let n = reply["arguments"]["torrents"]
                .as_array()
                .map_or(0, Vec::len);
            if n != bench.torrents {
                bail!(
                    "torrent-get at {} listed {n} torrents, not {}",
                    rpc.addr,
                    bench.torrents
                );
            }
        }
        Ok(samples)
    };
    // Alternating halves, so a burst of load on the machine skews both.
    let (mut ours_us, mut theirs_us) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        ours_us.extend(time_gets(&ours)?);
        if let Some(theirs) = &theirs {
            theirs_us.extend(time_gets(theirs)?);
        }
    }
    // Out of the way of the next rows.
    let mut patron = Patron::connect_with(&connect)?;
    for torrent in patron.list()? {
        patron.close(TorrentRef::Id(torrent.info.id), false, true)?;
    }

    // First MiB of a Range 2 MiB before the end, from a throttled seeder.
    let runtime = tokio::runtime::Runtime::new()?;
    let (limited, seeder) = seed(
        &runtime,
        &bench.work,
        "web-limited",
        bench.size_mib,
        Some(bench.rate_kib),
    )?;
    let size = bench.size_mib * MIB;
    let offset = size - 2 * MIB;
    let whole = whole_download(&mut patron, &limited, &bench.work, "web-whole", seeder.addr)?;
    let mut first_mib = Vec::new();
    for round in 0..bench.rounds {
        let folder = fresh(&bench.work, &format!("web-range-{round}"))?;
        let id = add(&mut patron, &limited, &folder, seeder.addr)?;
        wait_flowing(&mut patron, id)?;
        let started = Instant::now();
        let bytes = web.range(id, offset, offset + MIB - 1)?;
        first_mib.push(started.elapsed().as_secs_f64() * 1e3);
        if bytes != read_at(&bench.work.join("web-limited/payload.bin"), offset, MIB)? {
            bail!("the Range answer differs from the file's bytes");
        }
        patron.close(TorrentRef::Id(id), true, true)?;
    }
    drop(seeder);

    // A page update after a state change: board change → event on the wire.
    let data = bench.work.join("web-events.bin");
    std::fs::write(&data, vec![7u8; 65536])?;
    let made = patron.make(proto::MakeTorrent {
        path: data.display().to_string(),
        piece_size: None,
        trackers: Vec::new(),
        seed: true,
    })?;
    let id = made.seeding.context("the made torrent does not seed")?.id;
    let latencies = event_latencies(&connect, &mut patron, &mut web, id, bench.changes)?;

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let p99 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        json!({
            "bench": "web",
            "torrents": bench.torrents,
            "rpc_get_p50_us": median(&ours_us),
            "transmission_get_p50_us": if theirs_us.is_empty() { Value::Null } else { json!(median(&theirs_us)) },
            "runs": bench.runs * 2,
            "rate_kib": bench.rate_kib,
            "size_mib": bench.size_mib,
            "offset": offset,
            "whole_ms": whole.as_secs_f64() * 1e3,
            "range_first_mib_ms": first_mib.clone(),
            "range_first_mib_median_ms": median(&first_mib),
            "mib_transfer_ms": 1e3 * 1024.0 / f64::from(bench.rate_kib),
            "rounds": bench.rounds,
            "changes": latencies.len(),
            "event_p50_ms": median(&latencies),
            "event_p99_ms": p99(&latencies),
        })
    );
    Ok(())
}

/// `count` tiny single-file .torrents (their data never written).
fn tiny_torrents(work: &std::path::Path, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = fresh(work, "web-rpc-sources")?;
    (0..count)
        .map(|i| {
            let path = dir.join(format!("tiny-{i:05}.bin"));
            std::fs::write(&path, format!("tiny torrent {i}\n"))?;
            let made = torrent_broker::torrent_file::make_torrent(&path, None, &[], true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            std::fs::remove_file(&path)?;
            Ok(made.bytes)
        })
        .collect()
}

/// Pauses and resumes torrent `id` `changes` times; for each, the time from the board's
/// change (seen by a board reader in this process) to the server-sent event that carries
/// the new state (read by an event client in this process), in ms.
fn event_latencies(
    connect: &ConnectOptions,
    patron: &mut Patron,
    web: &mut WebPatron,
    id: TorrentId,
    changes: usize,
) -> anyhow::Result<Vec<f64>> {
    // (when, the torrent's state as the board or the event said it)
    let board_seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let event_seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut board = Board::open(connect)?;
    let watcher = {
        let (seen, stop) = (Arc::clone(&board_seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(true) = board.wait_for_change(Duration::from_millis(200)) {
                    let now = Instant::now();
                    if let Some(status) = board.get(TorrentRef::Id(id)) {
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((now, status.state.as_str().to_owned()));
                    }
                }
            }
        })
    };
    let mut events = web.events()?;
    let listener = {
        let seen = Arc::clone(&event_seen);
        std::thread::spawn(move || {
            while let Ok(Some(data)) = events.next_data() {
                let now = Instant::now();
                let Ok(value) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                for torrent in value["torrents"].as_array().into_iter().flatten() {
                    if torrent["id"] == id.0 {
                        let state = torrent["state"].as_str().unwrap_or("").to_owned();
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((now, state));
                    }
                }
            }
        })
    };
    // Until the subscriber has its first event (every torrent), bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while event_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        if Instant::now() > deadline {
            bail!("the event stream sent nothing in 10 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..changes {
        let target = if i % 2 == 0 { "paused" } else { "seeding" };
        if i % 2 == 0 {
            patron.pause(TorrentRef::Id(id))?;
        } else {
            patron.resume(TorrentRef::Id(id))?;
        }
        // Until the event for it arrived (bounded), then a breath.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let arrived = event_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, s)| s == target)
                .count();
            if arrived > i / 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    web.stop();
    let _ = listener.join();
    let board_seen = board_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let event_seen = event_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Each event with a new state, against the first board change that showed that state
    // since the previous event.
    let mut latencies = Vec::new();
    let mut last: Option<Instant> = None;
    let mut previous_state = String::new();
    for (at, state) in event_seen {
        if state == previous_state {
            continue;
        }
        let change = board_seen
            .iter()
            .find(|(when, s)| *s == state && last.is_none_or(|l| *when > l) && *when <= at);
        if let Some((when, _)) = change {
            latencies.push(at.duration_since(*when).as_secs_f64() * 1e3);
        }
        last = Some(at);
        previous_state = state;
    }
    if latencies.len() < changes / 2 {
        bail!(
            "only {} of {changes} changes were seen as events",
            latencies.len()
        );
    }
    Ok(latencies)
}

/// A torrent-web process on a free loopback port, and its token.
struct WebPatron {
    child: std::process::Child,
    addr: String,
    token: String,
}

impl WebPatron {
    fn start(bench: &WebBench) -> anyhow::Result<WebPatron> {
        let mut child = Command::new(&bench.web)
            .arg("--state-dir")
            .arg(&bench.state_dir)
            .args(["--listen", "127.0.0.1:0", "--no-autostart"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", bench.web.display()))?;
        let stdout = child.stdout.take().context("its stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let rest = first
            .trim()
            .strip_prefix("http://")
            .context("its first line is no URL")?;
        let (addr, token) = rest
            .split_once("/#token=")
            .context("its URL has no token")?;
        Ok(WebPatron {
            child,
            addr: addr.to_owned(),
            token: token.to_owned(),
        })
    }

    fn auth(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("bench:{}", self.token))
    }

    /// The bytes `first..=last` of torrent `id`'s only file.
    fn range(&self, id: TorrentId, first: u64, last: u64) -> anyhow::Result<Vec<u8>> {
        let mut http = Http::connect(&self.addr)?;
        let head = format!(
            "GET /files/{}/0 HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {}\r\nRange: bytes={first}-{last}\r\n\r\n",
            id.0, self.addr, self.auth()
        );
        let (status, _, body) = http.exchange(head.as_bytes())?;
        if status != 206 {
            bail!("the Range request got {status}");
        }
        Ok(body)
    }

    /// The server-sent events.
    fn events(&self) -> anyhow::Result<Events> {
        let mut stream = TcpStream::connect(&self.addr)?;
        write!(
            stream,
            "GET /api/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {}\r\n\r\n",
            self.addr,
            self.auth()
        )?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        if status != 200 {
            bail!("the event stream got {status}");
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        Ok(Events {
            reader,
            chunked,
            pending: String::new(),
        })
    }

    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for WebPatron {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Transmission RPC endpoint, with the session-id exchange (also `many-seeds`).
pub(crate) struct Rpc {
    addr: String,
    auth: Option<String>,
    session: Mutex<String>,
}

impl Rpc {
    pub(crate) fn new(addr: &str, token: Option<&str>) -> Rpc {
        use base64::Engine;
        Rpc {
            addr: addr.to_owned(),
            auth: token
                .map(|t| base64::engine::general_purpose::STANDARD.encode(format!("bench:{t}"))),
            session: Mutex::new(String::new()),
        }
    }

    pub(crate) fn connect(&self) -> anyhow::Result<Http> {
        Http::connect(&self.addr)
    }

    pub(crate) fn call(
        &self,
        http: &mut Http,
        method: &str,
        arguments: Value,
    ) -> anyhow::Result<Value> {
        let body = json!({"method": method, "arguments": arguments}).to_string();
        for _ in 0..2 {
            let session = self
                .session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let auth = self
                .auth
                .as_ref()
                .map(|a| format!("Authorization: Basic {a}\r\n"))
                .unwrap_or_default();
            let request = format!(
                "POST /transmission/rpc HTTP/1.1\r\nHost: {}\r\n{auth}X-Transmission-Session-Id: {session}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            let (status, headers, reply) = http.exchange(request.as_bytes())?;
            if status == 409 {
                let id = headers
                    .iter()
                    .find(|(k, _)| k == "x-transmission-session-id")
                    .map(|(_, v)| v.clone())
                    .context("a 409 without a session id")?;
                *self.session.lock().unwrap_or_else(|e| e.into_inner()) = id;
                continue;
            }
            if status != 200 {
                bail!("{method} at {} got {status}", self.addr);
            }
            return Ok(serde_json::from_slice(&reply)?);
        }
        bail!(
            "{method} at {}: the session id was refused twice",
            self.addr
        )
    }
}

/// An answer's headers, names lowercase.
type Headers = Vec<(String, String)>;

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: &str) -> anyhow::Result<Http> {
        let stream =
            TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Http {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request`; returns the status, the headers (names lowercase) and the body.
    fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, Headers, Vec<u8>)> {
        self.reader.get_mut().write_all(request)?;
        let (status, headers) = read_head(&mut self.reader)?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            while let Some(chunk) = read_chunk(&mut self.reader)? {
                body.extend_from_slice(&chunk);
            }
            body
        } else {
            let length: usize = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            self.reader.read_exact(&mut body)?;
            body
        };
        Ok((status, headers, body))
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, Headers)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// One chunk of a chunked body; `None` at its end.
fn read_chunk(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .with_context(|| format!("not a chunk size: {line:?}"))?;
    let mut chunk = vec![0u8; size];
    reader.read_exact(&mut chunk)?;
    let mut end = [0u8; 2];
    reader.read_exact(&mut end)?;
    Ok((size > 0).then_some(chunk))
}

/// The event stream's `data:` lines, one at a time.
struct Events {
    reader: BufReader<TcpStream>,
    chunked: bool,
    pending: String,
}

impl Events {
    fn next_data(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(at) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=at).collect();
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    return Ok(Some(data.trim_start().to_owned()));
                }
                continue;
            }
            let more = match self.chunked {
                true => match read_chunk(&mut self.reader)? {
                    Some(chunk) => chunk,
                    None => return Ok(None),
                },
                false => {
                    let mut line = String::new();
                    if self.reader.read_line(&mut line)? == 0 {
                        return Ok(None);
                    }
                    line.into_bytes()
                }
            };
            self.pending.push_str(&String::from_utf8_lossy(&more));
        }
    }
}
