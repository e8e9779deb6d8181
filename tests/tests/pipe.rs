//! `patron-client pipe` driven by a real Python script (tests/python/pipe_session.py), as a
//! script in any language would drive it.

use e2e::{bin, run, sha256, Sandbox, Seeder};
use std::process::Command;

#[test]
fn a_python_script_downloads_through_pipe_mode_and_shuts_it_down() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/piped.bin", 400_000);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16 * 1024, &[]);
    let state = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("downloads");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pipe_session.py");
    let mut python = Command::new("python3");
    sandbox.apply_env(&mut python);
    python
        .arg(script)
        .arg(bin("patron-client"))
        .arg(&state)
        .arg(&seeder.torrent)
        .arg(seeder.broker.peer())
        .arg(&out);
    let session = run(python);
    assert_eq!(session.code(), 0, "{}\n{}", session.stdout, session.stderr);
    assert_eq!(sha256(&out.join("piped.bin")), sha256(&data));
}

/// Runs a pipe session of `lines` against `state` (with or without the board) and returns
/// its JSON output lines.
fn pipe_session(
    sandbox: &Sandbox,
    state: &std::path::Path,
    lines: &[String],
    board: bool,
) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut pipe = sandbox.client(state);
    if !board {
        pipe.env(e2e::patron_client::BOARD_ENV, "0");
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
    let running = e2e::Running::from_child(child);
    let out = running.finish(e2e::STEP_TIMEOUT).expect_code(0);
    out.json_lines()
}

/// `status` and `list` in pipe mode are read off the board (no request reaches the broker)
/// yet answered in their turn, exactly as the broker would answer them.
#[test]
fn pipe_mode_reads_status_from_the_board_in_order() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/piped.bin", 100_000);
    let session = |board: bool, name: &str| {
        let output = sandbox.path(&format!("{name}.torrent"));
        let lines = [
            format!(
                r#"{{"cmd":"make","path":"{}","seed":true,"output":"{}","request":"m"}}"#,
                data.display(),
                output.display()
            ),
            r#"{"cmd":"status","torrent":"0","request":"s1"}"#.to_string(),
            r#"{"cmd":"list","request":"l1"}"#.to_string(),
            r#"{"cmd":"status","torrent":"99","request":"s2"}"#.to_string(),
            r#"{"cmd":"info","request":"i"}"#.to_string(),
            r#"{"cmd":"status","torrent":"0","request":"s3"}"#.to_string(),
        ];
        pipe_session(&sandbox, &state, &lines, board)
    };
    let requests_logged = |kind: &str| broker.log().matches(&format!("kind={kind}")).count();
    let before = (requests_logged("status"), requests_logged("list"));
    let read = session(true, "first");
    assert_eq!(
        (requests_logged("status"), requests_logged("list")),
        before,
        "status and list reached the broker"
    );
    let asked = session(false, "second");
    assert!(
        requests_logged("status") >= before.0 + 3,
        "without the board, the broker is asked"
    );

    for lines in [&read, &asked] {
        let replies: Vec<&str> = lines.iter().filter_map(|l| l["request"].as_str()).collect();
        assert_eq!(replies, ["m", "s1", "l1", "s2", "i", "s3"], "{lines:#?}");
        let by = |r: &str| lines.iter().find(|l| l["request"] == r).expect(r);
        assert_eq!(by("s1")["id"], 0, "{lines:#?}");
        assert_eq!(by("l1")["torrents"].as_array().map(Vec::len), Some(1));
        assert_eq!(by("s2")["kind"], "unknown-torrent", "{lines:#?}");
        assert_eq!(lines.last().expect("lines")["event"], "finished");
    }
    let by = |lines: &Vec<serde_json::Value>, r: &str| {
        lines.iter().find(|l| l["request"] == r).cloned().expect(r)
    };
    assert_eq!(
        by(&read, "s2"),
        by(&asked, "s2"),
        "the same error either way"
    );
}
