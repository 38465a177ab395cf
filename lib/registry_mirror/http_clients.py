"""HTTP clients that connect from a chosen loopback address: how the local platform's checks play an
allowed, a denied and a forging user against the public endpoint."""
from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter


class SourceAddressAdapter(HTTPAdapter):
    def __init__(self, source: str, **kwargs: Any) -> None:
        self._source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


def client_from(source: str = "127.0.0.1") -> requests.Session:
    """A session whose connections leave from `source`, ignoring any proxy settings of the machine."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", SourceAddressAdapter(source))
    return session
