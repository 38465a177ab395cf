"""The S3 port of the local stack: a relay from a loopback TCP port to the S3 gateway's unix socket.

    python -m registry_mirror.platforms.local.s3_relay <address> <port> <gateway socket>

The gateway runs in SeaweedFS's private network (see `private_network`), where the mirrors cannot
reach it; they speak S3 over TCP only. The relay copies bytes unchanged in both directions (the
Host header the signature covers arrives as the client sent it), one thread per direction with
splice(2), so layer bytes are not copied through Python.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading

_CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031  # linux/fcntl.h


def serve(address: str, port: int, target: str) -> None:
    listener = socket.create_server((address, port), backlog=256)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, target), daemon=True).start()


def _relay(client: socket.socket, target: str) -> None:
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(target)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, _CHUNK)  # fewer, larger moves than the 64 KiB default
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: the default works, only slower
    try:
        while True:
            moved = os.splice(src.fileno(), write_end, _CHUNK)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, dst.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
        try:
            dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on, as the client meant it
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    serve(argv[0], int(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
