//! A newcomer's first hour (issue 19): one vocabulary for ids, sizes and peers, and errors
//! that say what to do next, through the real binaries.

use e2e::{run, wait_for, Sandbox, Seeder, STEP_TIMEOUT};

/// Every reply prints `"id": 3`; a script that sends it back as a number is understood, as
/// is the string.
#[test]
fn pipe_mode_takes_a_torrent_id_as_a_number_or_a_string() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 50_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let lines = [
        r#"{"cmd":"status","torrent":0,"request":"number"}"#.to_string(),
        r#"{"cmd":"status","torrent":"0","request":"string"}"#.to_string(),
        r#"{"cmd":"files","torrent":0,"request":"files"}"#.to_string(),
        r#"{"cmd":"status","torrent":-1,"request":"negative"}"#.to_string(),
    ];
    for board in [true, false] {
        let replies = e2e::pipe_session(&sandbox, &seeder.broker.state, &lines, board);
        let by = |r: &str| {
            replies
                .iter()
                .find(|l| l["request"] == r)
                .unwrap_or_else(|| panic!("no reply to {r}: {replies:#?}"))
                .clone()
        };
        assert_eq!(by("number")["id"], 0, "{replies:#?}");
        assert_eq!(by("string")["id"], 0, "{replies:#?}");
        assert_eq!(by("files")["event"], "files", "{replies:#?}");
        let negative = by("negative");
        assert_eq!(negative["event"], "error", "{negative}");
        assert!(
            negative["message"]
                .as_str()
                .is_some_and(|m| m.contains("an id")),
            "{negative}"
        );
    }
}

/// Sizes read the same everywhere (`--piece-size 64K` as `--offset 1.5K`), and a peer may
/// be named by host name.
#[test]
fn sizes_take_units_and_fractions_and_peers_take_host_names() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/sized.bin", 200_000);
    let made = sandbox.path("sized.torrent");
    let mut make = sandbox.client(&state);
    make.args(["--json", "make"])
        .arg(&data)
        .args(["--piece-size", "64K", "--seed", "--output"])
        .arg(&made);
    let line = &run(make).expect_code(0).json_lines()[0];
    assert_eq!(line["piece_size"], 65536, "{line}");
    // 1.5K into the file: byte 1536 on.
    let out = sandbox.path("tail.bin");
    let cat = e2e::CatProcess::start(&sandbox, &state, &["0", "--offset", "1.5K"], &out);
    let (code, stderr, bytes) = cat.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(bytes == std::fs::read(&data).expect("data")[1536..]);
    // A peer by name: localhost is looked up here (in /etc/hosts), and the broker is told
    // its address.
    let port = broker.peer().rsplit_once(':').expect("port").1.to_owned();
    let mut peers = sandbox.client(&state);
    peers.args([
        "--json",
        "peers",
        "0",
        "--add",
        &format!("localhost:{port}"),
    ]);
    let refused = run(peers);
    // The broker's own address is refused by name as by number: the name was resolved.
    assert!(
        refused.stdout.contains("own listen address"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let mut bad = sandbox.client(&state);
    bad.args(["make"]).arg(&data).args(["--piece-size", "64Q"]);
    let bad = run(bad);
    assert_eq!(bad.code(), 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("64K"), "{}", bad.stderr);
}

/// A broker program that is not there: the error says where it was looked for and names
/// the variable that points elsewhere.
#[test]
fn a_missing_broker_program_says_where_it_looked_and_how_to_name_it() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("nobody");
    let mut start = sandbox.client(&state);
    start
        .env("TORRENT_PATRON_BROKER", "/nonexistent/torrent-broker")
        .args(["broker", "start"]);
    let out = run(start);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr.contains("/nonexistent/torrent-broker")
            && out.stderr.contains("TORRENT_PATRON_BROKER")
            && out.stderr.contains("looked for"),
        "{}",
        out.stderr
    );
}

/// `cat` of a file the torrent does not have lists the files it has, as leaving the file
/// out already did.
#[test]
fn cat_of_a_file_the_torrent_lacks_lists_its_files() {
    let sandbox = Sandbox::new();
    let folder = sandbox.folder("seed/pair");
    sandbox.random_file("seed/pair/first.bin", 10_000);
    sandbox.random_file("seed/pair/second.bin", 10_000);
    let seeder = Seeder::start(&sandbox, "seeder", &folder, 16 * 1024, &[]);
    for wrong in ["nope.txt", "7"] {
        let mut cat = sandbox.client(&seeder.broker.state);
        cat.args(["cat", "0", wrong]);
        let out = run(cat);
        assert_ne!(out.code(), 0);
        assert!(
            out.stderr.contains("first.bin") && out.stderr.contains("second.bin"),
            "{wrong}: {}",
            out.stderr
        );
    }
}

/// `list` has a header over its columns; `status` shows one torrent whole; an add
/// `--paused` does not say "Started".
#[test]
fn list_has_a_header_and_a_paused_add_says_so() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 50_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let mut add = sandbox.client(&state);
    add.arg("add")
        .arg(&seeder.torrent)
        .arg("--output")
        .arg(&out)
        .arg("--paused");
    let added = run(add).expect_code(0);
    assert!(
        added.stdout.starts_with("Added, paused"),
        "{}",
        added.stdout
    );
    // A change says what it did to which torrent, in a sentence.
    for (command, said) in [
        ("resume", "Resumed torrent 0 (one.bin): "),
        ("pause", "Paused torrent 0 (one.bin): paused, "),
    ] {
        let mut cmd = sandbox.client(&state);
        cmd.args([command, "0"]);
        let out = run(cmd).expect_code(0).stdout;
        assert!(out.starts_with(said), "{out}");
    }
    for board in ["1", "0"] {
        let mut list = sandbox.client(&state);
        list.env(e2e::patron_client::BOARD_ENV, board).arg("list");
        let listed = run(list).expect_code(0);
        let lines: Vec<&str> = listed.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}", listed.stdout);
        assert!(
            lines[0].contains("ID") && lines[0].contains("NAME") && lines[0].contains("STATE"),
            "{}",
            listed.stdout
        );
        assert!(lines[1].trim_start().starts_with('0'), "{}", listed.stdout);
        // status shows one torrent whole: where it is saved, who holds it, its info hash.
        let mut status = sandbox.client(&state);
        status
            .env(e2e::patron_client::BOARD_ENV, board)
            .args(["status", "0"]);
        let shown = run(status).expect_code(0).stdout;
        assert!(shown.starts_with("Torrent 0: one.bin\n"), "{shown}");
        for label in [
            "info hash: ",
            "state:",
            "done:",
            "peers:",
            "saved in:  /",
            "used by:",
        ] {
            assert!(shown.contains(label), "{label:?} missing: {shown}");
        }
        let mut json = sandbox.client(&state);
        json.env(e2e::patron_client::BOARD_ENV, board)
            .args(["--json", "status", "0"]);
        let line = &run(json).expect_code(0).json_lines()[0];
        assert_eq!(line["event"], "status", "{line}");
        assert!(
            line["save_folder"]
                .as_str()
                .is_some_and(|f| f.starts_with('/')),
            "{line}"
        );
        assert!(
            line["holders"].is_number() && line["ephemeral"] == false,
            "{line}"
        );
    }
}

/// Commands that only read start no broker and make no folder, nor do changes to a torrent
/// where none was ever added: on a state dir where none runs they say so (exit 5) and how
/// to start one. `broker start` says whether it started
/// one or one ran already.
#[test]
fn reading_commands_start_no_broker_and_make_no_folder() {
    let sandbox = Sandbox::new();
    let state = sandbox.path("never-used");
    for args in [
        vec!["list"],
        vec!["--json", "list"],
        vec!["status", "0"],
        vec!["watch"],
        vec!["files", "0"],
        vec!["peers", "0"],
        vec!["broker", "status"],
        // Changes to a torrent, where no torrent was ever added: none can be there.
        vec!["close", "0"],
        vec!["pause", "0"],
        vec!["resume", "0"],
        vec!["recheck", "0"],
        vec!["files", "0", "--only", "0"],
        vec!["peers", "0", "--add", "127.0.0.1:9"],
        vec!["cat", "0"],
    ] {
        let mut cmd = sandbox.client(&state);
        cmd.args(&args);
        let out = run(cmd);
        assert_eq!(out.code(), 5, "{args:?}: {}{}", out.stdout, out.stderr);
        let said = format!("{}{}", out.stdout, out.stderr);
        // The advice, copied as written, reaches this state dir's broker.
        assert!(
            said.contains("no broker runs")
                && said.contains(&format!("--state-dir {} broker start", state.display())),
            "{args:?}: {said}"
        );
        assert!(!state.exists(), "{args:?} made the state dir");
        assert!(
            e2e::brokers_on(&state).is_empty(),
            "{args:?} started a broker"
        );
    }
    let mut start = sandbox.client(&state);
    start.args(["--json", "broker", "start"]);
    let started = run(start).expect_code(0).json_lines();
    assert_eq!(started[0]["started"], true, "{started:?}");
    let pid = started[0]["pid"].as_i64().expect("pid") as i32;
    let mut again = sandbox.client(&state);
    again.args(["broker", "start"]);
    let again = run(again).expect_code(0);
    assert!(
        again.stdout.starts_with("Broker already running"),
        "{}",
        again.stdout
    );
    // An empty broker lists nothing, and says so.
    let mut list = sandbox.client(&state);
    list.arg("list");
    assert_eq!(run(list).expect_code(0).stdout.trim(), "No torrents.");
    let mut stop = sandbox.client(&state);
    stop.args(["broker", "stop"]);
    let stopped = run(stop);
    // Ended by its pid whatever the stop said (the test started it).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert_eq!(stopped.code(), 0, "{}", stopped.stderr);
}

/// An add with no `--output` saves into the current folder; when that is outside the
/// broker's roots the refusal says it was the current folder and what to do.
#[test]
fn an_add_from_a_folder_outside_the_roots_says_it_was_the_current_folder() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 50_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let mut add = sandbox.client(&state);
    add.current_dir("/").arg("add").arg(&seeder.torrent);
    let out = run(add);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("the current folder")
            && out.stderr.contains("--output")
            && out.stderr.contains("download roots"),
        "{}",
        out.stderr
    );
}

/// A data file given where a .torrent goes is called what it is, with what to do instead;
/// a torrent larger than the free space says so in human sizes.
#[test]
fn refusals_speak_of_files_and_sizes_not_bytes_at_offsets() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let video = sandbox.path("film.mkv");
    e2e::write_file(&video, &[0x1a, 0x45, 0xdf, 0xa3, 0xae, 0x00]);
    let out = sandbox.folder("downloads");
    let add = sandbox.add_command(&state, &video, &out, None);
    let refused = run(add).expect_code(3);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("not a valid .torrent") && said.contains("make") && !said.contains("0x"),
        "{said}"
    );
}

/// One JSON vocabulary: pause, resume and recheck answer `status` as pipe mode does; the
/// broker is `broker` from `broker status` and pipe mode's `info` alike; a command line
/// refused under `--json` is a JSON error (kind `usage`, exit 2).
#[test]
fn the_cli_and_pipe_mode_speak_one_json_vocabulary() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/one.bin", 50_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = seeder.broker.state.clone();
    for command in ["pause", "resume", "recheck"] {
        let line = e2e::ok_json(&sandbox, &state, &[command, "0"]);
        assert_eq!(line["event"], "status", "{command}: {line}");
    }
    let cli = e2e::ok_json(&sandbox, &state, &["broker", "status"]);
    let piped = e2e::pipe_session(
        &sandbox,
        &state,
        &[r#"{"cmd":"info","request":"i"}"#.to_string()],
        true,
    );
    let piped = piped.iter().find(|l| l["request"] == "i").expect("info");
    assert_eq!(cli["event"], "broker", "{cli}");
    assert_eq!(piped["event"], "broker", "{piped}");
    let keys = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v
            .as_object()
            .expect("object")
            .keys()
            .filter(|k| *k != "request")
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&cli), keys(piped));
    for bad in [
        vec!["--json", "status"],
        vec!["--json", "cat", "0", "--offset", "lots"],
        vec!["pause", "--json", "--nope", "0"],
    ] {
        let mut cmd = sandbox.client(&state);
        cmd.args(&bad);
        let out = run(cmd).expect_code(2);
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "{bad:?}: {}", out.stdout);
        assert_eq!(lines[0]["event"], "error", "{bad:?}");
        assert_eq!(lines[0]["kind"], "usage", "{bad:?}");
    }
}

/// Pipe mode's one rule of order: replies come in request order, but a line's own error (it
/// never reached the broker) comes at once, even before the reply to a slow earlier command.
#[test]
fn in_pipe_mode_a_bad_lines_error_comes_at_once_and_replies_keep_their_order() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &["--magnet-timeout", "3"]);
    let silent = e2e::SilentPeer::start();
    let out = sandbox.folder("downloads");
    let lines = [
        serde_json::json!({"cmd": "add", "magnet": silent.magnet("ab", None),
            "output": out.display().to_string(), "request": "slow"})
        .to_string(),
        "this is not a command".to_string(),
        r#"{"cmd":"list","request":"after"}"#.to_string(),
    ];
    let replies = e2e::pipe_session(&sandbox, &state, &lines, true);
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        replies
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{replies:#?}"))
    };
    let bad = at(&|l| l["kind"] == "bad-line");
    let slow = at(&|l| l["request"] == "slow");
    let after = at(&|l| l["request"] == "after");
    assert_eq!(replies[bad]["line"], 2, "{replies:#?}");
    assert!(bad < slow && slow < after, "{replies:#?}");
    assert_eq!(replies[slow]["event"], "start-failed", "{replies:#?}");
}

/// Help says what the tool is in plain words, every command's help has examples, `pipe`'s
/// lists its commands, and the man pages carry the same.
#[test]
fn help_and_man_pages_say_what_and_show_how() {
    let sandbox = Sandbox::new();
    let state = sandbox.path("no-broker");
    let help = |args: &[&str]| {
        let mut cmd = sandbox.client(&state);
        cmd.args(args).arg("--help");
        run(cmd).expect_code(0).stdout
    };
    let top = help(&[]);
    assert!(top.contains("Download, seed and stream torrents"), "{top}");
    assert!(!top.contains("library"), "{top}");
    for command in [
        "add", "close", "list", "status", "watch", "pause", "resume", "recheck", "files", "peers",
        "cat", "make", "broker",
    ] {
        let text = help(&[command]);
        assert!(text.contains("Examples:"), "{command}: {text}");
        assert!(
            text.contains(&format!("patron-client {command}")),
            "{command}: {text}"
        );
    }
    let pipe = help(&["pipe"]);
    for cmd in [
        "add", "close", "list", "status", "follow", "make", "info", "pause", "files", "peers",
        "cat", "shutdown",
    ] {
        assert!(
            pipe.lines().any(|l| l.trim_start().starts_with(cmd)),
            "pipe --help lacks {cmd}: {pipe}"
        );
    }
    let pages = sandbox.folder("man");
    let mut man = sandbox.client(&state);
    man.arg("manpages").arg(&pages);
    run(man).expect_code(0);
    let cat = std::fs::read_to_string(pages.join("patron-client-cat.1")).expect("cat page");
    assert!(
        cat.contains(".SH \"EXAMPLES\"") && cat.contains("mpv"),
        "{cat}"
    );
    assert!(!cat.contains("EXTRA"), "{cat}");
    let top = std::fs::read_to_string(pages.join("patron-client.1")).expect("top page");
    // SEE ALSO names torrent-broker(1): it is written too.
    assert!(
        pages.join("torrent-broker.1").is_file(),
        "no torrent-broker.1"
    );
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
        assert!(
            top.contains(&format!(".SH \"{section}\"")),
            "no {section}: {top}"
        );
    }
    assert!(
        top.contains("TORRENT_PATRON_STATE") && top.contains("broker.toml"),
        "{top}"
    );
    let pipe = std::fs::read_to_string(pages.join("patron-client-pipe.1")).expect("pipe page");
    assert!(
        pipe.contains("shutdown") && pipe.contains("cat\\-done"),
        "{pipe}"
    );
    assert!(!state.exists(), "help or man pages made the state dir");
}

/// A broker keeps its settings in its state dir: its loopback port survives a restart, a
/// start whose environment overrides broker.toml says which wins, and a refused folder's
/// advice names the file to change (an auto-started broker has no command line to edit).
#[test]
fn a_broker_keeps_its_port_and_says_when_the_environment_overrides_its_file() {
    use nix::sys::signal::Signal;
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("settled");
    let mut broker = sandbox.broker(&state, &[]);
    let port = broker.port;
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(e2e::STEP_TIMEOUT);
    let mut broker = sandbox.broker(&state, &[]);
    assert_eq!(
        broker.port, port,
        "the listen port changed across a restart"
    );
    broker.signal(Signal::SIGTERM);
    broker.wait_exit(e2e::STEP_TIMEOUT);

    let elsewhere = sandbox.folder("elsewhere");
    std::fs::write(
        state.join("broker.toml"),
        format!("download-root = [\"{}\"]\n", elsewhere.display()),
    )
    .expect("broker.toml");
    let broker = sandbox.broker(&state, &[]);
    let log = broker.log();
    assert!(
        log.contains("TORRENT_PATRON_DOWNLOAD_ROOT")
            && log.contains("wins over download-root in")
            && log.contains("broker.toml"),
        "{log}"
    );
    let data = sandbox.random_file("local/one.bin", 10_000);
    let torrent = sandbox.path("one.torrent");
    sandbox.make_torrent(&state, &data, &torrent);
    let mut add = sandbox.client(&state);
    add.arg("add").arg(&torrent).args(["--output", "/"]);
    let refused = run(add);
    assert_eq!(refused.code(), 3, "{}", refused.stderr);
    // The roots came from the environment (the sandbox sets them): the advice says so,
    // not "add it to broker.toml", which that environment would override again.
    assert!(
        refused.stderr.contains("TORRENT_PATRON_DOWNLOAD_ROOT")
            && refused.stderr.contains("environment")
            && refused.stderr.contains("broker.toml"),
        "{}",
        refused.stderr
    );
}

/// A script's `cat` comes after the `add` it wrote before it: it sees the torrent, and
/// writes its bytes. And a save folder given as `../other` is the sibling folder, as the
/// shell takes it.
#[test]
fn pipe_cat_follows_the_add_before_it_and_dot_dot_folders_resolve() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/piped.bin", 60_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");
    let to = sandbox.path("piped.out");
    let lines = [
        serde_json::json!({"cmd": "add", "torrent": seeder.torrent.display().to_string(),
            "output": out.display().to_string(), "peers": [seeder.broker.peer()],
            "request": "add"})
        .to_string(),
        serde_json::json!({"cmd": "cat", "torrent": 0, "to": to.display().to_string(),
            "request": "cat"})
        .to_string(),
    ];
    let replies = e2e::pipe_session(&sandbox, &state, &lines, true);
    let cat = replies
        .iter()
        .find(|l| l["request"] == "cat")
        .unwrap_or_else(|| panic!("{replies:#?}"));
    assert_eq!(cat["event"], "cat-done", "{replies:#?}");
    assert!(std::fs::read(&to).expect("cat's file") == std::fs::read(&data).expect("data"));

    let here = sandbox.folder("here");
    let sibling = sandbox.folder("sibling");
    let mut add = sandbox.client(&state);
    add.current_dir(&here)
        .args(["--json", "add"])
        .arg(&seeder.torrent)
        .args(["--output", "../sibling", "--peer", &seeder.broker.peer()]);
    let joined = run(add).expect_code(4).json_lines();
    // The same torrent runs already: joined, with its own folder kept, and no refusal
    // of `..`.
    assert!(
        joined[0]["not_applied"]
            .as_array()
            .is_some_and(|n| n.iter().any(|o| o == "output")),
        "{joined:?}"
    );
    let _ = sibling;
}

/// Refusals speak in the sizes a user typed, and counts agree with their nouns.
#[test]
fn refusals_and_reports_speak_in_sizes_and_plurals() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/small.bin", 10_000);
    let said = |args: &[&str], path: Option<&std::path::Path>| {
        let mut cmd = sandbox.client(&state);
        cmd.args(args);
        if let Some(path) = path {
            cmd.arg(path);
        }
        let out = run(cmd);
        (out.code(), format!("{}{}", out.stdout, out.stderr))
    };
    // Written into the sandbox, never the test's own folder.
    let made = sandbox.path("small.torrent");
    let output = made.display().to_string();
    let (code, text) = said(
        &["make", "--piece-size", "3K", "--seed", "--output", &output],
        Some(&data),
    );
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("3.0 KiB") && !text.contains("3072"), "{text}");
    let (code, text) = said(&["make", "--seed", "--output", &output], Some(&data));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("in 1 piece of") && !text.contains("1 pieces"),
        "{text}"
    );
    let (code, text) = said(&["cat", "0", "--offset", "10M"], None);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("past the end") && text.contains("10.0 MiB") && !text.contains("10485760"),
        "{text}"
    );
    let out = sandbox.folder("downloads");
    let magnet = format!("magnet:?xt=urn:btih:{}", "cd".repeat(20));
    let mut add = sandbox.client(&state);
    add.args(["add", &magnet, "--output"]).arg(&out);
    let refused = run(add);
    assert_eq!(refused.code(), 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("--peer"), "{}", refused.stderr);
}

/// A folder of the torrent's name that is not its own is never written into, even empty,
/// even with --overwrite (an empty `~/.ssh` is the user's: DESIGN §4): the refusal says
/// so, and what to do (remove it if it is yours, or save elsewhere), not "use --overwrite".
#[test]
fn an_empty_folder_named_as_the_torrent_is_never_taken() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let source = sandbox.folder("local/pack");
    sandbox.random_file("local/pack/a.bin", 40_000);
    sandbox.random_file("local/pack/sub/b.bin", 10_000);
    let torrent = sandbox.path("pack.torrent");
    sandbox.make_torrent(&state, &source, &torrent);
    let downloads = sandbox.folder("downloads");
    let made = sandbox.folder("downloads/pack");
    for overwrite in [false, true] {
        let mut add = sandbox.add_command(&state, &torrent, &downloads, None);
        if overwrite {
            add.arg("--overwrite");
        }
        let refused = run(add).expect_code(3);
        let said = format!("{}{}", refused.stdout, refused.stderr);
        assert!(
            said.contains("file-exists")
                && said.contains("never adds files to a folder it did not make")
                && said.contains("rmdir")
                && !said.contains("add with --overwrite"),
            "{said}"
        );
    }
    // From the folder itself, no --output: the same refusal, not one about the current
    // folder being outside the roots (it is inside).
    let mut here = sandbox.client(&state);
    here.current_dir(&downloads).arg("add").arg(&torrent);
    let refused = run(here).expect_code(3);
    assert!(
        refused.stderr.contains("rmdir") && !refused.stderr.contains("current folder"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        std::fs::read_dir(&made).expect("read").count(),
        0,
        "written into"
    );
}

/// `add --ephemeral` alone would close the torrent as the command ends (it is its only
/// patron) and leave empty files behind: it is refused as a usage error, naming `--wait`.
#[test]
fn an_ephemeral_add_without_wait_is_refused() {
    let sandbox = Sandbox::new();
    let state = sandbox.path("fresh-state");
    let data = sandbox.random_file("local/one.bin", 10_000);
    let downloads = sandbox.folder("downloads");
    let mut add = sandbox.add_command(&state, &data, &downloads, None);
    add.arg("--ephemeral");
    let out = run(add).expect_code(2);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("--wait"), "{said}");
    assert!(!state.exists(), "a refused command line started a broker");
}

/// `make --seed` seeds the user's own files where they are: `close --delete-data` refuses
/// to delete those originals (and the torrent runs on); a close refused because another
/// program uses the torrent names that program's pid, not a patron number.
#[test]
fn delete_data_never_deletes_the_originals_make_seeded_in_place() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let folder = sandbox.folder("local/photos");
    let photo = sandbox.random_file("local/photos/beach.jpg", 40_000);
    let mut make = sandbox.client(&state);
    make.arg("--json")
        .arg("make")
        .arg(&folder)
        .arg("--seed")
        .arg("--output")
        .arg(sandbox.path("photos.torrent"));
    let made = &run(make).expect_code(0).json_lines()[0];
    let id = made["seeding_id"].to_string();
    let (code, lines) = e2e::client_json(&sandbox, &state, &["close", &id, "--delete-data"]);
    assert_eq!(code, 1, "{lines:?}");
    let message = lines[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("originals"), "{lines:?}");
    assert!(photo.exists(), "the user's photo was deleted");
    assert!(e2e::status_json(&sandbox, &state, &id)["state"].is_string());

    // Held by another program (a patron of the test's): its pid is named.
    let mut holder = sandbox.patron(&state);
    holder
        .follow(e2e::patron_client::proto::TorrentRef::parse(&id).expect("id"))
        .expect("follow");
    let (code, lines) = e2e::client_json(&sandbox, &state, &["close", &id]);
    assert_eq!(code, 1, "{lines:?}");
    let message = lines[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("pid {}", std::process::id())) && !message.contains("patron"),
        "{lines:?}"
    );
    // Closed without --delete-data, the files stay.
    let (code, lines) = e2e::client_json(&sandbox, &state, &["close", &id, "--force"]);
    assert_eq!(code, 0, "{lines:?}");
    assert!(photo.exists());
}

/// With TORRENT_PATRON_STATE set, a usage line does not show `--state-dir` as if it were
/// required (clap printed every option its environment variable had set).
#[test]
fn a_usage_line_does_not_show_the_state_dir_the_environment_gave() {
    let sandbox = Sandbox::new();
    let mut status = std::process::Command::new(e2e::bin("patron-client"));
    sandbox.apply_env(&mut status);
    status
        .env("TORRENT_PATRON_STATE", sandbox.path("state"))
        .arg("status");
    let out = run(status).expect_code(2);
    assert!(out.stderr.contains("Usage:"), "{}", out.stderr);
    assert!(!out.stderr.contains("--state-dir"), "{}", out.stderr);
}

/// The words transmission-remote's users reach for work: `remove`/`rm` close, `stop`
/// pauses, `start` resumes, `info` shows one torrent.
#[test]
fn the_usual_words_for_commands_work() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/one.bin", 20_000);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &data);
    drop(patron);
    let said = |args: &[&str]| {
        let mut cmd = sandbox.client(&state);
        cmd.args(args);
        run(cmd)
    };
    assert!(said(&["stop", "0"])
        .expect_code(0)
        .stdout
        .starts_with("Paused torrent 0"));
    assert!(said(&["start", "0"])
        .expect_code(0)
        .stdout
        .starts_with("Resumed torrent 0"));
    assert!(said(&["info", "0"])
        .expect_code(0)
        .stdout
        .starts_with("Torrent 0: one.bin"));
    let missing = said(&["rm", "9"]).expect_code(1);
    assert!(
        missing.stderr.contains("no torrent 9"),
        "{}",
        missing.stderr
    );
    assert!(said(&["remove", "0"])
        .expect_code(0)
        .stdout
        .starts_with("Closed torrent 0"));
}

/// A magnet that no reachable peer has: the refusal says so in a user's words (it was the
/// engine's "input address stream exhausted").
#[test]
fn a_magnet_no_peer_has_is_explained() {
    let sandbox = Sandbox::new();
    let other = sandbox.state_dir("other");
    let other_broker = sandbox.broker(&other, &[]);
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let magnet = format!("magnet:?xt=urn:btih:{}", "ab".repeat(20));
    let downloads = sandbox.folder("downloads");
    let add = sandbox.add_command(&state, &magnet, &downloads, Some(&other_broker.peer()));
    let out = run(add);
    assert_eq!(out.code(), 3, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no peer gave the magnet's metadata")
            && out.stderr.contains("--peer")
            && !out.stderr.contains("exhausted"),
        "{}",
        out.stderr
    );
}

/// A torrent that just completed downloads nothing more: its rate is 0 at once, not the
/// engine's estimate decaying over seconds ("seeding, down 230.7 MiB/s").
#[test]
fn a_complete_torrent_shows_no_download_rate() {
    let sandbox = Sandbox::new();
    // Three seconds of download, so the engine's estimate has a rate to decay from.
    let (seeder, _) = e2e::slow_seeder(&sandbox, 6 * 1024 * 1024, "2M");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let mut add = sandbox.add_command(
        &state,
        &seeder.torrent,
        &downloads,
        Some(&seeder.broker.peer()),
    );
    add.arg("--wait");
    let lines = run(add).expect_code(0).json_lines();
    let last = lines.last().expect("a status");
    assert_eq!(last["complete"], true, "{last}");
    assert_eq!(last["download_rate"], 0, "{last}");
    let now = e2e::status_json(&sandbox, &state, "0");
    assert_eq!(now["state"], "seeding", "{now}");
    assert_eq!(now["download_rate"], 0, "{now}");
}

/// Naming a peer twice: the second time says it is already known, not "Dialling 0 peers"
/// beside "No connected peers".
#[test]
fn a_peer_named_twice_is_said_to_be_known() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/one.bin", 20_000);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &data);
    // A torrent checking its data dials nobody (and says so): past its check first.
    wait_for("the made torrent to seed", STEP_TIMEOUT, || {
        e2e::status_json(&sandbox, &state, "0")["state"] == "seeding"
    });
    let silent = e2e::SilentPeer::start();
    let add = |expect: &str| {
        let mut cmd = sandbox.client(&state);
        cmd.args(["peers", "0", "--add", &silent.addr()]);
        let out = run(cmd).expect_code(0).stdout;
        assert!(out.starts_with(expect), "{out}");
        assert!(!out.contains("Dialling 0"), "{out}");
    };
    add("Dialling 1 peer");
    add("1 peer already connected or being dialled");
}

/// `make --seed` of a file outside the download roots is refused as an add there would be:
/// exit 3, saying the roots.
#[test]
fn a_seed_outside_the_roots_exits_as_an_add_does() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let outside = tempfile::Builder::new()
        .prefix("tp-outside-")
        .tempdir()
        .expect("tempdir");
    let file = outside.path().join("mine.txt");
    std::fs::write(&file, b"not in any root").expect("write");
    let mut make = sandbox.client(&state);
    make.arg("make")
        .arg(&file)
        .arg("--seed")
        .arg("--output")
        .arg(sandbox.path("mine.torrent"));
    let out = run(make).expect_code(3);
    assert!(out.stderr.contains("download roots"), "{}", out.stderr);
}

/// `add --wait` into a pipe or a log (no terminal, no --json) is never silent: a progress
/// line comes at once, then at every change of state and every 10 s, and `Complete:` ends it.
#[test]
fn add_wait_without_a_terminal_says_how_it_goes() {
    let sandbox = Sandbox::new();
    let (seeder, _) = e2e::slow_seeder(&sandbox, 2 * 1024 * 1024, "1M");
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let downloads = sandbox.folder("downloads");
    let mut add = sandbox.client(&state);
    add.arg("add")
        .arg(&seeder.torrent)
        .args(["--output"])
        .arg(&downloads)
        .args(["--peer", &seeder.broker.peer(), "--wait"]);
    let out = run(add).expect_code(0).stdout;
    let progress = out
        .lines()
        .position(|l| l.contains("% of ") && l.contains("peer"));
    let complete = out
        .lines()
        .position(|l| l.starts_with("Complete: slow.bin"));
    assert!(
        progress.is_some() && complete.is_some() && progress < complete,
        "{out}"
    );
}

/// A few characters typed can name hundreds of thousands of files (`--only 0-199999`):
/// such a request goes in shared memory and is answered at once (it hung the client, whose
/// send waited forever on a message the broker refused); past the bound (200,000), the CLI
/// and pipe mode say so before sending, and the broker refuses it where it decodes it.
#[test]
fn long_lists_of_files_are_answered_at_once_and_bounded() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let folder = sandbox.folder("local/two");
    sandbox.random_file("local/two/a.bin", 1_000);
    sandbox.random_file("local/two/b.bin", 1_000);
    let mut patron = sandbox.patron(&state);
    e2e::make_and_seed(&mut patron, &folder);
    drop(patron);
    // 200,000 names, 2 of them real: answered (no file 2), not hung.
    let (code, lines) = e2e::client_json(&sandbox, &state, &["files", "0", "--only", "0-199999"]);
    assert_eq!(code, 1, "{lines:?}");
    assert!(
        lines[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no file 2")),
        "{lines:?}"
    );
    // Past the bound: a usage error, before anything is sent.
    let mut too_many = sandbox.client(&state);
    too_many.args(["files", "0", "--only", "0-199999,200000-200001"]);
    let out = run(too_many).expect_code(2);
    assert!(
        out.stderr.contains("more than 200000 files"),
        "{}",
        out.stderr
    );
    // Pipe mode: the same bound, said for the request that broke it; the next is answered.
    let only: Vec<u32> = (0..200_001).collect();
    let lines = [
        serde_json::json!({"cmd": "files", "torrent": 0, "only": only, "request": "long"})
            .to_string(),
        r#"{"cmd":"files","torrent":0,"only":[1],"request":"short"}"#.to_string(),
    ];
    let replies = e2e::pipe_session(&sandbox, &state, &lines, true);
    let long = replies
        .iter()
        .find(|r| r["request"] == "long")
        .expect("a reply to the long one");
    assert!(
        long["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 200000")),
        "{long}"
    );
    let short = replies
        .iter()
        .find(|r| r["request"] == "short")
        .expect("a reply to the short one");
    assert_eq!(short["event"], "files", "{short}");
}

/// Files an add with --overwrite finds in place are the user's, unless this broker
/// downloaded them for that torrent and left them at a close: `close --delete-data` leaves
/// the user's (make, then add pointing at the data, as other clients seed in place), and a
/// close and a re-add do not launder them into the broker's.
#[test]
fn delete_data_leaves_files_an_add_found_in_place() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let originals = sandbox.folder("photos/album");
    let photo = sandbox.random_file("photos/album/beach.jpg", 40_000);
    let torrent = sandbox.path("album.torrent");
    let mut make = sandbox.client(&state);
    make.arg("make")
        .arg(&originals)
        .arg("--output")
        .arg(&torrent);
    run(make).expect_code(0);
    let photos = sandbox.path("photos");
    for round in 0..2 {
        let mut add = sandbox.add_command(&state, &torrent, &photos, None);
        add.arg("--overwrite");
        let id = run(add).expect_code(0).json_lines()[0]["id"].to_string();
        let (code, lines) = e2e::client_json(&sandbox, &state, &["close", &id, "--delete-data"]);
        assert_eq!(code, 1, "round {round}: {lines:?}");
        assert!(
            lines[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("were there before it")),
            "{lines:?}"
        );
        assert!(
            photo.exists(),
            "round {round}: the user's photo was deleted"
        );
        let (code, lines) = e2e::client_json(&sandbox, &state, &["close", &id]);
        assert_eq!(code, 0, "{lines:?}");
    }
}

/// `make --seed` of the files a running torrent downloaded joins that torrent, and from
/// then on they are the user's too: `close --delete-data` leaves them.
#[test]
fn make_seed_joining_a_torrent_marks_its_files_as_the_users() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/song.flac", 60_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let music = sandbox.folder("music");
    let mut add = sandbox.add_command(&state, &seeder.torrent, &music, Some(&seeder.broker.peer()));
    add.arg("--wait");
    run(add).expect_code(0);
    let mut make = sandbox.client(&state);
    make.arg("--json")
        .arg("make")
        .arg(music.join("song.flac"))
        .arg("--seed")
        .arg("--output")
        .arg(sandbox.path("again.torrent"));
    let made = &run(make).expect_code(0).json_lines()[0];
    assert_eq!(
        made["seeding_id"], 0,
        "it joined the running torrent: {made}"
    );
    let (code, lines) = e2e::client_json(
        &sandbox,
        &state,
        &["close", "0", "--delete-data", "--force"],
    );
    assert_eq!(code, 1, "{lines:?}");
    assert!(music.join("song.flac").exists());
}

/// broker.toml reads sizes as the flags do (`"2M"`, `"1G"`), and refuses a rate of 0 as
/// they do (it meant "no limit" there, silently).
#[test]
fn broker_toml_reads_sizes_as_the_flags_do() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    std::fs::write(
        state.join("broker.toml"),
        "max-upload-rate = \"2M\"\nmax-unread-bytes = \"1G\"\n",
    )
    .expect("write");
    let broker = sandbox.broker(&state, &[]);
    let info = e2e::ok_json(&sandbox, &state, &["broker", "status"]);
    assert_eq!(info["unread_bytes_limit"], 1u64 << 30, "{info}");
    drop(broker);

    let refused = sandbox.state_dir("zero");
    std::fs::write(refused.join("broker.toml"), "max-upload-rate = 0\n").expect("write");
    let mut start = std::process::Command::new(e2e::bin("torrent-broker"));
    sandbox.apply_env(&mut start);
    start.arg("--state-dir").arg(&refused);
    let out = run(start);
    assert_ne!(out.code(), 0, "started with a rate of 0");
    assert!(
        out.stderr.contains("at least 1 byte per second"),
        "{}",
        out.stderr
    );
}

/// A folder where a single-file torrent's file goes is the user's thing in the way, as an
/// existing file is (file-exists, exit 3), with what to do.
#[test]
fn a_folder_in_a_files_place_is_said_to_be_in_the_way() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/clip.bin", 20_000);
    let torrent = sandbox.path("clip.torrent");
    sandbox.make_torrent(&state, &data, &torrent);
    let downloads = sandbox.folder("downloads");
    sandbox.folder("downloads/clip.bin");
    let refused = run(sandbox.add_command(&state, &torrent, &downloads, None)).expect_code(3);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("file-exists") && said.contains("--output"),
        "{said}"
    );
}
