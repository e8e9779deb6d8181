//! Peers that lie, leave mid-piece or choke forever (`e2e::swarm::WirePeer`, the tests' own
//! wire-protocol peer): the broker finishes from the others, bans the liar and says so in
//! `peers`; and a peer a seed let go is dialled again when named again.

use e2e::swarm::{Behaviour, WirePeer};
use e2e::{run, sha256, wait_for, Running, Sandbox, STEP_TIMEOUT};
use std::path::Path;
use std::time::Duration;

/// Two blocks of 16 KiB a piece, so that a peer can leave mid-piece.
const PIECE: usize = 32 * 1024;

/// `patron-client --json make FILE --seed` on the broker of `state`: the .torrent and its
/// info hash.
fn seed(sandbox: &Sandbox, state: &Path, file: &Path) -> (std::path::PathBuf, String) {
    let torrent = sandbox.path("hostile.torrent");
    let mut make = sandbox.client(state);
    make.args(["--json", "make"])
        .arg(file)
        .arg("--output")
        .arg(&torrent)
        .args(["--piece-size", &PIECE.to_string(), "--seed"]);
    let lines = run(make).expect_code(0).json_lines();
    let hash = lines
        .iter()
        .find_map(|l| l["info_hash"].as_str())
        .expect("an info hash")
        .to_owned();
    (torrent, hash)
}

/// `patron-client --json peers 0 [--add PEER]...`.
fn peers(sandbox: &Sandbox, state: &Path, add: &[&str]) -> e2e::Output {
    let mut cmd = sandbox.client(state);
    cmd.args(["--json", "peers", "0"]);
    for peer in add {
        cmd.args(["--add", peer]);
    }
    run(cmd)
}

#[test]
fn the_broker_finishes_from_the_others_and_bans_the_liar() {
    let sandbox = Sandbox::new();
    let file = sandbox.random_file("shared/hostile.bin", 20 * PIECE + 5_000);
    let data = std::fs::read(&file).expect("read");
    let seeder = sandbox.state_dir("seeder");
    let honest = sandbox.broker(&seeder, &[]);
    let (torrent, hash) = seed(&sandbox, &seeder, &file);
    let liar = WirePeer::start(&hash, data.clone(), PIECE, Behaviour::Liar);
    let leaver = WirePeer::start(&hash, data.clone(), PIECE, Behaviour::LeavesMidPiece);
    let choker = WirePeer::start(&hash, data, PIECE, Behaviour::ChokesForever);

    // First with the three alone: the liar's pieces fail their hash checks.
    let leecher = sandbox.state_dir("leecher");
    let _broker = sandbox.broker(&leecher, &[]);
    let out = sandbox.folder("fetched");
    let mut add = sandbox.add_command(&leecher, &torrent, &out, Some(&liar.peer()));
    add.args(["--peer", &leaver.peer(), "--peer", &choker.peer(), "--wait"]);
    let fetch = Running::start(add);
    wait_for("the liar to be banned", STEP_TIMEOUT, || {
        // (An error until the add has made the torrent.)
        let listed = peers(&sandbox, &leecher, &[]).json_lines();
        listed.first().is_some_and(|l| {
            l["banned"]
                .as_array()
                .is_some_and(|b| b.iter().any(|p| p["address"] == liar.peer()))
        })
    });
    let listed = peers(&sandbox, &leecher, &[]).expect_code(0).json_lines();
    let ban = &listed[0]["banned"][0];
    assert!(
        ban["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed its hash check")),
        "{ban}"
    );
    let mut human = sandbox.client(&leecher);
    human.args(["peers", "0"]);
    let text = run(human).expect_code(0).stdout;
    assert!(text.contains(&format!("banned: {}", liar.peer())), "{text}");
    wait_for("the leaver to have been dialled", STEP_TIMEOUT, || {
        leaver.connections() > 0
    });

    // Then the honest seed: the download completes, byte for byte.
    peers(&sandbox, &leecher, &[&honest.peer()]).expect_code(0);
    let done = fetch.finish(STEP_TIMEOUT);
    assert_eq!(done.code(), 0, "{}{}", done.stdout, done.stderr);
    assert_eq!(sha256(&out.join("hostile.bin")), sha256(&file));

    // The liar was not dialled again (upstream re-dialled it after its back-off, for a
    // wrong piece each time), and naming it is refused, saying why.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(liar.connections(), 1, "the liar was dialled again");
    let refused = peers(&sandbox, &leecher, &[&liar.peer()]);
    assert_ne!(refused.code(), 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("banned") || refused.stdout.contains("banned"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
}

/// A seed lets a peer go once neither wants anything; named again with `peers --add`, it
/// is dialled again (a leecher whose magnet's metadata came over the last connection needs
/// a new one: rtorrent does).
#[test]
fn a_peer_a_seed_let_go_is_dialled_again_when_named() {
    let sandbox = Sandbox::new();
    let file = sandbox.random_file("shared/hostile.bin", 3 * PIECE);
    let data = std::fs::read(&file).expect("read");
    let seeder = sandbox.state_dir("seeder");
    let _broker = sandbox.broker(&seeder, &[]);
    let (_, hash) = seed(&sandbox, &seeder, &file);
    wait_for("the made torrent to seed", STEP_TIMEOUT, || {
        e2e::status_json(&sandbox, &seeder, "0")["state"] == "seeding"
    });
    let leaver = WirePeer::start(&hash, data, PIECE, Behaviour::LeavesAfterHandshake);
    peers(&sandbox, &seeder, &[&leaver.peer()]).expect_code(0);
    wait_for("the first dial", STEP_TIMEOUT, || leaver.connections() == 1);
    // Let the engine see it go.
    std::thread::sleep(Duration::from_millis(500));
    peers(&sandbox, &seeder, &[&leaver.peer()]).expect_code(0);
    wait_for("a second dial", STEP_TIMEOUT, || leaver.connections() == 2);
}
