"""Triage evidence on the local platform: the process table, the sockets, the stack's logs.

Every probe has a short timeout, so a hung layer costs seconds, not the diagnosis.
"""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from ...checks.addresses import sample_addresses
from ...checks.client import PullFailed, pull_over_api
from ...config_drift import config_drift
from ...credentials import LocalStackSecrets
from ...http_clients import client_from
from ...incidents.triage import S3_AUTH, Facts, Finding, meaningful
from ...incidents.upstream_probe import clip as _clip
from ...incidents.upstream_probe import upstream_findings
from ...s3_clients import s3_client
from ...unix_http import unix_request
from .state import StackState

if TYPE_CHECKING:
    from .platform import LocalPlatform

PROBE_TIMEOUT = 10.0
TAIL_BYTES = 64 * 1024


class LocalEvidence:
    def __init__(self, stack: LocalPlatform, *, probe_image: str = "library/hello:latest",
                 recent_minutes: float = 15) -> None:
        self.target = stack
        self.recent_minutes = recent_minutes
        repository, _, tag = probe_image.removeprefix("docker.io/").partition(":")
        self.repository, self.tag = repository, tag or "latest"
        self.allowed = sample_addresses(stack.rules)[0] or "127.0.0.1"

    def new_facts(self) -> Facts:
        # SeaweedFS runs here and the proxy reaches the mirrors over sockets: nothing brokered, no policies.
        return Facts()

    def check(self, layer: str, facts: Facts) -> list[Finding]:
        state = StackState.load(self.target.paths.state_file)
        return {
            "public endpoint": self._endpoint, "security proxy": self._proxy, "mirror instances": self._mirrors,
            "S3": self._s3, "upstream": self._upstream, "deployments": self._deployments,
            "recent errors": self._errors,
        }[layer](state, facts)

    # ------------------------------------------------------------------ layers

    def _endpoint(self, state: StackState, facts: Facts) -> list[Finding]:
        url = f"http://{self.target.endpoint}"
        session = client_from(self.allowed)
        try:
            status = session.get(f"{url}/v2/", timeout=PROBE_TIMEOUT).status_code
            facts.endpoint_status = status
            found = [Finding("public endpoint", f"GET /v2/ as allowed client {self.allowed}", status == 200,
                             f"{status}")]
        except requests.RequestException as exc:
            facts.endpoint_status = None
            return [Finding("public endpoint", f"GET /v2/ as allowed client {self.allowed}", False,
                            f"no answer: {exc.__class__.__name__}")]
        started = time.monotonic()
        try:
            pulled = pull_over_api(url, session, self.repository, self.tag)
            facts.cached_pull = (f"ok: {self.repository}:{self.tag} pulled, {pulled.blobs} blob(s) ({pulled.bytes} bytes), "
                                 "digests verified")
            found.append(Finding("public endpoint", f"pull {self.repository}:{self.tag} (manifests and blobs)",
                                 True, f"{facts.cached_pull[4:]}, {time.monotonic() - started:.1f} s"))
        except (PullFailed, requests.RequestException) as exc:
            facts.cached_pull = f"failed: {exc}"
            found.append(Finding("public endpoint", f"pull {self.repository}:{self.tag} (manifests and blobs)",
                                 False, str(exc)[:200]))
        return found

    def _proxy(self, state: StackState, facts: Facts) -> list[Finding]:
        rec = state.processes.get("proxy")
        facts.proxy_running = rec is not None and rec.alive()
        found = [Finding("security proxy", "nginx master running", facts.proxy_running,
                         f"pid {rec.pid}" if rec else "not in the stack's state")]
        if facts.proxy_running:
            try:
                resp = unix_request(str(self.target.paths.proxy_socket), "GET", "/v2/", timeout=PROBE_TIMEOUT,
                                    headers={"X-Forwarded-For": self.allowed})
                facts.proxy_status = resp.status
                found.append(Finding("security proxy", "GET /v2/ at its socket, as the router forwards it",
                                     resp.status == 200, str(resp.status)))
            except OSError as exc:
                found.append(Finding("security proxy", "GET /v2/ at its socket", False, f"no answer: {exc}"))
        conf = self.target.paths.config / "proxy.conf"
        if conf.exists():
            drift = config_drift("proxy.conf", self.target.configs.nginx_conf("proxy", state.mirrors),
                                 conf.read_text())
            facts.proxy_drift_lines = drift.edited_lines
            # Line numbers only: the config holds the allow-list.
            found.append(Finding("security proxy", "running config = what the parameters render", drift.identical,
                                 "identical" if drift.identical else drift.describe().partition(": ")[2]))
        errors = [line for line in _recent(_tail(self.target.paths.logs / "proxy.error.log"), self.recent_minutes)
                  if "connect() to unix:" in line and "failed" in line]
        facts.proxy_connect_errors = len(errors)
        # Past errors (an instance replaced minutes ago) are evidence only while the proxy fails now.
        failing = facts.proxy_status in (502, 504) or facts.endpoint_status in (502, 504)
        found.append(Finding("security proxy", f"connect errors towards the mirrors (last {self.recent_minutes:g} min)",
                             not errors if failing else None, f"{len(errors)}" + (f"; last: {_clip(errors[-1])}" if errors else "")))
        return found

    def _mirrors(self, state: StackState, facts: Facts) -> list[Finding]:
        found: list[Finding] = []
        facts.mirrors = []
        for name in state.mirrors:
            rec = state.processes.get(name)
            running = rec is not None and rec.alive()
            mirror: dict = {"name": name, "running": running, "status": None, "seconds": None,
                            "exit_reason": None, "errors": []}
            log = self.target.paths.logs / f"{name}.log"
            lines = _tail(log)
            mirror["errors"] = [_clip(line) for line in lines if meaningful(line) and (
                '"level":"error"' in line or any(w in line for w in S3_AUTH))][-3:]
            if running:
                started = time.monotonic()
                try:
                    mirror["status"] = unix_request(str(self.target.paths.mirror_socket(name)), "GET", "/v2/",
                                                    timeout=PROBE_TIMEOUT).status
                except OSError as exc:
                    mirror["exit_reason"] = f"does not answer: {exc.__class__.__name__}"
                mirror["seconds"] = time.monotonic() - started
                found.append(Finding(f"mirror {name}", "GET /v2/ at its socket", mirror["status"] == 200,
                                     f"{mirror['status']} in {mirror['seconds']:.2f} s" if mirror["status"]
                                     else str(mirror["exit_reason"])))
            else:
                mirror["exit_reason"] = _exit_reason(lines)
                found.append(Finding(f"mirror {name}", "process running", False,
                                     f"exited: {mirror['exit_reason']}"))
            if mirror["errors"]:
                found.append(Finding(f"mirror {name}", "recent errors in its log", None, mirror["errors"][-1]))
            facts.mirrors.append(mirror)
        if not state.mirrors:
            found.append(Finding("mirror instances", "instances in service", False, "none"))
        return found

    def _s3(self, state: StackState, facts: Facts) -> list[Finding]:
        assert self.target.settings.local is not None and self.target.settings.storage is not None
        local, bucket = self.target.settings.local, self.target.settings.storage.bucket
        try:
            with socket.create_connection((local.address, local.s3_port), timeout=3):
                facts.s3_reachable = True
        except OSError as exc:
            facts.s3_reachable = False
            return [Finding("S3", f"S3 API at {local.address}:{local.s3_port} accepts connections", False,
                            f"{exc.__class__.__name__}: {exc.strerror or exc}")]
        found = [Finding("S3", f"S3 API at {local.address}:{local.s3_port} accepts connections", True, "yes")]
        secrets = LocalStackSecrets.load_or_create(self.target.paths.secrets_file, create=False)
        s3 = s3_client(endpoint=self.target.configs.s3_endpoint, access_key=secrets.s3_access_key.reveal(),
                       secret_key=secrets.s3_secret_key.reveal())
        try:
            s3.head_bucket(Bucket=bucket)
            facts.s3_credentials_ok, facts.bucket_exists = True, True
            found.append(Finding("S3", f"bucket {bucket} present, the stack's keys accepted", True, "HEAD 200"))
        except Exception as exc:  # noqa: BLE001 - botocore's ClientError or a connection error: both are evidence
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", exc.__class__.__name__))
            facts.bucket_exists = False if code in ("404", "NoSuchBucket") else None
            facts.s3_credentials_ok = False if code in ("403", *S3_AUTH) else None
            found.append(Finding("S3", f"bucket {bucket} present, the stack's keys accepted", False, f"HEAD: {code}"))
            return found
        key = f"_triage/{time.time_ns()}"
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"triage")
            same = s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"triage"
            s3.delete_object(Bucket=bucket, Key=key)
            facts.s3_round_trip_ok = same
            found.append(Finding("S3", "write, read, delete under _triage/", same, "round trip ok" if same else
                                 "read back different bytes"))
        except Exception as exc:  # noqa: BLE001 - whatever failed is the evidence
            facts.s3_round_trip_ok = False
            found.append(Finding("S3", "write, read, delete under _triage/", False, _clip(str(exc))))
        return found

    def _upstream(self, state: StackState, facts: Facts) -> list[Finding]:
        return upstream_findings(self.target.settings, facts, self.repository, self.tag)

    def _deployments(self, state: StackState, facts: Facts) -> list[Finding]:
        last = state.last_deploy
        ok = last.get("ok")
        # The same process facts `make status` reads: a master gone while an orphaned worker still
        # answers is as down here as there.
        status = self.target.status()
        table = status.processes
        facts.processes_down = list(table.loc[~table["running"], "component"]) if len(table) else []
        return [Finding("deployments", "last deploy of the stack", ok is not False,
                        "succeeded" if ok else f"failed at {last.get('failed_at')}: {_clip(str(last.get('error')))}"
                        if ok is False else "no deploy recorded"),
                Finding("deployments", "every recorded process running (as `make status` reads it)",
                        not facts.processes_down, status.condition)]

    def _errors(self, state: StackState, facts: Facts) -> list[Finding]:
        found = []
        logs = [("security proxy", "proxy.error.log"), ("S3", "s3-gateway.log"), ("upstream", "hub.log"),
                *((f"mirror {name}", f"{name}.log") for name in state.mirrors)]
        for name, path in logs:
            lines = [line for line in _recent(_tail(self.target.paths.logs / path), self.recent_minutes)
                     if re.search(r"\[(error|crit|alert|emerg)\]|\"level\":\"(error|fatal|panic)\"|^E\d{4}", line)]
            kept = [line for line in lines if meaningful(line)]
            noise = f" ({len(lines) - len(kept)} telemetry-export failures left out)" if len(kept) < len(lines) else ""
            found.append(Finding(name, f"recent error lines in {path}", None,
                                 f"{len(kept)}{noise}" + (f"; last: {_clip(kept[-1])}" if kept else "")))
        return found


def _tail(path: Path, size: int = TAIL_BYTES) -> list[str]:
    try:
        with open(path, "rb") as f:
            start = max(0, f.seek(0, 2) - size)
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
            return lines[1:] if start else lines  # the first line of a cut is partial
    except OSError:
        return []


_STAMPS = (  # nginx's error log (local time), the registries' JSON (UTC), SeaweedFS's glog (local, no year)
    (re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)"), "%Y/%m/%d %H:%M:%S", False),
    (re.compile(r'"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)'), "%Y-%m-%dT%H:%M:%S", True),
)


def _recent(lines: list[str], minutes: float) -> list[str]:
    """The lines stamped within the last `minutes`; a line without a stamp goes with the one before."""
    from datetime import datetime, timedelta, timezone

    now_local, now_utc = datetime.now(), datetime.now(timezone.utc).replace(tzinfo=None)
    kept, keep = [], False
    for line in lines:
        for pattern, fmt, utc in _STAMPS:
            match = pattern.search(line)
            if match:
                try:
                    stamp = datetime.strptime(match.group(1), fmt)
                except ValueError:
                    break
                keep = stamp >= (now_utc if utc else now_local) - timedelta(minutes=minutes)
                break
        if keep:
            kept.append(line)
    return kept


def _exit_reason(lines: list[str]) -> str:
    panic = [line for line in lines if line.startswith("panic:")]
    if panic:
        return _clip(panic[-1])
    # No last words: killed from outside (SIGKILL, the out-of-memory killer) or the machine restarted.
    return "exited without a panic in its log (killed, or out of memory)"
