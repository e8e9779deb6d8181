#!/usr/bin/python3
"""One python3-libtorrent session for the swarm tests (tests/swarm.rs).

    libtorrent_peer.py TORRENT_OR_MAGNET FOLDER [HOST:PORT]

Seeds (the data is in FOLDER) or fetches (into FOLDER) one torrent, given as a .torrent file
or a magnet link, dialling HOST:PORT if given. TCP only on 127.0.0.1 (uTP is 10-25x slower
on loopback here: DESIGN §10), with DHT, local discovery, PEX, UPnP and NAT-PMP off. Prints
JSON lines: {"event": "listening", "port": N} once it listens, {"event": "complete"} once it
has every piece. Runs until killed; exits 1 after ten minutes.
"""

import json
import sys
import time

import libtorrent as lt


def say(**event):
    print(json.dumps(event), flush=True)


def main():
    what, folder = sys.argv[1:3]
    peer = sys.argv[3] if len(sys.argv) > 3 else None
    session = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Every peer here is 127.0.0.1.
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.status_notification | lt.alert.category_t.error_notification,
    })
    if what.startswith("magnet:"):
        params = lt.parse_magnet_uri(what)
    else:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(what)
    params.save_path = folder
    # No PEX (ut_pex), so that only the peers named reach it.
    params.flags |= lt.torrent_flags.disable_pex
    handle = session.add_torrent(params)
    deadline = time.monotonic() + 600
    while session.listen_port() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    say(event="listening", port=session.listen_port())
    if peer:
        host, port = peer.rsplit(":", 1)
        handle.connect_peer((host, int(port)))
    complete = False
    while time.monotonic() < deadline:
        session.wait_for_alert(200)
        for alert in session.pop_alerts():
            if isinstance(alert, (lt.torrent_error_alert, lt.file_error_alert)):
                print(alert.message(), file=sys.stderr, flush=True)
        status = handle.status()
        if not complete and status.has_metadata and status.is_seeding:
            complete = True
            say(event="complete")
    print("libtorrent_peer: ten minutes passed", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
