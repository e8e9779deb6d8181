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

/// Lines sent one at a time, each after the previous reply: `status` and `list` are read
/// off the board, and no request for them reaches the broker.
#[test]
fn pipe_mode_reads_status_from_the_board_when_nothing_is_pending() {
    use std::io::{BufRead, Write};
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("local/piped.bin", 100_000);
    let mut child = sandbox
        .client(&state)
        .arg("pipe")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn pipe");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut ask = |line: String, request: &str| -> serde_json::Value {
        writeln!(stdin, "{line}").expect("write");
        loop {
            let mut reply = String::new();
            assert!(
                stdout.read_line(&mut reply).expect("read") > 0,
                "pipe ended"
            );
            let value: serde_json::Value = serde_json::from_str(&reply).expect("json");
            if value["request"] == request {
                return value;
            }
        }
    };
    let made = ask(
        format!(
            r#"{{"cmd":"make","path":"{}","seed":true,"request":"m"}}"#,
            data.display()
        ),
        "m",
    );
    assert_eq!(made["event"], "made", "{made}");
    let before =
        broker.log().matches("kind=status").count() + broker.log().matches("kind=list").count();
    let status = ask(
        r#"{"cmd":"status","torrent":"0","request":"s"}"#.into(),
        "s",
    );
    assert_eq!(status["id"], 0, "{status}");
    let list = ask(r#"{"cmd":"list","request":"l"}"#.into(), "l");
    assert_eq!(list["torrents"].as_array().map(Vec::len), Some(1), "{list}");
    let unknown = ask(
        r#"{"cmd":"status","torrent":"99","request":"u"}"#.into(),
        "u",
    );
    assert_eq!(unknown["kind"], "unknown-torrent", "{unknown}");
    let after =
        broker.log().matches("kind=status").count() + broker.log().matches("kind=list").count();
    assert_eq!(after, before, "status or list reached the broker");
    drop(stdin);
    let _ = child.wait();
}

/// Lines sent all at once: a `status` or `list` behind a pending request goes to the broker,
/// so that it is answered in its turn and never sees what a later line did.
#[test]
fn pipe_mode_answers_status_in_turn_even_behind_pending_requests() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("broker");
    let _broker = sandbox.broker(&state, &[]);
    // Each session makes one torrent: the broker numbers them 0, 1, 2...
    let mut id = 0;
    for round in 0..10 {
        for board in [true, false] {
            let data = sandbox.random_file(&format!("local/r{id}.bin"), 20_000 + id);
            let lines = [
                format!(
                    r#"{{"cmd":"make","path":"{}","seed":true,"request":"m"}}"#,
                    data.display()
                ),
                format!(r#"{{"cmd":"status","torrent":"{id}","request":"s1"}}"#),
                r#"{"cmd":"list","request":"l"}"#.to_string(),
                format!(r#"{{"cmd":"close","torrent":"{id}","force":true,"request":"c"}}"#),
                format!(r#"{{"cmd":"status","torrent":"{id}","request":"s2"}}"#),
            ];
            let lines = e2e::pipe_session(&sandbox, &state, &lines, board);
            let replies: Vec<&str> = lines.iter().filter_map(|l| l["request"].as_str()).collect();
            assert_eq!(replies, ["m", "s1", "l", "c", "s2"], "{lines:#?}");
            let by = |r: &str| lines.iter().find(|l| l["request"] == r).expect(r).clone();
            assert_eq!(by("m")["seeding_id"], id, "{lines:#?}");
            assert_eq!(by("s1")["id"], id, "round {round}: {lines:#?}");
            assert_eq!(
                by("l")["torrents"].as_array().map(Vec::len),
                Some(1),
                "{lines:#?}"
            );
            assert_eq!(by("c")["event"], "closed", "{lines:#?}");
            assert_eq!(by("s2")["kind"], "unknown-torrent", "{lines:#?}");
            id += 1;
        }
    }
}
