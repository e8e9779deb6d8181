"""A hostile patron of the status board: gets the board's descriptor from the broker's front
door like any reader, then tries every way it can think of to write to it. Prints one JSON
object: each attempt's errno, or "ALLOWED" when it was let through.

argv: socket path, hex of the board request datagram (built by the test with proto's encoder).
"""
import ctypes
import json
import mmap
import os
from board_fd import board_fd
import sys

board = board_fd(sys.argv[1], sys.argv[2])
size = os.fstat(board).st_size
libc = ctypes.CDLL(None, use_errno=True)
results = {}


def attempt(name, action):
    try:
        action()
        results[name] = "ALLOWED"
    except OSError as e:
        results[name] = e.errno


def c_call(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


rw_shared = mmap.PROT_READ | mmap.PROT_WRITE
attempt("mmap the given fd shared+writable",
        lambda: mmap.mmap(board, size, mmap.MAP_SHARED, rw_shared))
# The memfd's inode lets its owner reopen it read-write through /proc; the seals must hold.
reopened = os.open(f"/proc/self/fd/{board}", os.O_RDWR)
attempt("mmap a read-write reopen shared+writable",
        lambda: mmap.mmap(reopened, size, mmap.MAP_SHARED, rw_shared))
attempt("pwrite", lambda: os.pwrite(reopened, b"scribble", 0))
attempt("ftruncate to 0 (would SIGBUS the broker)", lambda: os.ftruncate(reopened, 0))
attempt("fallocate punch hole",
        lambda: c_call(libc.fallocate(reopened, 3, ctypes.c_long(0), ctypes.c_long(4096))))
F_ADD_SEALS, F_SEAL_WRITE = 1033, 8
attempt("add a write seal (would stop the broker writing)",
        lambda: c_call(libc.fcntl(reopened, F_ADD_SEALS, F_SEAL_WRITE)))
# A private copy may be scribbled on: that must change nothing for anyone else.
private = mmap.mmap(reopened, size, mmap.MAP_PRIVATE, rw_shared)
private[0:size] = b"\xff" * size
results["scribbled on a private copy"] = "done"
print(json.dumps(results))
