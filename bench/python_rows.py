"""The Python package's bench rows (scripts/bench), each beside its anchor in the same run.

    python_rows.py status --state DIR --work DIR --transmission HOST:PORT [--runs N]
        status() of one torrent off the board, against transmission-rpc's get_torrent of one
        torrent from transmission-daemon (its own RPC, the fields transmission-rpc asks).
    python_rows.py list --state DIR [--runs N]
        list() of every torrent of a broker that runs many.
    python_rows.py stream --state DIR --work DIR --client PATH [--mib N] [--rounds N]
        A complete torrent of N MiB read from Python (1 MiB reads), against
        `patron-client cat` of the same into /dev/null.

Each prints one JSON line; a condition that fails prints {"not_measured": why}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List

import torrent_patron as tp


def timed(call: Callable[[], Any], runs: int) -> List[float]:
    """Microseconds per call, `runs` samples."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def status_row(args: argparse.Namespace) -> dict[str, Any]:
    import transmission_rpc

    host, port = args.transmission.rsplit(":", 1)
    client = transmission_rpc.Client(host=host, port=int(port), timeout=30)
    theirs = client.get_torrents()
    if not theirs:
        return {"not_measured": "transmission-daemon holds no torrent"}
    their_id = theirs[0].id
    data = Path(args.work) / "python-status.bin"
    data.write_bytes(os.urandom(65536))
    with tp.Patron(args.state, autostart=False) as p:
        made = p.make(data, seed=True)
        ours = made.seeding_id
        assert ours is not None
        p.wait(ours, timeout=60)
        ours_us: List[float] = []
        theirs_us: List[float] = []
        # Alternating halves, so a burst of load on the machine skews both.
        for _ in range(2):
            ours_us += timed(lambda: p.status(ours), args.runs)
            theirs_us += timed(lambda: client.get_torrent(their_id), max(args.runs // 20, 10))
        p.close(ours, force=True)
    return {
        "bench": "python-status",
        "status_p50_us": statistics.median(ours_us),
        "transmission_rpc_p50_us": statistics.median(theirs_us),
        "runs": len(ours_us),
        "anchor_runs": len(theirs_us),
    }


def list_row(args: argparse.Namespace) -> dict[str, Any]:
    with tp.Patron(args.state, autostart=False) as p:
        n = len(p.list())
        samples = timed(p.list, args.runs)
    return {"bench": "python-list", "torrents": n, "list_p50_us": statistics.median(samples),
            "runs": args.runs}


def stream_row(args: argparse.Namespace) -> dict[str, Any]:
    size = args.mib << 20
    data = Path(args.work) / "python-stream.bin"
    with open(data, "wb") as out:
        for _ in range(args.mib):
            out.write(os.urandom(1 << 20))
    with tp.Patron(args.state, autostart=False) as p:
        made = p.make(data, seed=True)
        torrent = made.seeding_id
        assert torrent is not None
        p.wait(torrent, timeout=600)

        def python_read() -> None:
            total = 0
            with p.open(torrent) as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
            if total != size:
                raise RuntimeError(f"read {total} bytes of {size}")

        def cat() -> None:
            with open(os.devnull, "wb") as sink:
                subprocess.run(
                    [args.client, "--state-dir", args.state, "cat", str(torrent)],
                    stdout=sink, check=True, timeout=600,
                )

        python_ms: List[float] = []
        cat_ms: List[float] = []
        python_read()  # the page cache warm for both
        for _ in range(args.rounds):
            python_ms += [t / 1000 for t in timed(python_read, 1)]
            cat_ms += [t / 1000 for t in timed(cat, 1)]
        p.close(torrent, force=True)
    data.unlink()
    return {
        "bench": "python-stream",
        "mib": args.mib,
        "python_ms": statistics.median(python_ms),
        "cat_ms": statistics.median(cat_ms),
        "rounds": args.rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="row", required=True)
    s = sub.add_parser("status")
    s.add_argument("--state", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--transmission", required=True)
    s.add_argument("--runs", type=int, default=2000)
    s = sub.add_parser("list")
    s.add_argument("--state", required=True)
    s.add_argument("--runs", type=int, default=20)
    s = sub.add_parser("stream")
    s.add_argument("--state", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--client", required=True)
    s.add_argument("--mib", type=int, default=256)
    s.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = {"status": status_row, "list": list_row, "stream": stream_row}
    try:
        print(json.dumps(rows[args.row](args)))
    except (tp.TorrentPatronError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(json.dumps({"not_measured": f"{type(e).__name__}: {e}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
