"""An authenticated, patient session with the Cloud Foundry API.

Login and token refresh come from `cloudfoundry-client`; everything else goes through its
authenticated session as plain CC v3 / networking calls, because the library lacks deployments,
builds, apply_manifest and process stats, and its networking create/delete are broken (FACTS 6).
This layer adds what a runbook needs: a timeout on every call, retries with backoff on 429/5xx and
connection errors, a re-login when a token cannot be refreshed, the CF request id of every failure,
and a dry run in which no mutating call is sent.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from .credentials import Secret, secret_from_env
from .errors import DeployError, PreflightError, SecretMissingError

RETRY_STATUSES = {429, 500, 502, 503, 504}

# cloudfoundry-client logs every response body at DEBUG, service-key credentials and app env
# included; keep those records from ever being made, whatever the root logger's level.
for _name in ("cloudfoundry_client", "oauth2_client"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class CfCredentials:
    """Who deploys: a user (password grant) or a UAA client (client-credentials grant), from the environment."""

    grant: Literal["password", "client_credentials"]
    name: str
    secret: Secret

    @classmethod
    def from_env(cls) -> CfCredentials:
        if os.environ.get("CF_CLIENT_ID"):
            return cls("client_credentials", os.environ["CF_CLIENT_ID"],
                       secret_from_env("CF_CLIENT_SECRET", purpose="secret of UAA client CF_CLIENT_ID"))
        if os.environ.get("CF_USERNAME"):
            return cls("password", os.environ["CF_USERNAME"],
                       secret_from_env("CF_PASSWORD", purpose="password of CF_USERNAME"))
        raise SecretMissingError("no Cloud Foundry credentials: set CF_USERNAME and CF_PASSWORD, or "
                                 "CF_CLIENT_ID and CF_CLIENT_SECRET")


@dataclass(frozen=True)
class CfCall:
    """One call as the operator reads it afterwards: what, how it ended, and CF's request id."""

    method: str
    path: str
    status: int | str
    request_id: str = ""
    sent: bool = True


class CfApiError(DeployError):
    """A CC or networking call failed; carries CF's request id for the platform team."""

    def __init__(self, method: str, path: str, status: int, body: str, request_id: str) -> None:
        self.status = status
        self.request_id = request_id
        detail = _cc_error_detail(body)
        super().__init__(f"{method} {path} answered {status}{': ' + detail if detail else ''} "
                         f"(CF request id {request_id or 'none'})")


@dataclass
class CfSession:
    api: str
    credentials: CfCredentials
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5
    dry_run: bool = False
    calls: list[CfCall] = field(default_factory=list)
    _client: Any = None

    def __repr__(self) -> str:
        return f"CfSession(api={self.api!r}, user={self.credentials.name!r}, dry_run={self.dry_run})"

    # ------------------------------------------------------------------ login

    def login(self) -> None:
        """Reach the API and log in; PreflightError with one clear sentence otherwise."""
        from cloudfoundry_client.client import CloudFoundryClient
        from oauth2_client.credentials_manager import OAuthError

        self._reach_root()
        try:
            if self.credentials.grant == "password":
                client = CloudFoundryClient(self.api)
                client.init_with_user_credentials(self.credentials.name, self.credentials.secret.reveal())
            else:
                client = CloudFoundryClient(self.api, client_id=self.credentials.name,
                                            client_secret=self.credentials.secret.reveal())
                client.init_with_client_credentials()
        except OAuthError as exc:
            raise PreflightError(f"Cloud Foundry login as {self.credentials.name} failed: "
                                 f"{exc.error_description or exc.error} (check the CF credentials)") from None
        except requests.RequestException as exc:
            raise PreflightError(f"Cloud Foundry login endpoint unreachable ({exc.__class__.__name__})") from None
        self._client = client

    def _reach_root(self) -> None:
        # The library's own first request has no timeout and no retry; ask first ourselves, with both.
        for attempt in range(1, self.retries + 2):
            try:
                root = requests.get(f"{self.api}/", timeout=self.timeout)
            except requests.RequestException as exc:
                problem = f"is unreachable ({exc.__class__.__name__})"
            else:
                if root.status_code == 200:
                    return
                problem = f"answered {root.status_code} to GET /"
                if root.status_code not in RETRY_STATUSES:
                    break
            if attempt <= self.retries:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        raise PreflightError(f"Cloud Foundry API {self.api} {problem}")

    # ------------------------------------------------------------------ calls

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._call("GET", path, params=params).json()

    def list_all(self, path: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Every resource of a paginated list, following `pagination.next`."""
        page = self.get(path, params)
        resources = list(page.get("resources", []))
        while (page.get("pagination") or {}).get("next"):
            next_url = page["pagination"]["next"]["href"]
            parts = urlsplit(next_url)
            page = self._call("GET", parts.path + (f"?{parts.query}" if parts.query else "")).json()
            resources.extend(page.get("resources", []))
        return resources

    def download(self, path: str, *, limit: int = 64 << 20) -> bytes:
        """A blob CC serves itself (200) or through a pre-signed blobstore URL (302, followed).

        requests drops the Authorization header when a redirect leaves CC's host, so the blobstore
        never sees the CF token (S3 would refuse a request that brings a second authorisation).
        """
        response = self._call("GET", path)
        if len(response.content) > limit:
            raise DeployError(f"GET {path}: larger than {limit} bytes, not what this runbook deploys")
        return response.content

    def send(self, method: str, path: str, *, json: Any = None, data: Any = None,
             headers: Mapping[str, str] | None = None, files: Any = None) -> requests.Response | None:
        """A mutating call; in a dry run it is recorded as planned and not sent (returns None)."""
        if self.dry_run:
            self.calls.append(CfCall(method, path, "planned", sent=False))
            return None
        return self._call(method, path, json=json, data=data, headers=headers, files=files)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        from cloudfoundry_client.errors import InvalidStatusCode

        if self._client is None:
            self.login()
        url = self.api + path
        attempt, relogged = 0, False
        while True:
            attempt += 1
            try:
                response = getattr(self._client, method.lower())(url, timeout=self.timeout, **_clean(kwargs))
            except InvalidStatusCode as exc:
                status, request_id = int(exc.status_code), exc.request_id or ""
                self.calls.append(CfCall(method, path, status, request_id))
                body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)
                # The library refreshes once on CC's 401; a client-credentials token has nothing to
                # refresh with, and the policy server answers an expired token with 403.
                if (status == 401 or status == 403 and path.startswith("/networking/")) and not relogged:
                    relogged = True
                    self.login()
                    continue
                if status in RETRY_STATUSES and attempt <= self.retries:
                    time.sleep(self._delay(attempt, exc))
                    continue
                raise CfApiError(method, path, status, body, request_id) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                self.calls.append(CfCall(method, path, exc.__class__.__name__))
                if attempt <= self.retries:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise DeployError(f"{method} {path}: no answer after {attempt} tries "
                                  f"({exc.__class__.__name__})") from None
            self.calls.append(CfCall(method, path, response.status_code,
                                     response.headers.get("X-Vcap-Request-Id", "")))
            return response

    def _delay(self, attempt: int, exc: Any) -> float:
        retry_after = None
        headers = getattr(exc, "headers", None)
        if headers and headers.get("Retry-After", "").isdigit():
            retry_after = float(headers["Retry-After"])
        return retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1)

    def failed_calls(self) -> list[CfCall]:
        """Calls that got an error status or no answer at all (a connection error names its class)."""
        return [c for c in self.calls
                if c.sent and (isinstance(c.status, str) or c.status >= 400)]


def _clean(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _cc_error_detail(body: str) -> str:
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return body[:200]
    return "; ".join(f"{e.get('title', '')} {e.get('detail', '')}".strip() for e in errors)[:400]
