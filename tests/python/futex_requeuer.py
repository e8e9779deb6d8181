"""A hostile reader of the status board's futex word: gets the board like any reader, then,
for the given seconds, moves every reader asleep on the board's futex word onto a word of its
own (FUTEX_CMP_REQUEUE needs only read access), so that the broker's wake finds nobody.
Prints how many sleepers it moved.

argv: socket path, hex of the board request datagram, seconds.
"""
import ctypes
import mmap
import os
from board_fd import board_fd
import struct
import sys
import time

fd = board_fd(sys.argv[1], sys.argv[2])
board = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
# The board's futex word: header word 6 (proto::board's H_FUTEX), its low 32 bits.
FUTEX_OFFSET = 6 * 8
own = mmap.mmap(-1, 4096, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
libc = ctypes.CDLL(None, use_errno=True)
SYS_futex, FUTEX_CMP_REQUEUE = 202, 4  # x86_64
# ctypes cannot take the address of a read-only mmap directly: find it through /proc.
base = None
with open("/proc/self/maps") as maps:
    for line in maps:
        if "memfd:" in line and "r--s" in line:
            base = int(line.split("-")[0], 16)
board_addr = base + FUTEX_OFFSET
own_addr = ctypes.addressof(ctypes.c_char.from_buffer(own, 0))
moved = 0
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    value = struct.unpack_from("=I", board, FUTEX_OFFSET)[0]
    n = libc.syscall(SYS_futex, ctypes.c_void_p(board_addr), FUTEX_CMP_REQUEUE, 0,
                     ctypes.c_void_p(0x7fffffff), ctypes.c_void_p(own_addr), value)
    if n > 0:
        moved += n
    time.sleep(0.0005)
print(moved)
