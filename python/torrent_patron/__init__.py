"""Use the machine's one BitTorrent engine from Python.

Only one BitTorrent client may own a machine's ports, state and files, so torrent-patron
runs one ``torrent-broker`` per state directory and lets any number of programs share it.
This package is one more patron, in your process: requests go over the broker's channel,
and status is read off the broker's board in shared memory, with no request and no
polling. ``Patron`` is for threads (any number may share one), ``AsyncPatron`` for
asyncio.

>>> from torrent_patron import Patron
>>> with Patron() as p:                                    # doctest: +SKIP
...     added = p.add("debian.iso.torrent", output="/srv/downloads")
...     p.wait(added.id)                                   # asleep, GIL released
...     with p.open(added.id) as f:                        # a file object
...         head = f.read(1 << 20)

A torrent is named by its id (``int``) or info hash (``str``) wherever a ``ref`` is taken.
The errors of the broker and of the connection are ``TorrentPatronError``s, one class per
kind of the protocol, each also the builtin that fits (``UnknownTorrent`` is a
``LookupError``, ``NotAllowed`` a ``PermissionError``, ``BrokerStopped`` a
``ConnectionError``, ``WaitTimeout`` a ``TimeoutError``...); bad arguments are
``TypeError`` or ``ValueError``, local files' failures ``OSError``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import errno
import io
import os
import threading
import time
import weakref
from typing import (
    overload,
    Any,
    Callable,
    AsyncIterator,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Sequence,
    Union,
)

from . import _native
from ._native import (
    Added,
    BadRequest,
    BrokerIoError,
    BrokerRefused,
    BrokerStopped,
    BrokerStopping,
    BrokerUnreachable,
    Closed,
    EngineError,
    File,
    FileExists,
    FileOwned,
    InvalidMagnet,
    InvalidPeer,
    InvalidTorrent,
    LimitReached,
    Made,
    MetadataTimeout,
    NoSpace,
    NotAllowed,
    NotHolder,
    PatronClosed,
    PatronForked,
    Peer,
    ProtocolError,
    ShuttingDown,
    Status,
    StatusChanged,
    StreamEnded,
    TorrentFailed,
    TorrentGone,
    TorrentPatronError,
    UnknownTorrent,
    WaitTimeout,
)

__all__ = [
    "Patron",
    "AsyncPatron",
    "TorrentFile",
    "AsyncTorrentFile",
    "Added",
    "Closed",
    "File",
    "Made",
    "Peer",
    "Status",
    "StatusChanged",
    "TorrentGone",
    "BrokerStopping",
    "Event",
    "Ref",
    "QueueMove",
    "SeedAction",
    "TorrentPatronError",
    "BadRequest",
    "BrokerIoError",
    "BrokerRefused",
    "BrokerStopped",
    "BrokerUnreachable",
    "EngineError",
    "FileExists",
    "FileOwned",
    "InvalidMagnet",
    "InvalidPeer",
    "InvalidTorrent",
    "LimitReached",
    "MetadataTimeout",
    "NoSpace",
    "NotAllowed",
    "NotHolder",
    "PatronClosed",
    "PatronForked",
    "ProtocolError",
    "ShuttingDown",
    "StreamEnded",
    "TorrentFailed",
    "UnknownTorrent",
    "WaitTimeout",
]

#: A torrent: its id, or its info hash (40 hex digits).
Ref = Union[int, str]
#: What ``events()`` yields.
Event = Union[StatusChanged, TorrentGone, BrokerStopping]
#: A file of a torrent: its index, or its path inside the torrent.
FileRef = Union[int, str]
#: A .torrent: its path, its bytes, or a magnet link.
Source = Union[str, bytes, bytearray, memoryview, "os.PathLike[str]"]

_NO_REF: Any = object()
_DEFAULT: Any = object()
#: A queue setting left as it is (``None`` lifts a limit).
_KEEP: Any = object()
#: What ``Patron.move_in_queue`` takes.
QueueMove = Literal["top", "up", "down", "bottom"]
#: What the broker does to a torrent past a seeding limit.
SeedAction = Literal["pause", "close"]

#: Slow requests (a magnet's add, a make) one patron runs at once, each on a connection of
#: its own; more wait for a turn.
_SLOW_AT_ONCE = 8

# At exit, a thread coming back from a wait in native code never takes the GIL again
# (CPython would unwind a daemon thread through it, aborting the process).
atexit.register(_native._exiting)
os.register_at_fork(after_in_child=_native._forked)


def _whole(value: Optional[Any]) -> Any:
    """A board read that asked the broker where the board cut a text: never ``None``."""
    if value is None:
        raise _error(ProtocolError, "protocol", "a board read asked of the broker gave nothing")
    return value


def _seconds(timeout: float) -> float:
    """A timeout as the native waits take it: a number of seconds, 0 or more."""
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and 0 <= timeout < float("inf")):
        raise ValueError(f"timeout must be a number of seconds, 0 or more, not {timeout!r}")
    return float(timeout)


def _timeout(timeout: Optional[float]) -> Optional[float]:
    """A request's timeout: ``None`` (wait for the broker's answer) or seconds."""
    return None if timeout is None else _seconds(timeout)


def _or_default(timeout: Optional[float]) -> Any:
    """A call's own timeout, or the patron's when ``None``."""
    return _DEFAULT if timeout is None else timeout


def _strings(name: str, values: Iterable[str]) -> List[str]:
    """A list of strings from an iterable of them; a lone string is refused (it would be
    taken a character at a time)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} takes a list of strings, not one string: [{values!r}]")
    return [str(v) for v in values]


def _file_refs(name: str, values: Iterable[FileRef]) -> List[FileRef]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} takes a list of file indices or paths, not one string: [{values!r}]")
    return list(values)


def _error(cls: Any, kind: str, message: str) -> TorrentPatronError:
    """An error of this package's own, with its ``kind`` and ``message`` as the native
    errors carry them."""
    error: TorrentPatronError = cls(message)
    error.kind = kind
    error.message = message
    return error


def _resolve(future: "asyncio.Future[Any]", value: Any) -> None:
    """Completes a future from the connection's reader thread (on the future's loop)."""
    if not future.done():
        future.set_result(value)


def _source(source: Source) -> Union[str, bytes]:
    """A .torrent's bytes or a magnet link, from what ``add`` was given."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith("magnet:"):
        return text
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise _error(
            BadRequest, "bad-request",
            f"{text}: the broker fetches nothing from the web; download the .torrent first and add its path or bytes",
        )
    with open(text, "rb") as torrent:
        return torrent.read()


def _add_args(
    source: Source,
    output: Optional[Union[str, "os.PathLike[str]"]],
    peers: Iterable[str],
    paused: bool,
    only: Optional[Iterable[FileRef]],
    max_download_rate: Optional[int],
    max_upload_rate: Optional[int],
    ephemeral: bool,
    overwrite: bool,
    move_completed_to: Optional[Union[str, "os.PathLike[str]"]] = None,
    labels: Iterable[str] = (),
) -> Dict[str, Any]:
    return {
        "source": _source(source),
        # Relative to this process's folder, as a shell user means it (the broker's is
        # another).
        "output": os.path.abspath(os.fspath(output)) if output is not None else None,
        "peers": _strings("peers", peers),
        "paused": paused,
        "only": _file_refs("only", only) if only is not None else None,
        "max_download_rate": max_download_rate,
        "max_upload_rate": max_upload_rate,
        "ephemeral": ephemeral,
        "overwrite": overwrite,
        "move_completed_to": _folder(move_completed_to),
        "labels": _strings("labels", labels),
    }


def _folder(folder: Optional[Union[str, "os.PathLike[str]"]]) -> Optional[str]:
    # Relative to this process's folder, as a shell user means it (the broker's is another).
    return os.path.abspath(os.fspath(folder)) if folder is not None else None


def _slow(method: str, args: Dict[str, Any]) -> bool:
    """Whether a request may take long: a magnet's add waits for its metadata, a make
    hashes a folder. The broker answers one patron's requests in order, so such a request
    goes on a connection of its own (``Connection.aside``), not to hold up the others."""
    return method in ("make", "move") or (method == "add" and isinstance(args["source"], str))


def _turn_timeout(method: str, timeout: Optional[float]) -> TorrentPatronError:
    return _error(
        WaitTimeout, "timeout",
        f"{method} waited {_shown(timeout)} s for a turn: {_SLOW_AT_ONCE} slow requests of this patron run already",
    )


def _given_up(method: str, timeout: Optional[float]) -> TorrentPatronError:
    return _error(
        WaitTimeout, "timeout",
        f"the broker did not answer {method} within {_shown(timeout)} s; the request goes on, "
        "and a torrent it adds is held by this patron (list() shows it)",
    )


def _shown(seconds: Optional[float]) -> str:
    """Seconds as a person writes them (``0.5``, ``2``), as the native errors do."""
    return f"{seconds or 0:.2f}".rstrip("0").rstrip(".")


def _left(deadline: Optional[float], now: Optional[float] = None) -> Optional[float]:
    """Seconds left until ``deadline`` (``time.monotonic``'s, or ``now``'s clock)."""
    if deadline is None:
        return None
    return max(0.0, deadline - (time.monotonic() if now is None else now))


def _held(value: Any) -> Optional[int]:
    """The torrent a slow request's side connection holds, for the patron to follow
    before that connection closes (an ephemeral torrent would close with it)."""
    if isinstance(value, Added):
        return value.id
    if isinstance(value, Made):
        return value.seeding_id
    return None


def _check_output(
    output: Optional[Union[str, "os.PathLike[str]"]], source: Union[str, "os.PathLike[str]"]
) -> Optional[str]:
    """Where a made .torrent goes (a folder given: ``<folder>/<name>.torrent``, as
    transmission-create names it), refused before anything is made if a file is there or
    its folder is not."""
    if output is None:
        return None
    path = os.fspath(output)
    if os.path.isdir(path):
        name = os.path.basename(os.path.normpath(os.path.abspath(os.fspath(source))))
        path = os.path.join(path, f"{name}.torrent")
    if os.path.lexists(path):
        raise _error(FileExists, "file-exists", f"{path} exists: a made .torrent never overwrites a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"{folder} is not a folder: the .torrent cannot be written there", path)
    return path


def _write_torrent(made: Made, output: Optional[Union[str, "os.PathLike[str]"]]) -> None:
    """Writes a made .torrent where asked; never over an existing file."""
    if output is not None:
        with open(os.fspath(output), "xb") as out:
            out.write(made.torrent)


class Patron:
    """A connection to the broker of ``state_dir`` (the default one when ``None``: the
    ``TORRENT_PATRON_STATE`` environment variable, else ``~/.local/state/torrent-patron``),
    starting a broker if none runs and ``autostart``.

    Any number of threads may share one ``Patron``: each request waits for its own reply,
    asleep with the GIL released, and Ctrl-C interrupts any wait. Closing it (or leaving its
    ``with`` block, or the process ending in any way) makes the broker release what it held:
    its ephemeral torrents close, the others keep running. A forked child cannot use its
    parent's ``Patron`` (``PatronForked``): it makes its own.

    ``timeout`` (seconds) bounds the wait for each request's answer (``WaitTimeout``); by
    default a request waits for the broker, which answers at once but for a magnet's add
    and a make. Those two run on connections of their own, so they hold up nothing else.
    """

    def __init__(
        self,
        state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        autostart: bool = True,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        folder = os.fspath(state_dir) if state_dir is not None else None
        self._timeout = _timeout(timeout)
        self._conn = _native.Connection(folder, autostart, _resolve, self._timeout)
        self._slow_turns = threading.BoundedSemaphore(_SLOW_AT_ONCE)

    def __enter__(self) -> "Patron":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn.closed else f"broker pid {self._conn.broker_pid}"
        return f"<Patron {self._conn.patron_id} ({state})>"

    @property
    def broker_pid(self) -> int:
        """The broker's process id."""
        return self._conn.broker_pid

    @property
    def closed(self) -> bool:
        """Whether this patron is closed (or its broker went)."""
        return self._conn.closed

    def _call(self, method: str, timeout: Any = _DEFAULT, **args: Any) -> Any:
        timeout = self._timeout if timeout is _DEFAULT else _timeout(timeout)
        if not _slow(method, args):
            return self._conn.call(method, args, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._slow_turns.acquire(timeout=-1 if timeout is None else timeout):
            raise _turn_timeout(method, timeout)
        done: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        try:
            threading.Thread(
                target=self._slow_request, args=(method, args, deadline, done),
                name="torrent-patron-slow", daemon=True,
            ).start()
        except BaseException:
            self._slow_turns.release()
            raise
        # Not `result(timeout)`: its TimeoutError would not tell a timeout from a
        # MetadataTimeout (a TimeoutError too) the request raised.
        if done not in concurrent.futures.wait([done], timeout=_left(deadline)).done:
            raise _given_up(method, timeout)
        return done.result()

    def _slow_request(
        self, method: str, args: Dict[str, Any], deadline: Optional[float],
        done: "concurrent.futures.Future[Any]",
    ) -> None:
        """A slow request on a connection of its own, to its end even when its caller gave
        up (a timeout, Ctrl-C): what it adds is then held by this patron all the same (a
        torrent of nobody's would be left behind), and the connection closes."""
        try:
            side = self._conn.aside(_left(deadline))
            try:
                value = side.call(method, args)
                held = _held(value)
                if held is not None:
                    self._conn.call("follow", {"ref": held}, self._timeout)
            finally:
                side.close()
        except BaseException as failure:
            done.set_exception(failure)
        else:
            done.set_result(value)
        finally:
            self._slow_turns.release()

    # -- torrents ------------------------------------------------------------------------

    def add(
        self,
        source: Source,
        *,
        output: Optional[Union[str, "os.PathLike[str]"]] = None,
        peers: Iterable[str] = (),
        paused: bool = False,
        only: Optional[Iterable[FileRef]] = None,
        max_download_rate: Optional[int] = None,
        max_upload_rate: Optional[int] = None,
        ephemeral: bool = False,
        overwrite: bool = False,
        move_completed_to: Optional[Union[str, "os.PathLike[str]"]] = None,
        labels: Iterable[str] = (),
        timeout: Optional[float] = None,
    ) -> Added:
        """Adds a torrent, or joins it when it runs already (``Added.joined``).

        ``source`` is a .torrent's path or bytes, or a magnet link. ``output`` is the
        folder its files go in (the broker's first download root when ``None``); ``peers``
        are ``HOST:PORT`` to dial; ``only`` chooses files by index or path; rates are bytes
        a second. An ``ephemeral`` torrent closes when its last holder goes. Its data moves
        to ``move_completed_to`` once it completes (else to the broker's
        ``--move-completed-to``, if any). ``labels`` name it: a label's folder is where it
        goes when ``output`` is ``None``, and a label's limits apply where it has none of
        its own (see ``labels``).

        A magnet waits for its metadata (up to the broker's ``--magnet-timeout``) on a
        connection of its own, so this patron's other requests go on meanwhile; ``timeout``
        (seconds; the patron's when ``None``) gives up sooner with ``WaitTimeout``; the
        request still ends in the broker, and a torrent it adds is then held by this patron
        (``list()`` shows it; ``close`` it if it is not wanted).
        """
        args = _add_args(
            source, output, peers, paused, only, max_download_rate, max_upload_rate,
            ephemeral, overwrite, move_completed_to, labels,
        )
        added: Added = self._call("add", _or_default(timeout), **args)
        return added

    def list(self) -> List[Status]:
        """Every torrent the broker runs, in id order, read off the board (no request)."""
        listed: List[Status] = _whole(self._conn.list())
        return listed

    def status(self, ref: Ref) -> Status:
        """One torrent's status, read off the board (no request)."""
        status: Status = _whole(self._conn.status(ref))
        return status

    def pause(self, ref: Ref) -> Status:
        """Pauses a torrent (for every patron, across broker restarts too)."""
        status: Status = self._call("pause", ref=ref)
        return status

    def resume(self, ref: Ref) -> Status:
        """Resumes a paused torrent."""
        status: Status = self._call("resume", ref=ref)
        return status

    def recheck(self, ref: Ref) -> Status:
        """Verifies a torrent's data on disk again, piece by piece."""
        status: Status = self._call("recheck", ref=ref)
        return status

    def move(
        self,
        ref: Ref,
        to: Union[str, "os.PathLike[str]"],
        *,
        timeout: Optional[float] = None,
    ) -> Status:
        """Moves a torrent's data into folder ``to`` (inside the broker's download roots)
        and runs it from there: renamed on one file system; across two copied, synced and
        verified by hash before the old files go. Returns its status once it runs from the
        new place; on an error (``NoSpace``, ``FileExists``, ``NotAllowed``...) it runs
        from the old one, its data whole there. It goes on a connection of its own;
        ``timeout`` as ``add``'s (the move still ends in the broker)."""
        status: Status = self._call("move", _or_default(timeout), ref=ref, to=_folder(to))
        return status

    @overload
    def close(self) -> None: ...

    @overload
    def close(self, ref: Ref, *, delete_data: bool = False, force: bool = False) -> Closed: ...

    def close(self, ref: Ref = _NO_REF, *, delete_data: bool = False, force: bool = False) -> Any:
        """``close()`` closes this patron; ``close(ref)`` releases this patron's hold on a
        torrent, which stops when no other patron holds it (or with ``force``), and returns
        ``Closed``. ``delete_data`` deletes the files it downloaded (never files that were
        there before it)."""
        if ref is _NO_REF:
            self._conn.close()
            return None
        if ref is None:
            raise TypeError("close(None): name a torrent, or call close() to close the patron")
        closed: Closed = self._call("close", ref=ref, delete_data=delete_data, force=force)
        return closed

    def follow(self, ref: Ref) -> None:
        """Holds a running torrent without adding it: its status changes come in ``events()``."""
        self._call("follow", ref=ref)

    def files(self, ref: Ref) -> List[File]:
        """A torrent's files, by index."""
        files: List[File] = self._call("files", ref=ref)
        return files

    def select_files(self, ref: Ref, only: Iterable[FileRef]) -> List[File]:
        """Chooses which files to download (by index or path); returns them all."""
        files: List[File] = self._call("select_files", ref=ref, only=_file_refs("only", only))
        return files

    def peers(self, ref: Ref) -> List[Peer]:
        """A torrent's connected peers."""
        peers: List[Peer] = self._call("peers", ref=ref)
        return peers

    def add_peers(self, ref: Ref, peers: Iterable[str]) -> List[str]:
        """Dials peers (``HOST:PORT``) for a torrent; returns those dialled."""
        dialled: List[str] = self._call("add_peers", ref=ref, peers=_strings("peers", peers))
        return dialled

    def make(
        self,
        path: Union[str, "os.PathLike[str]"],
        output: Optional[Union[str, "os.PathLike[str]"]] = None,
        seed: bool = False,
        *,
        piece_size: Optional[int] = None,
        trackers: Sequence[str] = (),
        timeout: Optional[float] = None,
    ) -> Made:
        """Makes a .torrent of a file or folder (``Made.torrent`` holds its bytes), written
        to ``output`` when given (a folder: ``<folder>/<name>.torrent``; never over an
        existing file); ``seed`` seeds it from
        where it is. It runs on a connection of its own, as a magnet's add does, up to
        ``timeout`` seconds (the patron's when ``None``)."""
        written = _check_output(output, path)
        made: Made = self._call(
            "make", _or_default(timeout), path=os.path.abspath(os.fspath(path)), seed=seed,
            piece_size=piece_size, trackers=_strings("trackers", trackers),
        )
        _write_torrent(made, written)
        return made

    def broker_info(self) -> Dict[str, Any]:
        """The broker, as ``patron-client broker status --json`` prints it."""
        info: Dict[str, Any] = self._call("broker_info")
        return info

    def limits(
        self, ref: Optional[Ref] = None, *, download: Optional[int] = None,
        upload: Optional[int] = None, alt_download: Optional[int] = None,
        alt_upload: Optional[int] = None, alt_schedule: Optional[str] = _KEEP,
        alt_on: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """The broker's rate limits for all torrents together, or torrent ``ref``'s own,
        in bytes a second (``max_download_rate``, ``max_upload_rate``; ``None``: no
        limit), after setting those given: ``0`` lifts one. The broker's also come with its
        alternative limits, used instead while on (``alt_download_rate``,
        ``alt_upload_rate``, ``alt_on``), and when they turn on by themselves
        (``alt_schedule``, local time: ``"mon-fri 09:00-18:00"``; ``None``: never). A change
        is kept across the broker's restarts, as ``patron-client limits`` does it."""
        given = _given(alt_schedule=alt_schedule)
        limits: Dict[str, Any] = self._call(
            "limits", ref=ref, download=download, upload=upload, alt_download=alt_download,
            alt_upload=alt_upload, alt_on=alt_on, **given,
        )
        return limits

    def queue(
        self, *, downloads: Optional[int] = _KEEP, seeds: Optional[int] = _KEEP,
        stalled_after: Optional[float] = _KEEP,
    ) -> Dict[str, Optional[int]]:
        """The broker's queue: how many unfinished torrents run at once
        (``max_active_downloads``), how many finished ones seed (``max_active_seeds``), and
        after how many seconds without a byte moved a running one stops counting
        (``stalled_after_secs``); ``None``: no limit, never. The others wait, ``queued``.
        Sets those given first (``None`` lifts one), kept across the broker's restarts, as
        ``patron-client queue`` does it."""
        given = _given(downloads=downloads, seeds=seeds, stalled_after=stalled_after)
        queue: Dict[str, Optional[int]] = self._call("queue", **given)
        return queue

    def seeding(
        self, ref: Optional[Ref] = None, *, ratio: Union[float, None, str] = _KEEP,
        seed_time: Union[float, None, str] = _KEEP, idle: Union[float, None, str] = _KEEP,
        action: Optional[SeedAction] = None,
    ) -> Dict[str, Any]:
        """When torrents stop seeding: the broker's limits and ``action`` (``"pause"`` or
        ``"close"``), or torrent ``ref``'s own, as ``patron-client set`` changes them. A
        limit is a ratio (uploaded over downloaded) or seconds (``seed_time`` seeding in
        all, ``idle`` with nothing uploaded); ``None`` is no limit; for a torrent,
        ``"default"`` gives it the broker's again; left out, unchanged. Returns the limits
        in force (``ratio_limit``, ``seed_time_limit_secs``, ``idle_seed_limit_secs``) and
        ``seed_limit_action``. Kept across the broker's restarts."""
        given = _given(ratio=ratio, seed_time=seed_time, idle=idle)
        limits: Dict[str, Any] = self._call("seeding", ref=ref, action=action, **given)
        return limits

    def label(self, ref: Ref, labels: Iterable[str]) -> Status:
        """Gives a torrent its labels, replacing those it had (an empty list takes them
        all off). Returns its status (``Status.labels``)."""
        status: Status = self._call("label", ref=ref, labels=_strings("labels", labels))
        return status

    def labels(
        self, name: Optional[str] = None, *,
        folder: Union[str, "os.PathLike[str]", None] = _KEEP,
        max_download_rate: Optional[int] = _KEEP, max_upload_rate: Optional[int] = _KEEP,
        ratio: Union[float, None, str] = _KEEP, seed_time: Union[float, None, str] = _KEEP,
        idle: Union[float, None, str] = _KEEP, remove: bool = False,
    ) -> List[Dict[str, Any]]:
        """Every label (those that carry settings, and those torrents carry), as dicts
        (``name``, ``folder``, ``max_download_rate``, ``max_upload_rate``, ``ratio_limit``,
        ``seed_time_limit_secs``, ``idle_seed_limit_secs``, ``torrents``); with ``name``,
        first changes what that label carries for its torrents, as ``patron-client labels``:
        a save folder for adds that name none, rate limits and seeding limits for torrents
        with none of their own. ``None`` lifts a setting (for a seeding limit, ``None`` is
        no limit and ``"default"`` lifts it); left out, unchanged. ``remove`` forgets the
        label's settings. Kept across the broker's restarts."""
        given = _given(
            folder=_folder(folder) if folder is not _KEEP and folder is not None else folder,
            max_download_rate=max_download_rate, max_upload_rate=max_upload_rate,
            ratio=ratio, seed_time=seed_time, idle=idle,
        )
        labels: List[Dict[str, Any]] = self._call("labels", name=name, remove=remove, **given)
        return labels

    def move_in_queue(self, ref: Ref, to: QueueMove) -> Status:
        """Moves a torrent in the broker's queue (``top``, ``up``, ``down`` or ``bottom``):
        queued torrents start in its order. Returns its status after the move (it may have
        started, or be queued, by it)."""
        status: Status = self._call("queue_move", ref=ref, to=to)
        return status

    def stop_broker(self) -> None:
        """Asks the broker to stop gracefully (every patron is disconnected)."""
        self._call("stop_broker")

    # -- waiting -------------------------------------------------------------------------

    def wait(self, ref: Ref, timeout: Optional[float] = None) -> Status:
        """Waits until a torrent is complete and returns its status, asleep on the board
        with the GIL released. Raises ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds,
        ``TorrentFailed`` if it stops with an error, ``UnknownTorrent`` if it is closed."""
        return self._conn.wait(ref, None if timeout is None else _seconds(timeout))

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """The events of the torrents this patron holds (added or followed), in order:
        ``StatusChanged``, ``TorrentGone``, ``BrokerStopping`` (the last). A torrent's
        status changes are coalesced while unread. Ends after ``BrokerStopping``, when this
        patron is closed, or after ``timeout`` seconds with no event (when given); a broker
        that went without a word (killed) raises ``BrokerStopped``.

        A patron has one queue of events: iterators on several threads share them out, each
        event to one of them. Unread events wait there: the latest status of each torrent,
        and each ``TorrentGone``."""
        # Its arguments are checked at the call, not at the first `next`.
        return self._events(None if timeout is None else _seconds(timeout))

    def _events(self, timeout: Optional[float]) -> Iterator[Event]:
        while True:
            try:
                event = self._conn.next_event(timeout)
            except PatronClosed:
                return
            if event is None:
                return
            yield event
            if isinstance(event, BrokerStopping):
                return

    def watch(self, timeout: Optional[float] = None) -> Iterator[List[Status]]:
        """Every torrent's status now, then again at each change of the board (any
        torrent's; changes while the caller is busy are seen as one). Ends after
        ``timeout`` seconds with no change, when given; raises ``BrokerStopped`` when the
        broker stops (where ``events()`` ends with ``BrokerStopping``)."""
        # Its arguments are checked at the call, not at the first `next`.
        return self._watch(None if timeout is None else _seconds(timeout))

    def _watch(self, timeout: Optional[float]) -> Iterator[List[Status]]:
        yield self.list()
        while self._conn.wait_for_change(timeout):
            yield self.list()

    # -- reading -------------------------------------------------------------------------

    def open(self, ref: Ref, file: Optional[FileRef] = None, offset: int = 0) -> "TorrentFile":
        """One file of a torrent (the only one when ``file`` is ``None``) as a binary file
        object, readable while it downloads: a read waits until the bytes at the position
        are verified, and the pieces there are fetched first. Seek to read elsewhere."""
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, not {offset}")
        return TorrentFile(self._conn.open_stream(ref, file, offset))


class TorrentFile(io.RawIOBase):
    """A file of a torrent, read while it downloads (``Patron.open``). Reads wait for
    verified bytes, with the GIL released; ``read`` gives what is verified at the position,
    at most ``size`` bytes (so a loop over ``read`` streams). Usable with
    ``shutil.copyfileobj`` and wherever a binary file object is taken."""

    def __init__(self, stream: "_native.Stream") -> None:
        super().__init__()
        self._stream = stream
        # Verified bytes are read straight into a new bytes object (os.pread, as FileIO
        # reads): one copy from the page cache, none through a zeroed buffer.
        self._fd: Optional[int] = stream.local_fd()

    @property
    def name(self) -> str:
        """The file's path inside the torrent."""
        return self._stream.name

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self._stream.size

    #: Read-only, binary.
    mode = "rb"

    def readable(self) -> bool:
        """Always: it is read."""
        return True

    def seekable(self) -> bool:
        """Always: a seek moves where the pieces are fetched first."""
        return True

    def writable(self) -> bool:
        """Never: a torrent's files are the engine's to write."""
        return False

    def write(self, data: Any) -> int:
        """Refused: ``io.UnsupportedOperation``."""
        raise io.UnsupportedOperation("a torrent's file is read-only")

    def read(self, size: Optional[int] = -1) -> bytes:
        """What is verified at the position, at most ``size`` bytes (all that is left
        when negative), waiting until some is; ``b""`` at the end."""
        self._checkClosed()
        if size == 0:
            return b""
        if size is None or size < 0 or self._fd is None:
            return self._stream.read(-1 if size is None else size)
        data: bytes = self._pread(size, os.pread)
        return data

    def readall(self) -> bytes:
        """Everything from the position to the end, as it is verified."""
        self._checkClosed()
        return self._stream.read(-1)

    def readinto(self, buffer: Any) -> int:
        """Reads into ``buffer`` (what is verified, up to its size); returns how much."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        if self._fd is None or len(view) == 0:
            data = self._stream.read(len(view))
            view[: len(data)] = data
            return len(data)
        return len(self._pread(len(view), lambda fd, n, at: view[: os.preadv(fd, [view[:n]], at)]))

    def _pread(self, size: int, read: Callable[[int, int, int], Any]) -> Any:
        """Waits for verified bytes at the position, then ``read(fd, n, at)`` of at most
        ``size`` of them (straight into Python's buffer: one copy from the page cache),
        and moves the position past what it read."""
        assert self._fd is not None
        ready = self._stream.readable()
        if ready == 0:
            return b""
        at = self._stream.tell()
        data = read(self._fd, min(size, ready), at)
        if not len(data):
            raise OSError(f"{self.name} ends before byte {at}, which the broker verified")
        self._stream.seek(at + len(data))
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves the position; the next read fetches the pieces there first."""
        self._checkClosed()
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        """The position."""
        self._checkClosed()
        return self._stream.tell()

    def close(self) -> None:
        """Ends the stream: its priority window goes (also when the object is collected)."""
        if not self.closed:
            self._stream.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        super().close()

    def __repr__(self) -> str:
        return f"<TorrentFile {self.name!r} size={self.size}>"


class AsyncPatron:
    """``Patron`` for asyncio: the same methods, as coroutines. Replies complete asyncio
    futures from the connection's one reader thread, and waits watch the board's eventfd
    on the loop: no thread per call, and the loop never blocks.

    >>> async def main() -> None:                          # doctest: +SKIP
    ...     async with AsyncPatron() as p:
    ...         added = await p.add(b"...", output="/srv/downloads")
    ...         async for event in p.events():
    ...             print(event)
    """

    def __init__(
        self,
        state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        autostart: bool = True,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        self._timeout = _timeout(timeout)
        self._state_dir = os.fspath(state_dir) if state_dir is not None else None
        self._autostart = autostart
        self._conn_: Optional[_native.Connection] = None
        self._loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = (
            weakref.WeakKeyDictionary()
        )

    async def connect(self) -> "AsyncPatron":
        """Connects (once; ``async with`` does it). A broker may have to be started: that
        one wait runs in the loop's default executor."""
        if self._conn_ is None:
            loop = asyncio.get_running_loop()
            conn = await loop.run_in_executor(
                None, _native.Connection, self._state_dir, self._autostart, _resolve, self._timeout
            )
            # The board is mapped here too (it asks the broker): reads are then a few loads.
            await loop.run_in_executor(None, conn.map_board)
            self._conn_ = conn
        return self

    async def __aenter__(self) -> "AsyncPatron":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _conn(self) -> "_native.Connection":
        if self._conn_ is None:
            raise _error(
                PatronClosed, "closed",
                "not connected: use `async with AsyncPatron()` or `await p.connect()`",
            )
        return self._conn_

    @property
    def broker_pid(self) -> int:
        """The broker's process id."""
        return self._conn.broker_pid

    @property
    def closed(self) -> bool:
        """Whether this patron is closed (or its broker went); ``False`` before it connects."""
        return self._conn_ is not None and self._conn_.closed

    def __repr__(self) -> str:
        if self._conn_ is None:
            return "<AsyncPatron (not connected)>"
        state = "closed" if self._conn_.closed else f"broker pid {self._conn_.broker_pid}"
        return f"<AsyncPatron {self._conn_.patron_id} ({state})>"

    async def _call(self, method: str, timeout: Any = _DEFAULT, **args: Any) -> Any:
        timeout = self._timeout if timeout is _DEFAULT else _timeout(timeout)
        if not _slow(method, args):
            return await self._call_on(self._conn, method, args, timeout)
        loop = asyncio.get_running_loop()
        turns = self._on_loop().slow_turns
        deadline = None if timeout is None else loop.time() + timeout
        if turns.locked():
            try:
                await asyncio.wait_for(turns.acquire(), timeout)
            except asyncio.TimeoutError:
                raise _turn_timeout(method, timeout) from None
        else:
            await turns.acquire()  # at once
        request = loop.create_task(self._slow_request(method, args, deadline, turns))
        # Its failure is read even when nobody awaits it any more.
        request.add_done_callback(lambda task: task.cancelled() or task.exception())
        # A caller cancelled or out of time leaves it to finish (see Patron): `wait` cancels
        # nothing, and tells a timeout from a TimeoutError the request raised.
        finished, _ = await asyncio.wait({request}, timeout=_left(deadline, loop.time()))
        if not finished:
            raise _given_up(method, timeout)
        return request.result()

    async def _slow_request(
        self, method: str, args: Dict[str, Any], deadline: Optional[float],
        turns: asyncio.Semaphore,
    ) -> Any:
        """See ``Patron._slow_request``."""
        loop = asyncio.get_running_loop()
        try:
            # Connecting waits on the broker's handshake: off the loop.
            side = await loop.run_in_executor(None, self._conn.aside, _left(deadline, loop.time()))
            try:
                value = await self._call_on(side, method, args, None)
                held = _held(value)
                if held is not None:
                    await self._call_on(self._conn, "follow", {"ref": held}, self._timeout)
                return value
            finally:
                side.close()
        finally:
            turns.release()

    def _on_loop(self) -> "_LoopState":
        """What this patron keeps per event loop (its turns and board waker bind to it)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        return state

    @staticmethod
    async def _call_on(
        conn: "_native.Connection", method: str, args: Dict[str, Any], timeout: Optional[float]
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Any]" = loop.create_future()
        conn.call_async(method, args, future, loop)
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise _error(
                WaitTimeout, "timeout", f"the broker did not answer {method} within {_shown(timeout)} s"
            ) from None
        return conn.decode(method, reply)

    async def add(
        self,
        source: Source,
        *,
        output: Optional[Union[str, "os.PathLike[str]"]] = None,
        peers: Iterable[str] = (),
        paused: bool = False,
        only: Optional[Iterable[FileRef]] = None,
        max_download_rate: Optional[int] = None,
        max_upload_rate: Optional[int] = None,
        ephemeral: bool = False,
        overwrite: bool = False,
        move_completed_to: Optional[Union[str, "os.PathLike[str]"]] = None,
        labels: Iterable[str] = (),
        timeout: Optional[float] = None,
    ) -> Added:
        """See ``Patron.add``."""
        args = _add_args(
            source, output, peers, paused, only, max_download_rate, max_upload_rate,
            ephemeral, overwrite, move_completed_to, labels,
        )
        added: Added = await self._call("add", _or_default(timeout), **args)
        return added

    async def list(self) -> List[Status]:
        """See ``Patron.list``. Where the board cut a long text, the broker is asked for
        the list, awaited (never a wait that blocks the loop)."""
        listed = self._conn.list(False)
        if listed is None:
            asked: List[Status] = await self._call("list_request")
            return asked
        return listed

    async def status(self, ref: Ref) -> Status:
        """See ``Patron.status``, and ``list`` for a text the board cut."""
        found = self._conn.status(ref, False)
        if found is not None:
            return found
        for status in await self.list():
            if ref in (status.id, status.info_hash) or str(ref).lower() == status.info_hash:
                return status
        raise _error(UnknownTorrent, "unknown-torrent", f"no torrent {ref} on the board")

    async def pause(self, ref: Ref) -> Status:
        """See ``Patron.pause``."""
        status: Status = await self._call("pause", ref=ref)
        return status

    async def resume(self, ref: Ref) -> Status:
        """See ``Patron.resume``."""
        status: Status = await self._call("resume", ref=ref)
        return status

    async def recheck(self, ref: Ref) -> Status:
        """See ``Patron.recheck``."""
        status: Status = await self._call("recheck", ref=ref)
        return status

    async def move(
        self,
        ref: Ref,
        to: Union[str, "os.PathLike[str]"],
        *,
        timeout: Optional[float] = None,
    ) -> Status:
        """See ``Patron.move``."""
        status: Status = await self._call(
            "move", _or_default(timeout), ref=ref, to=_folder(to)
        )
        return status

    @overload
    async def close(self) -> None: ...

    @overload
    async def close(self, ref: Ref, *, delete_data: bool = False, force: bool = False) -> Closed: ...

    async def close(self, ref: Ref = _NO_REF, *, delete_data: bool = False, force: bool = False) -> Any:
        """See ``Patron.close``."""
        if ref is _NO_REF:
            if self._conn_ is not None:
                self._conn_.close()
            # Waits, watches and reads on any loop end with PatronClosed.
            for loop, state in list(self._loops.items()):
                waker, state.waker = state.waker, None
                if waker is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(waker.close)
            return None
        if ref is None:
            raise TypeError("close(None): name a torrent, or call close() to close the patron")
        closed: Closed = await self._call("close", ref=ref, delete_data=delete_data, force=force)
        return closed

    async def follow(self, ref: Ref) -> None:
        """See ``Patron.follow``."""
        await self._call("follow", ref=ref)

    async def files(self, ref: Ref) -> List[File]:
        """See ``Patron.files``."""
        files: List[File] = await self._call("files", ref=ref)
        return files

    async def select_files(self, ref: Ref, only: Iterable[FileRef]) -> List[File]:
        """See ``Patron.select_files``."""
        files: List[File] = await self._call("select_files", ref=ref, only=_file_refs("only", only))
        return files

    async def peers(self, ref: Ref) -> List[Peer]:
        """See ``Patron.peers``."""
        peers: List[Peer] = await self._call("peers", ref=ref)
        return peers

    async def add_peers(self, ref: Ref, peers: Iterable[str]) -> List[str]:
        """See ``Patron.add_peers``."""
        dialled: List[str] = await self._call("add_peers", ref=ref, peers=_strings("peers", peers))
        return dialled

    async def make(
        self,
        path: Union[str, "os.PathLike[str]"],
        output: Optional[Union[str, "os.PathLike[str]"]] = None,
        seed: bool = False,
        *,
        piece_size: Optional[int] = None,
        trackers: Sequence[str] = (),
        timeout: Optional[float] = None,
    ) -> Made:
        """See ``Patron.make``."""
        written = _check_output(output, path)
        made: Made = await self._call(
            "make", _or_default(timeout), path=os.path.abspath(os.fspath(path)), seed=seed,
            piece_size=piece_size, trackers=_strings("trackers", trackers),
        )
        _write_torrent(made, written)
        return made

    async def broker_info(self) -> Dict[str, Any]:
        """See ``Patron.broker_info``."""
        info: Dict[str, Any] = await self._call("broker_info")
        return info

    async def limits(
        self, ref: Optional[Ref] = None, *, download: Optional[int] = None,
        upload: Optional[int] = None, alt_download: Optional[int] = None,
        alt_upload: Optional[int] = None, alt_schedule: Optional[str] = _KEEP,
        alt_on: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """See ``Patron.limits``."""
        given = _given(alt_schedule=alt_schedule)
        limits: Dict[str, Any] = await self._call(
            "limits", ref=ref, download=download, upload=upload, alt_download=alt_download,
            alt_upload=alt_upload, alt_on=alt_on, **given,
        )
        return limits

    async def queue(
        self, *, downloads: Optional[int] = _KEEP, seeds: Optional[int] = _KEEP,
        stalled_after: Optional[float] = _KEEP,
    ) -> Dict[str, Optional[int]]:
        """See ``Patron.queue``."""
        given = _given(downloads=downloads, seeds=seeds, stalled_after=stalled_after)
        queue: Dict[str, Optional[int]] = await self._call("queue", **given)
        return queue

    async def label(self, ref: Ref, labels: Iterable[str]) -> Status:
        """See ``Patron.label``."""
        status: Status = await self._call("label", ref=ref, labels=_strings("labels", labels))
        return status

    async def labels(
        self, name: Optional[str] = None, *,
        folder: Union[str, "os.PathLike[str]", None] = _KEEP,
        max_download_rate: Optional[int] = _KEEP, max_upload_rate: Optional[int] = _KEEP,
        ratio: Union[float, None, str] = _KEEP, seed_time: Union[float, None, str] = _KEEP,
        idle: Union[float, None, str] = _KEEP, remove: bool = False,
    ) -> List[Dict[str, Any]]:
        """See ``Patron.labels``."""
        given = _given(
            folder=_folder(folder) if folder is not _KEEP and folder is not None else folder,
            max_download_rate=max_download_rate, max_upload_rate=max_upload_rate,
            ratio=ratio, seed_time=seed_time, idle=idle,
        )
        labels: List[Dict[str, Any]] = await self._call(
            "labels", name=name, remove=remove, **given
        )
        return labels

    async def seeding(
        self, ref: Optional[Ref] = None, *, ratio: Union[float, None, str] = _KEEP,
        seed_time: Union[float, None, str] = _KEEP, idle: Union[float, None, str] = _KEEP,
        action: Optional[SeedAction] = None,
    ) -> Dict[str, Any]:
        """See ``Patron.seeding``."""
        given = _given(ratio=ratio, seed_time=seed_time, idle=idle)
        limits: Dict[str, Any] = await self._call("seeding", ref=ref, action=action, **given)
        return limits

    async def move_in_queue(self, ref: Ref, to: QueueMove) -> Status:
        """See ``Patron.move_in_queue``."""
        status: Status = await self._call("queue_move", ref=ref, to=to)
        return status

    async def stop_broker(self) -> None:
        """See ``Patron.stop_broker``."""
        await self._call("stop_broker")

    async def _waker(self, timeout: Optional[float] = None) -> "_BoardWaker":
        """This patron's board waker on the running loop, made once for all its waits
        (the first within ``timeout``)."""
        state = self._on_loop()
        if state.waker is not None:
            return state.waker
        if state.making is None:
            state.making = asyncio.get_running_loop().create_task(self._make_waker(state))
            state.making.add_done_callback(lambda task: task.cancelled() or task.exception())
        making = state.making
        # A wait cancelled meanwhile does not cancel it for the others (`wait` cancels
        # nothing), and its own failures are told from this wait's timeout.
        finished, _ = await asyncio.wait({making}, timeout=timeout)
        if not finished:
            raise _error(
                WaitTimeout, "timeout",
                f"the broker did not hand over its board within {_shown(timeout)} s",
            )
        return making.result()

    async def _make_waker(self, state: "_LoopState") -> "_BoardWaker":
        loop = asyncio.get_running_loop()
        try:
            # Mapping a board and handing the broker an eventfd ask the broker: off the loop.
            watch = await loop.run_in_executor(None, self._conn.board_watch)
            await loop.run_in_executor(None, getattr, watch, "fd")
        except BaseException:
            state.making = None  # the next wait tries again
            raise
        if self.closed:
            raise _error(PatronClosed, "closed", "the patron is closed")
        state.waker = _BoardWaker(watch, loop)
        return state.waker

    async def wait(self, ref: Ref, timeout: Optional[float] = None) -> Status:
        """See ``Patron.wait``; the loop runs meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + _seconds(timeout)
        waker = await self._waker(_left(deadline, loop.time()))
        while True:
            change = waker.next_change()
            status = await self.status(ref)
            if status.complete:
                return status
            if status.state == "error":
                raise _error(TorrentFailed, "torrent-failed", status.error or "the torrent failed")
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise _error(WaitTimeout, "timeout", f"torrent {ref} is not complete after {timeout} s")
            await waker.wait(change, left)

    async def events(self, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """See ``Patron.events``: ``async for event in p.events()``."""
        timeout = None if timeout is None else _seconds(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            woken: "asyncio.Future[Any]" = loop.create_future()
            try:
                event = self._conn.next_event_or_wake(woken, loop)
            except PatronClosed:
                return
            if event is None:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return
                try:
                    await asyncio.wait_for(woken, left)
                except asyncio.TimeoutError:
                    return
                continue
            deadline = None if timeout is None else loop.time() + timeout
            yield event
            if isinstance(event, BrokerStopping):
                return

    async def watch(self, timeout: Optional[float] = None) -> AsyncIterator[List[Status]]:
        """See ``Patron.watch``."""
        timeout = None if timeout is None else _seconds(timeout)
        waker = await self._waker(timeout)
        change = waker.next_change()
        yield await self.list()
        while await waker.wait(change, timeout):
            change = waker.next_change()
            yield await self.list()

    async def open(self, ref: Ref, file: Optional[FileRef] = None, offset: int = 0) -> "AsyncTorrentFile":
        """See ``Patron.open``: an ``AsyncTorrentFile`` whose ``read`` is a coroutine."""
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, not {offset}")
        loop = asyncio.get_running_loop()
        conn = self._conn
        stream = await loop.run_in_executor(None, conn.open_stream, ref, file, offset)
        return AsyncTorrentFile(self, stream)


def _given(**settings: Any) -> Dict[str, Any]:
    """The settings a call gives (those left out are ``_KEEP``)."""
    return {name: value for name, value in settings.items() if value is not _KEEP}


class _LoopState:
    """An ``AsyncPatron``'s own on one event loop: its turns for slow requests and its
    board waker (asyncio's objects bind to the loop they are first used on)."""

    def __init__(self) -> None:
        self.slow_turns = asyncio.Semaphore(_SLOW_AT_ONCE)
        self.waker: Optional[_BoardWaker] = None
        self.making: "Optional[asyncio.Task[_BoardWaker]]" = None


class _BoardWaker:
    """Wakes an ``AsyncPatron``'s waits and watches when the board changes: one board watch
    (one mapping, one of the broker's 1,024 eventfd waiters) and one task watching it, for
    however many waits a program runs at once on the loop.

    A waiter takes ``next_change()`` before it looks at the board and awaits it after, so
    that a change in between is not missed.
    """

    def __init__(self, watch: "_native.BoardWatch", loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Made before any waiter first looks at the board: a change after that look wakes it.
        self._watch: Optional[_native.BoardWatch] = watch
        self._change: "asyncio.Future[None]" = loop.create_future()
        self._waiting = 0
        self._pump: "Optional[asyncio.Task[None]]" = None
        self._closed: Optional[TorrentPatronError] = None

    def next_change(self) -> "asyncio.Future[None]":
        """A future the board's next change completes (or its failure, such as the
        broker's stop, fails)."""
        if self._change.done() and self._closed is None:
            self._change = self.loop.create_future()
        return self._change

    def close(self) -> None:
        """The patron closed: every wait ends with ``PatronClosed``, the watch goes."""
        self._closed = _error(PatronClosed, "closed", "the patron is closed")
        if not self._change.done():
            self._change.set_exception(self._closed)
            self._change.exception()  # read: with no waiter, asyncio would log it
        if self._pump is not None:
            self._pump.cancel()
        if self._watch is not None:
            self._watch.close()  # its mapping and the broker's waiter go now
        self._watch = None

    async def wait(self, change: "asyncio.Future[None]", timeout: Optional[float]) -> bool:
        """Waits for ``change`` up to ``timeout`` seconds: whether it came."""
        if self._closed is not None or self._watch is None:
            raise self._closed or _error(PatronClosed, "closed", "the patron is closed")
        self._waiting += 1
        try:
            if self._pump is None or self._pump.done():
                self._pump = self.loop.create_task(self._look(self._watch))
            await asyncio.wait_for(asyncio.shield(change), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiting -= 1

    async def _look(self, watch: "_native.BoardWatch") -> None:
        """While anyone waits: completes the change at each of the board's, waiting on its
        eventfd in between; a look at least every half second notices a broker that died
        without a word (and every 50 ms where the broker had no eventfd slot left)."""
        try:
            while self._waiting > 0:
                if watch.changed():
                    if not self._change.done():
                        self._change.set_result(None)
                    # Let the woken waiters take the next change before looking again.
                    await asyncio.sleep(0)
                    continue
                fd = watch.fd
                if fd is None:
                    await asyncio.sleep(0.05)
                    continue
                woken: "asyncio.Future[None]" = self.loop.create_future()
                self.loop.add_reader(fd, _resolve, woken, None)
                try:
                    await asyncio.wait_for(woken, 0.5)
                except asyncio.TimeoutError:
                    pass
                finally:
                    self.loop.remove_reader(fd)
        except TorrentPatronError as failure:
            if not self._change.done():
                self._change.set_exception(failure)
                self._change.exception()  # read: with no waiter, asyncio would log it


class AsyncTorrentFile:
    """A file of a torrent for asyncio (``AsyncPatron.open``): ``await f.read(n)`` gives
    what is verified at the position (at most ``n`` bytes), waiting on the loop, and
    ``async for chunk in f`` reads it to its end. Its waits watch its patron's board, so
    it reads while the patron is open (a ``TorrentFile`` reads on after its patron
    closes)."""

    def __init__(self, patron: AsyncPatron, stream: "_native.Stream") -> None:
        self._patron = patron
        self._stream = stream

    @property
    def name(self) -> str:
        return self._stream.name

    @property
    def size(self) -> int:
        return self._stream.size

    async def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes from the position once verified (all that is left when
        negative); ``b""`` at the end."""
        if size == 0:
            return b""
        if size < 0:
            chunks: List[bytes] = []
            while True:
                chunk = await self.read(16 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        waker = await self._patron._waker()
        while True:
            # Progress reaches the board at most twice a second: a look every 50 ms too.
            change = waker.next_change()
            data = self._stream.read_ready(size)
            if data is not None:
                return data
            await waker.wait(change, 0.05)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        """Ends the stream (also when the object is collected)."""
        self._stream.close()

    async def aclose(self) -> None:
        """``close``, for ``contextlib.aclosing`` and code that awaits a close."""
        self.close()

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def __aiter__(self) -> "AsyncTorrentFile":
        return self

    async def __anext__(self) -> bytes:
        """Chunks of what is verified, in order, to the end of the file."""
        chunk = await self.read(1 << 20)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def __repr__(self) -> str:
        return f"<AsyncTorrentFile {self.name!r} size={self.size}>"

    async def __aenter__(self) -> "AsyncTorrentFile":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
