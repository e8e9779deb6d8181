//! Harness for the end-to-end tests: real `torrent-broker` and `patron-client` processes, a
//! real librqbit swarm on 127.0.0.1, real signals.
//!
//! Rules every test follows through this harness:
//! - every broker runs loopback-only (`TORRENT_PATRON_LOOPBACK_ONLY=1`): no packet leaves
//!   127.0.0.1;
//! - every wait is bounded, and a timeout fails the test with the processes' output;
//! - every process a test started (directly, or auto-started by a patron) is killed by PID
//!   when the test ends, pass or fail.
//!
//! The binaries are the workspace's own, built before the tests run (`scripts/test` does
//! `cargo build --bins` first); `TORRENT_PATRON_BIN_DIR` overrides where they are looked for.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use patron_client;
pub use serde_json;

/// The longest any single step (a command, a wait) may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a whole test may take. Past it the watchdog kills the test's brokers by PID
/// and aborts the test binary: a hang inside a blocking call must not hang CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Sandboxes alive now: their state dirs and deadlines, for the watchdog.
static LIVE: Mutex<Vec<(u64, Instant, Vec<PathBuf>)>> = Mutex::new(Vec::new());
static NEXT_SANDBOX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Processes a test started that do not die with the test binary (one that changes user
/// loses its parent-death signal): the watchdog kills them by pid before it aborts.
static KILL_AT_ABORT: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Has the watchdog kill `pid` if it aborts the tests; [`forget_at_abort`] once it is gone.
pub fn kill_at_abort(pid: i32) {
    KILL_AT_ABORT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pid);
}

/// Undoes [`kill_at_abort`] (the process was ended, its pid may be reused).
pub fn forget_at_abort(pid: i32) {
    KILL_AT_ABORT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            if live
                .iter()
                .any(|(_, deadline, _)| Instant::now() > *deadline)
            {
                eprintln!("a test ran past {TEST_TIMEOUT:?}: killing its brokers and aborting");
                for state in live.iter().flat_map(|(_, _, dirs)| dirs) {
                    if let Some(pid) = broker_pid_of(state) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                for pid in KILL_AT_ABORT
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
                std::process::abort();
            }
        });
    });
}

/// Children die with the test thread that started them, even if the test is aborted.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TORRENT_PATRON_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test binary> → target/<profile>
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (scripts/test does `cargo build --bins`)",
        path.display()
    );
    path
}

/// A private folder for one test, and the processes it owns.
pub struct Sandbox {
    dir: tempfile::TempDir,
    state_dirs: Mutex<Vec<PathBuf>>,
    id: u64,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("tp-e2e-")
            .tempdir()
            .expect("tempdir");
        let id = NEXT_SANDBOX.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push((
            id,
            Instant::now() + TEST_TIMEOUT,
            Vec::new(),
        ));
        start_watchdog();
        Sandbox {
            dir,
            state_dirs: Mutex::new(Vec::new()),
            id,
        }
    }

    /// A path inside the sandbox (not created).
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// A folder inside the sandbox (created).
    pub fn folder(&self, relative: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(&path).expect("create folder");
        path
    }

    /// A broker state directory inside the sandbox; any broker on it dies with the sandbox.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        let path = self.folder(&format!("{name}-state"));
        let path = path.canonicalize().expect("canonical state dir");
        self.state_dirs.lock().unwrap().push(path.clone());
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, dirs)) = live.iter_mut().find(|(id, _, _)| *id == self.id) {
            dirs.push(path.clone());
        }
        path
    }

    /// A sparse file of `size` bytes (zeros) at `relative`: hashing it takes a while,
    /// storing it nothing.
    pub fn sparse_file(&self, relative: &str, size: u64) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("sparse file");
        path
    }

    /// A file of `size` pseudo-random bytes (seeded by its name, so reruns are identical).
    pub fn random_file(&self, relative: &str, size: usize) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        let seed = relative
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        std::fs::write(&path, data).expect("write random file");
        path
    }

    /// The environment every process of this sandbox runs with.
    pub fn apply_env(&self, cmd: &mut Command) {
        die_with_parent(cmd);
        cmd.env("TORRENT_PATRON_LOOPBACK_ONLY", "1")
            .env("TORRENT_PATRON_DOWNLOAD_ROOT", self.dir.path())
            .env("TORRENT_PATRON_BROKER", bin("torrent-broker"))
            .env("TORRENT_PATRON_STATUS_INTERVAL", "100")
            .env_remove("TORRENT_PATRON_STATE")
            .env_remove("XDG_RUNTIME_DIR")
            .env("RUST_LOG", "info");
    }

    /// A `patron-client` command against `state`.
    pub fn client(&self, state: &Path) -> Command {
        let mut cmd = Command::new(bin("patron-client"));
        self.apply_env(&mut cmd);
        cmd.arg("--state-dir").arg(state);
        cmd
    }

    /// `patron-client --json add SOURCE --output OUT [--peer PEER]` against `state`; callers
    /// append what else they need (`--wait`, `--ephemeral`...).
    pub fn add_command(
        &self,
        state: &Path,
        source: impl AsRef<std::ffi::OsStr>,
        out: &Path,
        peer: Option<&str>,
    ) -> Command {
        let mut cmd = self.client(state);
        cmd.arg("--json")
            .arg("add")
            .arg(source)
            .arg("--output")
            .arg(out);
        if let Some(peer) = peer {
            cmd.arg("--peer").arg(peer);
        }
        cmd
    }

    /// `patron-client make SOURCE --output TORRENT` through `state`'s broker (started if
    /// none runs), which must succeed.
    pub fn make_torrent(&self, state: &Path, source: &Path, torrent: &Path) {
        let mut make = self.client(state);
        make.arg("make").arg(source).arg("--output").arg(torrent);
        run(make).expect_code(0);
    }

    /// Starts a broker on `state` with extra arguments and waits until it serves.
    pub fn broker(&self, state: &Path, args: &[&str]) -> BrokerProcess {
        BrokerProcess::start(self, state, args, &[])
    }

    /// Like [`Sandbox::broker`], with extra environment variables.
    pub fn broker_with_env(
        &self,
        state: &Path,
        args: &[&str],
        env: &[(&str, &OsStr)],
    ) -> BrokerProcess {
        BrokerProcess::start(self, state, args, env)
    }

    /// Connection options for a library patron of `state` (never auto-starts).
    pub fn connect_options(&self, state: &Path) -> patron_client::ConnectOptions {
        patron_client::ConnectOptions {
            state_dir: Some(state.to_path_buf()),
            auto_start: false,
            broker_program: Some(bin("torrent-broker")),
            timeout: STEP_TIMEOUT,
        }
    }

    /// A library patron connected to the broker of `state`.
    pub fn patron(&self, state: &Path) -> patron_client::Patron {
        patron_client::Patron::connect_with(&self.connect_options(state)).expect("connect patron")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _, _)| *id != self.id);
        // Brokers a patron auto-started are not our children: find them by their state
        // dir's lock file, and check the pid still runs a broker on that dir before killing.
        for state in self.state_dirs.lock().unwrap().iter() {
            if let Some(pid) = broker_pid_of(state) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The pid of the live broker owning `state`, if any.
pub fn broker_pid_of(state: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(state.join(patron_client::proto::paths::LOCK_FILE)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("torrent-broker") && cmdline.contains(&*state.to_string_lossy()))
        .then_some(pid)
}

/// Every process whose command line names `state` as its state dir and that runs
/// torrent-broker (to count brokers).
pub fn brokers_on(state: &Path) -> Vec<i32> {
    let want = state.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_broker = args.first().is_some_and(|a| a.ends_with("torrent-broker"));
        if is_broker && args.contains(&want) && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// A broker the test started itself.
pub struct BrokerProcess {
    child: Child,
    /// Its pid.
    pub pid: i32,
    /// Its state directory.
    pub state: PathBuf,
    /// Its BitTorrent listen port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

impl BrokerProcess {
    fn start(
        sandbox: &Sandbox,
        state: &Path,
        args: &[&str],
        env: &[(&str, &OsStr)],
    ) -> BrokerProcess {
        let mut broker = BrokerProcess::spawn(sandbox, state, args, env);
        broker.wait_ready();
        broker
    }

    /// Starts it, not waiting for anything (killed when dropped).
    fn spawn(
        sandbox: &Sandbox,
        state: &Path,
        args: &[&str],
        env: &[(&str, &OsStr)],
    ) -> BrokerProcess {
        let log = state.with_extension(format!("broker-{}.log", now_millis()));
        let mut cmd = Command::new(bin("torrent-broker"));
        sandbox.apply_env(&mut cmd);
        cmd.envs(env.iter().copied());
        cmd.arg("--state-dir")
            .arg(state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("broker log"));
        let child = cmd.spawn().expect("spawn torrent-broker");
        BrokerProcess {
            pid: child.id() as i32,
            child,
            state: state.to_path_buf(),
            port: 0,
            log,
        }
    }

    /// Waits (bounded) until it says it is ready, and learns its port. (Dropped on a panic:
    /// killed.)
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let text = self.log();
            if let Some(port) = ready_port(&text) {
                self.port = port;
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("broker exited at start ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready within {STEP_TIMEOUT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a broker that stops itself (SIGSTOP) at stop point `stop_at`, before it is
    /// ready; returns once it is stopped there. [`BrokerProcess::resume_until_ready`] lets it go.
    /// (Every torrent restored into the engine, where the steps held are: a seed its fast
    /// resume vouches for would come back out of it, asking nothing until it wakes.)
    pub fn held_at(sandbox: &Sandbox, state: &Path, stop_at: &str) -> BrokerProcess {
        let stop_at_os: &OsStr = stop_at.as_ref();
        let broker = BrokerProcess::spawn(
            sandbox,
            state,
            ENGINE_RESTORE,
            &[("TORRENT_PATRON_TEST_STOP_AT", stop_at_os)],
        );
        wait_for(
            &format!("the broker to stop at {stop_at}"),
            STEP_TIMEOUT,
            || is_stopped(broker.pid),
        );
        broker
    }

    /// Starts a broker whose thread reaching step `step` sleeps `millis` there (restoring
    /// into the engine, as [`BrokerProcess::held_at`])
    /// (`TORRENT_PATRON_TEST_HOLD_AT`; the rest of the broker goes on), once it is ready.
    pub fn holding_at(sandbox: &Sandbox, state: &Path, step: &str, millis: u64) -> BrokerProcess {
        let hold = std::ffi::OsString::from(format!("{step}={millis}"));
        BrokerProcess::start(
            sandbox,
            state,
            ENGINE_RESTORE,
            &[("TORRENT_PATRON_TEST_HOLD_AT", hold.as_os_str())],
        )
    }

    /// Lets a broker held at a stop point go on, and waits until it is ready.
    pub fn resume_until_ready(&mut self) {
        self.signal(Signal::SIGCONT);
        self.wait_ready();
    }

    /// `127.0.0.1:<port>`, to pass as `--peer`.
    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).expect("signal broker");
    }

    /// Stops it as a user would (SIGTERM): it must exit cleanly within [`STEP_TIMEOUT`].
    pub fn stop(mut self) {
        self.stop_cleanly();
    }

    /// Stops it cleanly (SIGTERM, its records and stamps saved) and waits until it exited;
    /// kept, for its log.
    pub fn stop_cleanly(&mut self) {
        self.signal(Signal::SIGTERM);
        assert!(self.wait_exit(STEP_TIMEOUT).success(), "{}", self.log());
    }

    /// Waits (bounded) for it to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("broker did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How many file descriptors it has open now.
    pub fn fd_count(&self) -> usize {
        entries_of(&format!("/proc/{}/fd", self.pid))
    }

    /// How many threads it runs now.
    pub fn thread_count(&self) -> usize {
        entries_of(&format!("/proc/{}/task", self.pid))
    }

    /// Its resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }
}

fn entries_of(dir: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

/// A peer on 127.0.0.1 that accepts connections and never says a word: a magnet whose only
/// peer it is waits for the broker's whole metadata timeout. It listens while it lives.
pub struct SilentPeer(std::net::TcpListener);

impl SilentPeer {
    /// Listens on a free loopback port.
    pub fn start() -> SilentPeer {
        SilentPeer(std::net::TcpListener::bind("127.0.0.1:0").expect("a silent peer"))
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.0.local_addr().expect("its address").to_string()
    }

    /// A magnet of a made-up info hash (`pair` repeated, two hex digits) whose only peer
    /// (`x.pe`) is this one, named `dn` if given.
    pub fn magnet(&self, pair: &str, dn: Option<&str>) -> String {
        let name = dn.map(|n| format!("&dn={n}")).unwrap_or_default();
        format!(
            "magnet:?xt=urn:btih:{}{name}&x.pe={}",
            pair.repeat(20),
            self.addr()
        )
    }
}

/// A broker's arguments that restore every torrent into the engine (none sleeps).
const ENGINE_RESTORE: &[&str] = &["--sleep-seeds-after", "never"];

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn ready_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("broker ready"))?;
    let listen = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))?;
    listen.rsplit_once(':')?.1.parse().ok()
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The result of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Output {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// stdout parsed as JSON Lines.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect()
    }

    /// Asserts the exit code, showing the output if it differs.
    pub fn expect_code(self, code: i32) -> Output {
        assert_eq!(self.status.code(), Some(code), "unexpected exit: {self:#?}");
        self
    }
}

/// A started command whose output is collected.
pub struct Running {
    child: Child,
    /// Its stdout so far (the reader thread appends as it comes).
    stdout: Arc<Mutex<String>>,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `cmd` with piped stdout/stderr.
    pub fn start(mut cmd: Command) -> Running {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Running::from_child(child)
    }

    /// Collects the output of a child started with piped stdout and stderr.
    pub fn from_child(mut child: Child) -> Running {
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let so_far = Arc::new(Mutex::new(String::new()));
        let sink = so_far.clone();
        let out = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            let mut bytes = Vec::new();
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&chunk[..n]);
                *sink.lock().unwrap() = String::from_utf8_lossy(&bytes).into_owned();
            }
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running {
            child,
            stdout: so_far,
            out: Some(out),
            err: Some(err),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// Waits (bounded) for it to exit and collects its output. Kills it on timeout.
    pub fn finish(mut self, limit: Duration) -> Output {
        let Some(status) = exit_within(&mut self.child, limit) else {
            let (stdout, stderr) = self.collect();
            panic!("command timed out after {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        };
        let (stdout, stderr) = self.collect();
        Output {
            status,
            stdout,
            stderr,
        }
    }

    fn collect(&mut self) -> (String, String) {
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        (join(self.out.take()), join(self.err.take()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit, at most `limit`; past it, kills it (by its pid) and says
/// `None`.
fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` to completion (bounded by [`STEP_TIMEOUT`]).
pub fn run(cmd: Command) -> Output {
    Running::start(cmd).finish(STEP_TIMEOUT)
}

/// What bash completes for `words` (space-separated, as typed; `''` for an empty last word)
/// with the completion `script` a program printed for itself. Loading it must neither fail
/// nor write to stderr. The completion function is whichever the script registers.
pub fn bash_complete(program: &str, script: &str, words: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{program}.bash"));
    std::fs::write(&path, script).expect("write the completion script");
    let shell = format!(
        "set -e; source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
         COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
         function=$(complete -p {program} | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
         \"$function\" {program} \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let mut bash = Command::new("bash");
    bash.arg("-c").arg(shell);
    let out = run(bash).expect_code(0);
    assert_eq!(
        out.stderr, "",
        "bash complained loading the {program} completions"
    );
    out.stdout.lines().map(str::to_owned).collect()
}

/// Has the broker of `patron` hash `path` into a torrent and seed it; returns its id.
pub fn make_and_seed(
    patron: &mut patron_client::Patron,
    path: &Path,
) -> patron_client::proto::TorrentId {
    let made = patron
        .make(patron_client::proto::MakeTorrent {
            path: path.display().to_string(),
            piece_size: None,
            trackers: Vec::new(),
            seed: true,
        })
        .expect("make and seed");
    made.seeding.expect("seeding").id
}

/// Runs a pipe session of `lines` against `state` (with or without the board) and returns
/// its JSON output lines.
pub fn pipe_session(
    sandbox: &Sandbox,
    state: &std::path::Path,
    lines: &[String],
    board: bool,
) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut pipe = sandbox.client(state);
    if !board {
        pipe.env(patron_client::BOARD_ENV, "0");
    }
    let mut child = pipe
        .arg("pipe")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pipe");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in lines {
        writeln!(stdin, "{line}").expect("write a line");
    }
    drop(stdin);
    let running = Running::from_child(child);
    let out = running.finish(STEP_TIMEOUT).expect_code(0);
    out.json_lines()
}

/// `patron-client --json ARGS...` against `state`: its exit code and JSON lines.
pub fn client_json(sandbox: &Sandbox, state: &Path, args: &[&str]) -> (i32, Vec<Value>) {
    let mut cmd = sandbox.client(state);
    cmd.arg("--json").args(args);
    let out = run(cmd);
    (out.code(), out.json_lines())
}

/// The one JSON line of a command that must succeed.
pub fn ok_json(sandbox: &Sandbox, state: &Path, args: &[&str]) -> Value {
    let (code, lines) = client_json(sandbox, state, args);
    assert_eq!(code, 0, "patron-client {args:?}: {lines:?}");
    assert_eq!(lines.len(), 1, "patron-client {args:?}: {lines:?}");
    lines.into_iter().next().unwrap_or_default()
}

/// A torrent's status line, as `status --json` prints it.
pub fn status_json(sandbox: &Sandbox, state: &Path, id: &str) -> Value {
    ok_json(sandbox, state, &["status", id])
}

/// Waits until `check` holds for the torrent's status line; returns that line.
pub fn wait_status(
    sandbox: &Sandbox,
    state: &Path,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    wait_for(what, STEP_TIMEOUT, || {
        last = status_json(sandbox, state, id);
        check(&last)
    });
    last
}

/// A broker seeding one file of 256 pieces of 16 KiB (`seed/edited.bin`) as torrent 0,
/// once it seeds: the seeder, the file, and the piece size. With that many pieces,
/// librqbit's own fast-resume sample (one piece per file and a handful more) misses an edit
/// in the middle nearly every time.
pub fn seeding_many_pieces(sandbox: &Sandbox) -> (Seeder, PathBuf, usize) {
    let piece = 16 * 1024;
    let data = sandbox.random_file("seed/edited.bin", 256 * piece);
    let seeder = Seeder::start(sandbox, "seeder", &data, piece as u64, &[]);
    wait_status(sandbox, &seeder.broker.state, "0", "seeding", |s| {
        s["state"] == "seeding"
    });
    (seeder, data, piece)
}

/// Polls `condition` until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The next status update `patron` receives (of torrent `id`, if given), within a step.
pub fn next_status(
    patron: &mut patron_client::Patron,
    id: Option<patron_client::proto::TorrentId>,
) -> patron_client::proto::TorrentStatus {
    use patron_client::proto::Event;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match patron.next_event_timeout(left).expect("event") {
            Some(Event::TorrentStatusUpdate(status)) if id.is_none_or(|id| status.id == id) => {
                return status
            }
            Some(_) => {}
            None => panic!("no status within {STEP_TIMEOUT:?}"),
        }
    }
}

/// The longest any test waits for a torrent to complete: a torrent that never does but
/// goes on sending statuses must still end its test.
pub const COMPLETE_TIMEOUT: Duration = Duration::from_secs(300);

/// Follows status updates until the torrent (`id`, if given) is complete; returns that
/// status. Panics past [`COMPLETE_TIMEOUT`].
pub fn wait_complete(
    patron: &mut patron_client::Patron,
    id: Option<patron_client::proto::TorrentId>,
) -> patron_client::proto::TorrentStatus {
    let deadline = Instant::now() + COMPLETE_TIMEOUT;
    loop {
        let status = next_status(patron, id);
        assert!(
            status.complete || Instant::now() < deadline,
            "not complete within {COMPLETE_TIMEOUT:?}: {status:?}"
        );
        if status.complete {
            // Checked on every completion the tests see: a complete torrent downloads
            // nothing (the engine's decaying estimate once showed hundreds of MiB/s).
            assert_eq!(
                status.download_rate, 0,
                "a complete torrent shows a download rate: {status:?}"
            );
            return status;
        }
    }
}

/// Set (to 1) by `scripts/test --allow-skip` only: a test that needs root or a peer program
/// this machine lacks then says so and returns. Without it, and always in CI, such a test
/// fails naming what is missing: no test passes by skipping.
pub const ALLOW_SKIP_ENV: &str = "TORRENT_PATRON_ALLOW_SKIP";

/// Whether a test can have what it needs (`available`). When it cannot, it fails naming
/// `what` and `how` to get it, unless skipping was explicitly allowed (never in CI).
pub fn require(available: bool, what: &str, how: &str) -> bool {
    if available {
        return true;
    }
    let allowed = std::env::var_os(ALLOW_SKIP_ENV).is_some_and(|v| v == "1")
        && std::env::var_os("CI").is_none();
    assert!(
        allowed,
        "this test needs {what}, which this machine lacks: {how} (or run scripts/test --allow-skip to skip it, saying so)"
    );
    eprintln!("SKIPPED (allowed by {ALLOW_SKIP_ENV}=1): this test needs {what}: {how}");
    false
}

/// Whether this test can do what needs root (mount, switching uid); see [`require`].
pub fn have_root(what: &str) -> bool {
    require(
        nix::unistd::geteuid().is_root(),
        &format!("root ({what})"),
        "run the tests as root, as CI does",
    )
}

/// Whether `program` is on the PATH; see [`require`].
pub fn have_program(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        found,
        program,
        &format!("apt-get install {package} (scripts/test installs it when it can)"),
    )
}

/// A small tmpfs (a file system of its own, of a set size: a disk that fills), unmounted
/// when dropped. Needs root ([`have_root`]).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one of `size` (`4m`) on folder `dir`.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One announce a [`Tracker`] was sent.
#[derive(Debug, Clone)]
pub struct Announce {
    /// The info hash, as sent (percent-encoded).
    pub info_hash: String,
    /// `started`, `completed`, `stopped`, or empty for a regular announce.
    pub event: String,
    /// Bytes uploaded in this tracker session, as the client says.
    pub uploaded: u64,
    /// The port it listens on.
    pub port: u16,
    /// When it came.
    pub at: Instant,
}

/// A small HTTP tracker of the tests' own on 127.0.0.1 (BEP 3, compact peers): it names
/// every peer that announced a torrent to the others, asks for an announce every
/// `interval`, and keeps what it was sent. Stopped when dropped.
pub struct Tracker {
    addr: std::net::SocketAddr,
    announces: Arc<Mutex<Vec<Announce>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tracker {
    /// Starts one asking for an announce every `interval_secs`.
    pub fn start(interval_secs: u64) -> Tracker {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the tracker");
        let addr = listener.local_addr().expect("its address");
        let announces = Arc::new(Mutex::new(Vec::<Announce>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (announces, stop) = (announces.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        answer_announce(stream, interval_secs, &announces);
                    }
                }
            })
        };
        Tracker {
            addr,
            announces,
            stop,
            thread: Some(thread),
        }
    }

    /// Its announce URL.
    pub fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    /// Every announce so far.
    pub fn announces(&self) -> Vec<Announce> {
        self.announces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Its accept returns for this connection, and it sees the stop.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_announce(
    mut stream: std::net::TcpStream,
    interval_secs: u64,
    announces: &Mutex<Vec<Announce>>,
) {
    use std::io::{BufRead, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The headers: read, not needed.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let query = line
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.split_once('?'))
        .map_or("", |(_, query)| query);
    let field = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_owned()
    };
    let announce = Announce {
        info_hash: field("info_hash"),
        event: field("event"),
        uploaded: field("uploaded").parse().unwrap_or(0),
        port: field("port").parse().unwrap_or(0),
        at: Instant::now(),
    };
    let mut peers = Vec::new();
    {
        let mut all = announces.lock().unwrap_or_else(|e| e.into_inner());
        let mut named = std::collections::BTreeSet::new();
        for other in all.iter() {
            if other.info_hash == announce.info_hash
                && other.port != announce.port
                && other.event != "stopped"
                && named.insert(other.port)
            {
                peers.extend_from_slice(&[127, 0, 0, 1]);
                peers.extend_from_slice(&other.port.to_be_bytes());
            }
        }
        all.push(announce);
    }
    let mut body = format!("d8:intervali{interval_secs}e5:peers{}:", peers.len()).into_bytes();
    body.extend_from_slice(&peers);
    body.push(b'e');
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(&body);
    let _ = stream.write_all(&reply);
}

/// Every file under `dir`, relative, with its SHA-256 (empty if `dir` is not there).
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                out.insert(relative.display().to_string(), sha256(&path));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Whether process `pid` is stopped (SIGSTOP: a broker at a `TORRENT_PATRON_TEST_STOP_AT`).
pub fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('T'))
        })
        .unwrap_or(false)
}

/// An executable shell script at `path`.
pub fn script(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

/// Every record a broker keeps of its torrents (`<state>/records/<id>.json`), as one text.
pub fn records_text(state: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(state.join("records"))
        .into_iter()
        .flatten()
        .flatten()
    {
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
}

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(data))
}

/// A broker seeding one file: started, `make --seed` done, .torrent written.
pub struct Seeder {
    /// The seeding broker.
    pub broker: BrokerProcess,
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The torrent's info hash.
    pub info_hash: String,
}

impl Seeder {
    /// Starts a broker on state dir `name` seeding `data` (extra broker args, e.g. a rate limit),
    /// once it seeds.
    pub fn start(
        sandbox: &Sandbox,
        name: &str,
        data: &Path,
        piece_size: u64,
        args: &[&str],
    ) -> Seeder {
        let state = sandbox.state_dir(name);
        let broker = sandbox.broker(&state, args);
        let torrent = sandbox.path(&format!("{name}.torrent"));
        let mut make = sandbox.client(&state);
        make.arg("--json")
            .arg("make")
            .arg(data)
            .arg("--seed")
            .arg("--piece-size")
            .arg(piece_size.to_string())
            .arg("--output")
            .arg(&torrent);
        let made = run(make).expect_code(0);
        let line = &made.json_lines()[0];
        assert_eq!(line["event"], "made", "{line}");
        let info_hash = line["info_hash"].as_str().expect("info hash").to_owned();
        // `make --seed` answers once the torrent is added, maybe before its check ends; a
        // test that swaps or edits the files next must find them verified and seeding.
        wait_status(sandbox, &state, &info_hash, "the seeder to seed", |s| {
            s["state"] == "seeding"
        });
        Seeder {
            broker,
            torrent,
            info_hash,
        }
    }
}

/// A seeder of a `size`-byte file (`seed/slow.bin`, 64 KiB pieces) that sends at most
/// `rate` bytes per second, so that a download takes a while; and the file.
pub fn slow_seeder(sandbox: &Sandbox, size: usize, rate: &str) -> (Seeder, PathBuf) {
    let data = sandbox.random_file("seed/slow.bin", size);
    let seeder = Seeder::start(
        sandbox,
        "seeder",
        &data,
        64 * 1024,
        &["--max-upload-rate", rate],
    );
    (seeder, data)
}

impl Seeder {
    /// A create request for this seeder's torrent, saved in `output`, dialing the seeder.
    pub fn create_request(&self, output: &Path) -> patron_client::proto::CreateNewTorrent {
        use patron_client::proto::{CreateNewTorrent, TorrentSource};
        let bytes = std::fs::read(&self.torrent).expect("read .torrent");
        let mut request = CreateNewTorrent::new(TorrentSource::TorrentFile(bytes));
        request.output = Some(output.display().to_string());
        request.peers = vec![self.broker.peer()];
        request
    }
}

/// A started `patron-client cat` whose stdout goes to a file (its bytes are binary).
pub struct CatProcess {
    child: Child,
    out: PathBuf,
}

impl CatProcess {
    /// `patron-client --state-dir STATE cat ARGS...`, writing into `out`.
    pub fn start(sandbox: &Sandbox, state: &Path, args: &[&str], out: &Path) -> CatProcess {
        let mut cmd = sandbox.client(state);
        cmd.arg("cat").args(args);
        CatProcess::from_command(cmd, out)
    }

    /// `patron-client cat ARGS...` in a mount namespace of its own, where `script` (sh, with
    /// `$1` the folder) first changes what it sees of `folder` (e.g. mounts a tmpfs over it):
    /// a reader that cannot see the broker's file. Needs root.
    pub fn in_namespace(
        sandbox: &Sandbox,
        state: &Path,
        folder: &Path,
        script: &str,
        args: &[&str],
        out: &Path,
    ) -> CatProcess {
        let mut cmd = Command::new("unshare");
        sandbox.apply_env(&mut cmd);
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{script} && shift && exec \"$@\""))
            .arg("sh")
            .arg(folder)
            .arg(bin("patron-client"))
            .arg("--state-dir")
            .arg(state)
            .arg("cat")
            .args(args);
        CatProcess::from_command(cmd, out)
    }

    /// A cat started by `cmd` (a wrapper of `patron-client cat`), writing into `out`.
    pub fn from_command(mut cmd: Command, out: &Path) -> CatProcess {
        let file = std::fs::File::create(out).expect("create output");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cat");
        CatProcess {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        std::fs::metadata(&self.out).map_or(0, |m| m.len() as usize)
    }

    /// Waits (bounded by [`STEP_TIMEOUT`]) for it to end: exit code (-1 if killed by a
    /// signal), stderr and what it wrote.
    pub fn finish(self) -> (i32, String, Vec<u8>) {
        self.finish_within(STEP_TIMEOUT)
    }

    /// Like [`CatProcess::finish`], within `limit`; killed and failed past it.
    pub fn finish_within(mut self, limit: Duration) -> (i32, String, Vec<u8>) {
        let status = exit_within(&mut self.child, limit);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let Some(status) = status else {
            let written = self.written();
            panic!("cat did not end in {limit:?} ({written} bytes written); it said: {stderr}");
        };
        let bytes = std::fs::read(&self.out).expect("read cat output");
        (status.code().unwrap_or(-1), stderr, bytes)
    }
}

impl Drop for CatProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A leecher broker (state dir `leecher`) downloading `seeder`'s torrent (id 0) into
/// `downloads`: the broker, its state dir and that folder.
pub fn leech(sandbox: &Sandbox, seeder: &Seeder) -> (BrokerProcess, PathBuf, PathBuf) {
    leech_with(sandbox, seeder, &[])
}

/// Like [`leech`], the leecher broker started with `args`.
pub fn leech_with(
    sandbox: &Sandbox,
    seeder: &Seeder,
    args: &[&str],
) -> (BrokerProcess, PathBuf, PathBuf) {
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, args);
    let add = sandbox.add_command(
        &state,
        &seeder.torrent,
        &downloads,
        Some(&seeder.broker.peer()),
    );
    run(add).expect_code(0);
    (broker, state, downloads)
}

/// Streams open in the broker of `state` (their windows still in the engine).
pub fn streams_open(sandbox: &Sandbox, state: &Path) -> u64 {
    let mut patron = sandbox.patron(state);
    u64::from(patron.broker_info().expect("broker info").streams)
}

/// Writes bytes to a file (for corrupt .torrent fixtures).
pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write file");
}

/// Other BitTorrent clients (opentracker, qBittorrent, rtorrent, libtorrent) as peers.
pub mod swarm;

/// What any process of the user can do to the broker's front door: raw SOCK_SEQPACKET
/// connections and datagrams framed as ipc-channel frames them (or lying about it).
pub mod raw {
    use nix::sys::socket::{
        connect as connect_to, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag,
        SockType, UnixAddr,
    };
    use patron_client::proto::wire::HEADER_BYTES;
    use patron_client::proto::{paths, ToBroker};
    use std::io::IoSlice;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;

    /// A SOCK_SEQPACKET socket (close-on-exec, plus `flags`).
    pub fn seqpacket(flags: SockFlag) -> OwnedFd {
        socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | flags,
            None,
        )
        .expect("socket")
    }

    /// A connection to the front door of the broker of `state`.
    pub fn connect(state: &Path) -> OwnedFd {
        let fd = seqpacket(SockFlag::empty());
        let addr = UnixAddr::new(&paths::socket_path(state)).expect("addr");
        connect_to(fd.as_raw_fd(), &addr).expect("connect");
        fd
    }

    /// Sends one datagram `[fragment size][total][payload]` with `fds` attached, the header
    /// fields as given (so they can lie).
    pub fn send_frame(fd: &OwnedFd, fragment: usize, total: usize, payload: &[u8], fds: &[i32]) {
        let mut datagram = fragment.to_ne_bytes().to_vec();
        datagram.extend_from_slice(&total.to_ne_bytes());
        datagram.extend_from_slice(payload);
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(&datagram)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
    }

    /// Says hello on a raw front-door connection `fd` with `version`; returns the broker's
    /// answer (on acceptance, `fd` is then this patron's request channel).
    pub fn hello(fd: &OwnedFd, version: u32) -> patron_client::proto::Welcome {
        use patron_client::proto::{Hello, Welcome};
        let (server, name) =
            ipc_channel::ipc::IpcOneShotServer::<Welcome>::new().expect("one-shot");
        send_message(
            fd,
            &ToBroker::Hello(Hello {
                version,
                server_name: name,
            }),
            &[],
        );
        server.accept().expect("welcome").1
    }

    /// Sends `message` as one honest datagram, with `fds` attached.
    pub fn send_message(fd: &OwnedFd, message: &ToBroker, fds: &[i32]) {
        let payload = postcard::to_stdvec(message).expect("encode");
        send_frame(
            fd,
            HEADER_BYTES + payload.len(),
            payload.len(),
            &payload,
            fds,
        );
    }
}

/// `patron-client make DATA --seed` (16 KiB pieces) of `size` random bytes at
/// `seed/NAME` on `state`'s broker: the .torrent's path.
pub fn make_seed(sandbox: &Sandbox, state: &Path, name: &str, size: usize) -> PathBuf {
    let data = sandbox.random_file(&format!("seed/{name}"), size);
    let torrent = sandbox.path(&format!("{name}.torrent"));
    let mut make = sandbox.client(state);
    make.args(["make", "--seed", "--piece-size", "16384", "--output"])
        .arg(&torrent)
        .arg(&data);
    run(make).expect_code(0);
    torrent
}

/// Makes a .torrent of a small local file (nothing is seeded) and returns its path. A broker
/// of its own does the hashing, so that the tests' brokers start and stop as they need.
pub fn made_torrent(sandbox: &Sandbox, name: &str) -> PathBuf {
    let data = sandbox.random_file(&format!("data/{name}"), 40_000);
    let torrent = sandbox.path(&format!("{name}.torrent"));
    let maker = sandbox.state_dir(&format!("maker-{name}"));
    sandbox.make_torrent(&maker, &data, &torrent);
    torrent
}

/// `patron-client --json list` on `state`'s broker: one object per torrent.
pub fn listed(sandbox: &Sandbox, state: &Path) -> Vec<Value> {
    let mut list = sandbox.client(state);
    list.args(["--json", "list"]);
    run(list).expect_code(0).json_lines()
}
