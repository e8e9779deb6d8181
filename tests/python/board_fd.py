"""The status board's descriptor, asked for at the broker's front door as any reader does."""
import socket
import sys


def board_fd(socket_path, request_hex):
    """Sends the board request (hex of the datagram, built by the test with proto's encoder)
    and returns the board's descriptor from the answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(socket_path)
    sock.send(bytes.fromhex(request_hex))
    _, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder)
                       for i in range(0, len(data), 4))
    return fds[0]
