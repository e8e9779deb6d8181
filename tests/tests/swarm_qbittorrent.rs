//! qbittorrent-nox (its own profile folder, driven through its Web API) and the broker,
//! both ways, by peer, through opentracker and by magnet (`e2e::swarm`).

use e2e::swarm::{fetches_from_the_broker, the_broker_fetches_from, OpenTracker, Qbittorrent};
use e2e::Sandbox;

#[test]
fn the_broker_downloads_from_qbittorrent_by_peer_tracker_and_magnet() {
    if !Qbittorrent::available() || !OpenTracker::available() {
        return;
    }
    let sandbox = Sandbox::new();
    let save = sandbox.folder("seeded");
    the_broker_fetches_from(
        &sandbox,
        &mut Qbittorrent::start(&sandbox, "seeding", &save),
    );
}

#[test]
fn qbittorrent_downloads_from_the_broker_by_peer_tracker_and_magnet() {
    if !Qbittorrent::available() || !OpenTracker::available() {
        return;
    }
    let sandbox = Sandbox::new();
    let save = sandbox.folder("qbittorrent-downloads");
    fetches_from_the_broker(
        &sandbox,
        &mut Qbittorrent::start(&sandbox, "leeching", &save),
    );
}
