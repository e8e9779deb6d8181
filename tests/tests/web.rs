//! The web patron (DESIGN §11, issue 20) through real clients no one here wrote: curl for
//! the API, the token, the `Host` and `Origin` checks, server-sent events and `Range`.

use e2e::{run, wait_for, Running, Sandbox, STEP_TIMEOUT};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A web patron started with `patron-client web`, and where it serves.
struct Web {
    process: Running,
    /// `127.0.0.1:PORT` (or empty on a unix socket).
    addr: String,
    /// The token of its URL (empty on a unix socket).
    token: String,
    /// The unix socket's path, if it serves one.
    socket: Option<String>,
}

impl Web {
    fn start(sandbox: &Sandbox, state: &Path, args: &[&str]) -> Web {
        let mut cmd = sandbox.client(state);
        cmd.arg("web").args(args);
        let process = Running::start(cmd);
        let mut first = String::new();
        wait_for("the web patron's first line", STEP_TIMEOUT, || {
            first = process.stdout_so_far();
            first.contains('\n')
        });
        let first = first.lines().next().unwrap_or_default().to_owned();
        if let Some(path) = first.strip_prefix("unix:") {
            return Web {
                process,
                addr: String::new(),
                token: String::new(),
                socket: Some(path.to_owned()),
            };
        }
        let rest = first.strip_prefix("http://").expect(&first);
        let (addr, token) = rest.split_once("/#token=").expect(&first);
        Web {
            addr: addr.to_owned(),
            token: token.to_owned(),
            process,
            socket: None,
        }
    }

    /// `curl` at `path` with the token as HTTP Basic's password, and `extra` arguments.
    fn curl(&self, path: &str, extra: &[&str]) -> e2e::Output {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"]);
        match &self.socket {
            Some(socket) => {
                cmd.args(["--unix-socket", socket]);
                cmd.arg(format!("http://localhost{path}"));
            }
            None => {
                cmd.args(["-u", &format!("anyone:{}", self.token)]);
                cmd.arg(format!("http://{}{path}", self.addr));
            }
        }
        cmd.args(extra);
        run(cmd)
    }

    /// The RPC's session id, as its 409 answer gives it (Transmission's exchange).
    fn rpc_session(&self) -> String {
        let (code, head) = Web::answer(&self.curl("/transmission/rpc", &["-X", "POST", "-D", "-"]));
        assert_eq!(code, 409, "{head}");
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-transmission-session-id:")
                    .map(|v| v.trim().to_owned())
            })
            .expect(&head)
    }

    /// A Transmission RPC call (`body`, JSON) under a session id fetched for it: the
    /// status code and body of the answer.
    fn rpc(&self, body: &str) -> (u16, String) {
        let session = self.rpc_session();
        Web::answer(&self.curl(
            "/transmission/rpc",
            &[
                "-X",
                "POST",
                "-H",
                &format!("X-Transmission-Session-Id: {session}"),
                "-d",
                body,
            ],
        ))
    }

    /// A Transmission RPC call that must succeed (200, `"result": "success"`): its answer.
    fn rpc_ok(&self, body: &str) -> Value {
        let (code, reply) = self.rpc(body);
        assert_eq!(code, 200, "{reply}");
        let value = serde_json::from_str::<Value>(&reply).expect(&reply);
        assert_eq!(value["result"], "success", "{body}: {value}");
        value
    }

    /// The status code and body of a curl run with `-w "\n%{http_code}"`.
    fn answer(out: &e2e::Output) -> (u16, String) {
        let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

fn have_curl() -> bool {
    e2e::have_program("curl", "curl")
}

/// The token, the `Host` and the `Origin`: what a page of another site, a wrong token or
/// none get, and what the token as a cookie or as Basic's password gets.
#[test]
fn only_the_token_holder_on_this_servers_name_may_use_it() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    assert_eq!(web.token.len(), 64, "{}", web.token);
    let token_file = state.join("web-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is owner-only");

    let plain = |path: &str, extra: &[&str]| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", web.addr))
            .args(extra);
        Web::answer(&run(cmd))
    };
    // No token: 401, and the way to give one.
    let (code, body) = plain("/api/torrents", &["-D", "-"]);
    assert_eq!(code, 401, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{body}"
    );
    // A wrong one: 401.
    let (code, _) = plain("/api/torrents", &["-u", &format!("u:{}", "0".repeat(64))]);
    assert_eq!(code, 401);
    // The right one, as Basic's password: the list.
    let (code, body) = Web::answer(&web.curl("/api/torrents", &[]));
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list["event"], "list", "{list}");
    // Another name for 127.0.0.1 (DNS rebinding): refused, token or not.
    let (code, body) = Web::answer(&web.curl("/api/torrents", &["-H", "Host: evil.example"]));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    // A change asked by a page of another origin: refused, token or not.
    let (code, body) = Web::answer(&web.curl(
        "/api/torrents/0/pause",
        &["-X", "POST", "-H", "Origin: http://evil.example"],
    ));
    assert_eq!(code, 403, "{body}");
    // The page trades the token for an HttpOnly, SameSite=Strict cookie that works alone.
    let login = format!("{{\"token\":\"{}\"}}", web.token);
    let (code, head) = plain(
        "/api/login",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &login,
            "-D",
            "-",
        ],
    );
    assert_eq!(code, 204, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie:")
                .then(|| l["set-cookie:".len()..].trim().to_owned())
        })
        .expect(&head);
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let (code, _) = plain("/api/torrents", &["-H", &format!("Cookie: {pair}")]);
    assert_eq!(code, 200);
    // The page itself is public (it holds no data), and says where it may load from.
    let (code, page) = plain("/", &["-D", "-"]);
    assert_eq!(code, 200);
    assert!(
        page.contains("torrent-patron") && page.contains("frame-ancestors 'none'"),
        "{page}"
    );
}

/// A file served while it downloads from a throttled seeder, with `Range`: the first byte,
/// the last bytes (fetched first, as `cat --offset` does), a suffix range, one beyond the
/// end (416), and the whole file, each byte-identical.
#[test]
fn files_are_served_with_range_while_they_download() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let (seeder, data) = e2e::slow_seeder(&sandbox, 3 * 1024 * 1024, "1M");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    patron
        .create(seeder.create_request(&downloads))
        .expect("add");
    drop(patron);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let original = std::fs::read(&data).expect("data");
    let size = original.len();
    let fetch = |range: Option<&str>| {
        let out = sandbox.path(&format!("part-{}", range.unwrap_or("all")));
        let mut extra = vec![
            "-o".to_owned(),
            out.display().to_string(),
            "-D".into(),
            "-".into(),
        ];
        if let Some(range) = range {
            extra.extend(["-r".to_owned(), range.to_owned()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (code, head) = Web::answer(&web.curl("/files/0/0", &extra));
        (code, head, std::fs::read(&out).unwrap_or_default())
    };
    // The last 64 KiB first: the window moves there, so they come before the middle.
    let tail = format!("{}-", size - 65536);
    let (code, head, bytes) = fetch(Some(&tail));
    assert_eq!(code, 206, "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "content-range: bytes {}-{}/{size}",
            size - 65536,
            size - 1
        )),
        "{head}"
    );
    assert!(bytes == original[size - 65536..], "the tail differs");
    let (code, _, bytes) = fetch(Some("0-0"));
    assert_eq!(code, 206);
    assert_eq!(bytes, original[..1]);
    let (code, _, bytes) = fetch(Some("-10"));
    assert_eq!(code, 206);
    assert_eq!(bytes, original[size - 10..]);
    let (code, head, _) = fetch(Some(&format!("{size}-")));
    assert_eq!(code, 416, "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains(&format!("content-range: bytes */{size}")));
    let (code, head, bytes) = fetch(None);
    assert_eq!(code, 200, "{head}");
    assert!(bytes == original, "the whole file differs");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("accept-ranges: bytes") && lower.contains("etag:"),
        "{head}"
    );
    assert!(lower.contains("content-security-policy: sandbox"), "{head}");
    // HEAD: the same headers, no body.
    let (code, head) = Web::answer(&web.curl("/files/0/slow.bin", &["-I"]));
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {size}")),
        "{head}"
    );
    drop(seeder);
}

/// By default the web patron serves a unix socket, owner-only; the page's events (server-
/// sent) carry every torrent first, then a torrent added later.
#[test]
fn the_unix_socket_serves_and_events_follow_the_board() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let first = sandbox.random_file("local/first.bin", 20_000);
    e2e::make_and_seed(&mut patron, &first);
    let web = Web::start(&sandbox, &state, &[]);
    let socket = web.socket.clone().expect("a unix socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the socket is owner-only");
    let (code, body) = Web::answer(&web.curl("/api/torrents", &[]));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("first.bin"), "{body}");

    let mut events = Command::new("curl");
    events.args([
        "-sSN",
        "--max-time",
        "60",
        "--unix-socket",
        &socket,
        "http://localhost/api/events",
    ]);
    let events = Running::start(events);
    wait_for("the first event", STEP_TIMEOUT, || {
        events.stdout_so_far().contains("first.bin")
    });
    assert!(events.stdout_so_far().contains("\"event\":\"torrents\""));
    let second = sandbox.random_file("local/second.bin", 20_000);
    e2e::make_and_seed(&mut patron, &second);
    wait_for(
        "an event with the torrent added later",
        STEP_TIMEOUT,
        || {
            let so_far = events.stdout_so_far();
            so_far.contains("\"event\":\"changed\"") && so_far.contains("second.bin")
        },
    );
    drop(web);
}

/// A web patron SIGKILLed mid-stream leaves the broker as it was: its torrents run, other
/// patrons are answered, and its streams are let go.
#[test]
fn a_killed_web_patron_leaves_the_broker_as_it_was() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 4 * 1024 * 1024, "256K");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    patron
        .create(seeder.create_request(&downloads))
        .expect("add");
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let mut slow = Command::new("curl");
    slow.args(["-sS", "--max-time", "60", "-o", "/dev/null", "-u"])
        .arg(format!("anyone:{}", web.token))
        .arg(format!("http://{}/files/0/0", web.addr));
    let _reader = Running::start(slow);
    wait_for("the web patron's stream to open", STEP_TIMEOUT, || {
        e2e::streams_open(&sandbox, &state) >= 1
    });
    web.process.signal(nix::sys::signal::Signal::SIGKILL);
    wait_for("its streams to be let go", STEP_TIMEOUT, || {
        e2e::streams_open(&sandbox, &state) == 0
    });
    let status = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(status["state"], "downloading", "{status}");
    drop(seeder);
}

/// Debian's transmission-remote against `/transmission/rpc`, its own output parsed: add,
/// list, stop, start, verify, files, a file unwanted, remove with the data.
#[test]
fn transmission_remote_drives_the_broker_through_the_rpc() {
    if !have_curl() || !e2e::have_program("transmission-remote", "transmission-cli") {
        return;
    }
    let sandbox = Sandbox::new();
    let folder = sandbox.folder("seed/pair");
    sandbox.random_file("seed/pair/first.bin", 100_000);
    sandbox.random_file("seed/pair/second.bin", 50_000);
    let seeder = e2e::Seeder::start(&sandbox, "seeder", &folder, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let remote = |args: &[&str]| {
        let mut cmd = Command::new("transmission-remote");
        cmd.arg(&web.addr)
            .args(["-n", &format!("anyone:{}", web.token)])
            .args(args);
        let out = run(cmd);
        assert_eq!(out.code(), 0, "{args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    };
    let torrent = seeder.torrent.display().to_string();
    let downloads_arg = downloads.display().to_string();
    let added = remote(&["-a", &torrent, "-w", &downloads_arg]);
    assert!(added.contains("success"), "{added}");
    // Its peer, named through our own CLI (transmission-remote has no such option), once
    // its check is over (a torrent checking dials no peer: the add is refused until then).
    e2e::wait_status(&sandbox, &state, "0", "its check over", |s| {
        s["state"] != "checking"
    });
    let mut peers = sandbox.client(&state);
    peers.args(["peers", "0", "--add", &seeder.broker.peer()]);
    run(peers).expect_code(0);
    wait_for("the list to show it complete", STEP_TIMEOUT, || {
        let list = remote(&["-l"]);
        list.lines()
            .any(|l| l.contains("pair") && l.contains("100%"))
    });
    let list = remote(&["-l"]);
    let row = list.lines().find(|l| l.contains("pair")).expect(&list);
    assert!(
        row.trim_start().starts_with('0'),
        "ids are the broker's: {row}"
    );

    remote(&["-t", "0", "-S"]);
    let list = remote(&["-l"]);
    assert!(
        list.lines()
            .any(|l| l.contains("pair") && l.contains("Stopped")),
        "{list}"
    );
    assert_eq!(e2e::status_json(&sandbox, &state, "0")["state"], "paused");
    remote(&["-t", "0", "-s"]);
    assert_ne!(e2e::status_json(&sandbox, &state, "0")["state"], "paused");
    remote(&["-t", "0", "-v"]);

    let files = remote(&["-t", "0", "-f"]);
    assert!(
        files.contains("first.bin") && files.contains("second.bin"),
        "{files}"
    );
    remote(&["-t", "0", "-G", "1"]);
    let files = e2e::ok_json(&sandbox, &state, &["files", "0"]);
    let selected: Vec<bool> = files["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["selected"].as_bool().unwrap_or(true))
        .collect();
    assert_eq!(selected, [true, false], "{files}");

    let info = remote(&["-t", "0", "-i"]);
    assert!(
        info.contains("Name: pair") && info.contains(&downloads_arg),
        "{info}"
    );

    remote(&["-t", "0", "--remove-and-delete"]);
    let (code, _) = e2e::client_json(&sandbox, &state, &["status", "0"]);
    assert_eq!(code, 1, "the torrent is gone");
    assert!(
        !downloads.join("pair").join("first.bin").exists(),
        "its data was deleted"
    );

    // Transmission's own CSRF guard: no session id, 409 with one.
    let (code, head) = Web::answer(&web.curl(
        "/transmission/rpc",
        &[
            "-X",
            "POST",
            "-d",
            "{\"method\":\"session-get\"}",
            "-D",
            "-",
        ],
    ));
    assert_eq!(code, 409, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-transmission-session-id:"),
        "{head}"
    );
}

/// transmission-remote's `-d`/`-u` (kB/s) and `-D`/`-U` set the broker's global limits
/// through `session-set`, and with `-t ID` a torrent's own through `torrent-set`, as
/// `patron-client limits [ID]` does; a setting that is the broker's own is refused by name.
#[test]
fn transmission_remote_sets_the_global_rate_limits() {
    if !have_curl() || !e2e::have_program("transmission-remote", "transmission-cli") {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let remote = |args: &[&str]| {
        let mut cmd = Command::new("transmission-remote");
        cmd.arg(&web.addr)
            .args(["-n", &format!("anyone:{}", web.token)])
            .args(args);
        let out = run(cmd);
        assert_eq!(out.code(), 0, "{args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    };
    let limits = || e2e::ok_json(&sandbox, &state, &["limits"]);
    remote(&["-d", "300", "-u", "50"]);
    assert_eq!(limits()["max_download_rate"], 300_000);
    assert_eq!(limits()["max_upload_rate"], 50_000);
    let rpc = |body: &str| {
        let (code, reply) = web.rpc(body);
        assert_eq!(code, 200, "{reply}");
        serde_json::from_str::<Value>(&reply).expect(&reply)
    };
    let got = rpc(r#"{"method":"session-get"}"#);
    let arguments = &got["arguments"];
    assert_eq!(arguments["speed-limit-down"], 300, "{got}");
    assert_eq!(arguments["speed-limit-down-enabled"], true, "{got}");
    assert_eq!(arguments["speed-limit-up"], 50, "{got}");
    remote(&["-D"]);
    assert_eq!(limits()["max_download_rate"], Value::Null);
    assert_eq!(limits()["max_upload_rate"], 50_000);
    let got = rpc(r#"{"method":"session-get"}"#);
    assert_eq!(got["arguments"]["speed-limit-down-enabled"], false, "{got}");
    // A torrent's own, through torrent-set (transmission-remote -t ID -d / -U).
    let folder = sandbox.folder("seed/one");
    sandbox.random_file("seed/one/a.bin", 10_000);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &folder);
    remote(&["-t", "0", "-d", "120"]);
    let own = e2e::ok_json(&sandbox, &state, &["limits", "0"]);
    assert_eq!(own["max_download_rate"], 120_000, "{own}");
    remote(&["-t", "0", "-D"]);
    let own = e2e::ok_json(&sandbox, &state, &["limits", "0"]);
    assert_eq!(own["max_download_rate"], Value::Null, "{own}");
    // The alternative limits ("turtle mode"), their switch and their schedule.
    remote(&["-asd", "500", "-asu", "60", "-as"]);
    let alt = limits();
    assert_eq!(alt["alt_download_rate"], 500_000, "{alt}");
    assert_eq!(alt["alt_upload_rate"], 60_000, "{alt}");
    assert_eq!(alt["alt_on"], true, "{alt}");
    remote(&["-AS"]);
    assert_eq!(limits()["alt_on"], false);
    remote(&[
        "--alt-speed-time-begin",
        "0930",
        "--alt-speed-time-end",
        "1745",
        "--alt-speed-days",
        "1-5",
    ]);
    // Hours given while the schedule is off are the broker's to keep (not the web
    // patron's): they outlive it.
    let kept = limits();
    assert_eq!(
        kept["alt_hours"], "mon,tue,wed,thu,fri 09:30-17:45",
        "{kept}"
    );
    assert_eq!(kept["alt_schedule"], Value::Null, "still off: {kept}");
    remote(&["-asc"]);
    let scheduled = limits();
    assert_eq!(
        scheduled["alt_schedule"], "mon,tue,wed,thu,fri 09:30-17:45",
        "{scheduled}"
    );
    let got = rpc(r#"{"method":"session-get"}"#);
    let session = &got["arguments"];
    assert_eq!(session["alt-speed-time-enabled"], true, "{got}");
    assert_eq!(session["alt-speed-time-begin"], 570, "{got}");
    assert_eq!(session["alt-speed-time-day"], 62, "Monday to Friday: {got}");
    assert_eq!(session["alt-speed-down"], 500, "{got}");
    remote(&["-ASC"]);
    assert_eq!(limits()["alt_schedule"], Value::Null);
    let refused = rpc(r#"{"method":"session-set","arguments":{"peer-port":1}}"#);
    let result = refused["result"].as_str().unwrap_or_default();
    assert!(
        result.contains("peer-port is the broker's own setting"),
        "{refused}"
    );
}

/// `/metrics` in Prometheus' text format, and a torrent's media files as an `.m3u` whose
/// entries a player opens (the token in the URL).
#[test]
fn metrics_and_a_playlist() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let folder = sandbox.folder("local/show");
    sandbox.random_file("local/show/episode.mp4", 30_000);
    sandbox.random_file("local/show/notes.txt", 1_000);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &folder);
    drop(patron);
    wait_for("the torrent to seed", STEP_TIMEOUT, || {
        e2e::status_json(&sandbox, &state, "0")["state"] == "seeding"
    });
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let (code, metrics) = Web::answer(&web.curl("/metrics", &[]));
    assert_eq!(code, 200, "{metrics}");
    for line in [
        "# TYPE torrent_patron_torrents gauge",
        "torrent_patron_torrents{state=\"seeding\"} 1",
        "torrent_patron_broker_up 1",
        "torrent_patron_budget{budget=\"unread_bytes\",of=\"limit\"}",
    ] {
        assert!(metrics.contains(line), "{line:?} missing:\n{metrics}");
    }
    let (code, playlist) = Web::answer(&web.curl("/api/torrents/0/playlist.m3u", &[]));
    assert_eq!(code, 200, "{playlist}");
    let entries: Vec<&str> = playlist
        .lines()
        .filter(|l| l.starts_with("http://"))
        .collect();
    assert_eq!(entries.len(), 1, "{playlist}");
    assert!(
        playlist.contains("episode.mp4") && !playlist.contains("notes.txt"),
        "{playlist}"
    );
    // The entry plays as written: the player's request carries the token.
    let mut player = Command::new("curl");
    player.args([
        "-sS",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        entries[0],
    ]);
    assert_eq!(run(player).stdout.trim(), "200");
}

/// The `transmission-rpc` package from PyPI (what Sonarr-like Python tools use): add, list
/// with the fields it asks for, start, stop, remove with the data.
#[test]
fn the_python_transmission_rpc_package_drives_the_broker() {
    let have = Command::new("python3")
        .args(["-c", "import transmission_rpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !e2e::require(
        have,
        "the transmission-rpc Python package",
        "pip install transmission-rpc",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("local/movie.bin", 200_000);
    let torrent = sandbox.path("movie.torrent");
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    sandbox.make_torrent(&state, &data, &torrent);
    let downloads = sandbox.folder("downloads");
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let (host, port) = web.addr.rsplit_once(':').expect("addr");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/transmission_rpc_client.py");
    let mut python = Command::new("python3");
    python
        .arg(script)
        .args([host, port, &web.token])
        .arg(&torrent)
        .arg(&downloads);
    let out = run(python).expect_code(0);
    let seen: Value = serde_json::from_str(out.stdout.trim()).expect(&out.stdout);
    assert_eq!(seen["added_name"], "movie.bin", "{seen}");
    assert_eq!(seen["names"], serde_json::json!(["movie.bin"]), "{seen}");
    assert_eq!(seen["status_paused"], "stopped", "{seen}");
    assert_eq!(
        seen["download_dir"],
        downloads.display().to_string(),
        "{seen}"
    );
    assert_eq!(seen["total_size"], 200_000, "{seen}");
    assert_eq!(seen["status_started"], "downloading", "{seen}");
    assert_eq!(seen["status_stopped"], "stopped", "{seen}");
    assert_eq!(
        seen["stops_seen"], 10,
        "each start and stop seen at once: {seen}"
    );
    assert_eq!(seen["after_remove"], serde_json::json!([]), "{seen}");
}

/// The page in a real browser (Debian's chromium, headless, driven by playwright-core; see
/// tests/browser/page.mjs): signed in by the URL's token, a bar moving while its torrent
/// downloads from a throttled seeder, an add by magnet, a pause, files chosen, a close with
/// its data behind the confirmation, a phone-sized dark window; a change from another
/// origin, a wrong token and another Host each refused. Screenshots are kept in
/// target/web-screenshots.
#[test]
fn the_page_works_in_a_real_browser() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let have = std::path::Path::new("/usr/bin/chromium").is_file()
        && browser_dir.join("node_modules/playwright-core").is_dir()
        && e2e::have_program("node", "nodejs");
    if !e2e::require(
        have,
        "chromium, node and playwright-core",
        "apt-get install chromium nodejs npm; npm ci --prefix tests/browser (scripts/test does both)",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    // Torrent 0: two files from a throttled seeder (~10 s), so the bar has time to move.
    let pair = sandbox.folder("seed/pair");
    sandbox.random_file("seed/pair/first.bin", 1_500_000);
    sandbox.random_file("seed/pair/second.bin", 1_000_000);
    let slow = e2e::Seeder::start(
        &sandbox,
        "slow-seeder",
        &pair,
        16 * 1024,
        &["--max-upload-rate", "256K"],
    );
    // Torrent 1, by magnet, from another seeder.
    let other = sandbox.random_file("seed2/other.bin", 100_000);
    let fast = e2e::Seeder::start(&sandbox, "fast-seeder", &other, 16 * 1024, &[]);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn=other.bin&x.pe={}",
        fast.info_hash,
        fast.broker.peer()
    );
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    patron.create(slow.create_request(&downloads)).expect("add");
    drop(patron);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let moved_to = sandbox.folder("moved-from-the-page");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots folder");

    let mut node = Command::new("node");
    node.current_dir(&browser_dir)
        .arg("page.mjs")
        .arg(format!("http://{}/#token={}", web.addr, web.token))
        .arg(&magnet)
        .arg(&shots)
        .arg(&moved_to);
    e2e::die_with_parent(&mut node);
    let out = Running::start(node).finish(std::time::Duration::from_secs(120));
    let steps: Vec<Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {}\n{}", out.stdout, out.stderr))
            .clone()
    };
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    for name in [
        "signed-in",
        "bar-moved",
        "added-by-magnet",
        "paused",
        "files-chosen",
        "labelled",
        "moved",
        "closed-with-data",
        "settings-saved",
        "done",
    ] {
        step(name);
    }
    assert!(
        step("phone")["scroll_width"]
            .as_u64()
            .is_some_and(|w| w <= 380),
        "{steps:?}"
    );
    assert!(step("wrong-token-refused")["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(step("other-host")["status"], 403, "{steps:?}");

    // What the page did, as the broker has it.
    let queue = e2e::ok_json(&sandbox, &state, &["queue"]);
    assert_eq!(queue["max_active_downloads"], 1, "{queue}");
    let limits = e2e::ok_json(&sandbox, &state, &["limits"]);
    assert_eq!(limits["alt_on"], true, "{limits}");
    let set = e2e::ok_json(&sandbox, &state, &["set"]);
    assert_eq!(set["ratio_limit"], 2.0, "{set}");
    let files = e2e::ok_json(&sandbox, &state, &["files", "0"]);
    let selected: Vec<bool> = files["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["selected"].as_bool().unwrap_or(true))
        .collect();
    assert_eq!(selected, [true, false], "{files}");
    let status = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(
        status["labels"],
        serde_json::json!(["films", "4k"]),
        "{status}"
    );
    let (_, list) = e2e::client_json(&sandbox, &state, &["list"]);
    let row = list
        .iter()
        .find(|t| t["id"] == 0)
        .expect("torrent 0 listed");
    assert_eq!(
        row["save_folder"],
        moved_to
            .canonicalize()
            .expect("canonical")
            .to_str()
            .expect("utf-8"),
        "moved from the page: {row}"
    );
    let (code, _) = e2e::client_json(&sandbox, &state, &["status", "1"]);
    assert_eq!(code, 1, "the torrent closed from the page is gone");
    assert!(
        !downloads.join("other.bin").exists(),
        "its data was deleted"
    );
    // The cross-origin POST paused nothing.
    assert_ne!(e2e::status_json(&sandbox, &state, "0")["state"], "paused");
    for shot in [
        "1-list.png",
        "2-added.png",
        "3-files.png",
        "4-confirm.png",
        "5-phone-dark.png",
    ] {
        assert!(shots.join(shot).is_file(), "no screenshot {shot}");
    }
}

/// 1,000 HTTP clients at once that send nothing, and one that asks for a file and never
/// reads it: the web patron serves on, the broker's other patrons are answered at once, and
/// the silent clients are closed after the header timeout (slowloris).
#[test]
fn a_thousand_silent_clients_and_one_that_never_reads_hurt_nobody() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/big.bin", 8 * 1024 * 1024);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &data);
    drop(patron);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let silent: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(&web.addr).expect("connect"))
        .collect();
    // A reader that asks for the whole file and never reads a byte of it.
    let mut stuck = std::net::TcpStream::connect(&web.addr).expect("connect");
    use std::io::Write;
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("any:{}", web.token))
    };
    write!(
        stuck,
        "GET /files/0/0 HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\r\n",
        web.addr
    )
    .expect("ask");
    // The broker answers its other patrons at once; the web patron serves a new client.
    let started = std::time::Instant::now();
    let (code, _) = e2e::client_json(&sandbox, &state, &["status", "0"]);
    assert_eq!(code, 0);
    let (code, body) = Web::answer(&web.curl("/api/torrents", &[]));
    assert_eq!(code, 200, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Past the header timeout, the silent ones are closed by the server.
    let mut closed = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for mut stream in silent {
        use std::io::Read;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        stream
            .set_read_timeout(Some(left.max(std::time::Duration::from_millis(10))))
            .expect("timeout");
        // Closed (end of stream) or reset by the server: let go either way; a read that
        // times out is one still held.
        match stream.read(&mut [0u8; 1]) {
            Ok(0) => closed += 1,
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                closed += 1
            }
            _ => {}
        }
    }
    assert_eq!(closed, 1000, "silent clients still held");
    drop(stuck);
}

/// Debian's ffprobe reads a video over HTTP while it downloads from a throttled seeder: an
/// MP4 whose index (`moov`) is at its end, so the player's first requests are ranges near
/// the end, served before the middle has arrived.
#[test]
fn ffprobe_reads_a_video_while_it_downloads() {
    let have = e2e::have_program("ffprobe", "ffmpeg") && e2e::have_program("ffmpeg", "ffmpeg");
    if !have || !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let video = sandbox.path("seed/clip.mp4");
    std::fs::create_dir_all(video.parent().expect("folder")).expect("folder");
    let mut encode = Command::new("ffmpeg");
    encode
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=20:size=640x360:rate=25",
        ])
        .args(["-c:v", "mpeg4", "-q:v", "3", "-f", "mp4"])
        .arg(&video);
    run(encode).expect_code(0);
    let size = std::fs::metadata(&video).expect("video").len();
    let seeder = e2e::Seeder::start(
        &sandbox,
        "seeder",
        &video,
        16 * 1024,
        &["--max-upload-rate", "128K"],
    );
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    patron
        .create(seeder.create_request(&downloads))
        .expect("add");
    drop(patron);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let mut probe = Command::new("ffprobe");
    probe
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(format!(
            "http://any:{}@{}/files/0/clip.mp4",
            web.token, web.addr
        ));
    let out = run(probe).expect_code(0);
    let duration: f64 = out.stdout.trim().parse().unwrap_or(0.0);
    assert!(
        (duration - 20.0).abs() < 0.5,
        "ffprobe read {duration} s: {}{}",
        out.stdout,
        out.stderr
    );
    let status = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(
        status["complete"], false,
        "the {size}-byte video was complete before ffprobe read it: {status}"
    );
}

/// What the web patron's attacker found (issue 20's review), each through a real client:
/// a FIFO named to torrent-add hung every worker; 64 HEADs of a file whose pieces never
/// come held every file slot; magnet adds whose clients hung up each kept a broker
/// connection; a public body could be dribbled or huge; the cookie held the token itself.
#[test]
fn the_web_patron_holds_against_its_attackers_findings() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let done = sandbox.random_file("local/done.bin", 20_000);
    e2e::make_and_seed(&mut patron, &done);
    // Torrent 1: nobody seeds it, so its pieces never come.
    let lonely = sandbox.random_file("elsewhere/lonely.bin", 200_000);
    let torrent = sandbox.path("lonely.torrent");
    sandbox.make_torrent(&state, &lonely, &torrent);
    let downloads = sandbox.folder("downloads");
    run(sandbox.add_command(&state, &torrent, &downloads, None)).expect_code(0);
    drop(patron);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);

    // A FIFO with no writer: refused at once, and the server answers meanwhile.
    let fifo = sandbox.path("trap.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let body = format!(
        "{{\"method\":\"torrent-add\",\"arguments\":{{\"filename\":\"{}\"}}}}",
        fifo.display()
    );
    let (code, reply) = web.rpc(&body);
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("not a regular file"), "{reply}");

    // 64 HEADs of the file that never comes: answered from the stream's facts, each let go.
    let heads: Vec<Running> = (0..70)
        .map(|_| {
            let mut head = Command::new("curl");
            head.args([
                "-sS",
                "-I",
                "--max-time",
                "20",
                "-u",
                &format!("any:{}", web.token),
            ])
            .arg(format!("http://{}/files/1/0", web.addr));
            Running::start(head)
        })
        .collect();
    for head in heads {
        head.finish(STEP_TIMEOUT);
    }
    wait_for("the HEADs' streams let go", STEP_TIMEOUT, || {
        e2e::streams_open(&sandbox, &state) == 0
    });
    let (code, _) = Web::answer(&web.curl("/files/0/0", &["-o", "/dev/null"]));
    assert_eq!(code, 200, "a complete file is served after them");
    // A GET of it whose client leaves: its stream is let go too.
    let mut leaving = Command::new("curl");
    leaving
        .args([
            "-sS",
            "--max-time",
            "1",
            "-o",
            "/dev/null",
            "-u",
            &format!("any:{}", web.token),
        ])
        .arg(format!("http://{}/files/1/0", web.addr));
    let _ = run(leaving);
    wait_for("the left GET's stream let go", STEP_TIMEOUT, || {
        e2e::streams_open(&sandbox, &state) == 0
    });

    // Magnet adds to a peer that never speaks, each client gone at once: the web patron
    // holds at most its few connections to the broker, not one per request.
    let silent = e2e::SilentPeer::start();
    for n in 0..40 {
        let magnet = silent.magnet(&format!("{:02x}", n + 16), None);
        let body = serde_json::json!({"magnet": magnet}).to_string();
        let mut add = Command::new("curl");
        add.args([
            "-sS",
            "--max-time",
            "0.1",
            "-o",
            "/dev/null",
            "-u",
            &format!("any:{}", web.token),
        ])
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .arg(format!("http://{}/api/torrents", web.addr));
        let _ = run(add);
    }
    let info = e2e::ok_json(&sandbox, &state, &["broker", "status"]);
    let patrons = info["patrons"].as_u64().unwrap_or(u64::MAX);
    assert!(
        patrons <= 8,
        "the web patron holds {patrons} broker connections: {info}"
    );

    // The one public route takes a token, not megabytes; a body that dribbles is cut off.
    let (code, _) = Web::answer(&web.curl(
        "/api/login",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &"x".repeat(4096),
        ],
    ));
    assert_eq!(code, 413);
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(&web.addr).expect("connect");
    write!(
        slow,
        "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{",
        web.addr
    )
    .expect("write");
    slow.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // The cookie holds a secret of this process's, not the token, under a name with the port.
    let login = format!("{{\"token\":\"{}\"}}", web.token);
    let (_, head) = Web::answer(&web.curl(
        "/api/login",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &login,
            "-D",
            "-",
        ],
    ));
    let port = web.addr.rsplit_once(':').expect("port").1;
    assert!(head.contains(&format!("tp_session_{port}=")), "{head}");
    assert!(
        !head.contains(&web.token),
        "the cookie holds the token: {head}"
    );
}

/// What a second attacker found in the RPC: a request naming many unknown fields (it was
/// quadratic, on the server's two workers) or one id many times (an answer of gigabytes);
/// a broker that is down (every download "gone", with success); the playlist turning the
/// page's cookie into the lasting token; Transmission's meaning of an empty file list.
#[test]
fn the_rpc_holds_against_its_second_attackers_findings() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let folder = sandbox.folder("local/album");
    for (name, size) in [("a.mp3", 20_000), ("b.mp3", 30_000)] {
        std::fs::write(folder.join(name), vec![7u8; size]).expect("write");
    }
    e2e::make_and_seed(&mut patron, &folder);
    drop(patron);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let session = web.rpc_session();
    let rpc = |body: &serde_json::Value| -> serde_json::Value {
        let file = sandbox.path("rpc-body.json");
        std::fs::write(&file, body.to_string()).expect("write the body");
        let out = web.curl(
            "/transmission/rpc",
            &[
                "-X",
                "POST",
                "-H",
                &format!("X-Transmission-Session-Id: {session}"),
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        );
        let (code, reply) = Web::answer(&out);
        assert_eq!(code, 200, "{reply}");
        serde_json::from_str(&reply).expect(&reply)
    };

    // 60,000 names nobody knows, one of them twice known: answered with the known one.
    let mut names: Vec<String> = (0..60_000).map(|n| format!("f{n}")).collect();
    names.extend(["id".into(), "id".into()]);
    let started = std::time::Instant::now();
    let reply = rpc(&serde_json::json!({"method": "torrent-get", "arguments": {"fields": names}}));
    assert_eq!(
        reply["arguments"]["torrents"],
        serde_json::json!([{"id": 0}]),
        "{reply}"
    );
    assert!(
        started.elapsed() < STEP_TIMEOUT,
        "60,000 unknown field names took {:?}",
        started.elapsed()
    );

    // One id named 100,000 times: one torrent in the answer.
    let ids = vec![0; 100_000];
    let reply = rpc(&serde_json::json!({
        "method": "torrent-get", "arguments": {"fields": ["id", "files"], "ids": ids},
    }));
    let listed = &reply["arguments"]["torrents"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{reply}");
    // A file's name is inside the torrent's folder, as Transmission names it.
    assert_eq!(listed[0]["files"][0]["name"], "album/a.mp3", "{reply}");

    // Transmission's meaning: an empty list is every file; an index past the end is refused.
    let set = |wanted: serde_json::Value| {
        rpc(
            &serde_json::json!({"method": "torrent-set", "arguments": {"ids": [0], "files-unwanted": [1]}}),
        );
        rpc(
            &serde_json::json!({"method": "torrent-set", "arguments": {"ids": [0], "files-wanted": wanted}}),
        )
    };
    assert_eq!(set(serde_json::json!([]))["result"], "success");
    let files = rpc(
        &serde_json::json!({"method": "torrent-get", "arguments": {"fields": ["wanted"], "ids": [0]}}),
    );
    assert_eq!(
        files["arguments"]["torrents"][0]["wanted"],
        serde_json::json!([1, 1]),
        "{files}"
    );
    let refused = set(serde_json::json!([99]));
    assert_ne!(refused["result"], "success", "{refused}");
    let refused = set(serde_json::json!(["1"]));
    assert_ne!(refused["result"], "success", "{refused}");

    // The playlist carries the token only for a client that sent it (lowercase `basic`
    // is Basic too, RFC 9110).
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("x:{}", web.token))
    };
    let mut lowercase = Command::new("curl");
    lowercase
        .args([
            "-sS",
            "--max-time",
            "30",
            "-H",
            &format!("Authorization: basic {basic}"),
        ])
        .arg(format!("http://{}/api/torrents/0/playlist.m3u", web.addr));
    let playlist = run(lowercase);
    assert!(playlist.stdout.contains(&web.token), "{}", playlist.stdout);
    let login = format!("{{\"token\":\"{}\"}}", web.token);
    let (_, head) = Web::answer(&web.curl(
        "/api/login",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &login,
            "-D",
            "-",
        ],
    ));
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect(&head)
        .to_owned();
    let mut with_cookie = Command::new("curl");
    with_cookie
        .args([
            "-sS",
            "--max-time",
            "30",
            "-H",
            &format!("Cookie: {cookie}"),
        ])
        .arg(format!("http://{}/api/torrents/0/playlist.m3u", web.addr));
    let playlist = run(with_cookie);
    assert!(playlist.stdout.contains("#EXTM3U"), "{}", playlist.stdout);
    assert!(
        !playlist.stdout.contains(&web.token),
        "the cookie was traded for the token: {}",
        playlist.stdout
    );

    // With the broker stopped, every method says so: no empty list read as success.
    drop(broker);
    wait_for(
        "the web patron to see the broker gone",
        STEP_TIMEOUT,
        || {
            let reply =
                rpc(&serde_json::json!({"method": "torrent-get", "arguments": {"fields": ["id"]}}));
            reply["result"] != "success"
        },
    );
    let reply = rpc(&serde_json::json!({"method": "torrent-stop", "arguments": {"ids": [0]}}));
    assert!(
        reply["result"]
            .as_str()
            .is_some_and(|r| r.contains("broker is not running")),
        "{reply}"
    );
}

/// Clients that ask for a file and never read hold its answers only until the stall limit:
/// then every file answer is free again (before, 64 such clients held them all for ever).
#[test]
fn clients_that_never_read_let_go_at_the_stall_limit() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    let data = sandbox.random_file("local/big.bin", 16 << 20);
    e2e::make_and_seed(&mut patron, &data);
    drop(patron);
    let web = Web::start(
        &sandbox,
        &state,
        &["--listen", "127.0.0.1:0", "--stall-secs", "2"],
    );
    use std::io::Write;
    let sleepers: Vec<std::net::TcpStream> = (0..64)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&web.addr).expect("connect");
            // A small window: the answer stalls after a few of its chunks.
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &4096)
                .expect("a small buffer");
            use base64::Engine;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x:{}", web.token));
            write!(
                stream,
                "GET /files/0/0 HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {basic}\r\n\r\n",
                web.addr
            )
            .expect("ask");
            stream
        })
        .collect();
    wait_for("the sleepers' answers to start", STEP_TIMEOUT, || {
        e2e::streams_open(&sandbox, &state) >= 60
    });
    // Past the stall limit, every answer of theirs is cut and its stream let go.
    wait_for("the sleepers' streams to go", STEP_TIMEOUT, || {
        e2e::streams_open(&sandbox, &state) == 0
    });
    let (code, _) = Web::answer(&web.curl("/files/0/0", &["-o", "/dev/null"]));
    assert_eq!(code, 200, "a reading client is served");
    drop(sleepers);
}

/// A magnet's RPC add is answered at once, as Transmission's is (the broker answers once it
/// has the metadata, up to its timeout), and magnets never hold up the adds of .torrent
/// files: before, two magnets of a silent peer held every add for two minutes.
#[test]
fn magnet_adds_are_answered_at_once_and_hold_up_no_other_add() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("elsewhere/data.bin", 50_000);
    let torrent = sandbox.path("data.torrent");
    sandbox.make_torrent(&state, &data, &torrent);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let session = web.rpc_session();
    let rpc = |body: serde_json::Value| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "-u", &format!("x:{}", web.token)])
            .args(["-H", &format!("X-Transmission-Session-Id: {session}")])
            .args(["-d", &body.to_string()])
            .arg(format!("http://{}/transmission/rpc", web.addr));
        Running::start(cmd)
    };
    let silent = e2e::SilentPeer::start();
    let started = std::time::Instant::now();
    let magnets: Vec<Running> = (0..3)
        .map(|n| {
            let magnet = silent.magnet(&format!("{:02x}", n + 32), None);
            rpc(serde_json::json!({"method": "torrent-add", "arguments": {"filename": magnet}}))
        })
        .collect();
    use base64::Engine;
    let metainfo =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&torrent).expect("read"));
    let downloads = sandbox.folder("downloads");
    let plain = rpc(serde_json::json!({"method": "torrent-add", "arguments": {
        "metainfo": metainfo, "download-dir": downloads.display().to_string(), "paused": true,
    }}));
    let out = plain.finish(STEP_TIMEOUT);
    assert!(out.stdout.contains("\"success\""), "{}", out.stdout);
    for magnet in magnets {
        let out = magnet.finish(STEP_TIMEOUT);
        let reply: Value = serde_json::from_str(&out.stdout).expect(&out.stdout);
        assert_eq!(reply["result"], "success", "{reply}");
        assert!(
            reply["arguments"]["torrent-added"]["id"].is_u64(),
            "{reply}"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the adds took {:?}: they waited for the magnets' metadata",
        started.elapsed()
    );
}

/// The queue through Transmission's RPC: `session-set` sizes it as `patron-client queue`
/// does, `session-get` reports it, a queued seed has Transmission's status 5, and
/// `queue-move-top` swaps it with the one seeding.
#[test]
fn transmissions_rpc_sets_and_moves_the_queue() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let rpc = |body: &str| web.rpc_ok(body);
    rpc(
        r#"{"method":"session-set","arguments":{"seed-queue-enabled":true,"seed-queue-size":1,"queue-stalled-enabled":false}}"#,
    );
    let queue = e2e::ok_json(&sandbox, &state, &["queue"]);
    assert_eq!(queue["max_active_seeds"], 1, "{queue}");
    assert_eq!(queue["stalled_after_secs"], Value::Null, "{queue}");
    let got = rpc(r#"{"method":"session-get"}"#);
    let session = &got["arguments"];
    assert_eq!(session["seed-queue-enabled"], true, "{got}");
    assert_eq!(session["seed-queue-size"], 1, "{got}");
    assert_eq!(session["download-queue-enabled"], false, "{got}");
    assert_eq!(session["queue-stalled-enabled"], false, "{got}");
    let mut patron = sandbox.patron(&state);
    for n in 0..2 {
        let data = sandbox.random_file(&format!("seed/{n}.bin"), 10_000);
        e2e::make_and_seed(&mut patron, &data);
    }
    let statuses = || {
        let got = rpc(
            r#"{"method":"torrent-get","arguments":{"fields":["id","status","queuePosition"]}}"#,
        );
        let mut torrents: Vec<(u64, u64, u64)> = got["arguments"]["torrents"]
            .as_array()
            .expect("torrents")
            .iter()
            .map(|t| {
                let n = |k: &str| t[k].as_u64().expect(k);
                (n("id"), n("status"), n("queuePosition"))
            })
            .collect();
        torrents.sort_unstable();
        torrents
    };
    e2e::wait_for("one seeding and one queued to seed", STEP_TIMEOUT, || {
        statuses() == vec![(0, 6, 0), (1, 5, 1)]
    });
    rpc(r#"{"method":"queue-move-top","arguments":{"ids":[1]}}"#);
    e2e::wait_for("the two swapped", STEP_TIMEOUT, || {
        statuses() == vec![(0, 5, 1), (1, 6, 0)]
    });
    rpc(r#"{"method":"session-set","arguments":{"seed-queue-enabled":false}}"#);
    e2e::wait_for("both seeding", STEP_TIMEOUT, || {
        statuses().iter().all(|t| t.1 == 6)
    });
    // Several moved at once keep their order among themselves, as in transmission.
    let data = sandbox.random_file("seed/2.bin", 10_000);
    e2e::make_and_seed(&mut patron, &data);
    let places = || statuses().iter().map(|t| t.2).collect::<Vec<_>>();
    e2e::wait_for("the third in the queue", STEP_TIMEOUT, || {
        places() == vec![1, 0, 2]
    });
    rpc(r#"{"method":"queue-move-bottom","arguments":{"ids":[1,0]}}"#);
    e2e::wait_for(
        "1 then 0 at the bottom, in their order",
        STEP_TIMEOUT,
        || places() == vec![2, 1, 0],
    );
    rpc(r#"{"method":"queue-move-top","arguments":{"ids":[0,1]}}"#);
    e2e::wait_for("1 then 0 at the top, in their order", STEP_TIMEOUT, || {
        places() == vec![1, 0, 2]
    });
    let refused = web.rpc(
        r#"{"method":"session-set","arguments":{"queue-stalled-enabled":true,"queue-stalled-minutes":0}}"#,
    );
    assert!(
        refused.1.contains("queue-stalled-minutes is at least 1"),
        "{refused:?}"
    );
}

/// Seeding limits through Transmission's RPC: `session-set` sets the broker's ratio and
/// idle limits as `patron-client set` does, `torrent-set` a torrent's own (mode 2: none),
/// and `torrent-get` reports what is in force.
#[test]
fn transmissions_rpc_sets_the_seeding_limits() {
    if !have_curl() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let web = Web::start(&sandbox, &state, &["--listen", "127.0.0.1:0"]);
    let rpc = |body: &str| web.rpc_ok(body);
    rpc(
        r#"{"method":"session-set","arguments":{"seedRatioLimit":1.5,"seedRatioLimited":true,"idle-seeding-limit":90,"idle-seeding-limit-enabled":true}}"#,
    );
    let set = e2e::ok_json(&sandbox, &state, &["set"]);
    assert_eq!(set["ratio_limit"], 1.5, "{set}");
    assert_eq!(set["idle_seed_limit_secs"], 5400, "{set}");
    let got = rpc(r#"{"method":"session-get"}"#);
    assert_eq!(got["arguments"]["seedRatioLimited"], true, "{got}");
    assert_eq!(got["arguments"]["idle-seeding-limit"], 90, "{got}");
    let data = sandbox.random_file("seed/own.bin", 10_000);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &data);
    rpc(r#"{"method":"torrent-set","arguments":{"ids":[0],"seedRatioMode":2}}"#);
    let own = e2e::ok_json(&sandbox, &state, &["set", "0"]);
    assert_eq!(own["ratio_limit"], Value::Null, "its own: none: {own}");
    assert_eq!(own["idle_seed_limit_secs"], 5400, "the broker's: {own}");
    let fields = r#"{"method":"torrent-get","arguments":{"ids":[0],"fields":["seedRatioMode","seedRatioLimit","seedIdleMode","seedIdleLimit"]}}"#;
    e2e::wait_for("the board to show its limits", STEP_TIMEOUT, || {
        let got = rpc(fields);
        let t = &got["arguments"]["torrents"][0];
        t["seedRatioMode"] == 2 && t["seedIdleMode"] == 1 && t["seedIdleLimit"] == 90
    });
    rpc(r#"{"method":"torrent-set","arguments":{"ids":[0],"seedRatioLimit":3.0}}"#);
    let own = e2e::ok_json(&sandbox, &state, &["set", "0"]);
    assert_eq!(own["ratio_limit"], 3.0, "{own}");
    rpc(r#"{"method":"session-set","arguments":{"seedRatioLimited":false}}"#);
    assert_eq!(
        e2e::ok_json(&sandbox, &state, &["set"])["ratio_limit"],
        Value::Null
    );
}
