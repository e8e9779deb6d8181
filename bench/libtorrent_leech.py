#!/usr/bin/python3
"""A python3-libtorrent leecher for the download row of scripts/bench.

    libtorrent_leech.py TORRENT FOLDER SEEDER_HOST:PORT

Fetches TORRENT into FOLDER from the one seeder named, over TCP only (uTP is 10-25x slower
on loopback here: DESIGN §10), with DHT, local discovery, UPnP and NAT-PMP off and nothing
listening beyond 127.0.0.1. Prints one JSON line: the milliseconds from adding the torrent
to its last piece verified (the interpreter's start and the import are not counted, as the
broker's own start is not). Exits 1 if it does not finish within ten minutes.
"""

import json
import sys
import time

import libtorrent as lt


def main():
    torrent, folder, seeder = sys.argv[1:4]
    host, port = seeder.rsplit(":", 1)
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
        "alert_mask": lt.alert.category_t.status_notification,
    })
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = folder
    started = time.monotonic()
    handle = session.add_torrent(params)
    handle.connect_peer((host, int(port)))
    deadline = started + 600
    while time.monotonic() < deadline:
        session.wait_for_alert(100)
        for alert in session.pop_alerts():
            if isinstance(alert, lt.torrent_finished_alert):
                took = (time.monotonic() - started) * 1e3
                print(json.dumps({"ms": took}))
                return 0
        if handle.status().is_seeding:
            print(json.dumps({"ms": (time.monotonic() - started) * 1e3}))
            return 0
    print("libtorrent did not finish in ten minutes", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
