"""torrent_patron against real brokers: downloads, streams, events, errors, threads, fork,
a killed patron."""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import torrent_patron as tp
from conftest import Broker, payload


def seeding(broker: Broker, size: int, name: str = "data.bin") -> tuple[tp.Patron, tp.Made, bytes]:
    """A patron of `broker` seeding `size` fresh bytes."""
    data = payload(broker.root / name, size, seed=size)
    patron = tp.Patron(broker.state)
    made = patron.make(broker.root / name, seed=True)
    assert made.seeding_id is not None
    patron.wait(made.seeding_id, timeout=60)
    return patron, made, data


def listen(patron: tp.Patron) -> str:
    return str(patron.broker_info()["listen"])


def test_a_download_between_two_brokers(broker: Broker, second_broker: Broker) -> None:
    seeder, made, data = seeding(broker, 3 << 20)
    with seeder, tp.Patron(second_broker.state) as leecher:
        out = second_broker.root / "got"
        out.mkdir()
        added = leecher.add(made.torrent, output=out, peers=[listen(seeder)])
        assert (added.name, added.joined, added.info_hash) == ("data.bin", False, made.info_hash)
        assert added.save_folder == added.save_path == str(out)
        assert added.as_dict()["id"] == added.id
        status = leecher.wait(added.id, timeout=120)
        assert status.complete and status.state == "seeding"
        assert (out / "data.bin").read_bytes() == data
        # The board and a request agree.
        assert leecher.status(added.info_hash).id == added.id
        assert [s.id for s in leecher.list()] == [added.id]
        assert [f.as_dict() for f in leecher.files(added.id)] == [
            {"index": 0, "path": "data.bin", "size": len(data), "bytes_done": len(data), "selected": True}
        ]
        # Adding it again joins it.
        again = leecher.add(made.torrent, output=out)
        assert again.joined and again.id == added.id


def test_a_stream_read_with_random_seeks_gives_the_files_bytes(broker: Broker, second_broker: Broker) -> None:
    seeder, made, data = seeding(broker, 4 << 20)
    with seeder, tp.Patron(second_broker.state) as leecher:
        out = second_broker.root / "streamed"
        out.mkdir()
        added = leecher.add(made.torrent, output=out, peers=[listen(seeder)], max_download_rate=2 << 20)
        rng = random.Random(7)
        with leecher.open(added.id) as f:
            assert isinstance(f, io.RawIOBase) and f.readable() and f.seekable()
            assert f.size == len(data)
            for _ in range(40):
                at = rng.randrange(len(data))
                n = rng.randrange(1, 200_000)
                assert f.seek(at) == at
                got = f.read(n)
                assert 0 < len(got) <= n
                assert got == data[at : at + len(got)]
                assert f.tell() == at + len(got)
            f.seek(-10, io.SEEK_END)
            assert f.read() == data[-10:]
            assert f.read(5) == b""
            f.seek(0)
            copy = io.BytesIO()
            shutil.copyfileobj(f, copy)
            assert copy.getvalue() == data
            buffer = bytearray(1000)
            f.seek(123)
            n = f.readinto(buffer)
            assert buffer[:n] == data[123 : 123 + n]
        with pytest.raises(ValueError):
            f.read(1)


def test_asyncio_events_waits_and_streams(broker: Broker) -> None:
    data = payload(broker.root / "async.bin", 1 << 20)

    async def main() -> None:
        async with tp.AsyncPatron(broker.state) as p:
            made = await p.make(broker.root / "async.bin", seed=True)
            assert made.seeding_id is not None
            status = await p.wait(made.seeding_id, timeout=60)
            assert status.complete
            await p.pause(made.seeding_id)
            events = p.events()
            seen: list[str] = []

            async def resume_soon() -> None:
                await asyncio.sleep(0.2)
                await p.resume(made.seeding_id)

            task = asyncio.ensure_future(resume_soon())
            async for event in events:
                assert isinstance(event, tp.StatusChanged)
                seen.append(event.status.state)
                if event.status.state == "seeding":
                    break
            await task
            assert "seeding" in seen
            # The loop kept running meanwhile: a timer fires during a board wait.
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.ensure_future(tick())
            started = asyncio.get_running_loop().time()
            async for _ in p.watch(timeout=0.3):
                pass
            waited = asyncio.get_running_loop().time() - started
            ticker.cancel()
            assert waited >= 0.3 and ticks >= 10, (waited, ticks)
            f = await p.open(made.seeding_id)
            f.seek(1000)
            assert await f.read(100) == data[1000:1100]
            f.close()
            files = await p.files(made.seeding_id)
            assert [x.path for x in files] == ["async.bin"]

    asyncio.run(asyncio.wait_for(main(), 120))


def test_every_error_is_its_own_class(broker: Broker, tmp_path: Path) -> None:
    with tp.Patron(broker.state) as p:
        with pytest.raises(tp.UnknownTorrent) as unknown:
            p.pause(4242)
        assert unknown.value.kind == "unknown-torrent" and "4242" in unknown.value.message
        # Each is the builtin that fits too.
        assert isinstance(unknown.value, LookupError)
        assert issubclass(tp.NotAllowed, PermissionError) and issubclass(tp.FileExists, FileExistsError)
        assert issubclass(tp.BrokerStopped, ConnectionError) and issubclass(tp.BadRequest, ValueError)
        assert tp.UnknownTorrent("by hand").kind == ""
        with pytest.raises(tp.UnknownTorrent):
            p.status(4242)
        with pytest.raises(tp.InvalidTorrent):
            p.add(b"this is not a torrent", output=broker.root)
        with pytest.raises(tp.InvalidMagnet):
            p.add("magnet:?xt=urn:btih:nothex", output=broker.root)
        # A peer that refuses: every address tried, none had the metadata.
        import socket
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(tp.MetadataTimeout) as no_metadata:
            p.add(f"magnet:?xt=urn:btih:{'cd' * 20}", peers=[f"127.0.0.1:{port}"], output=broker.root)
        assert no_metadata.value.kind == "metadata-timeout"
        (broker.root / "x.bin").write_bytes(b"x" * 1000)
        made = p.make(broker.root / "x.bin")
        with pytest.raises(tp.NotAllowed) as outside:
            p.add(made.torrent, output="/etc")
        assert isinstance(outside.value, tp.TorrentPatronError)
        (broker.root / "in-the-way").mkdir()
        (broker.root / "in-the-way" / "x.bin").write_bytes(b"the user's own")
        with pytest.raises(tp.FileExists):
            p.add(made.torrent, output=broker.root / "in-the-way")
        assert (broker.root / "in-the-way" / "x.bin").read_bytes() == b"the user's own"
        seeding_id = p.make(broker.root / "x.bin", seed=True).seeding_id
        assert seeding_id is not None
        with pytest.raises(tp.InvalidPeer):
            p.add_peers(seeding_id, ["not an address"])
        with pytest.raises(tp.BadRequest):
            p.select_files(seeding_id, [99])
        # Its data is nowhere: paused, it never completes.
        (broker.root / "y.bin").write_bytes(b"y" * 1000)
        elsewhere = p.make(broker.root / "y.bin")
        (broker.root / "nowhere").mkdir()
        waiting = p.add(elsewhere.torrent, output=broker.root / "nowhere", paused=True)
        with pytest.raises(tp.WaitTimeout) as late:
            p.wait(waiting.id, timeout=0.2)
        assert isinstance(late.value, TimeoutError) and late.value.kind == "timeout"
        with tp.Patron(broker.state) as other:
            with pytest.raises(tp.NotHolder):
                other.close(seeding_id)
        with pytest.raises(ValueError):
            p.status("not a hash")
    with pytest.raises(tp.PatronClosed):
        p.files(seeding_id)
    with pytest.raises(tp.BrokerUnreachable):
        tp.Patron(tmp_path / "no-broker-here", autostart=False)


def test_every_value_pickles_and_comes_back_equal(broker: Broker) -> None:
    """For multiprocessing and caches: each value class survives pickle, fields and all."""
    import pickle

    (broker.root / "p.bin").write_bytes(os.urandom(5000))
    with tp.Patron(broker.state) as p:
        made = p.make(broker.root / "p.bin", seed=True)
        assert made.seeding_id is not None
        p.wait(made.seeding_id, timeout=60)
        p.pause(made.seeding_id)
        changed = next(e for e in p.events(timeout=10) if isinstance(e, tp.StatusChanged))
        values = [
            made, p.add(made.torrent, output=broker.root), p.status(made.seeding_id),
            p.list()[0], *p.files(made.seeding_id), changed,
            p.close(made.seeding_id, force=True),
        ]
        for value in values:
            back = pickle.loads(pickle.dumps(value))
            assert type(back) is type(value) and repr(back) == repr(value), value
            if hasattr(value, "as_dict"):
                assert back.as_dict() == value.as_dict()
        assert pickle.loads(pickle.dumps(made)).torrent == made.torrent
        assert pickle.loads(pickle.dumps(values[2])) == values[2]
        assert pickle.loads(pickle.dumps(changed)).status == changed.status
        with pytest.raises(ValueError, match="not a pickled Status"):
            tp._native._restore("Status", b"\xff")


def test_fifty_threads_share_one_patron(broker: Broker) -> None:
    p, made, _ = seeding(broker, 64 << 10)
    torrent = made.seeding_id
    assert torrent is not None
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(10):
                if n % 3 == 0:
                    assert p.files(torrent)[0].size == 64 << 10
                elif n % 3 == 1:
                    assert p.status(torrent).id == torrent
                else:
                    assert p.broker_info()["torrents"] == 1
        except BaseException as e:  # noqa: B036 (reported below)
            failures.append(e)

    with p:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert not failures, failures


def test_a_forked_child_gets_a_clear_error_and_the_parent_goes_on(broker: Broker) -> None:
    with tp.Patron(broker.state) as p:
        child = os.fork()
        if child == 0:
            code = 1
            try:
                p.list()
            except tp.PatronForked as e:
                code = 0 if "fork" in str(e) else 2
            except BaseException:
                code = 3
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.WEXITSTATUS(status) == 0
        assert p.broker_info()["pid"] == p.broker_pid
        with tp.Patron(broker.state) as fresh:
            assert fresh.list() == []


def test_a_patron_killed_mid_stream_leaves_the_broker_as_it_was(broker: Broker) -> None:
    seeder, made, data = seeding(broker, 2 << 20)
    with seeder:
        reader = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import sys, time, torrent_patron as tp
                p = tp.Patron({str(broker.state)!r})
                f = p.open({made.seeding_id})
                f.read(1000)
                print("reading", flush=True)
                time.sleep(60)
            """)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "reading"
            assert seeder.broker_info()["streams"] == 1
            reader.send_signal(signal.SIGKILL)
            reader.wait(10)
        finally:
            if reader.poll() is None:
                reader.kill()
        deadline = time.monotonic() + 10
        while seeder.broker_info()["streams"] != 0:
            assert time.monotonic() < deadline, "the killed reader's stream stayed open"
            time.sleep(0.05)
        with seeder.open(made.seeding_id) as f:
            assert f.read(4096) == data[:4096]


def test_ctrl_c_interrupts_every_wait(broker: Broker) -> None:
    """SIGINT reaches Python within a wait's slice: wait(), events(), a stream's read."""
    (broker.root / "never.bin").write_bytes(b"n" * 100_000)
    with tp.Patron(broker.state) as p:
        never = p.make(broker.root / "never.bin")
        (broker.root / "empty").mkdir()
        waiting = p.add(never.torrent, output=broker.root / "empty", paused=True)
    for call in ["p.wait(ID)", "next(iter(p.events()))", "p.open(ID).read(10)"]:
        waiter = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import time, torrent_patron as tp
                p = tp.Patron({str(broker.state)!r})
                print("waiting", flush=True)
                try:
                    {call.replace("ID", str(waiting.id))}
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
            """)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert waiter.stdout is not None
            assert waiter.stdout.readline().strip() == "waiting"
            time.sleep(0.5)
            sent = time.monotonic()
            waiter.send_signal(signal.SIGINT)
            assert waiter.stdout.readline().strip() == "interrupted", call
            assert time.monotonic() - sent < 2, call
            assert waiter.wait(10) == 0
        finally:
            if waiter.poll() is None:
                waiter.kill()


def test_a_stream_left_by_an_exception_or_to_the_gc_is_closed(broker: Broker) -> None:
    import gc

    seeder, made, data = seeding(broker, 256 << 10)
    torrent = made.seeding_id
    assert torrent is not None
    with seeder:
        with pytest.raises(ZeroDivisionError):
            with seeder.open(torrent) as f:
                f.read(10)
                1 / 0

        def streams_go() -> None:
            deadline = time.monotonic() + 5
            while seeder.broker_info()["streams"] != 0:
                assert time.monotonic() < deadline, "a stream nobody holds stayed open"
                time.sleep(0.05)

        streams_go()
        f = seeder.open(torrent)
        assert f.read(10) == data[:10]
        assert seeder.broker_info()["streams"] == 1
        del f
        gc.collect()
        streams_go()


def test_the_async_patron_and_file_have_what_the_sync_ones_have(broker: Broker) -> None:
    data = payload(broker.root / "parity.bin", 3 << 20)

    async def main() -> None:
        ap = tp.AsyncPatron(broker.state)
        assert not ap.closed and "not connected" in repr(ap)
        async with ap:
            assert f"broker pid {broker.pid}" in repr(ap)
            made = await ap.make(broker.root / "parity.bin", seed=True)
            assert made.seeding_id is not None
            await ap.wait(made.seeding_id, timeout=60)
            started = asyncio.get_running_loop().time()
            async for _ in ap.events(timeout=0.3):
                pass  # ends 0.3 s after the last event
            assert asyncio.get_running_loop().time() - started >= 0.3
            f = await ap.open(made.seeding_id)
            assert not f.closed and "parity.bin" in repr(f)
            assert b"".join([chunk async for chunk in f]) == data
            await f.aclose()
            assert f.closed
        assert ap.closed and "closed" in repr(ap)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_global_limits_are_read_and_changed(broker: Broker) -> None:
    unlimited = {
        "max_download_rate": None, "max_upload_rate": None, "alt_download_rate": None,
        "alt_upload_rate": None, "alt_schedule": None, "alt_hours": None, "alt_on": False,
    }
    with tp.Patron(broker.state) as p:
        assert p.limits() == unlimited
        assert p.limits(download=2 << 20) == unlimited | {"max_download_rate": 2 << 20}
        assert p.broker_info()["max_download_rate"] == 2 << 20
        with pytest.raises(tp.BadRequest):
            p.limits(upload=5 << 30)
        (broker.root / "own.bin").write_bytes(b"o" * 5000)
        made = p.make(broker.root / "own.bin", seed=True)
        assert made.seeding_id is not None
        assert p.limits(made.seeding_id, upload=100 << 10) == {"max_download_rate": None, "max_upload_rate": 100 << 10}
        assert p.limits()["max_upload_rate"] is None, "the broker's own is another"
        with pytest.raises(tp.UnknownTorrent):
            p.limits(4242, upload=1)
        with pytest.raises(TypeError):
            p.limits(download=-1)
        # The alternative limits, their switch and their schedule.
        alt = p.limits(alt_download=1 << 20, alt_upload=256 << 10, alt_on=True,
                       alt_schedule="mon-fri 09:00-18:00")
        assert alt["alt_on"] is True and alt["alt_download_rate"] == 1 << 20, alt
        assert alt["alt_schedule"] == "mon,tue,wed,thu,fri 09:00-18:00", alt
        assert p.broker_info()["alt_on"] is True
        assert p.limits(alt_schedule=None, alt_on=False)["alt_schedule"] is None
        with pytest.raises(ValueError):
            p.limits(alt_schedule="someday")
        with pytest.raises(tp.BadRequest):
            p.limits(made.seeding_id, alt_on=True)

        async def lift() -> dict[str, object]:
            async with tp.AsyncPatron(broker.state) as ap:
                return await ap.limits(download=0)

        assert asyncio.run(lift())["max_download_rate"] is None


def test_the_queue_is_read_changed_and_holds_seeds_past_its_limit(broker: Broker) -> None:
    with tp.Patron(broker.state) as p:
        assert p.queue() == {
            "max_active_downloads": None, "max_active_seeds": None, "stalled_after_secs": 1800,
        }
        assert p.queue(seeds=1, stalled_after=None) == {
            "max_active_downloads": None, "max_active_seeds": 1, "stalled_after_secs": None,
        }
        assert p.broker_info()["max_active_seeds"] == 1
        for n in range(2):
            (broker.root / f"q{n}.bin").write_bytes(bytes([n]) * 5000)
        first = p.make(broker.root / "q0.bin", broker.root, seed=True).seeding_id
        second = p.make(broker.root / "q1.bin", broker.root, seed=True).seeding_id
        assert first is not None and second is not None
        deadline = time.monotonic() + 30
        while p.status(second).state != "queued":
            assert time.monotonic() < deadline, p.status(second)
            time.sleep(0.05)
        assert p.status(second).queue_position == 2
        assert p.status(second).as_dict()["queue_position"] == 2
        moved = p.move_in_queue(second, "top")
        assert moved.queue_position == 1 and moved.state != "queued", moved
        with pytest.raises(ValueError):
            p.move_in_queue(second, "sideways")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            p.queue(downloads=True)
        with pytest.raises(ValueError):
            p.queue(downloads=-1)
        with pytest.raises(ValueError):
            p.queue(stalled_after=0.5)

        async def lift() -> dict[str, int | None]:
            async with tp.AsyncPatron(broker.state) as ap:
                return await ap.queue(seeds=None)

        assert asyncio.run(lift())["max_active_seeds"] is None


def test_seeding_limits_are_read_changed_and_stop_a_torrent(broker: Broker) -> None:
    with tp.Patron(broker.state) as p:
        assert p.seeding() == {
            "ratio_limit": None, "seed_time_limit_secs": None, "idle_seed_limit_secs": None,
            "seed_limit_action": "pause",
        }
        assert p.seeding(ratio=2.5, action="close")["ratio_limit"] == 2.5
        assert p.broker_info()["seed_limit_action"] == "close"
        assert p.seeding(ratio=None, action="pause")["ratio_limit"] is None
        (broker.root / "limited.bin").write_bytes(b"l" * 5000)
        made = p.make(broker.root / "limited.bin", broker.root, seed=True).seeding_id
        assert made is not None
        own = p.seeding(made, seed_time=2)
        assert own["seed_time_limit_secs"] == 2
        deadline = time.monotonic() + 30
        while p.status(made).state != "paused":
            assert time.monotonic() < deadline, p.status(made)
            time.sleep(0.1)
        status = p.status(made)
        assert status.seeding_secs >= 2 and status.seed_time_limit_secs == 2, status
        assert status.as_dict()["ratio"] == status.ratio
        assert p.seeding(made, seed_time="default")["seed_time_limit_secs"] is None
        with pytest.raises(ValueError):
            p.seeding(ratio="default")  # the broker's own has no default
        with pytest.raises(TypeError):
            p.seeding(ratio=True)
        with pytest.raises(ValueError):
            p.seeding(idle=0.5)
        with pytest.raises(ValueError):
            p.seeding(action="explode")  # type: ignore[arg-type]

        async def ask() -> dict[str, object]:
            async with tp.AsyncPatron(broker.state) as ap:
                return await ap.seeding(idle=3600)

        assert asyncio.run(ask())["idle_seed_limit_secs"] == 3600


def test_a_move_runs_the_torrent_from_its_new_folder_and_a_refusal_keeps_it(broker: Broker) -> None:
    with tp.Patron(broker.state) as p:
        (broker.root / "album").mkdir()
        (broker.root / "album" / "a.bin").write_bytes(os.urandom(100_000))
        made = p.make(broker.root / "album", broker.root, seed=True).seeding_id
        assert made is not None
        p.wait(made, timeout=60)
        before = (broker.root / "album" / "a.bin").read_bytes()
        status = p.move(made, broker.root / "done")
        assert status.state == "seeding", status
        assert (broker.root / "done" / "album" / "a.bin").read_bytes() == before
        assert not (broker.root / "album").exists()
        assert [t.save_folder for t in p.list() if t.id == made] == [str(broker.root / "done")]
        # Onto something that exists: refused, and it seeds on from where it is.
        (broker.root / "taken" / "album").mkdir(parents=True)
        with pytest.raises(tp.FileExists):
            p.move(made, broker.root / "taken")
        with pytest.raises(tp.NotAllowed):
            p.move(made, "/")

        async def move_back() -> str:
            async with tp.AsyncPatron(broker.state) as ap:
                return (await ap.move(made, broker.root)).state

        assert asyncio.run(move_back()) == "seeding"
        assert (broker.root / "album" / "a.bin").read_bytes() == before


def test_labels_carry_a_folder_and_limits_and_torrents_carry_labels(broker: Broker) -> None:
    with tp.Patron(broker.state) as p:
        films = broker.root / "films"
        films.mkdir()
        labels = p.labels("films", folder=films, ratio=2, max_upload_rate=100_000)
        assert labels == [{
            "name": "films", "folder": str(films), "max_download_rate": None,
            "max_upload_rate": 100_000, "ratio_limit": 2.0, "seed_time_limit_secs": None,
            "idle_seed_limit_secs": None, "torrents": 0,
        }]
        (broker.root / "clip.bin").write_bytes(os.urandom(50_000))
        made = p.make(broker.root / "clip.bin", broker.root, seed=True).seeding_id
        assert made is not None
        status = p.label(made, ["films"])
        assert status.labels == ["films"] and status.ratio_limit == 2.0, status
        assert p.status(made).as_dict()["labels"] == ["films"]
        assert p.labels("films", ratio="default", folder=None)[0]["ratio_limit"] is None
        assert p.label(made, []).labels == []
        with pytest.raises(tp.BadRequest):
            p.label(made, ["a,b"])
        with pytest.raises(TypeError):
            p.label(made, "films")

        async def ask() -> list[str]:
            async with tp.AsyncPatron(broker.state) as ap:
                await ap.label(made, ["x"])
                return [label["name"] for label in await ap.labels()]

        assert asyncio.run(ask()) == ["films", "x"]


def test_second_review_small_things(broker: Broker) -> None:
    (broker.root / "small.bin").write_bytes(b"s" * 5000)
    with tp.Patron(broker.state) as p:
        with pytest.raises(ValueError):
            p.events(timeout=-1)  # at the call, not at the first next()
        with pytest.raises(ValueError):
            p.watch(timeout=-1)
        with pytest.raises(ValueError):
            p.wait(0, timeout=True)
        made = p.make(broker.root / "small.bin", broker.root, seed=True)  # a folder: <folder>/<name>.torrent
        assert (broker.root / "small.bin.torrent").read_bytes() == made.torrent
        assert made.seeding_id is not None
        with pytest.raises(TypeError):
            p.select_files(made.seeding_id, [True])
        with pytest.raises(TypeError):
            p.open(made.seeding_id, file=True)
        with pytest.raises(ValueError):
            p.open(made.seeding_id, offset=-1)
        with pytest.raises(OSError) as missing:
            p.make(broker.root / "no-such-file")
        assert isinstance(missing.value, tp.BrokerIoError)
        gone = tp.TorrentGone.__match_args__
        assert gone == ("id", "reason")

        async def read_nothing() -> bytes:
            async with tp.AsyncPatron(broker.state) as ap:
                f = await ap.open(made.seeding_id)
                return await asyncio.wait_for(f.read(0), 1)

        assert asyncio.run(read_nothing()) == b""
