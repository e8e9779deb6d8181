//! Other BitTorrent clients as the broker's peers, for the swarm tests
//! (`tests/tests/swarm_*.rs`): Debian's `opentracker`, `qbittorrent-nox` (driven through its
//! Web API), `rtorrent` (XML-RPC over a unix socket) and `python3-libtorrent`
//! (`tests/peers/libtorrent_peer.py`).
//!
//! Every one of them listens on 127.0.0.1 only, with DHT, local discovery, PEX, UPnP and uTP
//! off (libtorrent is 10–25× slower with uTP on loopback: DESIGN §10), in a folder of the
//! test's sandbox; each is started by the test and killed by its pid when dropped, and dies
//! with the test binary ([`crate::die_with_parent`]; opentracker, which runs as nobody and
//! so loses that signal, is killed by the watchdog: [`crate::kill_at_abort`]).

use crate::{have_program, have_root, run, wait_for, Running, Sandbox, STEP_TIMEOUT};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The piece size of every torrent here: 16 KiB, so that small trees have many pieces.
pub const PIECE: u64 = 16 * 1024;

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether something listens on TCP `port` (any address), read from `/proc/net/tcp{,6}`
/// rather than by connecting: transmission drops an incoming peer while a handshake from the
/// same address is pending, and a probe that connects and hangs up leaves one pending for up
/// to half a second — long enough to turn the broker's real connection away.
pub fn listening(port: u16) -> bool {
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|table| {
            table.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // State 0A is LISTEN.
                fields.get(1).is_some_and(|local| local.ends_with(&port))
                    && fields.get(3) == Some(&"0A")
            })
        })
    })
}

/// A command that dies with the test.
pub fn tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    crate::die_with_parent(&mut cmd);
    cmd
}

/// The tree every swarm test shares, written at `relative` in the sandbox: nested UTF-8
/// names, an empty file, a file of exactly one piece, and files whose sizes are not
/// multiples of the piece size (nor is the whole).
pub fn the_tree(sandbox: &Sandbox, relative: &str) -> PathBuf {
    let files: [(&str, usize); 5] = [
        ("Ωmega/ünïcode – dir/日本語 ファイル.bin", 50_001),
        ("Ωmega/tail.bin", 100_003),
        ("one-piece.bin", PIECE as usize),
        ("empty", 0),
        ("zz/ü/last.dat", 7_777),
    ];
    for (path, size) in files {
        sandbox.random_file(&format!("{relative}/{path}"), size);
    }
    sandbox.path(relative)
}

/// Asserts that the tree at `got` holds exactly the files of `want`, byte for byte (no file
/// missing, none extra).
pub fn same_tree(want: &Path, got: &Path) {
    let list = |root: &Path| {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .flatten()
            {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path.strip_prefix(root).expect("inside").to_path_buf());
                }
            }
        }
        files.sort();
        files
    };
    let (want_files, got_files) = (list(want), list(got));
    assert_eq!(want_files, got_files, "the trees' files differ");
    for file in want_files {
        assert_eq!(
            crate::sha256(&want.join(&file)),
            crate::sha256(&got.join(&file)),
            "{} differs",
            got.join(&file).display()
        );
    }
}

/// `patron-client make` of `data` by the broker of `state`; `seed` seeds it there, and
/// `tracker` names an announce URL. Returns the .torrent and its info hash.
pub fn make(
    sandbox: &Sandbox,
    state: &Path,
    data: &Path,
    name: &str,
    tracker: Option<&str>,
    seed: bool,
) -> (PathBuf, String) {
    let torrent = sandbox.path(&format!("{name}.torrent"));
    let mut cmd = sandbox.client(state);
    cmd.args(["--json", "make"])
        .arg(data)
        .arg("--output")
        .arg(&torrent);
    cmd.args(["--piece-size", &PIECE.to_string()]);
    if let Some(url) = tracker {
        cmd.args(["--tracker", url]);
    }
    if seed {
        cmd.arg("--seed");
    }
    let made = run(cmd).expect_code(0).json_lines();
    let info_hash = made
        .iter()
        .find_map(|line| line["info_hash"].as_str())
        .expect("make prints the info hash")
        .to_owned();
    (torrent, info_hash)
}

/// A magnet link of `info_hash` naming `peer` (`x.pe`, BEP 9) and no tracker.
pub fn magnet(info_hash: &str, name: &str, peer: &str) -> String {
    format!("magnet:?xt=urn:btih:{info_hash}&dn={name}&x.pe={peer}")
}

/// One HTTP/1.0 GET to 127.0.0.1:`port`; the body.
fn http_get(port: u16, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read");
    let start = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| at + 4);
    reply.split_off(start)
}

/// `%XX` of every byte of a 40-digit info hash.
fn url_escaped_hash(info_hash: &str) -> String {
    let bytes = hex::decode(info_hash).expect("a hex info hash");
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The number after `key` in a bencoded dictionary (`<len>:<key>i<n>e`).
fn bencoded_int(body: &[u8], key: &str) -> Option<u64> {
    let pattern = format!("{}:{key}i", key.len());
    let text = String::from_utf8_lossy(body);
    let at = text.find(&pattern)? + pattern.len();
    text[at..].split('e').next()?.parse().ok()
}

/// Debian's opentracker on 127.0.0.1, serving only the info hashes it was given (its
/// whitelist). It changes root to a folder of its own and runs as `nobody`, which needs
/// root: the tests that use it say so ([`OpenTracker::available`]).
pub struct OpenTracker {
    _process: Running,
    port: u16,
}

impl OpenTracker {
    /// Whether opentracker can run here (the program, and root for its chroot).
    pub fn available() -> bool {
        have_program("opentracker", "opentracker") && have_root("opentracker changes root")
    }

    /// A port for the tracker, to name in torrents before it starts.
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// Starts it on `port`, serving `info_hashes`.
    pub fn start(sandbox: &Sandbox, port: u16, info_hashes: &[&str]) -> OpenTracker {
        let dir = sandbox.folder(&format!("opentracker-{port}"));
        // Searchable by `nobody` once it is the tracker's root.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let list: String = info_hashes.iter().map(|h| format!("{h}\n")).collect();
        std::fs::write(dir.join("whitelist.txt"), list).expect("whitelist");
        // Read after the change of root: the path is the tracker's own.
        std::fs::write(
            dir.join("opentracker.conf"),
            "access.whitelist /whitelist.txt\n",
        )
        .expect("conf");
        let mut cmd = tool("opentracker");
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-P"])
            .arg(port.to_string())
            .arg("-f")
            .arg(dir.join("opentracker.conf"))
            .arg("-d")
            .arg(&dir)
            .args(["-u", "nobody"]);
        let process = Running::start(cmd);
        // Run as nobody, it loses its parent-death signal: the watchdog kills it instead.
        crate::kill_at_abort(process.pid());
        wait_for(
            &format!("opentracker to listen on {port}"),
            STEP_TIMEOUT,
            || listening(port),
        );
        OpenTracker {
            _process: process,
            port,
        }
    }

    /// Its announce URL (opentracker answers only `/announce` on localhost: DESIGN §10).
    pub fn url_of(port: u16) -> String {
        format!("http://127.0.0.1:{port}/announce")
    }

    /// (seeds, leechers) it knows of for `info_hash`, from its scrape.
    pub fn scrape(&self, info_hash: &str) -> (u64, u64) {
        let body = http_get(
            self.port,
            &format!("/scrape?info_hash={}", url_escaped_hash(info_hash)),
        );
        (
            bencoded_int(&body, "complete").unwrap_or(0),
            bencoded_int(&body, "incomplete").unwrap_or(0),
        )
    }

    /// Waits until it has heard of `seeds` seeds and `leechers` leechers of `info_hash`.
    pub fn wait_for_swarm(&self, info_hash: &str, seeds: u64, leechers: u64) {
        wait_for(
            &format!("the tracker to know {seeds} seed(s) and {leechers} leecher(s)"),
            STEP_TIMEOUT,
            || {
                let (s, l) = self.scrape(info_hash);
                s >= seeds && l >= leechers
            },
        );
    }
}

impl Drop for OpenTracker {
    fn drop(&mut self) {
        // Its `Running` kills it by pid after this.
        crate::forget_at_abort(self._process.pid());
    }
}

/// python3-libtorrent, one session, through `tests/peers/libtorrent_peer.py`: it seeds or
/// fetches what it is given and says so on stdout, one JSON line per event.
pub struct Libtorrent {
    process: Running,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Libtorrent {
    /// Whether Debian's python3-libtorrent is installed.
    pub fn available() -> bool {
        let found = Command::new("/usr/bin/python3")
            .args(["-c", "import libtorrent"])
            .output()
            .is_ok_and(|o| o.status.success());
        crate::require(
            found,
            "python3-libtorrent",
            "apt-get install python3-libtorrent (scripts/test installs it when it can)",
        )
    }

    /// Starts it on `what` (a .torrent or a magnet link) saving into (or seeding from)
    /// `folder`, dialling `peer` if given; it runs until dropped.
    pub fn start(what: &str, folder: &Path, peer: Option<&str>) -> Libtorrent {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/libtorrent_peer.py");
        let mut cmd = tool("/usr/bin/python3");
        cmd.arg(script).arg(what).arg(folder);
        if let Some(peer) = peer {
            cmd.arg(peer);
        }
        let process = Running::start(cmd);
        let mut port = 0;
        wait_for("libtorrent to listen", STEP_TIMEOUT, || {
            port = Self::event(&process, "listening")
                .and_then(|e| e["port"].as_u64())
                .unwrap_or(0) as u16;
            port != 0
        });
        Libtorrent { process, port }
    }

    fn event(process: &Running, name: &str) -> Option<serde_json::Value> {
        process
            .stdout_so_far()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == name)
    }

    /// Its address, for `--peer` and `peers --add`.
    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until it has every piece (a seed, or a download finished).
    pub fn wait_complete(&self) {
        wait_for("libtorrent to have every piece", 2 * STEP_TIMEOUT, || {
            Self::event(&self.process, "complete").is_some()
        });
    }
}

/// A qbittorrent-nox with a profile folder of its own, driven through its Web API on
/// 127.0.0.1 with a password of its own (any local user could otherwise drive it, and set it
/// to run a program when a torrent completes, as the tests' user: root in CI).
pub struct Qbittorrent {
    _process: Running,
    web: u16,
    cookies: PathBuf,
    /// The port it takes peers on (127.0.0.1).
    pub port: u16,
}

impl Qbittorrent {
    /// Whether qbittorrent-nox is installed.
    pub fn available() -> bool {
        have_program("qbittorrent-nox", "qbittorrent-nox")
    }

    /// Starts one whose default save folder is `save`.
    pub fn start(sandbox: &Sandbox, name: &str, save: &Path) -> Qbittorrent {
        let profile = sandbox.folder(&format!("{name}-profile"));
        let (port, web) = (free_port(), free_port());
        let config = profile.join("qBittorrent/config");
        std::fs::create_dir_all(&config).expect("profile");
        let password = hex::encode(rand::random::<[u8; 16]>());
        let hash = qbittorrent_password_hash(&password);
        // TCP only (no uTP), nothing beyond lo, no DHT, PEX, LSD, UPnP, and no download of
        // the peer-country database (its only reach for the internet at a start).
        let conf = format!(
            "[LegalNotice]\nAccepted=true\n\n\
             [BitTorrent]\nSession\\Port={port}\nSession\\Interface=lo\n\
             Session\\InterfaceName=lo\nSession\\InterfaceAddress=127.0.0.1\n\
             Session\\DHTEnabled=false\nSession\\PeXEnabled=false\nSession\\LSDEnabled=false\n\
             Session\\BTProtocol=TCP\nSession\\MultiConnectionsPerIp=true\n\
             Session\\QueueingSystemEnabled=false\nSession\\DefaultSavePath={save}\n\n\
             [Preferences]\nWebUI\\Address=127.0.0.1\nWebUI\\Port={web}\n\
             WebUI\\Username=admin\nWebUI\\Password_PBKDF2=\"{hash}\"\n\
             WebUI\\CSRFProtection=false\n\
             WebUI\\HostHeaderValidation=false\nConnection\\UPnP=false\n\
             Connection\\ResolvePeerCountries=false\nGeneral\\Locale=en\n",
            save = save.display()
        );
        std::fs::write(config.join("qBittorrent.conf"), conf).expect("config");
        let mut cmd = tool("qbittorrent-nox");
        cmd.arg(format!("--profile={}", profile.display()));
        let process = Running::start(cmd);
        let qb = Qbittorrent {
            _process: process,
            web,
            cookies: profile.join("cookies.txt"),
            port,
        };
        wait_for(
            "qBittorrent's Web API and its peer port",
            STEP_TIMEOUT,
            || listening(web) && listening(port),
        );
        let mut login = tool("curl");
        login
            .args(["-sS", "--fail", "--max-time", "30", "-c"])
            .arg(&qb.cookies)
            .args(["--data-urlencode", "username=admin", "--data-urlencode"])
            .arg(format!("password={password}"))
            .arg(format!("http://127.0.0.1:{web}/api/v2/auth/login"));
        let said = run(login).expect_code(0).stdout;
        assert_eq!(said.trim(), "Ok.", "qBittorrent refused the login");
        qb
    }

    /// Its address, for `--peer` and `peers --add`.
    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn api(&self, path: &str, form: &[(&str, String)]) -> String {
        let mut cmd = tool("curl");
        cmd.args(["-sS", "--fail", "--max-time", "30", "-b"])
            .arg(&self.cookies);
        for (key, value) in form {
            cmd.arg("-F").arg(format!("{key}={value}"));
        }
        cmd.arg(format!("http://127.0.0.1:{}/api/v2/{path}", self.web));
        run(cmd).expect_code(0).stdout
    }

    /// Adds a .torrent (`@path`) or a magnet link, saving into `save`.
    pub fn add(&self, what: &str, save: &Path) {
        let key = if what.starts_with("magnet:") {
            ("urls", what.to_owned())
        } else {
            ("torrents", format!("@{what}"))
        };
        let reply = self.api(
            "torrents/add",
            &[key, ("savepath", save.display().to_string())],
        );
        assert_eq!(reply.trim(), "Ok.", "qBittorrent refused the torrent");
    }

    /// Dials `peer` for the torrent `info_hash`.
    pub fn add_peer(&self, info_hash: &str, peer: &str) {
        self.api(
            "torrents/addPeers",
            &[("hashes", info_hash.to_owned()), ("peers", peer.to_owned())],
        );
    }

    /// The torrent's progress (0–1), if qBittorrent has it.
    pub fn progress(&self, info_hash: &str) -> Option<f64> {
        let info = self.api(&format!("torrents/info?hashes={info_hash}"), &[]);
        let list: serde_json::Value = serde_json::from_str(&info).ok()?;
        list.get(0)?["progress"].as_f64()
    }

    /// Waits until it has every piece of `info_hash`.
    pub fn wait_complete(&self, info_hash: &str) {
        wait_for("qBittorrent to have every piece", 2 * STEP_TIMEOUT, || {
            self.progress(info_hash) == Some(1.0)
        });
    }
}

/// An rtorrent with a session folder of its own, driven by XML-RPC over a unix socket (SCGI).
pub struct Rtorrent {
    _process: Running,
    socket: PathBuf,
    /// The port it takes peers on (127.0.0.1).
    pub port: u16,
}

impl Rtorrent {
    /// Whether rtorrent is installed.
    pub fn available() -> bool {
        have_program("rtorrent", "rtorrent")
    }

    /// Starts one whose download folder is `folder` (where it looks for what it seeds).
    pub fn start(sandbox: &Sandbox, name: &str, folder: &Path) -> Rtorrent {
        let home = sandbox.folder(&format!("{name}-rtorrent"));
        let session = sandbox.folder(&format!("{name}-rtorrent/session"));
        let socket = home.join("rpc.sock");
        let port = free_port();
        let rc = format!(
            "directory.default.set = {folder}\nsession.path.set = {session}\n\
             network.port_range.set = {port}-{port}\nnetwork.port_random.set = no\n\
             network.bind_address.set = 127.0.0.1\ndht.mode.set = disable\n\
             protocol.pex.set = no\ntrackers.use_udp.set = no\nsystem.daemon.set = true\n\
             network.scgi.open_local = {socket}\n",
            folder = folder.display(),
            session = session.display(),
            socket = socket.display(),
        );
        std::fs::write(home.join("rtorrent.rc"), rc).expect("rc");
        let mut cmd = tool("rtorrent");
        cmd.arg("-n")
            .arg("-o")
            .arg(format!("import={}", home.join("rtorrent.rc").display()))
            // Its home for anything it might write there.
            .env("HOME", &home);
        let process = Running::start(cmd);
        wait_for("rtorrent's socket and its peer port", STEP_TIMEOUT, || {
            socket.exists() && listening(port)
        });
        Rtorrent {
            _process: process,
            socket,
            port,
        }
    }

    /// Its address, for `--peer` and `peers --add`.
    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One XML-RPC call with string parameters; the reply's XML.
    pub fn call(&self, method: &str, params: &[&str]) -> String {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let params: String = params
            .iter()
            .map(|p| {
                format!(
                    "<param><value><string>{}</string></value></param>",
                    escape(p)
                )
            })
            .collect();
        let body = format!(
            "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName>\
             <params>{params}</params></methodCall>"
        );
        let headers = format!("CONTENT_LENGTH\0{}\0SCGI\x001\0", body.len());
        let mut stream =
            std::os::unix::net::UnixStream::connect(&self.socket).expect("rtorrent's socket");
        stream
            .set_read_timeout(Some(STEP_TIMEOUT))
            .expect("timeout");
        write!(stream, "{}:{headers},{body}", headers.len()).expect("send");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        reply
    }

    /// Loads and starts a .torrent or a magnet link.
    pub fn add(&self, what: &str) {
        let reply = self.call("load.start", &["", what]);
        assert!(
            !reply.contains("<fault>"),
            "rtorrent refused {what}: {reply}"
        );
    }

    /// Whether it has every piece of `info_hash` (false while it does not know it).
    pub fn complete(&self, info_hash: &str) -> bool {
        let reply = self.call("d.complete", &[&info_hash.to_uppercase()]);
        reply.contains("<i8>1</i8>") || reply.contains("<i4>1</i4>")
    }

    /// Waits until it has every piece of `info_hash`.
    pub fn wait_complete(&self, info_hash: &str) {
        wait_for("rtorrent to have every piece", 2 * STEP_TIMEOUT, || {
            self.complete(info_hash)
        });
    }
}

/// How long a broker's fetch from another client may take (their pacing, librqbit's
/// back-off between dials); the whole test stays bounded by the harness's watchdog.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What the swarm scenarios ask of another client.
pub trait Client {
    /// Its name, for messages.
    fn name(&self) -> &'static str;
    /// Adds `what` (a .torrent's path or a magnet link) of `info_hash`, seeding from (or
    /// saving into) `folder`; it dials `dial` if given and if it can dial a peer it is given
    /// (else it says false, and the broker must dial it).
    fn add(&mut self, what: &str, info_hash: &str, folder: &Path, dial: Option<&str>) -> bool;
    /// The address it takes peers on for `info_hash`.
    fn peer(&self, info_hash: &str) -> String;
    /// Waits until it has every piece of `info_hash`.
    fn wait_complete(&self, info_hash: &str);
    /// Waits until it has the metadata of `info_hash` (added by magnet) and a torrent to
    /// download it into; for a client that takes no peer to dial, which needs a new
    /// connection for that torrent.
    fn wait_metadata(&self, _info_hash: &str) {}
}

impl Client for Qbittorrent {
    fn name(&self) -> &'static str {
        "qBittorrent"
    }
    fn add(&mut self, what: &str, info_hash: &str, folder: &Path, dial: Option<&str>) -> bool {
        Qbittorrent::add(self, what, folder);
        if let Some(peer) = dial {
            wait_for("qBittorrent to hold the torrent", STEP_TIMEOUT, || {
                self.progress(info_hash).is_some()
            });
            self.add_peer(info_hash, peer);
        }
        true
    }
    fn peer(&self, _: &str) -> String {
        Qbittorrent::peer(self)
    }
    fn wait_complete(&self, info_hash: &str) {
        Qbittorrent::wait_complete(self, info_hash)
    }
}

/// One rtorrent serves every folder: each load sets its torrent's (`d.directory.set`).
impl Client for Rtorrent {
    fn name(&self) -> &'static str {
        "rtorrent"
    }
    fn add(&mut self, what: &str, _: &str, folder: &Path, _: Option<&str>) -> bool {
        // It drops a magnet without a tracker, as it does a torrent, when DHT is off.
        let what = if what.starts_with("magnet:") && !what.contains("&tr=") {
            format!(
                "{what}&tr={}",
                dead_tracker().replace(':', "%3A").replace('/', "%2F")
            )
        } else {
            what.to_owned()
        };
        let reply = self.call(
            "load.start",
            &["", &what, &format!("d.directory.set={}", folder.display())],
        );
        assert!(
            !reply.contains("<fault>"),
            "rtorrent refused {what}: {reply}"
        );
        // rtorrent takes no peer to dial (its XML-RPC has no call for it).
        false
    }
    fn peer(&self, _: &str) -> String {
        Rtorrent::peer(self)
    }
    fn wait_complete(&self, info_hash: &str) {
        Rtorrent::wait_complete(self, info_hash)
    }
    fn wait_metadata(&self, info_hash: &str) {
        // A magnet is a ".meta" download first; once the metadata is in, rtorrent replaces
        // it with the torrent itself, under the same hash.
        wait_for(
            "rtorrent to have the magnet's metadata",
            STEP_TIMEOUT,
            || {
                let reply = self.call("d.is_meta", &[&info_hash.to_uppercase()]);
                !reply.contains("<fault>")
                    && (reply.contains("<i8>0</i8>") || reply.contains("<i4>0</i4>"))
            },
        );
    }
}

/// python3-libtorrent: a session (a process) per torrent.
#[derive(Default)]
pub struct Libtorrents(Vec<(String, Libtorrent)>);

impl Libtorrents {
    /// Whether Debian's python3-libtorrent is installed.
    pub fn available() -> bool {
        Libtorrent::available()
    }

    fn of(&self, info_hash: &str) -> &Libtorrent {
        &self
            .0
            .iter()
            .find(|(h, _)| h == info_hash)
            .expect("a libtorrent session for this torrent")
            .1
    }
}

impl Client for Libtorrents {
    fn name(&self) -> &'static str {
        "libtorrent"
    }
    fn add(&mut self, what: &str, info_hash: &str, folder: &Path, dial: Option<&str>) -> bool {
        self.0
            .push((info_hash.to_owned(), Libtorrent::start(what, folder, dial)));
        true
    }
    fn peer(&self, info_hash: &str) -> String {
        self.of(info_hash).peer()
    }
    fn wait_complete(&self, info_hash: &str) {
        self.of(info_hash).wait_complete()
    }
}

/// A tracker URL nothing answers at: for the torrents of the peer and magnet cells, which
/// rtorrent refuses without a tracker (with DHT off).
fn dead_tracker() -> String {
    OpenTracker::url_of(free_port())
}

/// The broker fetches, from `client` seeding them, three trees: one with `--peer`, one
/// through opentracker alone (no peer named), one by a magnet link naming only the client
/// (`x.pe`: the metadata comes from the client, BEP 9). Each arrives byte-identical.
pub fn the_broker_fetches_from(sandbox: &Sandbox, client: &mut dyn Client) {
    let maker = sandbox.state_dir("maker");
    let tracker_port = OpenTracker::reserve_port();
    let seeded = sandbox.folder("seeded");
    let cells = [
        ("by-peer", dead_tracker()),
        ("by-tracker", OpenTracker::url_of(tracker_port)),
        ("by-magnet", dead_tracker()),
    ];
    let mut made = Vec::new();
    for (cell, tracker) in &cells {
        let tree = the_tree(sandbox, &format!("seeded/{cell}"));
        let (torrent, info_hash) = make(sandbox, &maker, &tree, cell, Some(tracker), false);
        made.push((*cell, tree, torrent, info_hash));
    }
    let hashes: Vec<&str> = made.iter().map(|m| m.3.as_str()).collect();
    let tracker = OpenTracker::start(sandbox, tracker_port, &hashes);
    for (_, _, torrent, info_hash) in &made {
        client.add(&torrent.display().to_string(), info_hash, &seeded, None);
        client.wait_complete(info_hash);
    }
    tracker.wait_for_swarm(&made[1].3, 1, 0);

    let leecher = sandbox.state_dir("leecher");
    let mut fetches = Vec::new();
    for (cell, tree, torrent, info_hash) in &made {
        let out = sandbox.folder(&format!("fetched-{cell}"));
        let peer = client.peer(info_hash);
        let source = match *cell {
            "by-peer" => torrent.display().to_string(),
            "by-tracker" => torrent.display().to_string(),
            _ => magnet(info_hash, cell, &peer),
        };
        let dial = (*cell == "by-peer").then_some(peer.as_str());
        let mut add = sandbox.add_command(&leecher, &source, &out, dial);
        add.arg("--wait");
        fetches.push((cell, tree, out, Running::start(add)));
    }
    for (cell, tree, out, fetch) in fetches {
        let done = fetch.finish(FETCH_TIMEOUT);
        assert_eq!(
            done.code(),
            0,
            "{cell} from {}: {}{}\nthe broker's log:\n{}",
            client.name(),
            done.stdout,
            done.stderr,
            std::fs::read_to_string(leecher.join("broker.log")).unwrap_or_default()
        );
        same_tree(tree, &out.join(cell));
    }
}

/// `client` fetches three trees that `patron-client make --seed` made: one dialling the
/// broker (or, for a client that takes no peer, dialled by it: `peers --add`), one through
/// opentracker alone (the client announces first, so the broker's first announce names
/// it and the broker dials it: a client that never dials still gets the data), one by a
/// magnet link naming only the broker (`x.pe`). Each arrives byte-identical.
pub fn fetches_from_the_broker(sandbox: &Sandbox, client: &mut dyn Client) {
    let seeder = sandbox.state_dir("seeder");
    let broker = sandbox.broker(&seeder, &[]);
    let broker_peer = broker.peer();
    let tracker_port = OpenTracker::reserve_port();
    let trees: Vec<PathBuf> = ["by-peer", "by-tracker", "by-magnet"]
        .iter()
        .map(|cell| the_tree(sandbox, &format!("shared/{cell}")))
        .collect();

    // By peer: the broker seeds it; the client dials the broker, or the broker the client.
    let (torrent, info_hash) = make(
        sandbox,
        &seeder,
        &trees[0],
        "by-peer",
        Some(&dead_tracker()),
        true,
    );
    let out = sandbox.folder("got-by-peer");
    if !client.add(
        &torrent.display().to_string(),
        &info_hash,
        &out,
        Some(&broker_peer),
    ) {
        dial(sandbox, &seeder, &info_hash, &client.peer(&info_hash));
    }
    client.wait_complete(&info_hash);
    same_tree(&trees[0], &out.join("by-peer"));

    // Through the tracker: the torrent is made first (for its info hash), the client
    // announces, and only then does the broker seed it.
    let url = OpenTracker::url_of(tracker_port);
    let (torrent, info_hash) = make(sandbox, &seeder, &trees[1], "by-tracker", Some(&url), false);
    let tracker = OpenTracker::start(sandbox, tracker_port, &[&info_hash]);
    let out = sandbox.folder("got-by-tracker");
    client.add(&torrent.display().to_string(), &info_hash, &out, None);
    tracker.wait_for_swarm(&info_hash, 0, 1);
    let mut seed = sandbox.add_command(&seeder, &torrent, trees[1].parent().expect("parent"), None);
    seed.arg("--overwrite");
    run(seed).expect_code(0);
    client.wait_complete(&info_hash);
    same_tree(&trees[1], &out.join("by-tracker"));

    // By magnet, naming only the broker.
    let (_, info_hash) = make(sandbox, &seeder, &trees[2], "by-magnet", None, true);
    let out = sandbox.folder("got-by-magnet");
    let link = magnet(&info_hash, "by-magnet", &broker_peer);
    if !client.add(&link, &info_hash, &out, None) {
        // The metadata comes over one connection, the pieces over another: the broker
        // dials the peer again once it has a torrent to take them into.
        dial(sandbox, &seeder, &info_hash, &client.peer(&info_hash));
        client.wait_metadata(&info_hash);
        dial(sandbox, &seeder, &info_hash, &client.peer(&info_hash));
    }
    client.wait_complete(&info_hash);
    same_tree(&trees[2], &out.join("by-magnet"));
}

/// `patron-client peers INFOHASH --add PEER` on the broker of `state`.
fn dial(sandbox: &Sandbox, state: &Path, info_hash: &str, peer: &str) {
    let mut cmd = sandbox.client(state);
    cmd.args(["peers", info_hash, "--add", peer]);
    run(cmd).expect_code(0);
}

/// How a [`WirePeer`] behaves once the handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Has every piece and serves every request with the right data.
    Honest,
    /// Has every piece and serves every request with wrong data (each byte flipped).
    Liar,
    /// Has every piece, sends the first block of the first piece asked for, and hangs up.
    LeavesMidPiece,
    /// Has every piece and never unchokes.
    ChokesForever,
    /// Hangs up right after its handshake.
    LeavesAfterHandshake,
    /// Has every piece, never sends the first block of any, and sends the others wrong: it
    /// holds pieces it never completes, for an honest peer to take over.
    WithholdsFirstBlocks,
    /// Offers the extension protocol (BEP 10) and sends a piece of metadata (BEP 9) at once,
    /// before its extended handshake; then hangs up.
    MetadataBeforeHandshake,
    /// Offers PEX (BEP 11), names 5,000 peers with port 0 in one message, and never
    /// unchokes.
    PexFlood,
}

/// A peer of the tests' own speaking the BitTorrent wire protocol (BEP 3, no extension) on
/// 127.0.0.1, seeding one single-file torrent's `data` as [`Behaviour`] says; a thread per
/// connection. It counts the connections it took.
pub struct WirePeer {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    interested: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WirePeer {
    /// Starts one for the torrent `info_hash` (hex) of `data` in pieces of `piece`.
    pub fn start(info_hash: &str, data: Vec<u8>, piece: usize, behaviour: Behaviour) -> WirePeer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a wire peer");
        let addr = listener.local_addr().expect("its address");
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let requests = std::sync::Arc::new(AtomicUsize::new(0));
        let interested = std::sync::Arc::new(AtomicUsize::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let info_hash: [u8; 20] = hex::decode(info_hash)
            .expect("hex")
            .try_into()
            .expect("20 bytes");
        let data = std::sync::Arc::new(data);
        {
            let counters = (requests.clone(), interested.clone());
            let (connections, stop) = (connections.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let (data, (requests, interested), stop) =
                        (data.clone(), counters.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let peer = Served {
                            info_hash: &info_hash,
                            data: &data,
                            piece,
                            behaviour,
                            requests: &requests,
                            interested: &interested,
                        };
                        let _ = serve(stream, &peer, &stop);
                    });
                }
            });
        }
        WirePeer {
            addr,
            connections,
            requests,
            interested,
            stop,
        }
    }

    /// Its address, for `--peer`.
    pub fn peer(&self) -> String {
        self.addr.to_string()
    }

    /// How many connections it took so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times it was told "interested" so far, on all its connections: the answer
    /// to its bitfield, so everything it sent before that was read.
    pub fn interested(&self) -> usize {
        self.interested.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many block requests it was sent so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for WirePeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Its accept returns for this connection, and it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// What a [`WirePeer`]'s connection serves, and where it counts requests.
struct Served<'a> {
    info_hash: &'a [u8; 20],
    data: &'a [u8],
    piece: usize,
    behaviour: Behaviour,
    requests: &'a std::sync::atomic::AtomicUsize,
    interested: &'a std::sync::atomic::AtomicUsize,
}

/// One connection of a [`WirePeer`].
fn serve(
    mut stream: TcpStream,
    peer: &Served<'_>,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    let Served {
        info_hash,
        data,
        piece,
        behaviour,
        requests,
        interested,
    } = *peer;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut theirs = [0u8; 68];
    read_all(&mut stream, &mut theirs, stop)?;
    if &theirs[..20] != b"\x13BitTorrent protocol" || &theirs[28..48] != info_hash {
        return Ok(());
    }
    let mut ours = Vec::with_capacity(68);
    ours.extend_from_slice(b"\x13BitTorrent protocol");
    let extensions = matches!(
        behaviour,
        Behaviour::MetadataBeforeHandshake | Behaviour::PexFlood
    );
    ours.extend_from_slice(&[0, 0, 0, 0, 0, if extensions { 0x10 } else { 0 }, 0, 0]);
    ours.extend_from_slice(info_hash);
    ours.extend_from_slice(b"-TP0001-wirepeer0001");
    stream.write_all(&ours)?;
    if behaviour == Behaviour::LeavesAfterHandshake {
        return Ok(());
    }
    if behaviour == Behaviour::MetadataBeforeHandshake {
        // Extended message 3 is librqbit's ut_metadata; a data message of piece 0.
        let mut payload = vec![3u8];
        payload.extend_from_slice(b"d8:msg_typei1e5:piecei0e10:total_sizei16ee");
        payload.extend_from_slice(&[0u8; 16]);
        send(&mut stream, 20, &payload)?;
        std::thread::sleep(Duration::from_millis(500));
        return Ok(());
    }
    if behaviour == Behaviour::PexFlood {
        send(&mut stream, 20, b"\x00d1:md6:ut_pexi1eee")?;
        let mut added = Vec::with_capacity(6 * 5000);
        for n in 0..5000u32 {
            added.extend_from_slice(&[127, 1, (n >> 8) as u8, n as u8, 0, 0]);
        }
        // Extended message 1 is librqbit's ut_pex.
        let mut payload = vec![1u8];
        payload.extend_from_slice(format!("d5:added{}:", added.len()).as_bytes());
        payload.extend_from_slice(&added);
        payload.push(b'e');
        send(&mut stream, 20, &payload)?;
    }
    let pieces = data.len().div_ceil(piece);
    let mut bitfield = vec![0u8; pieces.div_ceil(8)];
    for index in 0..pieces {
        bitfield[index / 8] |= 0x80 >> (index % 8);
    }
    send(&mut stream, 5, &bitfield)?;
    let never_unchokes = matches!(behaviour, Behaviour::ChokesForever | Behaviour::PexFlood);
    if !never_unchokes {
        send(&mut stream, 1, &[])?;
    }
    loop {
        let mut len = [0u8; 4];
        read_all(&mut stream, &mut len, stop)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            continue; // keep-alive
        }
        if len > 1 << 20 {
            return Ok(());
        }
        let mut message = vec![0u8; len];
        read_all(&mut stream, &mut message, stop)?;
        if message[0] == 2 {
            interested.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Only a request (6: index, begin, length) asks for an answer.
        if message[0] != 6 || len != 13 {
            continue;
        }
        requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if never_unchokes {
            continue;
        }
        let field = |at: usize| {
            u32::from_be_bytes(message[at..at + 4].try_into().expect("4 bytes")) as usize
        };
        let (index, begin, length) = (field(1), field(5), field(9));
        let start = index * piece + begin;
        let Some(block) = data.get(start..start + length) else {
            return Ok(());
        };
        let mut payload = Vec::with_capacity(8 + length);
        payload.extend_from_slice(&message[1..9]);
        match behaviour {
            Behaviour::WithholdsFirstBlocks if begin == 0 => continue,
            Behaviour::Liar | Behaviour::WithholdsFirstBlocks => {
                payload.extend(block.iter().map(|b| !b))
            }
            _ => payload.extend_from_slice(block),
        }
        send(&mut stream, 7, &payload)?;
        if behaviour == Behaviour::LeavesMidPiece {
            return Ok(());
        }
    }
}

fn send(stream: &mut TcpStream, id: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(5 + payload.len());
    message.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    message.push(id);
    message.extend_from_slice(payload);
    stream.write_all(&message)
}

/// Fills `buf`, waiting through read timeouts until `stop`.
fn read_all(
    stream: &mut TcpStream,
    buf: &mut [u8],
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A raw connection to a peer at `addr` for the torrent `info_hash` (hex), after both
/// handshakes (`extensions`: ours offers BEP 10). Fails the test if the peer does not answer
/// its handshake within `within`.
pub fn raw_peer(addr: &str, info_hash: &str, extensions: bool, within: Duration) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect to the peer");
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut ours = Vec::with_capacity(68);
    ours.extend_from_slice(b"\x13BitTorrent protocol");
    ours.extend_from_slice(&[0, 0, 0, 0, 0, if extensions { 0x10 } else { 0 }, 0, 0]);
    ours.extend_from_slice(&hex::decode(info_hash).expect("hex"));
    ours.extend_from_slice(b"-TP0001-rawpeer00001");
    stream.write_all(&ours).expect("send the handshake");
    let mut theirs = [0u8; 68];
    stream
        .read_exact(&mut theirs)
        .unwrap_or_else(|e| panic!("no handshake from {addr} within {within:?}: {e}"));
    stream
}

/// One wire message: length, id, payload.
pub fn wire_message(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(5 + payload.len());
    message.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    message.push(id);
    message.extend_from_slice(payload);
    message
}

/// A TCP proxy on 127.0.0.1 to `target` that hangs up on its first connection and passes
/// the others through: a peer that drops the first connection (as qBittorrent did).
pub struct HangsUpFirst {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections it took so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HangsUpFirst {
    /// Starts one in front of `target` (`IP:PORT`).
    pub fn start(target: &str) -> HangsUpFirst {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy");
        let addr = listener.local_addr().expect("its address");
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (target, counted, stopped) = (target.to_owned(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(inbound) = stream else { continue };
                if counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                    continue; // dropped: hung up on
                }
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        HangsUpFirst {
            addr,
            stop,
            connections,
        }
    }

    /// Its address.
    pub fn peer(&self) -> String {
        self.addr.to_string()
    }
}

/// qBittorrent's form of a Web UI password: `@ByteArray(SALT:KEY)`, both base64, the key
/// PBKDF2-HMAC-SHA512 of 100,000 rounds (computed by Debian's python3, which the swarm tests
/// need for libtorrent anyway).
fn qbittorrent_password_hash(password: &str) -> String {
    let mut cmd = tool("/usr/bin/python3");
    cmd.args([
        "-c",
        "import base64, hashlib, os, sys\n\
         salt = os.urandom(16)\n\
         key = hashlib.pbkdf2_hmac('sha512', sys.argv[1].encode(), salt, 100000)\n\
         print('@ByteArray(%s:%s)' % (base64.b64encode(salt).decode(), base64.b64encode(key).decode()))",
        password,
    ]);
    run(cmd).expect_code(0).stdout.trim().to_owned()
}

impl Drop for HangsUpFirst {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Its accept returns for this connection, and it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}
