//! `patron-client watch` on a real terminal (a tmux pane), read back with `capture-pane`:
//! one live line per torrent, redrawn in place; and plain lines without a terminal.

use e2e::{bin, run, wait_for, Running, Sandbox, Seeder, STEP_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Command;

/// A private tmux server (own socket), killed by its pid when dropped.
struct Tmux {
    socket: String,
    server_pid: Option<i32>,
}

impl Tmux {
    fn new(sandbox: &Sandbox) -> Tmux {
        let socket = sandbox.path("tmux.sock").display().to_string();
        Tmux {
            socket,
            server_pid: None,
        }
    }

    fn command(&self, sandbox: &Sandbox) -> Command {
        let mut cmd = Command::new("tmux");
        // The server inherits this environment: loopback-only, the sandbox's roots.
        sandbox.apply_env(&mut cmd);
        cmd.arg("-S")
            .arg(&self.socket)
            .env("TERM", "xterm-256color");
        cmd
    }

    /// Starts `program` in a detached 150×12 session.
    fn start(&mut self, sandbox: &Sandbox, program: &str) {
        self.start_sized(sandbox, program, 150);
    }

    /// Starts `program` in a detached session `width` columns wide, 12 lines high.
    fn start_sized(&mut self, sandbox: &Sandbox, program: &str, width: u16) {
        let mut cmd = self.command(sandbox);
        let width = width.to_string();
        cmd.args(["new-session", "-d", "-x", &width, "-y", "12", program]);
        run(cmd).expect_code(0);
        let mut pid = self.command(sandbox);
        pid.args(["display-message", "-p", "#{pid}"]);
        self.server_pid = run(pid).expect_code(0).stdout.trim().parse().ok();
        assert!(self.server_pid.is_some(), "no tmux server pid");
    }

    fn screen(&self, sandbox: &Sandbox) -> String {
        let mut cmd = self.command(sandbox);
        cmd.args(["capture-pane", "-p"]);
        run(cmd).expect_code(0).stdout
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if let Some(pid) = self.server_pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn have_tmux() -> bool {
    e2e::have_program("tmux", "tmux")
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[test]
fn watch_on_a_terminal_draws_one_line_per_torrent_and_redraws_it_in_place() {
    if !have_tmux() {
        return;
    }
    let sandbox = Sandbox::new();
    // A slow download (1 MB at 200 kB/s) and a torrent complete from the start.
    let slow = sandbox.random_file("seed/slow-one.bin", 1_000_000);
    let seeder = Seeder::start(
        &sandbox,
        "seeder",
        &slow,
        16 * 1024,
        &["--max-upload-rate", "200000"],
    );
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let mut patron = sandbox.patron(&state);
    patron
        .create(seeder.create_request(&out))
        .expect("start the slow one");
    let done = sandbox.random_file("local/done-one.bin", 50_000);
    e2e::make_and_seed(&mut patron, &done);

    let mut tmux = Tmux::new(&sandbox);
    tmux.start(
        &sandbox,
        &format!(
            "{} --state-dir {} watch",
            quoted(&bin("patron-client")),
            quoted(&state)
        ),
    );
    let lines_of = |screen: &str, name: &str| screen.lines().filter(|l| l.contains(name)).count();
    // Both torrents on screen, each on one line with a bar and a percentage, the slow one
    // still downloading.
    let mut first = String::new();
    wait_for("both torrents on screen", STEP_TIMEOUT, || {
        first = tmux.screen(&sandbox);
        first
            .lines()
            .any(|l| l.contains("slow-one.bin") && l.contains("downloading") && l.contains('%'))
            && first
                .lines()
                .any(|l| l.contains("done-one.bin") && l.contains("100%") && l.contains("seeding"))
    });
    // Then the slow one finishes: its line changes in place, nothing scrolls.
    let mut last = String::new();
    wait_for(
        "the slow torrent to complete on screen",
        STEP_TIMEOUT,
        || {
            last = tmux.screen(&sandbox);
            last.lines()
                .any(|l| l.contains("slow-one.bin") && l.contains("100%") && l.contains("seeding"))
        },
    );
    for screen in [&first, &last] {
        assert_eq!(lines_of(screen, "slow-one.bin"), 1, "{screen}");
        assert_eq!(lines_of(screen, "done-one.bin"), 1, "{screen}");
        assert!(screen.contains("[") && screen.contains("peer"), "{screen}");
    }
}

#[test]
fn watch_without_a_terminal_prints_plain_lines() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let done = sandbox.random_file("local/plain.bin", 50_000);
    let mut make = sandbox.client(&state);
    make.arg("make").arg(&done).arg("--seed");
    make.arg("--output").arg(sandbox.path("plain.torrent"));
    run(make).expect_code(0);
    let mut watch = sandbox.client(&state);
    watch.args(["watch", "0"]);
    let watching = Running::start(watch);
    // Once watch shows the torrent seeding (it may show it checking first), close it:
    // watch prints that and exits.
    wait_for("watch to show the torrent seeding", STEP_TIMEOUT, || {
        watching
            .stdout_so_far()
            .lines()
            .any(|l| l.contains("plain.bin") && l.contains("seeding"))
    });
    let mut close = sandbox.client(&state);
    close.args(["close", "0", "--force"]);
    run(close).expect_code(0);
    let out = watching.finish(STEP_TIMEOUT).expect_code(0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("plain.bin") && l.contains("seeding"))
        .expect(&out.stdout);
    assert!(
        line.contains("seeding") && line.contains("100.0%"),
        "{line}"
    );
    assert!(
        out.stdout.lines().any(|l| l.contains("closed:")),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains('\u{1b}'),
        "no escape codes without a terminal"
    );
}

/// A broker restarted under a running `watch` (a new board, a new generation): watch takes
/// up the new board and goes on with the restored torrent, instead of ending.
#[test]
fn watch_goes_on_across_a_broker_restart() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(&state, &[]);
    let done = sandbox.random_file("local/kept.bin", 50_000);
    let mut make = sandbox.client(&state);
    make.arg("make").arg(&done).arg("--seed");
    make.arg("--output").arg(sandbox.path("kept.torrent"));
    run(make).expect_code(0);
    let mut watch = sandbox.client(&state);
    watch.args(["watch", "0"]);
    let watching = Running::start(watch);
    let seeding_lines = |out: &str| {
        out.lines()
            .filter(|l| l.contains("kept.bin") && l.contains("seeding"))
            .count()
    };
    wait_for("watch to show it seeding", STEP_TIMEOUT, || {
        seeding_lines(&watching.stdout_so_far()) == 1
    });
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
    // The old board says stopped. Watch looks at least every 500 ms: a second on, it has
    // seen that and (before this change) would have ended.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        kill(Pid::from_raw(watching.pid()), None).is_ok()
            && !watching.stdout_so_far().contains("closed:"),
        "watch ended with the broker: {}",
        watching.stdout_so_far()
    );
    let _restarted = sandbox.broker(&state, &[]);
    // Whether watch is on the new board already or takes it up after the close, it sees the
    // restored torrent go.
    let mut close = sandbox.client(&state);
    close.args(["close", "0", "--force"]);
    run(close).expect_code(0);
    let out = watching.finish(STEP_TIMEOUT).expect_code(0);
    assert!(out.stdout.contains("closed:"), "{}", out.stdout);
}

/// `watch` with no torrent named follows the broker, as a dashboard does: one added after it
/// started appears, a closed one goes, the next one appears too, and it runs until
/// interrupted. With the board and without it.
#[test]
fn watch_with_no_torrent_named_follows_the_broker_until_interrupted() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    for (round, board) in ["1", "0"].into_iter().enumerate() {
        let mut watch = sandbox.client(&state);
        watch.env(e2e::patron_client::BOARD_ENV, board).arg("watch");
        let watching = Running::start(watch);
        wait_for("watch to say it waits", STEP_TIMEOUT, || {
            watching.stdout_so_far().contains("waiting for some")
        });
        for n in 0..2 {
            let name = format!("later-{round}-{n}.bin");
            let data = sandbox.random_file(&format!("local/{name}"), 30_000);
            let mut make = sandbox.client(&state);
            make.arg("make").arg(&data).arg("--seed");
            make.arg("--output")
                .arg(sandbox.path(&format!("{name}.torrent")));
            run(make).expect_code(0);
            wait_for(
                "watch to show the torrent added later",
                STEP_TIMEOUT,
                || watching.stdout_so_far().contains(&name),
            );
            let id = (2 * round + n).to_string();
            let mut close = sandbox.client(&state);
            close.args(["close", &id, "--force"]);
            run(close).expect_code(0);
            wait_for("watch to show it closed", STEP_TIMEOUT, || {
                watching.stdout_so_far().matches("closed:").count() == n + 1
            });
        }
        // Still following: it ends only when interrupted (a person's Ctrl-C).
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            kill(Pid::from_raw(watching.pid()), None).is_ok(),
            "watch ended by itself: {}",
            watching.stdout_so_far()
        );
        kill(Pid::from_raw(watching.pid()), Signal::SIGINT).expect("interrupt");
        let out = watching.finish(STEP_TIMEOUT);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(2), "{out:?}");
    }
}

/// On a terminal narrower than a torrent's line, the name and the bar give way to the
/// figures, and no line wraps (a wrapped line breaks the redraw in place).
#[test]
fn watch_fits_its_lines_to_a_narrow_terminal() {
    if !have_tmux() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    for name in ["narrow-one.bin", "narrow-two.bin"] {
        let data = sandbox.random_file(&format!("local/{name}"), 30_000);
        e2e::make_and_seed(&mut patron, &data);
    }
    for width in [60, 80] {
        let mut tmux = Tmux::new(&sandbox);
        tmux.start_sized(
            &sandbox,
            &format!(
                "{} --state-dir {} watch",
                quoted(&bin("patron-client")),
                quoted(&state)
            ),
            width,
        );
        let mut screen = String::new();
        wait_for("both torrents seeding on screen", STEP_TIMEOUT, || {
            screen = tmux.screen(&sandbox);
            // (Names are cut to fit: "narrow-…" at 60 columns.)
            ["   0 narrow-", "   1 narrow-"].iter().all(|start| {
                screen
                    .lines()
                    .any(|l| l.starts_with(start) && l.contains("100%") && l.contains("seeding"))
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        screen = tmux.screen(&sandbox);
        let drawn: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            drawn.len(),
            2,
            "{width} columns: one line per torrent, none wrapped:\n{screen}"
        );
        for line in drawn {
            assert!(
                line.contains("0 peers") && line.trim_end().ends_with("up 0 B/s"),
                "{width} columns: the figures are whole:\n{screen}"
            );
        }
    }
}

/// `add --wait` on an 80-column terminal: the bar gives way to the figures, which stay
/// whole (the peers and the time left are what a user of a stalled download looks for).
#[test]
fn add_wait_keeps_its_figures_whole_on_an_80_column_terminal() {
    if !have_tmux() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    // A torrent nobody seeds: it stays downloading, with no peer.
    let data = sandbox.random_file("local/alone.bin", 300_000);
    let torrent = sandbox.path("alone.torrent");
    sandbox.make_torrent(&state, &data, &torrent);
    let downloads = sandbox.folder("downloads");
    let mut tmux = Tmux::new(&sandbox);
    tmux.start_sized(
        &sandbox,
        &format!(
            "{} --state-dir {} add {} --output {} --wait",
            quoted(&bin("patron-client")),
            quoted(&state),
            quoted(&torrent),
            quoted(&downloads)
        ),
        80,
    );
    let mut screen = String::new();
    wait_for("the figures whole on screen", STEP_TIMEOUT, || {
        screen = tmux.screen(&sandbox);
        screen
            .lines()
            .any(|l| l.contains("[") && l.trim_end().ends_with("0 peers  eta -"))
    });
}

/// A dashboard shows what runs: on a terminal, a torrent closed while `watch` follows the
/// broker loses its line (the others stay).
#[test]
fn watch_on_a_terminal_drops_a_closed_torrents_line() {
    if !have_tmux() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let mut patron = sandbox.patron(&state);
    for name in ["stays.bin", "goes.bin"] {
        let data = sandbox.random_file(&format!("local/{name}"), 30_000);
        e2e::make_and_seed(&mut patron, &data);
    }
    let mut tmux = Tmux::new(&sandbox);
    tmux.start(
        &sandbox,
        &format!(
            "{} --state-dir {} watch",
            quoted(&bin("patron-client")),
            quoted(&state)
        ),
    );
    wait_for("both on screen", STEP_TIMEOUT, || {
        let screen = tmux.screen(&sandbox);
        screen.contains("stays.bin") && screen.contains("goes.bin")
    });
    let (code, lines) = e2e::client_json(&sandbox, &state, &["close", "1", "--force"]);
    assert_eq!(code, 0, "{lines:?}");
    let mut screen = String::new();
    wait_for("the closed one's line to go", STEP_TIMEOUT, || {
        screen = tmux.screen(&sandbox);
        !screen.contains("goes.bin")
    });
    assert!(screen.contains("stays.bin"), "{screen}");
    assert!(!screen.contains("closed"), "{screen}");
}

/// `cat` to a terminal is refused (exit 2, as a usage error), as curl refuses binary
/// output: a video's bytes would fill the screen. `--to-terminal` writes them.
#[test]
fn cat_to_a_terminal_is_refused_unless_asked() {
    if !have_tmux() {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.folder("local/text");
    std::fs::write(data.join("hello.txt"), b"hello from the torrent\n").expect("write");
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &data.join("hello.txt"));
    let client = format!(
        "{} --state-dir {}",
        quoted(&bin("patron-client")),
        quoted(&state)
    );
    let mut tmux = Tmux::new(&sandbox);
    tmux.start(
        &sandbox,
        &format!(
            "{client} cat 0; echo exit=$?; {client} cat 0 --to-terminal; echo exit=$?; sleep 30"
        ),
    );
    let mut screen = String::new();
    wait_for("both cats to end", STEP_TIMEOUT, || {
        screen = tmux.screen(&sandbox);
        screen.matches("exit=").count() == 2
    });
    assert!(
        screen.contains("is a terminal") && screen.contains("exit=2"),
        "{screen}"
    );
    assert!(
        screen.contains("hello from the torrent") && screen.contains("exit=0"),
        "{screen}"
    );
}
