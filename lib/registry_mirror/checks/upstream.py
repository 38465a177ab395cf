"""Checks about the upstream (Docker Hub or its stand-in): the pull allowance and the credential's scope."""
from __future__ import annotations

import base64
import json
from dataclasses import replace

import requests

from ..credentials import upstream_password
from ..errors import SecretMissingError
from ..parameters import Settings
from ..registry_auth import bearer_token
from .catalogue import DOCKER_HUB, NEXT, PROVES
from .report import PolicyCheck, Status, judged, not_applicable


def docker_hub_rate_limit(username: str | None, password: str | None, *, timeout: float = 15) -> dict[str, str]:
    """Docker Hub's pull allowance as its ratelimit-* headers state it; a HEAD is not a counted pull."""
    auth = (username, password) if username and password else None
    token = requests.get("https://auth.docker.io/token", params={
        "service": "registry.docker.io", "scope": "repository:ratelimitpreview/test:pull"},
        auth=auth, timeout=timeout).json()["token"]
    resp = requests.head(f"{DOCKER_HUB}/v2/ratelimitpreview/test/manifests/latest",
                         headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    return {k: resp.headers.get(k, "") for k in ("ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source")}


def rate_limit_check(settings: Settings) -> PolicyCheck:
    """Docker Hub's pull allowance (limit, remaining, source), or n/a when the upstream is not Docker Hub."""
    upstream = settings.upstream
    if upstream.url.rstrip("/") != DOCKER_HUB:
        return not_applicable("ratelimit-headers", f"upstream is {upstream.url}, not Docker Hub")
    password = upstream_password(settings)
    headers = docker_hub_rate_limit(upstream.username, password.reveal() if password else None)
    # No headers at all means no limit applies; missing ones otherwise deserve a look.
    status: Status = "pass" if all(headers.values()) or not any(headers.values()) else "warn"
    return PolicyCheck("ratelimit-headers", PROVES["ratelimit-headers"],
                       "HEAD ratelimitpreview/test on Docker Hub (not a counted pull)",
                       "limit, remaining and source headers", str(headers), status)


def upstream_token_actions(url: str, username: str, password: str, *, repository: str = "library/hello",
                           timeout: float = 15) -> set[str]:
    """What the upstream's token service grants the mirror's account when asked for everything.

    Follows the registry's own Bearer challenge to the token realm, asks for pull, push and delete on
    one repository, and reads the `access` claim of the token it gets (a JWT, on Docker Hub as on
    the stand-in); the token itself is never shown.
    """
    token = bearer_token(url, username, password, scope=f"repository:{repository}:pull,push,delete", timeout=timeout)
    if token is None:
        return {"pull", "push", "delete"}  # no token service: whoever reaches it may do anything
    payload = token.split(".")[1] if token.count(".") == 2 else ""
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) if payload else {}
    return {action for grant in claims.get("access", []) for action in grant.get("actions", [])}


def upstream_scope_check(settings: Settings) -> PolicyCheck:
    """Warn when the mirror's upstream credential could do more than pull."""
    upstream = settings.upstream
    password = upstream_password(settings)
    if not upstream.username or password is None:
        return not_applicable("upstream-pull-only", "anonymous upstream pulls: nothing to scope")
    actions = upstream_token_actions(upstream.url, upstream.username, password.reveal())
    extra = sorted(actions - {"pull"})
    check = judged("upstream-pull-only", "ask the upstream token service for pull,push,delete and read what "
                   "the token grants", "pull only", f"granted: {', '.join(sorted(actions)) or 'nothing'}",
                   None if extra else True)
    # A credential that can push is a risk to review, not a broken mirror: warn, with the remedy.
    return replace(check, next_step=NEXT["upstream-pull-only"]) if extra else check


def docker_hub_limit(settings: Settings) -> int | None:
    """Pulls per window Docker Hub grants the mirror's account, from its own headers (`ratelimit-limit:
    100;w=21600`); None when the upstream is not Docker Hub, sets no limit, or cannot be asked."""
    if settings.upstream.url.rstrip("/") != DOCKER_HUB:
        return None
    try:
        # Only a figure for a report: without the account's password there is no limit line, no failure.
        password = upstream_password(settings)
    except SecretMissingError:
        return None
    try:
        headers = docker_hub_rate_limit(settings.upstream.username, password.reveal() if password else None)
    except (requests.RequestException, KeyError, ValueError):
        return None
    value = headers.get("ratelimit-limit", "").split(";")[0].strip()
    return int(value) if value.isdigit() else None
