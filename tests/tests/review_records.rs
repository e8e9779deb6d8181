//! A hostile review of the records kept one file per torrent (`<state>/records/<id>.json`,
//! commit b4c7f56). Each test fails on the code it names.

use e2e::{listed, made_torrent, run, BrokerProcess, Sandbox, STEP_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::Path;

fn ids(list: &[Value]) -> Vec<u64> {
    list.iter().map(|t| t["id"].as_u64().unwrap()).collect()
}

fn kill(mut broker: BrokerProcess) {
    broker.signal(Signal::SIGKILL);
    broker.wait_exit(STEP_TIMEOUT);
}

fn add_paused(sandbox: &Sandbox, state: &Path, downloads: &Path, names: &[&str]) {
    for name in names {
        let torrent = made_torrent(sandbox, name);
        let mut add = sandbox.add_command(state, &torrent, downloads, None);
        add.arg("--paused");
        run(add).expect_code(0);
    }
}

/// A torrents.json beside a records folder that says otherwise (a downgrade to the previous
/// release, torrents added there, then the upgrade again) refuses the start, naming both:
/// before, it was moved aside unread, the torrents it alone named forgotten and their
/// .torrent files swept.
#[test]
fn a_torrents_json_beside_a_records_folder_is_not_deleted_unread() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("both");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);
    add_paused(&sandbox, &state, &downloads, &["a.bin", "b.bin"]);
    broker.stop();
    // What the previous release keeps after adding b while downgraded: torrents.json naming
    // both; the records folder of the first upgrade knows only a.
    let folder = state.join("records");
    let mut all = serde_json::Map::new();
    for id in ["0", "1"] {
        let bytes = std::fs::read(folder.join(format!("{id}.json"))).expect("a record");
        all.insert(id.into(), serde_json::from_slice(&bytes).expect("json"));
    }
    std::fs::write(state.join("torrents.json"), Value::Object(all).to_string()).expect("write");
    std::fs::remove_file(folder.join("1.json")).expect("rm");
    let mut start = sandbox.client(&state);
    start.args(["broker", "start"]);
    let out = run(start);
    assert_ne!(
        out.code(),
        0,
        "started over two records that differ: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("torrents.json") && out.stderr.contains("records"),
        "the refusal names both: {}",
        out.stderr
    );
    assert!(state.join("torrents.json").exists(), "torrents.json kept");
    assert!(
        state.join("torrents/1.torrent").exists(),
        "torrent 1's .torrent kept"
    );
}

/// A queue move is one change of every torrent's position, written record by record: a save
/// cut short (here by one record that cannot be written, as a full disk would) puts back
/// those it wrote, so the order on disk is the old one, as the broker said ("the move is
/// not made"); before, it was a mixture of both.
#[test]
fn a_queue_move_cut_short_leaves_the_old_order_or_the_new() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("queue");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);
    add_paused(
        &sandbox,
        &state,
        &downloads,
        &["q0.bin", "q1.bin", "q2.bin"],
    );
    let before: Vec<Value> = listed(&sandbox, &state);
    eprintln!("before: {before:?}");
    // Record 1 cannot be written (its temporary file's name taken by a folder).
    std::fs::create_dir(state.join("records/.1.json.tmp")).expect("mkdir");
    let mut mv = sandbox.client(&state);
    mv.args(["--json", "queue", "0", "bottom"]);
    let out = run(mv);
    eprintln!("move: code {} {:?}", out.code(), out.json_lines());
    assert_ne!(out.code(), 0, "the move could not be recorded");
    let positions = |state: &Path| -> Vec<(u64, u64)> {
        (0..3)
            .map(|id| {
                let text = std::fs::read(state.join(format!("records/{id}.json"))).unwrap();
                let v: Value = serde_json::from_slice(&text).unwrap();
                (id, v["queue_position"].as_u64().unwrap())
            })
            .collect()
    };
    eprintln!("on disk after the failed move: {:?}", positions(&state));
    kill(broker);
    std::fs::remove_dir(state.join("records/.1.json.tmp")).expect("rmdir");
    let _broker = sandbox.broker(&state, &[]);
    let mut list = listed(&sandbox, &state);
    list.sort_by_key(|t| t["queue_position"].as_u64());
    let order = ids(&list);
    assert!(
        order == [0, 1, 2] || order == [1, 2, 0],
        "the queue after a restart is {order:?}: neither the old order [0, 1, 2] nor the new [1, 2, 0]"
    );
}

/// A record removed while the broker runs (by hand, a cleaner, a backup restored) is written
/// again by the next save (the clean stop's too); before, an unchanged record was never
/// written again and its torrent was forgotten at the next start.
#[test]
fn a_record_gone_while_running_is_written_again_by_the_next_save() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("stale");
    let downloads = sandbox.folder("downloads");
    let broker = sandbox.broker(&state, &[]);
    add_paused(&sandbox, &state, &downloads, &["s0.bin", "s1.bin"]);
    std::fs::remove_file(state.join("records/0.json")).expect("rm");
    // Another torrent changes, then a clean stop: a save of everything.
    let mut resume = sandbox.client(&state);
    resume.args(["resume", "1"]);
    run(resume).expect_code(0);
    broker.stop();
    let _broker = sandbox.broker(&state, &[]);
    let list = ids(&listed(&sandbox, &state));
    assert_eq!(list.len(), 2, "torrent 0 forgotten: {list:?}");
}
