//! rtorrent (its own session folder, driven by XML-RPC over a unix socket) and the broker,
//! both ways, by peer, through opentracker and by magnet (`e2e::swarm`).
//!
//! rtorrent never dials a peer on its own address, and on loopback every peer is: it gets
//! data only when the broker dials it (`peers --add`, or the leechers its tracker names).
//! It refuses a torrent without a tracker when DHT is off, so the torrents of the peer and
//! magnet cells name one that nothing answers at.

use e2e::swarm::{fetches_from_the_broker, the_broker_fetches_from, OpenTracker, Rtorrent};
use e2e::Sandbox;

#[test]
fn the_broker_downloads_from_rtorrent_by_peer_tracker_and_magnet() {
    if !Rtorrent::available() || !OpenTracker::available() {
        return;
    }
    let sandbox = Sandbox::new();
    let save = sandbox.folder("seeded");
    the_broker_fetches_from(&sandbox, &mut Rtorrent::start(&sandbox, "seeding", &save));
}

#[test]
fn rtorrent_downloads_from_the_broker_by_peer_tracker_and_magnet() {
    if !Rtorrent::available() || !OpenTracker::available() {
        return;
    }
    let sandbox = Sandbox::new();
    let save = sandbox.folder("rtorrent-downloads");
    fetches_from_the_broker(&sandbox, &mut Rtorrent::start(&sandbox, "leeching", &save));
}
