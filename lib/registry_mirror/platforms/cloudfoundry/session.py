"""An authenticated, patient session with the Cloud Foundry API (CC v3, UAA, the policy server).

Plain requests, not `cloudfoundry-client`: that library sends token requests without a timeout or a
retry, raises a bare OAuth error when a refresh fails, and drops the headers of an error answer, so
a `Retry-After` could not be honoured. Here every call, token requests included, has a
timeout and retries with backoff on 429/5xx and connection errors, honouring `Retry-After`; an
expired token is refreshed, and a refresh UAA refuses leads to a fresh login. Every failure carries
CF's request id; a dry run sends no mutating call. `sleep` and `clock` are injectable, so tests
measure waits on a fake clock instead of sleeping.
"""
from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests

from ...credentials import Secret, secret_from_env
from ...errors import DeployError, PreflightError, SecretMissingError
from ...progress import PROGRESS_SECONDS, report

RETRY_STATUSES = {429, 500, 502, 503, 504}
# CC's rate limiter answers 429 with Retry-After up to the end of its window (an hour by default):
# a wait beyond this fails with one sentence instead of holding the runbook.
MAX_RETRY_AFTER_SECONDS = 300.0
JOB_TIMEOUT_SECONDS = 300.0  # the cf CLI's default for polling a job
T = TypeVar("T")
CF_CLI_CLIENT = ("cf", "")  # UAA's public client for users, as the cf CLI logs in


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


class RetryAfterTooLong(DeployError):
    """CF asked for a wait (Retry-After) longer than the session's ceiling."""


class OutcomeUnknown(DeployError):
    """A non-idempotent call got no answer, or a 5xx: it may have taken effect. The caller looks it up
    before trying again, never sends it blindly twice."""


class PollTimeout(TimeoutError):
    """A wait ran past its deadline; `last` is what the last read saw, for a message that says where it stood."""

    def __init__(self, what: str, timeout: float, last: Any) -> None:
        self.last = last
        super().__init__(f"{what} not finished after {timeout:.0f} s")


@dataclass
class Token:
    access: str
    refresh: str | None
    claims: dict[str, Any]

    def __repr__(self) -> str:
        return f"Token(user={self.claims.get('user_name') or self.claims.get('client_id')!r}, hidden)"


@dataclass
class CfSession:
    api: str
    credentials: CfCredentials
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5
    dry_run: bool = False
    poll_interval: float = 2.0  # seconds between two reads of something CC is still working on
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS  # the longest Retry-After honoured; longer fails
    notify: Callable[[str], None] = report  # says every retry wait before it starts, and how long waits stand
    calls: list[CfCall] = field(default_factory=list)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    http: requests.Session = field(default_factory=requests.Session)
    root: dict[str, Any] | None = None
    _token: Token | None = None

    def __repr__(self) -> str:
        return f"CfSession(api={self.api!r}, user={self.credentials.name!r}, dry_run={self.dry_run})"

    # ------------------------------------------------------------------ login and capabilities

    def login(self) -> None:
        """Reach the API and log in; PreflightError with one clear sentence otherwise."""
        self.root = self._reach_root()
        if self.credentials.grant == "password":
            form = {"grant_type": "password", "username": self.credentials.name,
                    "password": self.credentials.secret.reveal()}
            client = CF_CLI_CLIENT
        else:
            form = {"grant_type": "client_credentials"}
            client = (self.credentials.name, self.credentials.secret.reveal())
        self._token = self._token_request(form, client)

    @property
    def cc_version(self) -> tuple[int, ...]:
        """CC's API version from the root document, e.g. (3, 195, 0); (0,) when it does not say."""
        version = (((self.root or {}).get("links") or {}).get("cloud_controller_v3") or {}).get("meta", {})
        try:
            return tuple(int(part) for part in str(version.get("version", "")).split("."))
        except ValueError:
            return (0,)

    @property
    def claims(self) -> dict[str, Any]:
        """What the access token says about who we are (user_id or client_id, scope). Read, not
        verified: UAA handed it to us over TLS, and CC and the policy server verify it on every call."""
        if self._token is None:
            self.login()
        assert self._token is not None
        return self._token.claims

    @property
    def user_guid(self) -> str:
        # CC's user for a client-credentials token is the client itself.
        return str(self.claims.get("user_id") or self.claims.get("client_id") or "")

    # ------------------------------------------------------------------ calls

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._call("GET", path, params=params).json()

    def get_linked(self, link: str, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A GET on another service of the platform that takes the same UAA token, found by its link in
        the root document (e.g. `log_cache`: Log Cache's read API on the log-cache host)."""
        if self._token is None:
            self.login()
        href = (((self.root or {}).get("links") or {}).get(link) or {}).get("href")
        if not href:
            raise PreflightError(f"Cloud Foundry API {self.api} names no {link} in GET /")
        return self._call("GET", path, params=params, base=href.rstrip("/")).json()

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
             headers: Mapping[str, str] | None = None, files: Any = None,
             idempotent: bool = True) -> requests.Response | None:
        """A mutating call; in a dry run it is recorded as planned and not sent (returns None).
        `idempotent=False` (a create, an upload): after no answer or a 5xx it raises OutcomeUnknown
        instead of sending it again, since the first attempt may have taken effect."""
        if self.dry_run:
            self.calls.append(CfCall(method, path, "planned", sent=False))
            return None
        return self._call(method, path, json=json, data=data, headers=headers, files=files,
                          idempotent=idempotent)

    # ------------------------------------------------------------------ waiting

    def poll(self, read: Callable[[], T], done: Callable[[T], bool], *, timeout: float, what: str) -> T:
        """`read()` until `done` holds, `poll_interval` apart; PollTimeout after `timeout` seconds on the
        session's clock. `done` may raise to end the wait early (a crash seen while waiting)."""
        started = self.clock()
        deadline, next_report = started + timeout, started + PROGRESS_SECONDS
        while True:
            value = read()
            if done(value):
                return value
            now = self.clock()
            if now >= deadline:
                raise PollTimeout(what, timeout, value)
            if now >= next_report:  # headless, a build or deployment of minutes must not look like a hang
                self.notify(f"still waiting for {what}: {now - started:.0f} s of at most {timeout:.0f} s")
                next_report = now + PROGRESS_SECONDS
            self.sleep(self.poll_interval)

    def wait_job(self, response: requests.Response, *, timeout: float = JOB_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Follow the job a 202 names in its `Location` until COMPLETE; DeployError with CC's errors if FAILED."""
        path = "/v3/jobs/" + response.headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1]
        job = self.poll(lambda: self.get(path), lambda j: j["state"] in ("COMPLETE", "FAILED"), timeout=timeout,
                        what=f"job {path}")
        if job["state"] == "FAILED":
            detail = "; ".join(e.get("detail", "") for e in job.get("errors", []))
            raise DeployError(f"job {job['guid']} ({job.get('operation')}) failed: {detail}")
        return job

    # ------------------------------------------------------------------ what happened

    def failed_calls(self) -> list[CfCall]:
        """Calls that got an error status or no answer at all (a connection error names its class)."""
        return [c for c in self.calls
                if c.sent and (isinstance(c.status, str) or c.status >= 400)]

    def _call(self, method: str, path: str, *, idempotent: bool = True, base: str | None = None,
              **kwargs: Any) -> requests.Response:
        if self._token is None:
            self.login()
        attempt, renewed = 0, False
        while True:
            attempt += 1
            assert self._token is not None
            headers = {**(kwargs.pop("headers", None) or {}), "Authorization": f"bearer {self._token.access}"}
            try:
                response = self.http.request(method, (base or self.api) + path, timeout=self.timeout, headers=headers,
                                             **_clean(kwargs))
            except (requests.ConnectionError, requests.Timeout) as exc:
                self.calls.append(CfCall(method, path, exc.__class__.__name__))
                if not idempotent:
                    raise OutcomeUnknown(f"{method} {path}: no answer ({exc.__class__.__name__}); it may have "
                                         "taken effect") from None
                if attempt <= self.retries:
                    self._wait(attempt, None, f"{method} {path}")
                    kwargs["headers"] = headers
                    continue
                raise DeployError(f"{method} {path}: no answer after {attempt} tries "
                                  f"({exc.__class__.__name__})") from None
            kwargs["headers"] = headers
            request_id = response.headers.get("X-Vcap-Request-Id", "")
            self.calls.append(CfCall(method, path, response.status_code, request_id))
            # CC says 401 for an expired token; the policy server says 401 too (older ones 403).
            if response.status_code == 401 and not renewed:
                renewed = True
                self._renew()
                continue
            if response.status_code >= 500 and not idempotent:
                # The router or CC may have failed after CC acted (a 502 on a lost answer).
                raise OutcomeUnknown(f"{method} {path} answered {response.status_code} (CF request id "
                                     f"{request_id or 'none'}); it may have taken effect")
            if response.status_code in RETRY_STATUSES and attempt <= self.retries:
                self._wait(attempt, response, f"{method} {path}")
                continue
            if response.status_code >= 400:
                raise CfApiError(method, path, response.status_code, response.text, request_id)
            return response

    def _renew(self) -> None:
        """A new access token: by the refresh token while UAA takes it, else a fresh login."""
        assert self._token is not None
        if self._token.refresh:
            try:
                self._token = self._token_request({"grant_type": "refresh_token",
                                                   "refresh_token": self._token.refresh}, CF_CLI_CLIENT)
                return
            except PreflightError:
                pass  # refresh token expired or revoked: log in again with the credentials
        self.login()

    def _token_request(self, form: dict[str, str], client: tuple[str, str]) -> Token:
        assert self.root is not None
        links = self.root.get("links") or {}
        uaa = ((links.get("login") or links.get("uaa")) or {}).get("href")
        if not uaa:
            raise PreflightError(f"Cloud Foundry API {self.api} names no login server in GET /")
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.post(f"{uaa}/oauth/token", data=form, auth=client, timeout=self.timeout,
                                          headers={"Accept": "application/json"})
            except (requests.ConnectionError, requests.Timeout) as exc:
                self.calls.append(CfCall("POST", "/oauth/token", exc.__class__.__name__))
                if attempt <= self.retries:
                    self._wait(attempt, None, "POST /oauth/token")
                    continue
                raise PreflightError(f"Cloud Foundry login server {uaa} is unreachable "
                                     f"({exc.__class__.__name__})") from None
            self.calls.append(CfCall("POST", "/oauth/token", response.status_code))
            if response.status_code in RETRY_STATUSES and attempt <= self.retries:
                self._wait(attempt, response, "POST /oauth/token")
                continue
            if response.status_code != 200:
                raise PreflightError(f"Cloud Foundry login as {self.credentials.name} failed: "
                                     f"{_uaa_error(response)} (check the CF credentials)")
            body = response.json()
            return Token(body["access_token"], body.get("refresh_token"), _jwt_claims(body["access_token"]))

    def _reach_root(self) -> dict[str, Any]:
        for attempt in range(1, self.retries + 2):
            try:
                root = self.http.get(f"{self.api}/", timeout=self.timeout)
            except requests.RequestException as exc:
                problem, root = f"is unreachable ({exc.__class__.__name__})", None
            else:
                if root.status_code == 200:
                    return root.json()
                problem = f"answered {root.status_code} to GET /"
                if root.status_code not in RETRY_STATUSES:
                    break
            if attempt <= self.retries:
                self._wait(attempt, root, "GET /")
        raise PreflightError(f"Cloud Foundry API {self.api} {problem}")

    def _wait(self, attempt: int, response: requests.Response | None, what: str) -> None:
        """Wait before retry `attempt`, said before it starts; RetryAfterTooLong when CF asks for more
        than `max_retry_after` seconds (CC's rate-limit window can be an hour)."""
        delay = self._delay(attempt, response)
        status = f"{response.status_code}" if response is not None else "no answer"
        if delay > self.max_retry_after:
            raise RetryAfterTooLong(f"{what} answered {status} asking to wait {delay:.0f} s (Retry-After), more "
                                    f"than the limit of {self.max_retry_after:.0f} s "
                                    "(cloudfoundry.max_retry_after_seconds): try again later")
        self.notify(f"CF: {what} answered {status}; waiting {delay:g} s before retry {attempt}")
        self.sleep(delay)

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        """`Retry-After` seconds when the answer gives them (429, 503), else exponential backoff."""
        retry_after = response.headers.get("Retry-After", "") if response is not None else ""
        if retry_after.strip().isdigit():
            return float(retry_after)
        return self.backoff * 2 ** (attempt - 1)


def _clean(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _cc_error_detail(body: str) -> str:
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return body[:200]
    return "; ".join(f"{e.get('title', '')} {e.get('detail', '')}".strip() for e in errors)[:400]


def _uaa_error(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return str(body.get("error_description") or body.get("error") or f"HTTP {response.status_code}")


def _jwt_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
