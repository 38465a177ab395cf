"""requests auth for the Docker Registry API: answers a Basic or a Bearer (token) challenge.

Docker Hub (and our stand-in of it) answers with `WWW-Authenticate: Bearer realm=...,service=...,
scope=...`; the client fetches a token from the realm with its basic credentials and retries.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase, HTTPBasicAuth

_PARAM = re.compile(r'(\w+)="([^"]*)"')
_REPOSITORY = re.compile(r"^/v2/(.+?)/(?:blobs|manifests|tags)/")


class RegistryAuth(AuthBase):
    def __init__(self, username: str | None, password: str | None, *, timeout: float = 30) -> None:
        self._basic = HTTPBasicAuth(username, password) if username else None
        self._timeout = timeout
        self._tokens: dict[str, str] = {}  # repository -> bearer token

    def __repr__(self) -> str:
        return "RegistryAuth(<credentials hidden>)" if self._basic else "RegistryAuth(anonymous)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._tokens.get(_repository(request.url or ""))
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response: requests.Response, **kwargs: object) -> requests.Response:
        if response.status_code != 401 or getattr(response.request, "_registry_auth_retried", False):
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        retry = response.request.copy()
        if challenge.lower().startswith("bearer"):
            params = dict(_PARAM.findall(challenge))
            token = self._fetch_token(params)
            self._tokens[_repository(retry.url or "")] = token
            retry.headers["Authorization"] = f"Bearer {token}"
        elif challenge.lower().startswith("basic") and self._basic is not None:
            retry = self._basic(retry)
        else:
            return response
        retry._registry_auth_retried = True  # type: ignore[attr-defined]
        response.content  # noqa: B018 - drain so the connection can be reused
        response.raw.release_conn()
        new = response.connection.send(retry, **kwargs)  # type: ignore[arg-type]
        new.history.append(response)
        new.request = retry
        return new

    def _fetch_token(self, params: dict[str, str]) -> str:
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        resp = requests.get(params["realm"], params=query, auth=self._basic, timeout=self._timeout)
        if resp.status_code != 200:
            raise requests.HTTPError(f"token service {params['realm']} answered {resp.status_code}",
                                     response=resp)
        body = resp.json()
        return str(body.get("token") or body.get("access_token"))


def bearer_token(registry_url: str, username: str | None, password: str | None, *, scope: str | None = None,
                 timeout: float = 30) -> str | None:
    """The token a registry's token service issues for `scope` (default: the one its challenge names),
    or None when the registry asks for no token. A refusal raises requests.HTTPError."""
    challenge = requests.get(f"{registry_url.rstrip('/')}/v2/", timeout=timeout).headers.get("WWW-Authenticate", "")
    if not challenge.lower().startswith("bearer"):
        return None
    params = dict(_PARAM.findall(challenge))
    if scope is not None:
        params["scope"] = scope
    return RegistryAuth(username, password, timeout=timeout)._fetch_token(params)


def _repository(url: str) -> str:
    match = _REPOSITORY.match(urlsplit(url).path)
    return match.group(1) if match else ""
