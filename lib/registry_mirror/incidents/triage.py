"""Triage: from "pulls fail" to the broken layer, walking the chain from the outside in.

    public endpoint -> security proxy -> each mirror instance -> S3 -> upstream (Docker Hub)
                    -> recent deployments -> recent errors in each layer's logs

Each layer's step records what it saw (`Finding`s: evidence that never holds a secret) and a one-line
verdict; `diagnose` then names the most likely broken layer, its cause, what still works and the
remedy (see `remedies`). Each platform gathers its own evidence (platforms/<name>/evidence.py,
through `Platform.triage_evidence`); the rules that read it are here, the same for every platform.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ..platforms.base import Platform, TriageEvidence


@dataclass(frozen=True)
class Finding:
    layer: str
    check: str
    ok: bool | None  # None: informational, or could not be told from here
    evidence: str  # what was seen: a status, a time, a log line; never a secret


OK_MARKS = {True: "\u2714 ok", False: "\u2718 FAILING", None: "\u00b7 info"}


@dataclass(frozen=True)
class LayerResult:
    """One step of the walk: its findings as a table and a one-line verdict."""

    layer: str
    findings: tuple[Finding, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.ok is not False for f in self.findings)

    @property
    def verdict(self) -> str:
        failed = [f for f in self.findings if f.ok is False]
        if not failed:
            return f"{self.layer}: OK ({len(self.findings)} check(s), {self.seconds:.1f} s)"
        return f"{self.layer}: FAILING: " + "; ".join(f"{f.check}: {f.evidence}" for f in failed[:3])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([f.__dict__ for f in self.findings], columns=["layer", "check", "ok", "evidence"])

    def shown(self) -> pd.DataFrame:
        """The findings as read: a clear mark for ok, evidence never cut short."""
        return self.to_frame().assign(ok=lambda f: f["ok"].map(OK_MARKS))

    def _repr_html_(self) -> str:
        return f"<p><b>{self.verdict}</b></p>" + self.shown().to_html(index=False)

    def __repr__(self) -> str:
        return f"{self.verdict}\n{self.shown().to_string(index=False)}"


@dataclass(frozen=True)
class Diagnosis:
    healthy: bool
    layer: str  # the most likely broken layer ("" when healthy)
    cause: str
    still_works: str
    remedy: str | None  # a remedy id of `remedies.REMEDIES`, or None when none can be applied from here
    advice: str  # what the remedy does, or what to do when there is none
    parameter: str = ""  # the runbook parameter that is wrong, when the fault is the question, not the stack

    def verdict(self) -> str:
        if self.healthy:
            return f"HEALTHY: every layer answers. {self.still_works}"
        if self.parameter:
            return (f"PARAMETER ERROR: {self.parameter}: {self.cause}; no layer is blamed and no remedy applies. "
                    f"{self.advice}.")
        remedy = f"Remedy: {self.remedy} ({self.advice})" if self.remedy else f"No remedy from here: {self.advice}"
        return f"BROKEN LAYER: {self.layer}. CAUSE: {self.cause}. STILL WORKS: {self.still_works}. {remedy}."

    def _repr_html_(self) -> str:
        return f"<p><b>{self.verdict()}</b></p>"

    def __repr__(self) -> str:
        return self.verdict()


@dataclass
class Facts:
    """What the rules read, gathered by the platform's evidence steps."""

    endpoint_status: int | None = None  # GET /v2/ through the public endpoint as an allowed client
    cached_pull: str | None = None  # "ok: ..." or the failure, for the probe image
    proxy_running: bool = True
    proxy_status: int | None = None  # GET /v2/ straight at the proxy
    proxy_drift_lines: int = 0  # running config lines that differ from what the parameters render
    proxy_connect_errors: int = 0  # recent "connect() ... failed" towards the mirrors in its error log
    network_policy_missing: bool = False  # CF: no policy lets the proxy reach the mirror
    mirrors: list[dict] = field(default_factory=list)  # name, running, status, seconds, exit_reason, errors
    s3_reachable: bool | None = None
    s3_credentials_ok: bool | None = None
    bucket_exists: bool | None = None
    s3_round_trip_ok: bool | None = None
    upstream_reachable: bool | None = None
    upstream_auth_ok: bool | None = None
    upstream_remaining: int | None = None  # ratelimit-remaining, when the upstream sends it
    upstream_limit: int | None = None
    probe_image: str = ""  # repository:tag
    probe_upstream_status: int | None = None  # the upstream's answer to a HEAD of the probe image itself
    processes_down: list[str] = field(default_factory=list)  # recorded processes not running (as status reads them)
    stuck_deployments: list[str] = field(default_factory=list)  # "app: guid, N min DEPLOYING"
    crashing_apps: list[str] = field(default_factory=list)
    # What the platform's evidence says of itself, so the rules never ask which platform it is:
    s3_brokered: bool = False  # the store is a brokered service: nothing here can restart or recreate it
    network_policies: bool = False  # the proxy reaches the mirror only where a network policy lets it


class Triage:
    """The walk, one layer per call, so a notebook shows each step's evidence as it goes."""

    def __init__(self, target: Platform, new_evidence: Callable[[], TriageEvidence], *,
                 slow_seconds: float = 2.0) -> None:
        self.target = target  # the platform a remedy acts on
        self._new_evidence = new_evidence
        self.evidence = new_evidence()
        self.slow_seconds = slow_seconds
        self.facts = self.evidence.new_facts()
        self.layers: list[LayerResult] = []
        self.started = time.monotonic()

    def step(self, layer: str) -> LayerResult:
        """Run one layer's checks: "public endpoint", "security proxy", "mirror instances", "S3",
        "upstream", "deployments", "recent errors"."""
        started = time.monotonic()
        findings = self.evidence.check(layer, self.facts)
        result = LayerResult(layer, tuple(findings), time.monotonic() - started)
        self.layers = [r for r in self.layers if r.layer != layer] + [result]
        return result

    def walk(self) -> list[LayerResult]:
        return [self.step(layer) for layer in LAYERS]

    def again(self) -> Triage:
        """A new walk over the same stack with fresh evidence (after a remedy), not yet run."""
        return Triage(self.target, self._new_evidence, slow_seconds=self.slow_seconds)

    def diagnose(self) -> Diagnosis:
        return diagnose(self.facts, slow_seconds=self.slow_seconds)

    def to_frame(self) -> pd.DataFrame:
        return pd.concat([r.to_frame() for r in self.layers], ignore_index=True) if self.layers else \
            pd.DataFrame(columns=["layer", "check", "ok", "evidence"])

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


LAYERS = ("public endpoint", "security proxy", "mirror instances", "S3", "upstream", "deployments", "recent errors")

S3_AUTH = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
# Log lines that say nothing about the mirror's health: registry 3.x exports traces to
# localhost:4318 unless OTEL_TRACES_EXPORTER=none, and logs every failed export (every 10 s).
NOISE = re.compile(r'"msg":"traces export: |"msg":"(otel|OpenTelemetry) ')


def meaningful(line: str) -> bool:
    """A log line worth an operator's attention (not an exporter's complaint about telemetry)."""
    return NOISE.search(line) is None
UPSTREAM_AT_START = ("connection refused", "no such host", "dial tcp", "i/o timeout", "context deadline exceeded")


def diagnose(f: Facts, *, slow_seconds: float = 2.0) -> Diagnosis:
    """The most likely broken layer and cause, from the outside in, the most specific rule first."""
    works = _still_works(f)
    healthy_mirrors = [m for m in f.mirrors if m.get("status") == 200]
    dead = [m for m in f.mirrors if not m.get("running")]
    reasons = " ".join(str(m.get("exit_reason") or "") + " " + " ".join(m.get("errors") or []) for m in f.mirrors)
    brokered = f.s3_brokered

    if f.stuck_deployments:
        return Diagnosis(False, "deployments", f"a deployment is stuck in progress: {'; '.join(f.stuck_deployments)}",
                         works, "cancel-deployment", "cancel it: CF puts back the instances that served before")
    if not f.proxy_running:
        return Diagnosis(False, "security proxy", "the security proxy is not running", works, "redeploy-proxy",
                         "re-render and redeploy the proxy")
    if f.proxy_drift_lines and f.endpoint_status == 403:
        return Diagnosis(False, "security proxy",
                         f"the running proxy config refuses allowed clients (403); it differs from what the parameters "
                         f"render in {f.proxy_drift_lines} line(s)", works, "redeploy-proxy",
                         "re-render the proxy config from the parameters and reload it")
    if f.network_policy_missing or (
            f.endpoint_status in (502, 504) and (f.proxy_connect_errors or f.proxy_drift_lines) and healthy_mirrors):
        where = "the network policy proxy -> mirror is missing or the mirror's route changed" if f.network_policies else \
            "its config names mirror sockets no instance listens on"
        return Diagnosis(False, "security proxy -> mirror",
                         f"the proxy cannot reach the mirror instances, which are healthy ({where}; "
                         f"{f.proxy_connect_errors} connect error(s) in its log)" if not f.network_policy_missing else
                         "the proxy cannot reach the mirror: no network policy lets it (proxy -> mirror, tcp 5000)",
                         works, "redeploy-proxy",
                         "re-render and redeploy the proxy" + (" and its network policy" if f.network_policies else ""))
    if f.s3_reachable is False:
        return Diagnosis(False, "S3", "the S3 API does not answer", works, None if brokered else "redeploy",
                         "the store is a brokered service: open a ticket with its provider" if brokered else
                         "redeploy: starts SeaweedFS again on its kept data")
    if f.bucket_exists is False:
        return Diagnosis(False, "S3", "the cache's bucket does not exist", works, None if brokered else "redeploy",
                         "recreate the service instance and bind it again" if brokered else
                         "redeploy: creates the bucket (empty; the cache refills from Docker Hub)")
    if f.s3_credentials_ok is False:
        return Diagnosis(False, "S3", "S3 refuses the cache's credentials", works, None if brokered else "redeploy",
                         "rotate the service key and redeploy" if brokered else "redeploy with the stack's keys")
    if f.mirrors and not healthy_mirrors:
        if any(word in reasons for word in S3_AUTH):
            return Diagnosis(False, "mirror instances",
                             "every mirror instance fails at start: S3 rejects the credentials they run with "
                             f"({_first(reasons, S3_AUTH)})", works, "redeploy",
                             "redeploy: instances start again with the current S3 credentials")
        if f.upstream_reachable is False:
            return Diagnosis(False, "mirror instances",
                             "every mirror instance fails at start because Docker Hub is unreachable: the registry "
                             "checks its upstream at start and panics (distribution issue 4038)", works, None,
                             "wait until Docker Hub answers, then use the remedy replace-mirrors; do not restart "
                             "instances before that, they would fail the same way")
        return Diagnosis(False, "mirror instances", "no mirror instance answers"
                         + (f" ({dead[0].get('exit_reason')})" if dead else ""), works, "replace-mirrors",
                         "start new instances one at a time")
    if dead:
        names = ", ".join(m["name"] for m in dead)
        return Diagnosis(False, f"mirror instance {names}",
                         f"not running: {dead[0].get('exit_reason') or 'exited'}; the others serve", works,
                         "replace-mirrors", "start new instances one at a time; in flight pulls are kept")
    hung = [m for m in f.mirrors if m.get("running") and m.get("status") is None]
    if hung:
        return Diagnosis(False, f"mirror instance {hung[0]['name']}",
                         f"runs but does not answer /v2/ ({hung[0].get('exit_reason')}): hung or overloaded", works,
                         "replace-mirrors", "replace the instances one at a time")
    slow = [m for m in f.mirrors if m.get("seconds") is not None and m["seconds"] > slow_seconds]
    if slow:
        return Diagnosis(False, f"mirror instance {slow[0]['name']}",
                         f"answers slowly: {slow[0]['seconds']:.1f} s for /v2/ (others under {slow_seconds:g} s)",
                         works, "replace-mirrors", "replace the instances one at a time")
    if f.upstream_reachable is False:
        return Diagnosis(False, "upstream", "Docker Hub does not answer", works, None,
                         "nothing to do here but wait: new images and tags fail until it answers")
    if f.upstream_remaining == 0:
        return Diagnosis(False, "upstream",
                         f"Docker Hub's pull limit is used up (ratelimit-remaining 0 of {f.upstream_limit} per window); "
                         "it answers manifest GETs with 429", works, None,
                         "wait for the window to roll over; an authenticated account with a higher limit "
                         "(upstream.username and its password) raises it")
    if f.upstream_auth_ok is False:
        return Diagnosis(False, "upstream", "Docker Hub refuses the mirror's credentials", works, None,
                         "rotate the access token and put it in the credential manager, then redeploy")
    others_down = [name for name in f.processes_down if name != "proxy" and not name.startswith("mirror")]
    if others_down:
        names = ", ".join(others_down)
        return Diagnosis(False, names, f"not running: {names} (the stack's status is DEGRADED); whatever still "
                         "answers for it (an orphaned nginx worker) is not reloaded, respawned or stopped cleanly",
                         works, "redeploy", "redeploy: starts what is not running and stops what is left of it")
    if f.probe_upstream_status in (401, 404) and (f.cached_pull or "").startswith("failed"):
        return Diagnosis(False, "", f"the upstream has no {f.probe_image} (HEAD answered "
                         f"{f.probe_upstream_status}), so the mirror cannot serve it either", works, None,
                         "Run again with probe_image set to an image the upstream has, such as library/hello:latest",
                         parameter="probe_image")
    if f.endpoint_status != 200 or (f.cached_pull or "").startswith("failed"):
        return Diagnosis(False, "public endpoint", f"the public endpoint answers {f.endpoint_status}", works,
                         "redeploy", "redeploy the stack")
    return Diagnosis(True, "", "", works, None, "")


def _still_works(f: Facts) -> str:
    if (f.cached_pull or "").startswith("ok"):
        text = f"cached images still pull through the mirror ({f.cached_pull[3:].strip()})"
        if f.upstream_reachable is False or f.upstream_remaining == 0:
            text += "; images and tags not yet cached fail until Docker Hub serves the mirror again"
        return text
    if f.endpoint_status == 200:
        return "the public endpoint answers, but the probe image does not pull"
    return "nothing: pulls fail at the public endpoint"


def _first(text: str, words: tuple[str, ...]) -> str:
    return next(w for w in words if w in text)
