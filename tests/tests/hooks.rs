//! Hooks (DESIGN §13): a program of the user's run when a torrent is added, completes or
//! fails, the torrent in its environment (never through a shell); one that hangs is killed
//! with its process group, and the broker never waits for it.

use e2e::{ok_json, run, wait_for, Sandbox, Seeder, STEP_TIMEOUT};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An executable shell script at `path`.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write the hook");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

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
