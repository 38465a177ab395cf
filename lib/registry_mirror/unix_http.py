"""HTTP over a unix socket: how the platform health-checks mirror instances that have no TCP port."""
from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class UnixResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def unix_request(socket_path: str, method: str, path: str, *, timeout: float = 5.0,
                 headers: dict[str, str] | None = None, read_body: bool = True) -> UnixResponse:
    conn = _UnixConnection(socket_path, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read() if read_body else b""
        return UnixResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock
