//! Labels (DESIGN §13): a torrent carries labels (`add --label`, `label ID L...`, `list
//! --label`), and a label carries a save folder for adds that name none, rate limits and
//! seeding limits for torrents with none of their own (qBittorrent's categories); all of it
//! recorded, a SIGKILL too.

use e2e::STEP_TIMEOUT;
use e2e::{client_json, ok_json, pipe_session, wait_status, Running, Sandbox, Seeder};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::Path;

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `list --json [--label L]`: the lines.
fn list(sandbox: &Sandbox, state: &Path, label: Option<&str>) -> Vec<Value> {
    let mut args = vec!["list"];
    if let Some(label) = label {
        args.extend(["--label", label]);
    }
    let (code, lines) = client_json(sandbox, state, &args);
    assert_eq!(code, 0, "{lines:?}");
    lines
}

#[test]
fn a_label_carries_a_folder_and_limits_to_its_torrents_and_everything_outlives_a_kill() {
    let sandbox = Sandbox::new();
    let data = sandbox.random_file("seed/film.bin", 300 << 10);
    let seeder = Seeder::start(&sandbox, "seeder", &data, 16384, &[]);
    let state = sandbox.state_dir("leecher");
    let mut broker = sandbox.broker(&state, &[]);
    let films = sandbox.folder("films");
    let (code, set) = client_json(
        &sandbox,
        &state,
        &[
            "labels",
            "films",
            "--folder",
            text(&films),
            "--ratio",
            "2",
            "--max-upload-rate",
            "100K",
            "--idle",
            "2h",
        ],
    );
    assert_eq!(code, 0, "{set:?}");
    assert_eq!(set[0]["name"], "films", "{set:?}");
    assert_eq!(set[0]["folder"], text(&films), "{set:?}");
    assert_eq!(set[0]["ratio_limit"], 2.0, "{set:?}");
    assert_eq!(set[0]["max_upload_rate"], 100 * 1024, "{set:?}");
    assert_eq!(set[0]["idle_seed_limit_secs"], 7200, "{set:?}");
    // No --output: the label's folder, not the current one.
    let mut add = sandbox.client(&state);
    add.args(["--json", "add"])
        .arg(&seeder.torrent)
        .args([
            "--peer",
            &seeder.broker.peer(),
            "--label",
            "films",
            "--label",
            "4k",
            "--wait",
        ])
        .current_dir(sandbox.folder("elsewhere"));
    Running::start(add).finish(STEP_TIMEOUT).expect_code(0);
    assert!(
        films.join("film.bin").is_file(),
        "saved in the label's folder"
    );
    let line = &list(&sandbox, &state, Some("films"))[0];
    assert_eq!(line["labels"], json!(["films", "4k"]), "{line}");
    assert_eq!(line["save_folder"], text(&films), "{line}");
    assert_eq!(
        line["ratio_limit"], 2.0,
        "the label's seeding limits: {line}"
    );
    assert_eq!(line["idle_seed_limit_secs"], 7200, "{line}");
    assert!(list(&sandbox, &state, Some("other")).is_empty());
    let limits = ok_json(&sandbox, &state, &["limits", "0"]);
    assert_eq!(
        limits["max_upload_rate"],
        100 * 1024,
        "the label's rate in force: {limits}"
    );
    // Its own limits win over its label's.
    ok_json(&sandbox, &state, &["set", "0", "--ratio", "5"]);
    assert_eq!(e2e::status_json(&sandbox, &state, "0")["ratio_limit"], 5.0);
    // A label changed applies to its torrents at once.
    ok_json(
        &sandbox,
        &state,
        &[
            "labels",
            "films",
            "--max-upload-rate",
            "200K",
            "--idle",
            "none",
        ],
    );
    let limits = ok_json(&sandbox, &state, &["limits", "0"]);
    assert_eq!(limits["max_upload_rate"], 200 * 1024, "{limits}");
    assert_eq!(
        e2e::status_json(&sandbox, &state, "0")["idle_seed_limit_secs"],
        Value::Null,
        "the label says none"
    );
    // Recorded, both the torrent's labels and what the label carries.
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
    let _broker = sandbox.broker(&state, &[]);
    let line = wait_status(&sandbox, &state, "0", "back and seeding", |s| {
        s["state"] == "seeding"
    });
    assert_eq!(line["labels"], json!(["films", "4k"]), "{line}");
    let limits = ok_json(&sandbox, &state, &["limits", "0"]);
    assert_eq!(limits["max_upload_rate"], 200 * 1024, "{limits}");
    let (code, all) = client_json(&sandbox, &state, &["labels"]);
    assert_eq!(code, 0);
    let names: Vec<&str> = all.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(
        names,
        ["4k", "films"],
        "carried and configured labels: {all:?}"
    );
    assert_eq!(all[0]["torrents"], 1);
    assert_eq!(all[0]["folder"], Value::Null);
    // Relabelled: the old label's limits no longer apply; bad labels are refused.
    let relabelled = ok_json(&sandbox, &state, &["label", "0", "music"]);
    assert_eq!(relabelled["labels"], json!(["music"]), "{relabelled}");
    let limits = ok_json(&sandbox, &state, &["limits", "0"]);
    assert_eq!(limits["max_upload_rate"], Value::Null, "{limits}");
    for bad in ["a,b", " padded", &"x".repeat(33)] {
        let (code, lines) = client_json(&sandbox, &state, &["label", "0", bad]);
        assert_eq!(code, 1, "{bad:?}: {lines:?}");
        assert_eq!(lines[0]["kind"], "bad-request", "{lines:?}");
    }
    let cleared = ok_json(&sandbox, &state, &["label", "0", "--clear"]);
    assert_eq!(cleared["labels"], json!([]), "{cleared}");
    // Pipe mode: the same requests.
    let replies = pipe_session(
        &sandbox,
        &state,
        &[
            r#"{"cmd":"label","torrent":0,"labels":["a","b"]}"#.to_owned(),
            r#"{"cmd":"labels","name":"a","folder":"none","ratio_limit":"default","max_download_rate":0}"#.to_owned(),
            r#"{"cmd":"labels","name":"a","remove":true}"#.to_owned(),
        ],
        true,
    );
    assert_eq!(replies[0]["labels"], json!(["a", "b"]), "{replies:?}");
    assert_eq!(replies[1]["event"], "labels", "{replies:?}");
}

#[test]
fn a_labels_record_past_bounds_refuses_the_start_and_a_label_folder_outside_the_roots_refuses_the_add(
) {
    let sandbox = Sandbox::new();
    // Damaged records: too many labels, a relative folder. The start names the file.
    for (name, record) in [
        (
            "many",
            serde_json::to_string(
                &(0..300)
                    .map(|n| (format!("l{n}"), json!({})))
                    .collect::<serde_json::Map<String, Value>>(),
            )
            .expect("json"),
        ),
        (
            "relative",
            r#"{"x": {"folder": "relative/path"}}"#.to_owned(),
        ),
    ] {
        let state = sandbox.state_dir(name);
        std::fs::write(state.join("labels.json"), record).expect("write");
        let mut start = sandbox.client(&state);
        start.args(["broker", "start"]);
        let out = e2e::run(start);
        assert_ne!(out.code(), 0, "{name}: {}", out.stdout);
        assert!(out.stderr.contains("labels.json"), "{name}: {}", out.stderr);
    }
    // A label's folder that the roots no longer hold (recorded while they did): the add
    // is refused as a folder outside the roots is, before anything is written.
    let state = sandbox.state_dir("moved-roots");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        state.join("labels.json"),
        json!({"films": {"folder": outside.path()}}).to_string(),
    )
    .expect("write");
    let _broker = sandbox.broker(&state, &[]);
    let data = sandbox.random_file("made/x.bin", 10_000);
    let torrent = sandbox.path("x.torrent");
    sandbox.make_torrent(&sandbox.state_dir("maker"), &data, &torrent);
    let mut add = sandbox.client(&state);
    add.args(["--json", "add"])
        .arg(&torrent)
        .args(["--label", "films"]);
    let out = e2e::run(add);
    assert_eq!(out.code(), 3, "{}", out.stdout);
    assert_eq!(
        out.json_lines()[0]["kind"],
        "path-not-allowed",
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).map(|d| d.count()).ok(),
        Some(0)
    );
}
