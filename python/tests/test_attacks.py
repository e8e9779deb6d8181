"""What a reviewer found trying to break the package, each fixed: deadlocks between
threads, an abort at exit, a Patron the GC never closed, a fork's child closing its
parent's stream, waits that outlived close(), NaN timeouts, and more."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import torrent_patron as tp
from conftest import Broker


def never_completes(broker: Broker, name: str = "never.bin") -> int:
    """A torrent added paused whose data is nowhere: its bytes never come."""
    (broker.root / name).write_bytes(os.urandom(300_000))
    with tp.Patron(broker.state) as p:
        made = p.make(broker.root / name)
        empty = broker.root / f"empty-{name}"
        empty.mkdir()
        return p.add(made.torrent, output=empty, paused=True).id


def resolving(patron: tp.Patron, magnet: str) -> None:
    """Waits until the broker shows `magnet` waiting for its metadata: its add is in."""
    info_hash = magnet.split("btih:")[1][:40]
    deadline = time.monotonic() + 20
    while not any(s.info_hash == info_hash for s in patron.list()):
        assert time.monotonic() < deadline, "the magnet's add never reached the broker"
        time.sleep(0.02)


def python(broker: Broker, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`code` in a Python of its own (a hang or an abort there is a failure here)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, STATE=str(broker.state)),
    )


def test_closing_a_file_another_thread_reads_frees_both(broker: Broker) -> None:
    torrent = never_completes(broker)
    done = python(broker, f"""
        import os, threading, time, torrent_patron as tp
        p = tp.Patron(os.environ["STATE"])
        f = p.open({torrent})
        assert f.read(0) == b""  # at once, though no byte is verified
        outcome = []
        def read():
            try:
                f.read(10)
            except Exception as e:
                outcome.append(type(e).__name__)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.5)
        f.tell(); f.seek(0); f.close()
        reader.join(10)
        print(outcome, reader.is_alive())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['ValueError'] False", done.stdout


def test_threads_reading_the_board_first_at_once_do_not_deadlock(broker: Broker) -> None:
    for _ in range(3):
        done = python(broker, """
            import os, threading, torrent_patron as tp
            p = tp.Patron(os.environ["STATE"])
            threads = [threading.Thread(target=p.list) for _ in range(8)]
            for t in threads: t.start()
            for t in threads: t.join()
            print("ok")
        """, timeout=30)
        assert done.stdout.strip() == "ok", done.stderr


# One line each: the watch's second `next` is the one that sleeps on the board.
@pytest.mark.parametrize("call", ["p.wait(ID)", "next(iter(p.events()))", "[w := p.watch(None), next(w), next(w)]", "p.files(ID)"])
def test_a_daemon_thread_in_a_wait_does_not_abort_the_exit(broker: Broker, call: str) -> None:
    torrent = never_completes(broker, f"d{abs(hash(call))}.bin")
    body = call.replace("ID", str(torrent))
    for _ in range(3):
        done = python(broker, f"""
            import os, threading, time, torrent_patron as tp
            p = tp.Patron(os.environ["STATE"])
            def waiting():
                while True:
                    {body}
            threading.Thread(target=waiting, daemon=True).start()
            time.sleep(0.3)
        """)
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_a_patron_nobody_holds_is_closed(broker: Broker) -> None:
    with tp.Patron(broker.state) as watcher:
        before = watcher.broker_info()["patrons"]
        for _ in range(10):
            p = tp.Patron(broker.state)
            p.list()
            del p
            gc.collect()
        deadline = time.monotonic() + 10
        while watcher.broker_info()["patrons"] != before:
            assert time.monotonic() < deadline, "patrons nobody holds stayed connected"
            time.sleep(0.05)


def test_a_forked_child_can_neither_read_nor_close_its_parents_file(broker: Broker) -> None:
    data = os.urandom(100_000)
    (broker.root / "forked.bin").write_bytes(data)
    with tp.Patron(broker.state) as p:
        made = p.make(broker.root / "forked.bin", seed=True)
        assert made.seeding_id is not None
        p.wait(made.seeding_id, timeout=60)
        f = p.open(made.seeding_id)
        assert f.read(10) == data[:10]
        child = os.fork()
        if child == 0:
            code = 1
            try:
                f.read(10)
            except tp.PatronForked:
                code = 0
            f.close()
            del f
            gc.collect()
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.WEXITSTATUS(status) == 0
        assert f.read(10) == data[10:20], "the child's close reached the parent's stream"
        f.close()


def test_close_ends_waits_and_every_later_call(broker: Broker) -> None:
    torrent = never_completes(broker)
    p = tp.Patron(broker.state)
    outcome: list[str] = []

    def wait() -> None:
        try:
            p.wait(torrent)
        except tp.TorrentPatronError as e:
            outcome.append(type(e).__name__)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    p.close()
    waiter.join(5)
    assert not waiter.is_alive() and outcome == ["PatronClosed"], outcome
    for call in (p.list, lambda: p.status(torrent), lambda: p.open(torrent), lambda: p.wait(torrent, 1)):
        with pytest.raises(tp.PatronClosed):
            call()


def test_bad_arguments_are_refused_before_anything_is_done(broker: Broker) -> None:
    (broker.root / "arg.bin").write_bytes(b"a" * 5000)
    (broker.root / "exists.torrent").write_bytes(b"mine")
    with tp.Patron(broker.state) as p:
        for call in (lambda: p.events(math.nan), lambda: p.watch(math.nan), lambda: p.wait(0, math.inf)):
            with pytest.raises(ValueError):
                call()
        import asyncio

        async def async_nan() -> None:
            async with tp.AsyncPatron(broker.state) as ap:
                with pytest.raises(ValueError):
                    await ap.wait(0, math.nan)
                with pytest.raises(ValueError):
                    async for _ in ap.watch(-1.0):
                        pass

        asyncio.run(asyncio.wait_for(async_nan(), 30))
        with pytest.raises(tp.FileExists):
            p.make(broker.root / "arg.bin", broker.root / "exists.torrent", seed=True)
        assert p.list() == [], "make seeded before refusing its output"
        assert (broker.root / "exists.torrent").read_bytes() == b"mine"
        with pytest.raises(TypeError):
            p.make(broker.root / "arg.bin", trackers="udp://127.0.0.1:1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            p.add(b"x", peers="127.0.0.1:1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not True"):
            p.status(True)
        with pytest.raises(ValueError, match="no torrent has the id -1"):
            p.pause(-1)
        with pytest.raises(ValueError, match="no torrent has the id 18446744073709551616"):
            p.files(2**64)
        with pytest.raises(TypeError) as strict:
            p.add(b"x", paused=0)  # type: ignore[arg-type]
        assert str(strict.value).startswith("paused: ") and "TypeError" not in str(strict.value)
        # A .torrent's folder that is not there is said before the hashing, not after.
        with pytest.raises(FileNotFoundError):
            p.make(broker.root / "arg.bin", broker.root / "no-such-folder" / "x.torrent", seed=True)
        assert p.list() == [], "make seeded before refusing its output"


def test_async_reads_to_the_end_and_watchers_each_see_changes(broker: Broker) -> None:
    import asyncio

    data = os.urandom(20 << 20)
    (broker.root / "big.bin").write_bytes(data)

    async def main() -> None:
        async with tp.AsyncPatron(broker.state) as p:
            made = await p.make(broker.root / "big.bin", seed=True)
            assert made.seeding_id is not None
            await p.wait(made.seeding_id, timeout=120)
            f = await p.open(made.seeding_id)
            assert await f.read() == data
            f.close()
            counts = [0] * 4

            async def watch(n: int) -> None:
                async for _ in p.watch(timeout=2.0):
                    counts[n] += 1

            async def change() -> None:
                for _ in range(3):
                    await asyncio.sleep(0.3)
                    await p.pause(made.seeding_id)
                    await asyncio.sleep(0.3)
                    await p.resume(made.seeding_id)

            await asyncio.gather(change(), *(watch(n) for n in range(4)))
            assert min(counts) >= 4, counts

    asyncio.run(asyncio.wait_for(main(), 180))


def test_status_says_a_long_save_folder_whole(broker: Broker) -> None:
    folder = broker.root
    for n in range(4):
        folder = folder / (f"{n}" * 150)
    folder.mkdir(parents=True)
    (broker.root / "long.bin").write_bytes(b"l" * 1000)
    with tp.Patron(broker.state) as p:
        made = p.make(broker.root / "long.bin")
        added = p.add(made.torrent, output=folder, paused=True)
        assert p.status(added.id).save_folder == str(folder)
        assert [s.save_folder for s in p.list()] == [str(folder)]


def test_the_event_loop_runs_and_calls_are_answered_while_a_magnet_waits(
    broker: Broker, stuck_magnet: Callable[[], str]
) -> None:
    """600 calls beside a magnet's add that waits for metadata: the loop keeps running
    (each async send used to block it on the broker's back-pressure), and the calls are
    answered (they used to wait behind the magnet, which has a connection of its own now)."""
    import asyncio

    (broker.root / "q.bin").write_bytes(b"q" * 1000)

    async def main() -> None:
        async with tp.AsyncPatron(broker.state) as p:
            made = await p.make(broker.root / "q.bin", seed=True)
            assert made.seeding_id is not None
            magnet = stuck_magnet()
            slow = asyncio.ensure_future(p.add(magnet, output=broker.root))
            while not any(s.info_hash == magnet[20:60] for s in await p.list()):
                await asyncio.sleep(0.02)
            calls = [asyncio.ensure_future(p.files(made.seeding_id)) for _ in range(600)]
            longest = 0.0
            loop = asyncio.get_running_loop()
            for _ in range(40):
                before = loop.time()
                await asyncio.sleep(0.05)
                longest = max(longest, loop.time() - before)
            assert longest < 2, f"the loop stalled {longest:.1f} s"
            answered = await asyncio.wait_for(asyncio.gather(*calls), 30)
            assert all(files[0].path == "q.bin" for files in answered)
            assert not slow.done()
            for call in [slow, *calls]:
                call.cancel()
            await asyncio.gather(slow, *calls, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_close_with_a_request_in_flight_disconnects_at_once(
    broker: Broker, stuck_magnet: Callable[[], str]
) -> None:
    with tp.Patron(broker.state) as watcher:
        before = watcher.broker_info()["patrons"]
        p = tp.Patron(broker.state)
        magnet = stuck_magnet()
        failed: list[str] = []

        def add() -> None:
            try:
                p.add(magnet, output=broker.root, ephemeral=True)
            except tp.TorrentPatronError as e:
                failed.append(type(e).__name__)

        adding = threading.Thread(target=add)
        adding.start()
        resolving(watcher, magnet)
        p.close()
        adding.join(5)
        assert failed == ["PatronClosed"], failed
        deadline = time.monotonic() + 5
        while watcher.broker_info()["patrons"] != before:
            assert time.monotonic() < deadline, "the closed patron stayed connected"
            time.sleep(0.05)


def test_ctrl_c_interrupts_a_connection_that_hangs(broker: Broker) -> None:
    """A broker that does not answer (stopped): Patron() and open() wait up to the
    handshake's timeout, and Ctrl-C ends the wait at once."""
    import signal

    os.kill(broker.pid, signal.SIGSTOP)
    try:
        waiter = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import time, torrent_patron as tp
                print("connecting", flush=True)
                try:
                    tp.Patron({str(broker.state)!r})
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
            """)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert waiter.stdout is not None
            assert waiter.stdout.readline().strip() == "connecting"
            time.sleep(1)
            sent = time.monotonic()
            waiter.send_signal(signal.SIGINT)
            assert waiter.stdout.readline().strip() == "interrupted"
            assert time.monotonic() - sent < 3
            assert waiter.wait(10) == 0
        finally:
            if waiter.poll() is None:
                waiter.kill()
    finally:
        os.kill(broker.pid, signal.SIGCONT)


def test_sources_files_and_the_end_of_events_as_a_reader_expects(broker: Broker) -> None:
    import io
    import signal

    (broker.root / "s.bin").write_bytes(b"s" * 3000)
    p = tp.Patron(broker.state)
    made = p.make(broker.root / "s.bin", seed=True)
    assert made.seeding_id is not None
    with pytest.raises(tp.BadRequest, match="fetches nothing from the web"):
        p.add("https://example.invalid/x.torrent")
    # A bytearray or memoryview is a .torrent's bytes too (here it joins the running one).
    assert p.add(bytearray(made.torrent), output=broker.root).joined
    assert p.add(memoryview(made.torrent), output=broker.root).joined
    p.wait(made.seeding_id, timeout=60)
    with p.open(made.seeding_id) as f:
        assert f.mode == "rb" and not f.writable()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    # A broker killed without a word: events() raises rather than ending as if it stopped.
    os.kill(broker.pid, signal.SIGKILL)
    with pytest.raises(tp.BrokerStopped):
        for _ in p.events(timeout=30):
            pass


def test_a_slow_magnet_or_make_holds_up_none_of_the_patrons_other_requests(
    broker: Broker, second_broker: Broker, stuck_magnet: Callable[[], str]
) -> None:
    """The broker answers one patron's requests in order, so a magnet waiting for its
    metadata held every other thread's request on the same Patron for up to two minutes.
    Slow requests go on a connection of their own; the patron still holds what they add
    (an ephemeral magnet goes when the patron does)."""
    data = os.urandom(200_000)
    (second_broker.root / "m.bin").write_bytes(data)
    with tp.Patron(second_broker.state) as seeder, tp.Patron(broker.state) as watcher:
        made = seeder.make(second_broker.root / "m.bin", seed=True)
        assert made.seeding_id is not None
        seeder.wait(made.seeding_id, timeout=60)
        p = tp.Patron(broker.state)
        stuck = stuck_magnet()
        outcome: list[str] = []

        def add_stuck() -> None:
            try:
                p.add(stuck, output=broker.root)
            except tp.TorrentPatronError as e:
                outcome.append(type(e).__name__)

        adding = threading.Thread(target=add_stuck)
        adding.start()
        resolving(watcher, stuck)
        started = time.monotonic()
        p.broker_info()
        assert time.monotonic() - started < 5, "a request waited behind the magnet"
        # A magnet that resolves, added ephemeral: this patron holds it afterwards.
        magnet = (f"magnet:?xt=urn:btih:{made.info_hash}"
                  f"&x.pe={seeder.broker_info()['listen']}")
        added = p.add(magnet, output=broker.root, ephemeral=True)
        assert not added.joined
        assert p.wait(added.id, timeout=60).complete
        assert (broker.root / "m.bin").read_bytes() == data
        assert p.close(added.id, delete_data=True).stopped, "the patron did not hold what it added"
        again = p.add(magnet, output=broker.root, ephemeral=True)
        p.close()  # its holds go with it, the side connection's too
        adding.join(5)
        assert outcome == ["PatronClosed"], outcome
        deadline = time.monotonic() + 10
        while any(s.id == again.id for s in watcher.list()):
            assert time.monotonic() < deadline, "an ephemeral torrent outlived its patron"
            time.sleep(0.05)


def test_timeouts_bound_a_call_to_a_stopped_broker_and_a_stuck_magnet(
    broker: Broker, stuck_magnet: Callable[[], str]
) -> None:
    """A broker that stops answering (SIGSTOP) held every call for ever; a patron's
    `timeout` bounds each wait, and a call's own bounds a magnet's add. The patron goes on
    after either."""
    import asyncio
    import signal

    stuck = stuck_magnet()
    with tp.Patron(broker.state, timeout=1) as p:
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(tp.WaitTimeout, match="broker_info within 1"):
                p.broker_info()
            assert time.monotonic() - started < 5
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        started = time.monotonic()
        with pytest.raises(tp.WaitTimeout):
            p.add(stuck, output=broker.root, timeout=0.5)
        assert time.monotonic() - started < 5
        assert p.broker_info()["pid"] == broker.pid
        with pytest.raises(ValueError):
            tp.Patron(broker.state, timeout=-1)

    async def main() -> None:
        async with tp.AsyncPatron(broker.state, timeout=30) as p:
            started = asyncio.get_running_loop().time()
            with pytest.raises(tp.WaitTimeout):
                await p.add(stuck, output=broker.root, timeout=0.5)
            assert asyncio.get_running_loop().time() - started < 5
            assert (await p.broker_info())["pid"] == broker.pid

    asyncio.run(asyncio.wait_for(main(), 60))


def test_thousands_of_async_waits_take_one_of_the_brokers_waiters(broker: Broker) -> None:
    """Each async wait or watch took a board mapping and one of the broker's 1,024 eventfd
    waiters of its own: one program's 2,000 waits took them all from every other patron.
    Now an AsyncPatron has one for all its waits, and every one of them still wakes."""
    import asyncio

    torrent = never_completes(broker)

    async def main() -> None:
        async with tp.AsyncPatron(broker.state) as p:
            before = (await p.broker_info())["board_waiters"]
            waits = [asyncio.ensure_future(p.wait(torrent, timeout=60)) for _ in range(1500)]
            seen = [0] * 500

            async def watch(i: int) -> None:
                async for _ in p.watch():
                    seen[i] += 1

            watches = [asyncio.ensure_future(watch(i)) for i in range(500)]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while min(seen) < 1:
                assert loop.time() < deadline, "a watch never gave its first list"
                await asyncio.sleep(0.05)
            assert (await p.broker_info())["board_waiters"] <= before + 1
            await p.resume(torrent)  # a change on the board
            while min(seen) < 2:
                assert loop.time() < deadline, f"{seen.count(1)} watches slept through a change"
                await asyncio.sleep(0.05)
            assert not any(w.done() for w in waits)
            for task in [*waits, *watches]:
                task.cancel()
            await asyncio.gather(*waits, *watches, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_exit_closes_what_was_left_open_and_forks_do_not_hang(broker: Broker) -> None:
    """The package's atexit hook parked every thread that came back from native code, the
    finalizing one too: a script that left a file open (or closed a patron in an atexit
    hook registered before the import) hung for ever at its end. A forked child hung in
    closing a file a parent's thread was reading, and waited a second at its exit for the
    parent's waiting threads."""
    torrent = never_completes(broker, "exit.bin")
    (broker.root / "open.bin").write_bytes(os.urandom(50_000))
    with tp.Patron(broker.state) as p:
        made = p.make(broker.root / "open.bin", seed=True)
        assert made.seeding_id is not None
        p.wait(made.seeding_id, timeout=60)
    for script in [
        # A file left open, read to its end, and a patron left open too.
        f"""
        import os, torrent_patron as tp
        p = tp.Patron(os.environ["STATE"])
        f = p.open({made.seeding_id})
        assert len(f.read()) == 50_000
        files = [p.open({made.seeding_id})]
        print("ok")
        """,
        # An atexit hook of the program's that runs after the package's.
        f"""
        import atexit, os
        atexit.register(lambda: (p.status({made.seeding_id}), p.close(), print("ok")))
        import torrent_patron as tp
        p = tp.Patron(os.environ["STATE"])
        """,
    ]:
        done = python(broker, script, timeout=30)
        assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]
    done = python(broker, f"""
        import os, threading, time, torrent_patron as tp
        p = tp.Patron(os.environ["STATE"])
        f = p.open({torrent})
        threading.Thread(target=f.read, args=(100,), daemon=True).start()
        threading.Thread(target=p.wait, args=({torrent},), daemon=True).start()
        time.sleep(0.5)  # both threads are in their waits (nothing they wait for comes)
        slowest = 0.0
        for _ in range(5):
            started = time.monotonic()
            child = os.fork()
            if child == 0:
                f.close()
                assert f.closed
                raise SystemExit(0)  # a normal exit: atexit hooks run
            os.waitpid(child, 0)
            slowest = max(slowest, time.monotonic() - started)
        print(f"{{slowest:.2f}}")
    """, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 0.5, f"a forked child took {done.stdout.strip()} s to exit"


def test_a_patrons_timeout_bounds_handshakes_board_requests_and_turns(
    broker: Broker, stuck_magnet: Callable[[], str]
) -> None:
    """`timeout=` bounded only the wait for a reply: with the broker stopped (SIGSTOP) a new
    Patron, a stream, a side connection or a first board mapping each waited the 30 s
    handshake, and a ninth slow request waited for a turn for ever. An AsyncPatron's first
    wait mapped its board on the loop, freezing it for those 30 s."""
    import asyncio
    import signal

    torrent = never_completes(broker, "bounded.bin")
    (broker.root / "small.bin").write_bytes(b"s" * 1000)

    def bounded(call: Any, limit: float = 5) -> None:
        started = time.monotonic()
        with pytest.raises(tp.WaitTimeout):
            call()
        assert time.monotonic() - started < limit, call

    with tp.Patron(broker.state, timeout=1) as p:
        magnets = [stuck_magnet() for _ in range(8)]

        def add(magnet: str) -> None:
            try:
                p.add(magnet, output=broker.root, timeout=60)
            except tp.PatronClosed:
                pass  # at the end of the `with`

        for magnet in magnets:
            threading.Thread(target=add, args=(magnet,), daemon=True).start()
        for magnet in magnets:
            resolving(p, magnet)
        bounded(lambda: p.add(stuck_magnet(), output=broker.root, timeout=1))
        bounded(lambda: p.make(broker.root / "small.bin", timeout=1))
    fresh = tp.Patron(broker.state, timeout=1)  # its board not mapped yet

    async def main() -> float:
        async with tp.AsyncPatron(broker.state, timeout=1) as ap:
            os.kill(broker.pid, signal.SIGSTOP)
            longest, ticking = 0.0, True

            async def tick() -> None:
                nonlocal longest
                loop = asyncio.get_running_loop()
                while ticking:
                    before = loop.time()
                    await asyncio.sleep(0.05)
                    longest = max(longest, loop.time() - before)

            ticker = asyncio.ensure_future(tick())
            with pytest.raises(tp.WaitTimeout):
                await asyncio.wait_for(ap.wait(torrent, timeout=2), 10)
            ticking = False
            await ticker
            return longest

    try:
        longest = asyncio.run(main())
        assert longest < 1, f"the loop stalled {longest:.1f} s"
        bounded(lambda: tp.Patron(broker.state, timeout=1))
        bounded(lambda: fresh.wait(torrent, timeout=2))
        bounded(lambda: fresh.open(torrent))
        bounded(lambda: fresh.add(stuck_magnet(), output=broker.root))
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    fresh.close()


def test_an_exit_with_async_replies_in_flight_is_clean(broker: Broker) -> None:
    """A reply completing a future from the connection's reader thread while the
    interpreter finalized took the GIL there, and CPython's unwinding of that thread
    aborted the process (SIGABRT, most runs)."""
    for _ in range(8):
        done = python(broker, """
            import asyncio, os, torrent_patron as tp
            async def main():
                ap = tp.AsyncPatron(os.environ["STATE"])
                await ap.connect()
                for _ in range(3000):
                    asyncio.ensure_future(ap.broker_info())
                await asyncio.sleep(0.005)
            asyncio.run(main())
            print("ok")
        """, timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, "ok"), (done.returncode, done.stderr[-1500:])


def test_second_review_closing_loops_timeouts_and_abandoned_adds(
    broker: Broker, second_broker: Broker, stuck_magnet: Callable[[], str]
) -> None:
    """From the second attack round: an AsyncPatron's close left its waits, watches and
    reads pending (and a broker waiter held); a call's own timeout did not bound its side
    connection or first board mapping; a second event loop met the first one's semaphore;
    a magnet add given up on left a torrent nobody held."""
    import asyncio
    import signal

    torrent = never_completes(broker, "second.bin")

    with tp.Patron(broker.state) as watcher:
        before = watcher.broker_info()["board_waiters"]

        async def close_ends_everything() -> None:
            ap = await tp.AsyncPatron(broker.state).connect()

            async def watching() -> None:
                async for _ in ap.watch():
                    pass

            async def reading() -> None:
                await (await ap.open(torrent)).read(10)

            tasks = [asyncio.ensure_future(c) for c in (ap.wait(torrent), watching(), reading())]
            # In their waits: the board watched through an eventfd, the stream open.
            while True:
                info = await ap.broker_info()
                if info["board_waiters"] > before and info["streams"] >= 1:
                    break
                await asyncio.sleep(0.02)
            await ap.close()
            done, pending = await asyncio.wait(tasks, timeout=5)
            assert not pending, "a wait outlived close()"
            assert all(isinstance(t.exception(), tp.PatronClosed) for t in done), [t.exception() for t in done]

        asyncio.run(asyncio.wait_for(close_ends_everything(), 30))
        deadline = time.monotonic() + 5
        while watcher.broker_info()["board_waiters"] > before:
            assert time.monotonic() < deadline, "a closed AsyncPatron kept its broker waiter"
            time.sleep(0.05)

        # Two loops, one after the other, each contending for the slow turns.
        ap = tp.AsyncPatron(broker.state)

        async def burst() -> None:
            await ap.connect()
            outcomes = await asyncio.gather(
                *[ap.add(stuck_magnet(), output=broker.root, timeout=0.5) for _ in range(10)],
                return_exceptions=True)
            assert all(isinstance(o, tp.WaitTimeout) for o in outcomes), outcomes

        asyncio.run(burst())
        asyncio.run(burst())

    # A call's own timeout bounds its side connection and its first board mapping.
    (broker.root / "small.bin").write_bytes(b"s" * 1000)
    fresh = tp.Patron(broker.state)
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        for call in (lambda: fresh.add(stuck_magnet(), output=broker.root, timeout=1),
                     lambda: fresh.make(broker.root / "small.bin", timeout=1),
                     lambda: fresh.wait(torrent, timeout=1)):
            started = time.monotonic()
            with pytest.raises(tp.WaitTimeout):
                call()
            assert time.monotonic() - started < 5
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    fresh.close()

    # Adds given up on at any moment leave no torrent that nobody holds.
    data = os.urandom(100_000)
    (second_broker.root / "given-up.bin").write_bytes(data)
    with tp.Patron(second_broker.state) as seeder, tp.Patron(broker.state) as p:
        made = seeder.make(second_broker.root / "given-up.bin", seed=True)
        assert made.seeding_id is not None
        magnet = f"magnet:?xt=urn:btih:{made.info_hash}&x.pe={seeder.broker_info()['listen']}"
        for attempt in range(12):
            out = broker.root / f"given-up-{attempt}"
            out.mkdir()
            try:
                p.add(magnet, output=out, timeout=0.01 * attempt)
            except tp.WaitTimeout:
                pass
            deadline = time.monotonic() + 10
            while True:  # the add ends in the broker, or was never made
                shown = [s for s in p.list() if s.info_hash == made.info_hash]
                if not shown or shown[0].state != "resolving-metadata":
                    break
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.2)  # a follow after the add's reply
            for status in [s for s in p.list() if s.info_hash == made.info_hash]:
                assert status.holders >= 1, f"attempt {attempt}: {status} is held by nobody"
                p.close(status.id, force=True)
