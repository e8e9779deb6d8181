//! Running as a service: systemd readiness, the log file, man pages and completions for the
//! broker, and the user install script.

use e2e::{bin, run, wait_for, Sandbox, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::process::Command;

/// Reads one notification, failing the test after STEP_TIMEOUT.
fn notification(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .expect("a notification from the broker");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn the_broker_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("service");
    let path = sandbox.path("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut broker = sandbox.broker_with_env(&state, &[], &[("NOTIFY_SOCKET", path.as_os_str())]);
    assert!(notification(&socket).contains("READY=1"));
    // Ready means served: a patron connects at once.
    sandbox.patron(&state).broker_info().unwrap();

    broker.signal(Signal::SIGTERM);
    let stopping = notification(&socket);
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(stopping.contains("SIGTERM"), "{stopping}");
    assert!(broker.wait_exit(STEP_TIMEOUT).success());
}

#[test]
fn the_broker_logs_patrons_requests_refusals_and_torrent_states_to_its_log_file() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("logging");
    let mut cmd = Command::new(bin("torrent-broker"));
    sandbox.apply_env(&mut cmd);
    cmd.arg("--state-dir")
        .arg(&state)
        .args(["--log-file", "broker.log"]);
    let broker = e2e::Running::start(cmd);
    let log = state.join("broker.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the broker to log that it is ready", STEP_TIMEOUT, || {
        text().contains("broker ready")
    });

    let data = sandbox.random_file("data/logged.bin", 100_000);
    let mut patron = sandbox.patron(&state);
    let id = e2e::make_and_seed(&mut patron, &data);
    let unknown =
        e2e::patron_client::proto::TorrentRef::Id(e2e::patron_client::proto::TorrentId(99));
    assert!(patron.status(unknown).is_err());
    let pid = format!("pid={}", std::process::id());
    let torrent = format!("torrent={id}");
    wait_for(
        "the torrent's state change in the log",
        STEP_TIMEOUT,
        || {
            text()
                .lines()
                .any(|l| l.contains("torrent state changed") && l.contains(&torrent))
        },
    );
    drop(patron);
    wait_for("the patron's disconnect in the log", STEP_TIMEOUT, || {
        text().contains("patron disconnected")
    });
    sandbox.patron(&state).stop_broker().unwrap();
    broker.finish(STEP_TIMEOUT).expect_code(0);

    let text = text();
    let line = |what: &str, with: &[&str]| {
        assert!(
            text.lines()
                .any(|l| l.contains(what) && with.iter().all(|w| l.contains(w))),
            "no {what:?} line with {with:?} in:\n{text}"
        );
    };
    line("patron connected", &[&pid]);
    line("request", &[&pid, "kind=make"]);
    line("refused", &[&pid, "unknown-torrent"]);
    line("torrent state changed", &[&torrent, "to=seeding"]);
    line("patron disconnected", &[&pid]);
    // The log file holds the log; no colour codes in it.
    assert!(!text.contains('\u{1b}'));
}

#[test]
fn the_broker_prints_its_man_page_and_completions() {
    let mut cmd = Command::new(bin("torrent-broker"));
    cmd.arg("--manpage");
    let page = run(cmd).expect_code(0).stdout;
    assert!(page.contains(".TH torrent-broker 1"), "{page}");
    assert!(page.contains("loopback\\-only"), "options are documented");

    let mut cmd = Command::new(bin("torrent-broker"));
    cmd.args(["--completions", "bash"]);
    let script = run(cmd).expect_code(0).stdout;
    assert_eq!(
        e2e::bash_complete("torrent-broker", &script, "torrent-broker --loop"),
        ["--loopback-only"]
    );
}

#[test]
fn patron_client_writes_a_man_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("patron-client"));
    cmd.arg("manpages").arg(dir.path());
    run(cmd).expect_code(0);
    for page in [
        "patron-client.1",
        "patron-client-add.1",
        "patron-client-broker-stop.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.contains(".TH patron-client"), "{page}");
    }
}

#[test]
fn the_install_script_puts_everything_where_a_user_session_finds_it() {
    let home = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut install = Command::new(repo.join("scripts/install"));
    install
        .arg("--no-build")
        .env("INSTALL_HOME", home.path())
        .env(
            "TORRENT_PATRON_BIN_DIR",
            bin("torrent-broker").parent().unwrap(),
        );
    let out = run(install).expect_code(0);
    assert!(out.stdout.contains("systemctl --user"), "{}", out.stdout);

    let h = home.path();
    for file in [
        ".local/bin/torrent-broker",
        ".local/bin/patron-client",
        ".local/bin/torrent-web",
        ".local/share/bash-completion/completions/patron-client",
        ".local/share/bash-completion/completions/torrent-broker",
        ".local/share/zsh/site-functions/_patron-client",
        ".config/fish/completions/patron-client.fish",
        ".local/share/man/man1/patron-client.1",
        ".local/share/man/man1/patron-client-add.1",
        ".local/share/man/man1/torrent-broker.1",
    ] {
        let meta = std::fs::metadata(h.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let unit =
        std::fs::read_to_string(h.join(".config/systemd/user/torrent-broker.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let program = exec.split_whitespace().next().unwrap();
    assert_eq!(
        std::path::Path::new(program),
        h.join(".local/bin/torrent-broker")
    );
    assert!(unit.contains("Type=notify") && unit.contains("Restart=on-failure"));
    assert!(exec.contains("--state-dir %S/torrent-patron"), "{exec}");
    // The web patron's unit beside it: the same state dir, loopback, never a broker of its own.
    let web = std::fs::read_to_string(h.join(".config/systemd/user/torrent-web.service")).unwrap();
    let exec = web
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.starts_with(&h.join(".local/bin/torrent-web").display().to_string())
            && exec.contains("--state-dir %S/torrent-patron")
            && exec.contains("--listen 127.0.0.1:")
            && exec.contains("--no-autostart"),
        "{exec}"
    );
    // systemd must accept the unit without a warning.
    if e2e::have_program("systemd-analyze", "systemd") {
        let runtime = tempfile::tempdir().unwrap();
        let mut verify = Command::new("systemd-analyze");
        verify
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args(["--user", "verify", "--man=no"])
            .arg(h.join(".config/systemd/user/torrent-broker.service"))
            .arg(h.join(".config/systemd/user/torrent-web.service"));
        let out = verify.output().unwrap();
        let complaints = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && complaints.is_empty(),
            "{complaints}"
        );
    }
}

#[test]
fn both_programs_say_their_version() {
    for program in ["torrent-broker", "patron-client", "torrent-web"] {
        let mut cmd = Command::new(bin(program));
        cmd.arg("--version");
        let out = run(cmd).expect_code(0);
        assert_eq!(
            out.stdout.trim(),
            format!("{program} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}
