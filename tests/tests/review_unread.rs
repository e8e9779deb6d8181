//! Review tests (hostile reviewer): the whole broker's budget for unread events
//! (`--max-unread-bytes`) against patrons that never read one big reply each.

use e2e::patron_client::proto::{FilesRequest, RequestBody, TorrentId, TorrentRef};
use e2e::{run, Sandbox};
use std::time::Duration;

/// The broker's resident memory, in bytes.
fn rss_of(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A `files` reply of ~10 MiB (over a patron's 8 MiB of regions, so it goes as fragments,
/// and under its own 16 MiB queue) is held in the outbox's message being written, which
/// neither the patron's queue nor the whole broker's budget counts: 24 patrons that each ask
/// once and never read make the broker hold ~240 MiB past a 1 MiB `--max-unread-bytes`, and
/// nobody is cut off.
#[test]
fn big_replies_left_unread_by_many_patrons_pass_the_brokers_unread_bound() {
    const HOGS: usize = 24;
    let sandbox = Sandbox::new();
    // 48 folders × 500 files, each path ~400 characters: a `files` reply of ~10 MiB.
    let folder = sandbox.folder("seed/many");
    for d in 0..48 {
        let dir = folder.join(format!("{d:02}-{}", "d".repeat(200)));
        std::fs::create_dir_all(&dir).expect("folder");
        for f in 0..500 {
            std::fs::write(dir.join(format!("{f:03}-{}", "f".repeat(200))), [f as u8])
                .expect("write");
        }
    }
    let seeder = e2e::Seeder::start(
        &sandbox,
        "seeder",
        &folder,
        16 * 1024,
        &["--max-unread-bytes", "1048576"],
    );
    let state = seeder.broker.state.clone();
    let pid = seeder.broker.pid;
    let files = || {
        RequestBody::Files(FilesRequest {
            torrent: TorrentRef::Id(TorrentId(0)),
            only: None,
        })
    };
    // One honest listing first: the reply's size, and the broker's memory at rest after it.
    let mut honest = sandbox.patron(&state);
    let listed = honest.files(TorrentRef::Id(TorrentId(0))).expect("files");
    let reply: usize = listed.files.iter().map(|f| f.path.len() + 8).sum();
    assert!(reply > 9 << 20, "the reply is only {reply} bytes");
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_of(pid);

    let mut hogs: Vec<_> = (0..HOGS).map(|_| sandbox.patron(&state)).collect();
    for hog in &mut hogs {
        hog.send(files()).expect("send");
    }
    // Past --max-unread-bytes (1 MiB), the patrons holding the most are cut off, until
    // the rest fit: what they left unread goes with them.
    e2e::wait_for(
        "the patrons that never read to be cut off",
        e2e::STEP_TIMEOUT,
        || {
            let mut status = sandbox.client(&state);
            status.args(["--json", "broker", "status"]);
            let info = run(status).expect_code(0).json_lines();
            info[0]["unread_bytes"]
                .as_u64()
                .is_some_and(|b| b <= 1 << 20)
                && seeder.broker.log().contains("leaves the most")
        },
    );
    let grown = rss_of(pid).saturating_sub(before);
    eprintln!(
        "reply ~{} MiB; broker grew {} MiB with {HOGS} patrons that never read",
        reply >> 20,
        grown >> 20
    );
    drop(hogs);
}
