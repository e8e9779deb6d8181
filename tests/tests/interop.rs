//! Interop with real BitTorrent clients over 127.0.0.1 (Debian's aria2, transmission and
//! mktorrent; `.ci/run` installs them). DHT, local discovery, PEX and UPnP are off on every
//! side, and no torrent here names a tracker: peers are given explicitly. Transmission never
//! dials 127.x peers itself, so where it downloads the broker dials it.

use e2e::swarm::{free_port, listening, same_tree, tool};
use e2e::{run, sha256, wait_for, Running, Sandbox, STEP_TIMEOUT};
use std::path::{Path, PathBuf};

/// Whether `tool` is installed; a missing one fails the test (see `e2e::require`).
fn have(tool: &str) -> bool {
    let package = match tool {
        "aria2c" => "aria2",
        "transmission-create" => "transmission-cli",
        other => other,
    };
    e2e::have_program(tool, package)
}

/// `aria2c` on a torrent, loopback-only in effect (no DHT, LPD or PEX; the torrent names no
/// tracker). Seeds forever with `seed`, else exits once downloaded.
fn aria2(torrent: &Path, dir: &Path, port: u16, seed: bool) -> Running {
    let mut cmd = tool("aria2c");
    cmd.args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        "--summary-interval=0",
        "--console-log-level=warn",
    ])
    .arg(format!("--listen-port={port}"))
    .arg(format!("--dht-listen-port={}", free_port()))
    .arg("-d")
    .arg(dir);
    if seed {
        cmd.args(["--check-integrity=true", "--seed-ratio=0.0"]);
    } else {
        cmd.arg("--seed-time=0");
    }
    cmd.arg(torrent);
    Running::start(cmd)
}

/// A transmission-daemon bound to 127.0.0.1 with DHT, LPD, PEX, uTP and port mapping off.
struct Transmission {
    _daemon: Running,
    rpc: String,
    peer_port: u16,
}

impl Transmission {
    fn start(sandbox: &Sandbox, name: &str) -> Transmission {
        Transmission::start_with(sandbox, name, serde_json::json!({}))
    }

    /// Started with `extra` settings besides the usual ones.
    fn start_with(sandbox: &Sandbox, name: &str, extra: serde_json::Value) -> Transmission {
        let config = sandbox.folder(&format!("{name}-config"));
        let (peer_port, rpc_port) = (free_port(), free_port());
        let mut settings = serde_json::json!({
            "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
            "port-forwarding-enabled": false, "blocklist-enabled": false,
            "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1",
            "peer-port": peer_port, "peer-port-random-on-start": false,
            "rpc-port": rpc_port, "rpc-bind-address": "127.0.0.1",
            "rpc-authentication-required": false, "rpc-whitelist-enabled": false,
            "rpc-host-whitelist-enabled": false, "incomplete-dir-enabled": false,
            "download-dir": sandbox.folder(&format!("{name}-downloads")),
            "speed-limit-up-enabled": false, "start-added-torrents": true, "message-level": 1,
        });
        if let (Some(settings), serde_json::Value::Object(extra)) =
            (settings.as_object_mut(), extra)
        {
            settings.extend(extra);
        }
        std::fs::write(config.join("settings.json"), settings.to_string()).unwrap();
        let mut daemon = tool("transmission-daemon");
        daemon.arg("-f").arg("-g").arg(&config);
        let transmission = Transmission {
            _daemon: Running::start(daemon),
            rpc: format!("127.0.0.1:{rpc_port}"),
            peer_port,
        };
        wait_for("transmission's RPC", STEP_TIMEOUT, || {
            transmission.remote(&["-l"]).status.success()
        });
        transmission
    }

    fn remote(&self, args: &[&str]) -> std::process::Output {
        tool("transmission-remote")
            .arg(&self.rpc)
            .args(args)
            .output()
            .expect("transmission-remote")
    }

    fn add(&self, torrent: &Path, dir: &Path) {
        let out = self.remote(&[
            "-a",
            &torrent.display().to_string(),
            "-w",
            &dir.display().to_string(),
        ]);
        assert!(out.status.success(), "transmission-remote -a: {out:?}");
    }

    /// Waits until transmission lists `name` as started (not queued or verifying), and with
    /// `complete` also fully verified: a peer that connects before then is turned away, and
    /// librqbit's backoff before dialing again can outlast a test step.
    fn wait_active(&self, name: &str, complete: bool) {
        let started = |line: &str| {
            line.trim_end().ends_with(name)
                && (!complete || line.contains("100%"))
                && ["Idle", "Downloading", "Seeding", "Up & Down"]
                    .iter()
                    .any(|state| line.contains(state))
        };
        wait_for(
            &format!("transmission to start {name}"),
            STEP_TIMEOUT,
            || {
                let list = String::from_utf8_lossy(&self.remote(&["-l"]).stdout).into_owned();
                list.lines().any(started)
            },
        );
    }

    fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }
}

/// `patron-client make` (no seeding), with a piece size.
fn make(sandbox: &Sandbox, state: &Path, data: &Path, name: &str, piece_size: u64) -> PathBuf {
    let torrent = sandbox.path(&format!("{name}.torrent"));
    let mut cmd = sandbox.client(state);
    cmd.arg("make").arg(data).arg("--output").arg(&torrent);
    cmd.args(["--piece-size", &piece_size.to_string()]);
    run(cmd).expect_code(0);
    torrent
}

/// The broker of `state` downloads `torrent` from `peer`; returns the download folder.
fn broker_fetch(
    sandbox: &Sandbox,
    state: &Path,
    torrent: &Path,
    peer: &str,
    name: &str,
) -> PathBuf {
    let out = sandbox.folder(&format!("{name}-fetched"));
    let mut add = sandbox.add_command(state, torrent, &out, Some(peer));
    add.arg("--wait");
    // Other clients pace uploads and librqbit backs off between dials: allow more than a
    // usual step (the whole test stays bounded by the harness's watchdog).
    Running::start(add).finish(3 * STEP_TIMEOUT).expect_code(0);
    out
}

#[test]
fn the_broker_downloads_from_aria2_and_from_transmission() {
    if !have("aria2c") || !have("transmission-daemon") {
        return;
    }
    let sandbox = Sandbox::new();
    let maker = sandbox.state_dir("maker");

    let data = sandbox.random_file("from-aria/a.bin", 600_000);
    let torrent = make(&sandbox, &maker, &data, "from-aria", 16 * 1024);
    let port = free_port();
    let _seeding = aria2(&torrent, data.parent().unwrap(), port, true);
    // Until aria2 listens, the port is free for the broker started next to pick as its own.
    wait_for(&format!("aria2 to listen on {port}"), STEP_TIMEOUT, || {
        listening(port)
    });
    let state = sandbox.state_dir("leech-aria");
    let got = broker_fetch(
        &sandbox,
        &state,
        &torrent,
        &format!("127.0.0.1:{port}"),
        "aria",
    );
    assert_eq!(sha256(&got.join("a.bin")), sha256(&data));

    let data = sandbox.random_file("from-transmission/t.bin", 400_000);
    let torrent = make(&sandbox, &maker, &data, "from-transmission", 16 * 1024);
    let transmission = Transmission::start(&sandbox, "seeding-transmission");
    transmission.add(&torrent, data.parent().unwrap());
    transmission.wait_active("t.bin", true);
    let state = sandbox.state_dir("leech-transmission");
    let got = broker_fetch(
        &sandbox,
        &state,
        &torrent,
        &transmission.peer(),
        "transmission",
    );
    assert_eq!(sha256(&got.join("t.bin")), sha256(&data));
}

/// Three torrents made by `patron-client make` (one file, a folder of several, and a size
/// that is an exact multiple of the piece size), seeded by the broker, which dials the
/// waiting leecher.
fn made_torrents(sandbox: &Sandbox, seeder: &Path) -> Vec<(&'static str, PathBuf)> {
    sandbox.random_file("shared/single.bin", 300_000);
    sandbox.random_file("shared/folder/one.bin", 200_000);
    sandbox.random_file("shared/folder/two/three.bin", 50_000);
    // 16 pieces of 16 KiB exactly: librqbit 9.1's own maker would add a spurious piece,
    // which other clients reject.
    sandbox.random_file("shared/exact.bin", 16 * 16 * 1024);
    ["single.bin", "folder", "exact.bin"]
        .into_iter()
        .map(|name| {
            let torrent = make(
                sandbox,
                seeder,
                &sandbox.path(&format!("shared/{name}")),
                name,
                16 * 1024,
            );
            (name, torrent)
        })
        .collect()
}

/// The broker of `seeder` seeds `torrent` from the shared folder and dials `peer`
/// (127.0.0.1:`port`), once the peer listens: a finished librqbit torrent dials a peer only
/// once.
fn seed_to(sandbox: &Sandbox, seeder: &Path, torrent: &Path, port: u16) {
    let peer = format!("127.0.0.1:{port}");
    wait_for(&format!("{peer} to listen"), STEP_TIMEOUT, || {
        listening(port)
    });
    let mut add = sandbox.add_command(seeder, torrent, &sandbox.path("shared"), Some(&peer));
    add.arg("--overwrite");
    run(add).expect_code(0);
}

fn check_download(original: &Path, dir: &Path, name: &str) {
    if original.is_dir() {
        same_tree(original, &dir.join(name));
    } else {
        assert_eq!(sha256(&dir.join(name)), sha256(original));
    }
}

#[test]
fn aria2_downloads_torrents_made_by_patron_client_from_the_broker() {
    if !have("aria2c") {
        return;
    }
    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let _broker = sandbox.broker(&seeder, &[]);
    for (name, torrent) in made_torrents(&sandbox, &seeder) {
        let port = free_port();
        let dir = sandbox.folder(&format!("aria-{name}"));
        let leeching = aria2(&torrent, &dir, port, false);
        seed_to(&sandbox, &seeder, &torrent, port);
        leeching.finish(STEP_TIMEOUT).expect_code(0);
        check_download(&sandbox.path(&format!("shared/{name}")), &dir, name);
    }
}

#[test]
fn transmission_downloads_torrents_made_by_patron_client_from_the_broker() {
    if !have("transmission-daemon") {
        return;
    }
    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let _broker = sandbox.broker(&seeder, &[]);
    let transmission = Transmission::start(&sandbox, "leeching-transmission");
    for (name, torrent) in made_torrents(&sandbox, &seeder) {
        let dir = sandbox.folder(&format!("transmission-{name}"));
        transmission.add(&torrent, &dir);
        transmission.wait_active(name, false);
        seed_to(&sandbox, &seeder, &torrent, transmission.peer_port);
        transmission.wait_active(name, true);
        check_download(&sandbox.path(&format!("shared/{name}")), &dir, name);
    }
}

#[test]
fn torrents_made_by_mktorrent_and_transmission_create_are_accepted_and_downloaded() {
    if !have("mktorrent") || !have("transmission-create") {
        return;
    }
    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let seeding = sandbox.broker(&seeder, &[]);
    let leecher = sandbox.state_dir("leecher");
    let data = sandbox.folder("data");
    sandbox.random_file("data/mk.bin", 500_000);
    sandbox.random_file("data/tc/a.bin", 120_000);
    sandbox.random_file("data/tc/b.bin", 70_000);

    let mk = sandbox.path("mk.torrent");
    let status = tool("mktorrent")
        .args(["-l", "15", "-o"])
        .arg(&mk)
        .arg(data.join("mk.bin"))
        .output()
        .expect("mktorrent");
    assert!(status.status.success(), "{status:?}");
    let tc = sandbox.path("tc.torrent");
    let status = tool("transmission-create")
        .arg("-o")
        .arg(&tc)
        .arg(data.join("tc"))
        .output()
        .expect("transmission-create");
    assert!(status.status.success(), "{status:?}");

    for (torrent, name) in [(&mk, "mk.bin"), (&tc, "tc")] {
        let mut add = sandbox.add_command(&seeder, torrent, &data, None);
        add.arg("--overwrite");
        run(add).expect_code(0);
        let got = broker_fetch(&sandbox, &leecher, torrent, &seeding.peer(), name);
        if name == "tc" {
            same_tree(&data.join("tc"), &got.join("tc"));
        } else {
            assert_eq!(sha256(&got.join(name)), sha256(&data.join(name)));
        }
    }
}

/// A peer may stay silent for up to two minutes (BitTorrent keep-alives come that rarely);
/// librqbit's default hung up after 10 s, racing transmission's 10 s rechoke. A raw peer here
/// says nothing for 12 s after the handshake, then asks for a block and must get it.
#[test]
fn a_peer_silent_for_twelve_seconds_is_still_served() {
    use std::io::{Read, Write};
    use std::time::Duration;

    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let seeding = sandbox.broker(&seeder, &[]);
    let data = sandbox.random_file("shared/quiet.bin", 64 * 1024);
    let torrent = make(&sandbox, &seeder, &data, "quiet", 16 * 1024);
    let mut add = sandbox.add_command(&seeder, &torrent, &sandbox.path("shared"), None);
    add.arg("--overwrite");
    let created = run(add).expect_code(0).json_lines();
    let info_hash = created[0]["info_hash"]
        .as_str()
        .expect("info_hash")
        .to_owned();
    let info_hash: Vec<u8> = (0..40)
        .step_by(2)
        .map(|i| u8::from_str_radix(&info_hash[i..i + 2], 16).expect("hex"))
        .collect();

    let mut peer = std::net::TcpStream::connect(seeding.peer()).expect("connect");
    peer.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut handshake = b"\x13BitTorrent protocol\0\0\0\0\0\0\0\0".to_vec();
    handshake.extend_from_slice(&info_hash);
    handshake.extend_from_slice(b"-XX0000-silentpeer00");
    peer.write_all(&handshake).unwrap();
    let mut theirs = [0u8; 68];
    peer.read_exact(&mut theirs)
        .expect("the broker's handshake");
    assert_eq!(&theirs[28..48], &info_hash[..]);

    // Reads one message: (id, payload); None for a keep-alive.
    let read_message = |peer: &mut std::net::TcpStream| -> Option<(u8, Vec<u8>)> {
        let mut len = [0u8; 4];
        peer.read_exact(&mut len).expect("the link to stay up");
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            return None;
        }
        let mut body = vec![0u8; len];
        peer.read_exact(&mut body).expect("a whole message");
        Some((body[0], body[1..].to_vec()))
    };
    // Bitfield, then unchoke.
    while read_message(&mut peer).is_none_or(|(id, _)| id != 1) {}

    std::thread::sleep(Duration::from_secs(12));
    // interested; request piece 0, offset 0, 16 KiB.
    peer.write_all(&[0, 0, 0, 1, 2])
        .expect("the link to stay up");
    let mut request = vec![0, 0, 0, 13, 6];
    request.extend_from_slice(&0u32.to_be_bytes());
    request.extend_from_slice(&0u32.to_be_bytes());
    request.extend_from_slice(&(16u32 * 1024).to_be_bytes());
    peer.write_all(&request).expect("the link to stay up");
    let piece = loop {
        if let Some((7, payload)) = read_message(&mut peer) {
            break payload;
        }
    };
    let original = std::fs::read(&data).unwrap();
    assert_eq!(&piece[8..], &original[..16 * 1024]);
}

#[test]
fn transmission_downloads_from_a_seeding_broker_after_peers_add() {
    if !have("transmission-daemon") {
        return;
    }
    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let _broker = sandbox.broker(&seeder, &[]);
    // The broker seeds first and knows no peer; transmission comes later and never dials a
    // 127.x peer itself.
    let data = sandbox.random_file("shared/late.bin", 600_000);
    let mut make = sandbox.client(&seeder);
    let torrent = sandbox.path("late.torrent");
    make.arg("--json")
        .arg("make")
        .arg(&data)
        .arg("--seed")
        .arg("--output")
        .arg(&torrent);
    let made = run(make).expect_code(0).json_lines();
    let id = made[0]["seeding_id"]
        .as_u64()
        .expect("seeding id")
        .to_string();
    let transmission = Transmission::start(&sandbox, "late-transmission");
    let dir = sandbox.folder("late-downloads");
    transmission.add(&torrent, &dir);
    transmission.wait_active("late.bin", false);

    let mut add = sandbox.client(&seeder);
    add.args(["--json", "peers", &id, "--add", &transmission.peer()]);
    let out = run(add).expect_code(0).json_lines();
    assert_eq!(
        out[0]["dialled"],
        serde_json::json!([transmission.peer()]),
        "{out:?}"
    );
    transmission.wait_active("late.bin", true);
    assert_eq!(sha256(&dir.join("late.bin")), sha256(&data));
}

/// The order in which torrents leave a queue and how many run at once, watched by polling
/// `listed` (each torrent's name and whether it runs unfinished, waits, or is done) until
/// every one is done. `running` is called for each running torrent about once a second.
fn watch_queue(
    names: &[String],
    mut listed: impl FnMut() -> Vec<(String, &'static str)>,
    mut running: impl FnMut(&str),
) -> (Vec<String>, usize) {
    let mut order: Vec<String> = Vec::new();
    let mut most = 0;
    let mut last = None;
    let mut nudged = std::time::Instant::now() - std::time::Duration::from_secs(1);
    wait_for("every queued torrent done", 4 * STEP_TIMEOUT, || {
        let now = listed();
        if last.as_ref() != Some(&now) {
            eprintln!("queue: {now:?}");
            last = Some(now.clone());
        }
        let active = now.iter().filter(|(_, what)| *what == "running").count();
        most = most.max(active);
        for (name, what) in &now {
            if *what != "waiting" && !order.contains(name) {
                order.push(name.clone());
            }
        }
        if nudged.elapsed() >= std::time::Duration::from_secs(1) {
            nudged = std::time::Instant::now();
            for (name, _) in now.iter().filter(|(_, what)| *what == "running") {
                running(name);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        now.len() == names.len() && now.iter().all(|(_, what)| *what == "done")
    });
    (order, most)
}

#[test]
fn a_queue_of_ten_with_two_active_advances_as_transmissions_does() {
    if !have("transmission-daemon") {
        return;
    }
    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let seeding = sandbox.broker(&seeder, &["--max-upload-rate", "512K"]);
    let names: Vec<String> = (0..10).map(|n| format!("q{n}.bin")).collect();
    let torrents: Vec<PathBuf> = names
        .iter()
        .map(|name| {
            let data = sandbox.random_file(&format!("shared/{name}"), 512 << 10);
            make(&sandbox, &seeder, &data, name, 16 << 10)
        })
        .collect();
    for torrent in &torrents {
        let mut add = sandbox.add_command(&seeder, torrent, &sandbox.path("shared"), None);
        add.arg("--overwrite");
        run(add).expect_code(0);
    }

    // transmission-daemon, its download queue two long: the ten are added stopped, then
    // started together, so that the queue alone decides (not how long each check took).
    let queue = serde_json::json!({
        "download-queue-enabled": true, "download-queue-size": 2,
        "queue-stalled-enabled": false, "start-added-torrents": false,
    });
    let transmission = Transmission::start_with(&sandbox, "queueing-transmission", queue);
    let dir = sandbox.folder("transmission-queue");
    for torrent in &torrents {
        transmission.add(torrent, &dir);
    }
    let list = || String::from_utf8_lossy(&transmission.remote(&["-l"]).stdout).into_owned();
    wait_for("transmission to hold the ten stopped", STEP_TIMEOUT, || {
        list().lines().filter(|l| l.contains("Stopped")).count() == names.len()
    });
    let started = transmission.remote(&["-t", "all", "-s"]);
    assert!(started.status.success(), "{started:?}");
    let listed = || {
        let list = list();
        names
            .iter()
            .filter_map(|name| {
                let line = list
                    .lines()
                    .find(|l| l.trim_end().ends_with(name.as_str()))?;
                let runs = ["Idle", "Downloading", "Up & Down"]
                    .iter()
                    .any(|state| line.contains(state));
                let what = match (line.contains("100%"), runs) {
                    (true, _) => "done",
                    (false, true) => "running",
                    (false, false) => "waiting",
                };
                Some((name.clone(), what))
            })
            .collect()
    };
    // Transmission dials nobody on 127.x: the seeder dials each torrent once it runs, one
    // torrent every two seconds (transmission 3.00 turned away the second of two torrents
    // dialled in the same instant from one address, and the broker then took it as
    // connected: an interop quirk for issue 24, not the queue's).
    let peer = transmission.peer();
    let mut dialled: Vec<String> = Vec::new();
    let mut last_dial = std::time::Instant::now() - std::time::Duration::from_secs(10);
    let (theirs, their_most) = watch_queue(&names, listed, |name| {
        if dialled.iter().any(|d| d == name)
            || last_dial.elapsed() < std::time::Duration::from_secs(2)
        {
            return;
        }
        let n = names.iter().position(|other| other == name).expect("named");
        let mut dial = sandbox.client(&seeder);
        dial.args(["peers", &n.to_string(), "--add", &peer]);
        run(dial).expect_code(0);
        dialled.push(name.to_owned());
        last_dial = std::time::Instant::now();
    });

    // The broker, with the same queue: the ten added paused, then resumed in turn.
    let leecher = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(
        &leecher,
        &["--max-active-downloads", "2", "--stalled-after", "never"],
    );
    let out = sandbox.folder("broker-queue");
    for torrent in &torrents {
        let mut add = sandbox.add_command(&leecher, torrent, &out, Some(&seeding.peer()));
        add.arg("--paused");
        run(add).expect_code(0);
    }
    for n in 0..names.len() {
        let mut resume = sandbox.client(&leecher);
        resume.args(["resume", &n.to_string()]);
        run(resume).expect_code(0);
    }
    let listed = || {
        let (code, lines) = e2e::client_json(&sandbox, &leecher, &["list"]);
        assert_eq!(code, 0, "{lines:?}");
        lines
            .iter()
            .map(|t| {
                let what = match (t["complete"] == true, t["state"] == "downloading") {
                    (true, _) => "done",
                    (false, true) => "running",
                    (false, false) => "waiting",
                };
                (t["name"].as_str().unwrap_or_default().to_owned(), what)
            })
            .collect()
    };
    let (ours, our_most) = watch_queue(&names, listed, |_| {});

    assert_eq!(their_most, 2, "transmission runs two at once: {theirs:?}");
    assert_eq!(our_most, 2, "so does the broker: {ours:?}");
    assert_eq!(theirs, names, "transmission starts them in the order added");
    assert_eq!(
        ours, theirs,
        "the broker's queue advances as transmission's does"
    );
    for name in &names {
        let original = sandbox.path(&format!("shared/{name}"));
        assert_eq!(sha256(&dir.join(name)), sha256(&original));
        assert_eq!(sha256(&out.join(name)), sha256(&original));
    }
}

/// A fresh broker of its own downloads `torrent` from `peer` to the end (and stops).
fn fetch_once(sandbox: &Sandbox, name: &str, torrent: &Path, peer: &str) {
    let state = sandbox.state_dir(name);
    let _broker = sandbox.broker(&state, &[]);
    broker_fetch(sandbox, &state, torrent, peer, name);
}

#[test]
fn a_seed_reaching_ratio_two_stops_in_the_broker_as_in_transmission() {
    if !have("transmission-daemon") {
        return;
    }
    let sandbox = Sandbox::new();
    let seeder = sandbox.state_dir("seeder");
    let seeding = sandbox.broker(&seeder, &["--ratio-limit", "2"]);
    let data = sandbox.random_file("shared/ratio.bin", 256 << 10);
    let torrent = make(&sandbox, &seeder, &data, "ratio.bin", 16 << 10);
    let mut add = sandbox.add_command(&seeder, &torrent, &sandbox.path("shared"), None);
    add.arg("--overwrite");
    run(add).expect_code(0);
    // transmission-daemon seeds the same data, its ratio limit 2 too.
    let limits = serde_json::json!({"ratio-limit": 2.0, "ratio-limit-enabled": true});
    let transmission = Transmission::start_with(&sandbox, "ratio-transmission", limits);
    transmission.add(&torrent, &sandbox.path("shared"));
    transmission.wait_active("ratio.bin", true);
    let transmission_state = || {
        let info =
            String::from_utf8_lossy(&transmission.remote(&["-t", "1", "-i"]).stdout).into_owned();
        info.lines()
            .find_map(|l| l.trim().strip_prefix("State: ").map(str::to_owned))
            .unwrap_or_default()
    };
    let broker_state = || e2e::status_json(&sandbox, &seeder, "0")["state"].clone();
    for (round, leecher) in ["first", "second"].into_iter().enumerate() {
        fetch_once(
            &sandbox,
            &format!("{leecher}-from-transmission"),
            &torrent,
            &transmission.peer(),
        );
        fetch_once(
            &sandbox,
            &format!("{leecher}-from-broker"),
            &torrent,
            &seeding.peer(),
        );
        if round == 0 {
            // Ratio 1: both seed on.
            std::thread::sleep(std::time::Duration::from_secs(2));
            // (Seeding with no peer connected is "Idle" in transmission.)
            let theirs = transmission_state();
            assert!(
                theirs == "Seeding" || theirs == "Idle",
                "transmission at ratio 1: {theirs}"
            );
            assert_eq!(broker_state(), "seeding", "the broker at ratio 1");
        }
    }
    // Ratio 2: both stop (transmission says Finished; the broker pauses).
    wait_for("transmission to stop at ratio 2", STEP_TIMEOUT, || {
        transmission_state() == "Finished"
    });
    wait_for("the broker to stop at ratio 2", STEP_TIMEOUT, || {
        broker_state() == "paused"
    });
    let status = e2e::status_json(&sandbox, &seeder, "0");
    assert!(status["ratio"].as_f64().unwrap_or(0.0) >= 2.0, "{status}");
}
