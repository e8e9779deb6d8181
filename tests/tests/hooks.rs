//! Hooks (DESIGN §13): a program of the user's run when a torrent is added, completes or
//! fails, the torrent in its environment (never through a shell); one that hangs is killed
//! with its process group, and the broker never waits for it.

use e2e::{ok_json, run, script, wait_for, Sandbox, Seeder, STEP_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[test]
fn hooks_run_at_add_and_completion_with_the_torrent_in_their_environment_and_no_shell() {
    let sandbox = Sandbox::new();
    // A name a shell would run: the hook gets it as it is, and nothing runs it.
    let evil = "a;touch PWNED;$(touch PWNED2).bin";
    let data = sandbox.random_file(&format!("seed/{evil}"), 200_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let seen = sandbox.folder("seen");
    let hook = script(
        &sandbox.path("hook.sh"),
        &format!(
            "env | grep '^TP_' | sort > \"{}/$TP_EVENT-$TP_TORRENT_ID\"",
            seen.display()
        ),
    );
    let hook = hook.to_str().expect("utf-8");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &["--on-added", hook, "--on-completed", hook]);
    let out = sandbox.folder("downloads");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &out, Some(&seeder.broker.peer()));
    add.arg("--wait");
    e2e::Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    let read = |event: &str| {
        let path = seen.join(format!("{event}-0"));
        let mut text = String::new();
        wait_for(&format!("the {event} hook"), STEP_TIMEOUT, || {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            text.contains("TP_SAVE_FOLDER")
        });
        text
    };
    for event in ["added", "completed"] {
        let env = read(event);
        assert!(env.contains(&format!("TP_EVENT={event}\n")), "{env}");
        assert!(env.contains("TP_TORRENT_ID=0\n"), "{env}");
        assert!(
            env.contains(&format!("TP_INFO_HASH={}\n", seeder.info_hash)),
            "{env}"
        );
        assert!(env.contains(&format!("TP_NAME={evil}\n")), "{env}");
        assert!(
            env.contains(&format!("TP_SAVE_FOLDER={}\n", out.display())),
            "{env}"
        );
    }
    for planted in ["PWNED", "PWNED2"] {
        assert!(!seen.join(planted).exists() && !sandbox.path(planted).exists());
        assert!(!state.join(planted).exists() && !out.join(planted).exists());
    }
}

#[test]
fn a_hook_that_hangs_is_killed_with_what_it_started_and_the_broker_never_waits() {
    let sandbox = Sandbox::new();
    let pids = sandbox.folder("pids");
    // It starts a child in its group, notes both pids, and sleeps for ever.
    let hook = script(
        &sandbox.path("hang.sh"),
        &format!(
            "sleep 1000 & echo $! > \"{0}/child-$TP_TORRENT_ID\"\necho $$ > \"{0}/hook-$TP_TORRENT_ID\"\nyes flood | head -c 10000000\nsleep 1000",
            pids.display()
        ),
    );
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(
        &state,
        &[
            "--on-added",
            hook.to_str().expect("utf-8"),
            "--hook-timeout",
            "2",
        ],
    );
    // Eight seeds made at once: hooks run four at a time, each hanging; the broker answers
    // meanwhile as fast as ever.
    for n in 0..8 {
        let data = sandbox.random_file(&format!("mine/{n}.bin"), 10_000);
        let torrent = sandbox.path(&format!("mine-{n}.torrent"));
        let started = Instant::now();
        let mut make = sandbox.client(&state);
        make.args(["make", "--seed", "--output"])
            .arg(&torrent)
            .arg(&data);
        run(make).expect_code(0);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "make {n} waited"
        );
    }
    let started = Instant::now();
    ok_json(&sandbox, &state, &["status", "0"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a status waited for hooks"
    );
    let alive = |pid: &str| Path::new(&format!("/proc/{}", pid.trim())).exists();
    wait_for(
        "all eight hooks to have run",
        Duration::from_secs(60),
        || (0..8).all(|n| pids.join(format!("hook-{n}")).exists()),
    );
    wait_for(
        "every hook and its child killed",
        Duration::from_secs(30),
        || {
            (0..8).all(|n| {
                let hook =
                    std::fs::read_to_string(pids.join(format!("hook-{n}"))).unwrap_or_default();
                let child =
                    std::fs::read_to_string(pids.join(format!("child-{n}"))).unwrap_or_default();
                !hook.is_empty() && !alive(&hook) && !alive(&child)
            })
        },
    );
}

/// A pids cgroup of its own (v1 `pids`, or v2 with the pids controller), removed when
/// dropped: what runs in it cannot make more than `max` tasks, so a fork bomb in a test
/// cannot take the machine down.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn new(name: &str, max: u32) -> PidsCgroup {
        let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
        let base = match v2 {
            true => PathBuf::from("/sys/fs/cgroup"),
            false => PathBuf::from("/sys/fs/cgroup/pids"),
        };
        let dir = base.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a pids cgroup (as root)");
        std::fs::write(dir.join("pids.max"), max.to_string()).expect("pids.max");
        PidsCgroup(dir)
    }

    fn enter(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }

    /// The processes in it now.
    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_fork_bomb_hook_and_what_hooks_leave_behind_end_with_them_and_the_broker_serves_on() {
    if !e2e::have_root("a pids cgroup to hold the fork bomb") {
        return;
    }
    let sandbox = Sandbox::new();
    let bomb = script(&sandbox.path("bomb.sh"), "b(){ b | b & }; b");
    // Daemons a hook leaves behind: in its group, and in a session of their own.
    let leaver = script(
        &sandbox.path("leaver.sh"),
        // (A moment for setsid to take hold before the hook ends: else its group's kill
        // ends it first, and nothing is left to sweep.)
        "sleep 300 & setsid sleep 301 & sleep 1; echo started",
    );
    let state = sandbox.state_dir("broker");
    let mut broker = sandbox.broker(
        &state,
        &[
            "--on-added",
            bomb.to_str().expect("utf-8"),
            "--hook-timeout",
            "3",
        ],
    );
    let cgroup = PidsCgroup::new("tp-hook-bomb", 300);
    cgroup.enter(broker.pid);
    let data = sandbox.random_file("data/x.bin", 100_000);
    let mut make = sandbox.client(&state);
    make.args(["make", "--seed", "--output"])
        .arg(sandbox.path("x.torrent"))
        .arg(&data);
    run(make).expect_code(0);
    // While the bomb runs, the broker answers.
    let mut patron = sandbox.patron(&state);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(4) {
        let asked = Instant::now();
        patron.list().expect("list during the bomb");
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_secs(1),
        "list took {slowest:?} during the bomb"
    );
    // Killed with its group at the timeout: nothing of it is left but the broker.
    wait_for("the bomb to end", STEP_TIMEOUT, || {
        cgroup.procs() == [broker.pid]
    });
    assert!(broker.is_running(), "the broker outlived the bomb");
    // A hook that starts daemons and ends at once.
    drop(patron);
    broker.signal(nix::sys::signal::Signal::SIGTERM);
    broker.wait_exit(STEP_TIMEOUT);
    let broker = sandbox.broker(
        &state,
        &[
            "--on-added",
            leaver.to_str().expect("utf-8"),
            "--hook-timeout",
            "3",
        ],
    );
    cgroup.enter(broker.pid);
    let more = sandbox.random_file("data/y.bin", 100_000);
    let mut make = sandbox.client(&state);
    make.args(["make", "--seed", "--output"])
        .arg(sandbox.path("y.torrent"))
        .arg(&more);
    run(make).expect_code(0);
    wait_for("the hook to have run", STEP_TIMEOUT, || {
        broker.log().contains("started")
    });
    // It ended at once, and what it left behind (in its group, and in a session of its
    // own) was ended with it.
    wait_for("what the hook left behind to end", STEP_TIMEOUT, || {
        cgroup.procs() == [broker.pid]
    });
    assert!(
        broker
            .log()
            .contains("a process a hook left behind: killed"),
        "{}",
        broker.log()
    );
}
