//! Peers that lie, leave mid-piece or choke forever (`e2e::swarm::WirePeer`, the tests' own
//! wire-protocol peer): the broker finishes from the others, bans the liar and says so in
//! `peers`; and a peer a seed let go is dialled again when named again.

use e2e::swarm::{raw_peer, wire_message, Behaviour, HangsUpFirst, WirePeer};
use e2e::{run, sha256, wait_for, BrokerProcess, Running, Sandbox, STEP_TIMEOUT};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Two blocks of 16 KiB a piece, so that a peer can leave mid-piece.
const PIECE: usize = 32 * 1024;

/// Where every test here starts: a broker seeding `size` random bytes that
/// `patron-client make --seed` made (pieces of [`PIECE`]), the .torrent and its info hash.
fn seeded(size: usize) -> (Sandbox, PathBuf, PathBuf, BrokerProcess, PathBuf, String) {
    let sandbox = Sandbox::new();
    let file = sandbox.random_file("shared/hostile.bin", size);
    let state = sandbox.state_dir("seeder");
    let broker = sandbox.broker(&state, &[]);
    let torrent = sandbox.path("hostile.torrent");
    let mut make = sandbox.client(&state);
    make.args(["--json", "make"])
        .arg(&file)
        .arg("--output")
        .arg(&torrent)
        .args(["--piece-size", &PIECE.to_string(), "--seed"]);
    let lines = run(make).expect_code(0).json_lines();
    let hash = lines
        .iter()
        .find_map(|l| l["info_hash"].as_str())
        .expect("an info hash")
        .to_owned();
    (sandbox, file, state, broker, torrent, hash)
}

/// A wire peer seeding `file`'s bytes for `hash`, as `behaviour` says.
fn wire_peer(file: &Path, hash: &str, behaviour: Behaviour) -> WirePeer {
    let data = std::fs::read(file).expect("read");
    WirePeer::start(hash, data, PIECE, behaviour)
}

/// A second broker (state dir `leecher`) and its `add SOURCE --output fetched --wait`,
/// dialling `peers`: the state dir, the broker, the folder and the running add.
fn leech(
    sandbox: &Sandbox,
    source: &str,
    peers: &[String],
) -> (PathBuf, BrokerProcess, PathBuf, Running) {
    let state = sandbox.state_dir("leecher");
    let broker = sandbox.broker(&state, &[]);
    let out = sandbox.folder("fetched");
    let mut add = sandbox.add_command(&state, source, &out, None);
    for peer in peers {
        add.args(["--peer", peer]);
    }
    add.arg("--wait");
    (state, broker, out, Running::start(add))
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
    let (sandbox, file, _, honest, torrent, hash) = seeded(20 * PIECE + 5_000);
    let liar = wire_peer(&file, &hash, Behaviour::Liar);
    let leaver = wire_peer(&file, &hash, Behaviour::LeavesMidPiece);
    let choker = wire_peer(&file, &hash, Behaviour::ChokesForever);

    // First with the three alone: the liar's pieces fail their hash checks.
    let (leecher, _broker, out, fetch) = leech(
        &sandbox,
        &torrent.display().to_string(),
        &[liar.peer(), leaver.peer(), choker.peer()],
    );
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
    let (sandbox, file, seeder, _broker, _, hash) = seeded(3 * PIECE);
    wait_for("the made torrent to seed", STEP_TIMEOUT, || {
        e2e::status_json(&sandbox, &seeder, "0")["state"] == "seeding"
    });
    let leaver = wire_peer(&file, &hash, Behaviour::LeavesAfterHandshake);
    peers(&sandbox, &seeder, &[&leaver.peer()]).expect_code(0);
    wait_for("the first dial", STEP_TIMEOUT, || leaver.connections() == 1);
    // Named again once the engine saw it go (until then it is "already connected").
    wait_for("a second dial", STEP_TIMEOUT, || {
        let mut again = sandbox.client(&seeder);
        again.args(["peers", "0", "--add", &leaver.peer()]);
        run(again)
            .expect_code(0)
            .stdout
            .starts_with("Dialling 1 peer")
    });
    wait_for("the second connection", STEP_TIMEOUT, || {
        leaver.connections() == 2
    });
}

/// A peer that holds every piece and completes none (it withholds each piece's first block,
/// and sends the others wrong) stalls a download until an honest peer takes its pieces over:
/// the honest peer fetches each whole, the download completes, and the honest peer is not
/// banned. A taken-over piece kept the liar's blocks, so the honest peer's first block
/// completed it, its check failed, and the honest seed was banned, the download stuck.
#[test]
fn an_honest_peer_taking_over_a_liars_pieces_is_not_banned_for_them() {
    let (sandbox, file, _, honest, torrent, hash) = seeded(160 * PIECE);
    let liar = wire_peer(&file, &hash, Behaviour::WithholdsFirstBlocks);
    let (leecher, _broker, out, fetch) =
        leech(&sandbox, &torrent.display().to_string(), &[liar.peer()]);
    wait_for("the liar to be asked for blocks", STEP_TIMEOUT, || {
        liar.requests() > 0
    });
    peers(&sandbox, &leecher, &[&honest.peer()]).expect_code(0);
    let done = fetch.finish(2 * STEP_TIMEOUT);
    let listed = peers(&sandbox, &leecher, &[]).expect_code(0).json_lines();
    assert_eq!(
        done.code(),
        0,
        "{}{}\npeers: {:?}",
        done.stdout,
        done.stderr,
        listed
    );
    assert_eq!(sha256(&out.join("hostile.bin")), sha256(&file));
    let banned = listed[0]["banned"].as_array().cloned().unwrap_or_default();
    assert!(
        !banned.iter().any(|b| b["address"] == honest.peer()),
        "the honest seed was banned: {banned:?}"
    );
}

/// Connections that close before their handshake, or say nothing, do not keep an honest
/// peer's handshake waiting. A failed check stopped the listener from taking finished
/// checks until another connection came; 256 silent ones held every slot for 150 s, and
/// with 10 s each, a thousand kept an honest peer waiting past 25 s.
#[test]
fn silent_and_failed_connections_do_not_keep_an_honest_peer_waiting() {
    let (_sandbox, _, _, broker, _, hash) = seeded(3 * PIECE);
    let addr = broker.peer();
    let answer = Duration::from_secs(5);
    raw_peer(&addr, &hash, false, answer);

    // Twenty that close without a word.
    let closed: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(closed);
    std::thread::sleep(Duration::from_millis(200));
    raw_peer(&addr, &hash, false, answer);

    // Six hundred that stay and say nothing, more than the 256 checks the listener runs at
    // once: the oldest check goes for a newer connection, so the honest peer is answered at
    // once, not after the silent ones ahead of it (10 s each for 256 at a time).
    let silent: Vec<_> = (0..600)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    raw_peer(&addr, &hash, false, answer);
    drop(silent);
}

/// A peer that asks for chunks without reading them has at most 2,000 waiting; the others
/// are dropped, and the broker does not grow by what it asked: it grew by gigabytes a
/// minute.
#[test]
fn a_peer_asking_without_reading_is_held_to_two_thousand_requests() {
    let (_sandbox, _, _, broker, _, hash) = seeded(8 * PIECE);
    let before = broker.rss_kib();
    let mut stream = raw_peer(&broker.peer(), &hash, false, Duration::from_secs(5));
    stream.write_all(&wire_message(2, &[])).expect("interested");
    // Every block of every piece, again and again, never reading a reply.
    let mut requests = Vec::new();
    for piece in 0..8u32 {
        for begin in [0u32, 16 * 1024] {
            let mut payload = Vec::new();
            for field in [piece, begin, 16 * 1024] {
                payload.extend_from_slice(&field.to_be_bytes());
            }
            requests.extend(wire_message(6, &payload));
        }
    }
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (mut sent, started) = (0usize, std::time::Instant::now());
    while started.elapsed() < Duration::from_secs(5) {
        stream
            .write_all(&requests)
            .expect("the broker takes the requests (it drops those past 2,000)");
        sent += 16;
    }
    let grown = broker.rss_kib().saturating_sub(before);
    assert!(sent > 100_000, "only {sent} requests went out");
    assert!(
        grown < 100 * 1024,
        "{sent} requests grew the broker by {grown} KiB"
    );
}

/// A peer that sends its extended handshake (BEP 10, naming ut_pex) over and over costs the
/// broker nothing more: each used to start a PEX task of its own (gigabytes in seconds).
#[test]
fn extended_handshakes_sent_again_and_again_cost_nothing() {
    let (_sandbox, _, _, broker, _, hash) = seeded(3 * PIECE);
    let mut stream = raw_peer(&broker.peer(), &hash, true, Duration::from_secs(5));
    let handshake = wire_message(20, b"\x00d1:md6:ut_pexi1eee");
    let batch: Vec<u8> = (0..1000).flat_map(|_| handshake.clone()).collect();
    let before = broker.rss_kib();
    // A reader drains what the broker sends, so that only the handshakes count.
    let mut drain = stream.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut sink = [0u8; 65536];
        while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
    });
    for _ in 0..200 {
        stream
            .write_all(&batch)
            .expect("the broker takes every extended handshake");
    }
    std::thread::sleep(Duration::from_secs(1));
    let grown = broker.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "200,000 extended handshakes grew the broker by {grown} KiB"
    );
}

/// A peer that sends a piece of metadata before its extended handshake, named by a magnet
/// beside an honest seed, is that peer's error: the add completes from the seed. It was an
/// `unwrap` on `None` in the engine: the add failed at once with "internal error".
#[test]
fn metadata_before_the_extended_handshake_is_the_peers_error_not_a_panic() {
    let (sandbox, file, _, honest, _, hash) = seeded(3 * PIECE);
    let liar = wire_peer(&file, &hash, Behaviour::MetadataBeforeHandshake);
    let leecher = sandbox.state_dir("leecher");
    let broker = sandbox.broker(&leecher, &[]);
    // Alone, it is a peer that gave no metadata.
    let alone = format!("magnet:?xt=urn:btih:{hash}&x.pe={}", liar.peer());
    let refused = run(sandbox.add_command(&leecher, &alone, &sandbox.folder("none"), None));
    assert_eq!(refused.code(), 3, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.contains("metadata-timeout") && !refused.stderr.contains("internal"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let magnet = format!(
        "magnet:?xt=urn:btih:{hash}&x.pe={}&x.pe={}",
        liar.peer(),
        honest.peer()
    );
    let out = sandbox.folder("fetched");
    let mut add = sandbox.add_command(&leecher, &magnet, &out, None);
    add.arg("--wait");
    let done = Running::start(add).finish(STEP_TIMEOUT);
    assert_eq!(done.code(), 0, "{}{}", done.stdout, done.stderr);
    assert_eq!(sha256(&out.join("hostile.bin")), sha256(&file));
    assert!(liar.connections() > 0, "the liar was never dialled");
    assert!(!broker.log().contains("panicked"), "{}", broker.log());
}

/// A peer naming thousands of peers with port 0 over PEX does not fill the torrent's
/// bounded list of known peers for good: an honest seed named after it is dialled and the
/// download completes. Skipped peers stayed queued, could not make room, and the honest
/// seed was said to be "already connected or being dialled" while it was neither.
#[test]
fn a_pex_flood_of_unusable_peers_leaves_room_for_an_honest_one() {
    let (sandbox, file, _, honest, torrent, hash) = seeded(3 * PIECE);
    let flooder = wire_peer(&file, &hash, Behaviour::PexFlood);
    let (leecher, _broker, out, fetch) =
        leech(&sandbox, &torrent.display().to_string(), &[flooder.peer()]);
    // The broker answers the flooder's bitfield, sent after its PEX message, only once it
    // has read the PEX message.
    wait_for("the broker to have read the flood", STEP_TIMEOUT, || {
        flooder.interested() > 0
    });
    let mut named = sandbox.client(&leecher);
    named.args(["peers", "0", "--add", &honest.peer()]);
    let said = run(named).expect_code(0).stdout;
    assert!(said.starts_with("Dialling 1 peer"), "{said}");
    let done = fetch.finish(STEP_TIMEOUT);
    assert_eq!(done.code(), 0, "{}{}", done.stdout, done.stderr);
    assert_eq!(sha256(&out.join("hostile.bin")), sha256(&file));
}

/// A magnet's only named peer hangs up on the first connection (qBittorrent did, now and
/// then): the broker tries it again and gets the metadata. The engine tried each address
/// once: the add failed in milliseconds.
#[test]
fn a_magnets_peer_that_hangs_up_on_the_first_connection_is_tried_again() {
    let (sandbox, file, _, honest, _, hash) = seeded(3 * PIECE);
    let proxy = HangsUpFirst::start(&honest.peer());
    let magnet = format!("magnet:?xt=urn:btih:{hash}&x.pe={}", proxy.peer());
    let (_, _broker, out, fetch) = leech(&sandbox, &magnet, &[]);
    let done = fetch.finish(STEP_TIMEOUT);
    assert_eq!(done.code(), 0, "{}{}", done.stdout, done.stderr);
    assert_eq!(sha256(&out.join("hostile.bin")), sha256(&file));
    assert!(proxy.connections.load(std::sync::atomic::Ordering::Relaxed) > 1);
}
