"""Fixtures: real brokers (the binaries `cargo build --bins` made), each on its own state
directory, loopback-only, stopped by pid at the end of the test."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TORRENT_PATRON_BIN_DIR", REPO / "target" / "debug"))

os.environ["TORRENT_PATRON_LOOPBACK_ONLY"] = "1"
os.environ["TORRENT_PATRON_BROKER"] = str(BIN / "torrent-broker")
os.environ.pop("TORRENT_PATRON_STATE", None)


class Broker:
    """A broker of a state dir of its own; its downloads go under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        root.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, TORRENT_PATRON_DOWNLOAD_ROOT=str(root))
        self.client("broker", "start")
        self.pid = int((self.state / "broker.lock").read_text().split()[0])

    def client(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(BIN / "patron-client"), "--state-dir", str(self.state), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"patron-client {' '.join(args)}: {done.stderr}")
        return done.stdout

    def stop(self) -> None:
        try:
            self.client("broker", "stop", timeout=20)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    b = Broker(tmp_path / "a")
    # `add`'s and `make`'s folders must be inside the broker's roots.
    monkeypatch.setenv("TORRENT_PATRON_DOWNLOAD_ROOT", str(b.root))
    yield b
    b.stop()


@pytest.fixture
def second_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "b")
    yield b
    b.stop()


def payload(path: Path, size: int, seed: int = 1) -> bytes:
    """`size` bytes that differ from run to run of `seed`."""
    import random

    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def stuck_magnet() -> Iterator[Callable[[], str]]:
    """Makes magnet links (a new info hash each) whose only peer takes the connection and
    never answers: their adds wait for metadata until the broker's timeout."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    yield lambda: f"magnet:?xt=urn:btih:{os.urandom(20).hex()}&x.pe=127.0.0.1:{port}"
    silent.close()
