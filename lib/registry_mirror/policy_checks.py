"""Is the mirror protected and working? A table of checks, each with its evidence.

Every check says what it proves, how it looked, what it expected and what it saw, and on failure
what to do next. A check that cannot apply to the platform says so (`n/a`) instead of vanishing.
Allow-list ranges never appear in the results: checks name the role of an address ("an allowed
client", "a denied client"), not the address or the range.
"""
from __future__ import annotations

import ipaddress
import json
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from .errors import VerificationError
from .security_rules import SecurityRules

Status = Literal["pass", "fail", "warn", "n/a"]
SAMPLE_IMAGE = "docker.io/library/hello:latest"
DOCKER_HUB = "https://registry-1.docker.io"
WRITES = [("POST", "/v2/policy-check/blobs/uploads/"),
          ("PUT", "/v2/policy-check/manifests/latest"),
          ("PATCH", "/v2/policy-check/blobs/uploads/00000000-0000-0000-0000-000000000000"),
          ("DELETE", "/v2/policy-check/manifests/sha256:" + "0" * 64),
          ("DELETE", "/v2/policy-check/blobs/sha256:" + "0" * 64)]


@dataclass(frozen=True)
class PolicyCheck:
    id: str
    proves: str
    how: str
    expected: str
    observed: str
    status: Status
    next_step: str = ""


@dataclass(frozen=True)
class PolicyReport:
    platform: str
    checks: list[PolicyCheck]

    @property
    def failed(self) -> list[str]:
        return [c.id for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.checks])

    def verdict(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "warn", "n/a")}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        if self.failed:
            return f"NOT PROTECTED OR NOT WORKING: failed {', '.join(self.failed)} ({summary})"
        return f"ALL CHECKS PASSED on {self.platform} ({summary})"

    def write_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"platform": self.platform, "ok": self.ok, "failed": self.failed,
                                   "checks": [asdict(c) for c in self.checks]}, indent=2))
        return out

    def raise_for_failures(self) -> None:
        if self.failed:
            steps = "; ".join(f"{c.id}: {c.next_step}" for c in self.checks if c.status == "fail")
            raise VerificationError(f"policy checks failed: {', '.join(self.failed)} -- {steps}")

    def _repr_html_(self) -> str:
        frame = self.to_frame()[["id", "status", "proves", "observed", "next_step"]]
        return f"<p><b>{self.verdict()}</b></p>" + frame.to_html(index=False)

    def __repr__(self) -> str:
        return self.verdict() + "\n" + self.to_frame()[["id", "status", "observed"]].to_string(index=False)


def verify_policies(target: object) -> PolicyReport:
    """Run every check that applies to the target's platform."""
    from .local_platform import LocalPlatform

    if isinstance(target, LocalPlatform):
        from .policy_checks_local import local_checks

        return PolicyReport("local", _run(local_checks(target)))
    from .policy_checks_cf import cf_checks

    return PolicyReport("cloudfoundry", _run(cf_checks(target)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared pieces

CheckFn = Callable[[], PolicyCheck]


def _run(checks: list[tuple[str, str, CheckFn]]) -> list[PolicyCheck]:
    """Run each check; one that raises is a failure with the error as its evidence, never a skip."""
    results = []
    for check_id, proves, fn in checks:
        try:
            results.append(fn())
        except Exception as exc:  # noqa: BLE001 - the error is the observation
            results.append(PolicyCheck(check_id, proves, "(the check itself failed)", "a result",
                                       f"error: {exc.__class__.__name__}: {str(exc)[:300]}", "fail",
                                       "read the error; fix what it names, then run the checks again"))
    return results


def not_applicable(check_id: str, proves: str, why: str) -> tuple[str, str, CheckFn]:
    return (check_id, proves, lambda: PolicyCheck(check_id, proves, "-", "-", why, "n/a"))


def sample_addresses(rules: SecurityRules) -> tuple[str | None, str | None, str | None]:
    """Loopback addresses that play an allowed, an explicitly denied and an unlisted client."""
    def decide(addr: ipaddress.IPv4Address) -> bool | None:
        best: tuple[int, bool] | None = None
        for cidrs, verdict in ((rules.allow, True), (rules.deny, False)):
            for cidr in cidrs:
                net = ipaddress.ip_network(cidr)
                if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, verdict)
        return None if best is None else best[1]

    def first(candidates: list[ipaddress.IPv4Address], want: bool | None) -> str | None:
        for addr in candidates:
            if addr.is_loopback and decide(addr) is want:
                return str(addr)
        return None

    def hosts(cidrs: list[str]) -> list[ipaddress.IPv4Address]:
        out = []
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr)
            if net.version == 4:
                out.append(net.network_address if net.num_addresses == 1 else net.network_address + 1)
        return out

    spare = [ipaddress.IPv4Address(f"127.0.{b}.{c}") for b, c in ((0, 254), (0, 77), (0, 199), (1, 1), (9, 9))]
    return first(hosts(rules.allow), True), first(hosts(rules.deny), False), first(spare, None)


def docker_hub_rate_limit(username: str | None, password: str | None, *, timeout: float = 15) -> dict[str, str]:
    """Docker Hub's pull allowance as its headers state it (FACTS 7); a HEAD is not a counted pull."""
    import requests

    auth = (username, password) if username and password else None
    token = requests.get("https://auth.docker.io/token", params={
        "service": "registry.docker.io", "scope": "repository:ratelimitpreview/test:pull"},
        auth=auth, timeout=timeout).json()["token"]
    resp = requests.head(f"{DOCKER_HUB}/v2/ratelimitpreview/test/manifests/latest",
                         headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    return {k: resp.headers.get(k, "") for k in ("ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source")}


def rate_limit_check(settings: object, proves: str) -> PolicyCheck:
    """Docker Hub's pull allowance (limit, remaining, source), or n/a when the upstream is not Docker Hub."""
    from .credentials import upstream_password

    upstream = settings.upstream  # type: ignore[attr-defined]
    if upstream.url.rstrip("/") != DOCKER_HUB:
        return PolicyCheck("ratelimit-headers", proves, "-", "-", f"upstream is {upstream.url}, not Docker Hub", "n/a")
    password = upstream_password(settings)  # type: ignore[arg-type]
    headers = docker_hub_rate_limit(upstream.username, password.reveal() if password else None)
    # No headers at all means no limit applies; missing ones otherwise deserve a look.
    status: Status = "pass" if all(headers.values()) or not any(headers.values()) else "warn"
    return PolicyCheck("ratelimit-headers", proves, "HEAD ratelimitpreview/test on Docker Hub (not a counted pull)",
                       "limit, remaining and source headers", str(headers), status)


def upstream_token_actions(url: str, username: str, password: str, *, repository: str = "library/hello",
                           timeout: float = 15) -> set[str]:
    """What the upstream's token service grants the mirror's account when asked for everything.

    Follows the registry's own Bearer challenge to the token realm, asks for pull, push and delete on
    one repository, and reads the `access` claim of the token it gets (a JWT, on Docker Hub as on
    the stand-in); the token itself is never shown.
    """
    import base64
    import json

    from .registry_auth import bearer_token

    token = bearer_token(url, username, password, scope=f"repository:{repository}:pull,push,delete", timeout=timeout)
    if token is None:
        return {"pull", "push", "delete"}  # no token service: whoever reaches it may do anything
    payload = token.split(".")[1] if token.count(".") == 2 else ""
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) if payload else {}
    return {action for grant in claims.get("access", []) for action in grant.get("actions", [])}


def upstream_scope_check(settings: object, proves: str) -> PolicyCheck:
    """Warn when the mirror's upstream credential could do more than pull."""
    from .credentials import upstream_password

    upstream = settings.upstream  # type: ignore[attr-defined]
    password = upstream_password(settings)  # type: ignore[arg-type]
    if not upstream.username or password is None:
        return PolicyCheck("upstream-pull-only", proves, "-", "-", "anonymous upstream pulls: nothing to scope", "n/a")
    actions = upstream_token_actions(upstream.url, upstream.username, password.reveal())
    extra = sorted(actions - {"pull"})
    return PolicyCheck("upstream-pull-only", proves,
                       "ask the upstream token service for pull,push,delete and read what the token grants",
                       "pull only", f"granted: {', '.join(sorted(actions)) or 'nothing'}",
                       "warn" if extra else "pass",
                       "" if not extra else "give the mirror a pull-only credential (a read-only access token)")


def private_dir(path: Path) -> bool:
    return stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
