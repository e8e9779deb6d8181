"""Drives the web patron's Transmission RPC with the `transmission-rpc` package from PyPI,
as Sonarr-like tools do: add, list with the fields it asks for, stop, start, remove.

Usage: transmission_rpc_client.py HOST PORT TOKEN TORRENT DOWNLOAD_DIR
Prints one JSON line of what it saw; exits non-zero on any failure.
"""
import json
import sys
import time

from transmission_rpc import Client


def main():
    host, port, token, torrent, download_dir = sys.argv[1:6]
    client = Client(host=host, port=int(port), username="any", password=token, timeout=30)
    with open(torrent, "rb") as f:
        added = client.add_torrent(f, download_dir=download_dir, paused=True)
    seen = {"added_id": added.id, "added_name": added.name}
    torrents = client.get_torrents()
    seen["names"] = [t.name for t in torrents]
    # A paused add first checks what is on disk (checking), then stays stopped.
    deadline = time.time() + 30
    while time.time() < deadline and str(client.get_torrent(added.id).status) == "checking":
        time.sleep(0.05)
    one = client.get_torrent(added.id)
    seen["status_paused"] = str(one.status)
    seen["download_dir"] = one.download_dir
    seen["total_size"] = one.total_size
    client.start_torrent(added.id)
    deadline = time.time() + 30
    while time.time() < deadline and str(client.get_torrent(added.id).status) == "stopped":
        time.sleep(0.1)
    seen["status_started"] = str(client.get_torrent(added.id).status)
    client.stop_torrent(added.id)
    seen["status_stopped"] = str(client.get_torrent(added.id).status)
    # Read after write, as transmission answers: each stop is seen by the next get, however
    # soon it comes.
    seen["stops_seen"] = 0
    for _ in range(10):
        client.start_torrent(added.id)
        if str(client.get_torrent(added.id).status) == "stopped":
            break
        client.stop_torrent(added.id)
        if str(client.get_torrent(added.id).status) != "stopped":
            break
        seen["stops_seen"] += 1
    client.remove_torrent(added.id, delete_data=True)
    seen["after_remove"] = [t.id for t in client.get_torrents()]
    session = client.get_session()
    seen["rpc_version"] = session.rpc_version
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
