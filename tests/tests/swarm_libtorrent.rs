//! python3-libtorrent (libtorrent-rasterbar, under qBittorrent and Deluge) and the broker,
//! both ways, by peer, through opentracker and by magnet (`e2e::swarm`).

use e2e::swarm::{fetches_from_the_broker, the_broker_fetches_from, Libtorrents, OpenTracker};
use e2e::Sandbox;

#[test]
fn the_broker_downloads_from_libtorrent_by_peer_tracker_and_magnet() {
    if !Libtorrents::available() || !OpenTracker::available() {
        return;
    }
    let sandbox = Sandbox::new();
    the_broker_fetches_from(&sandbox, &mut Libtorrents::default());
}

#[test]
fn libtorrent_downloads_from_the_broker_by_peer_tracker_and_magnet() {
    if !Libtorrents::available() || !OpenTracker::available() {
        return;
    }
    let sandbox = Sandbox::new();
    fetches_from_the_broker(&sandbox, &mut Libtorrents::default());
}
