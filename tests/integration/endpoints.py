"""The security proxy's public endpoint, asked raw HTTP with exact header lines (the `endpoint` fixture
in conftest.py gives one per rendering)."""
from __future__ import annotations

import http.client
from dataclasses import dataclass

from tests.integration.cf_mirror_app import CLIENT


@dataclass(frozen=True)
class Endpoint:
    rendering: str
    host: str
    port: int

    def ask(self, path: str, headers: list[tuple[str, str]], method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """One request with these header lines exactly (repeats kept), from the allowed client address."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30, source_address=(CLIENT, 0))
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()
