"""A STAND-IN for the Cloud Foundry API, for tests: Cloud Controller v3, the UAA token endpoint and the
container networking policy API v1, served over HTTP on 127.0.0.1 from one in-memory state.

Cloud Foundry cannot run here, so this stand-in copies what the real services answer -- paths, methods,
status codes, JSON shapes, pagination, error bodies and the state machines -- from the CC v3 docs, the
community OpenAPI contract in /work/shared/contracts and the cloud_controller_ng / cf-networking-release
sources. Where those disagree, the module says which one it follows at the place it matters.

Covered:
  * ``GET /`` (with the CC version, settable to model an older CC) and ``GET /v3`` link documents.
  * UAA ``POST /login/oauth/token`` and ``/uaa/oauth/token``: password, client_credentials and
    refresh_token grants, JWT access tokens (user_id / client_id, scope), UAA's error bodies.
  * CC v3: organizations, spaces, apps (metadata PATCH, start and stop actions), domains, routes,
    environment variables, web process and its stats, packages (docker with registry credentials, bits
    with upload and download through a pre-signed blobstore URL), builds, droplets, deployments
    (rolling, canary with continue, cancel with CC's empty answer, supersede, stopped-app shortcut),
    revisions and their environment, jobs, space apply_manifest, service offerings/plans/instances and
    service credential bindings (key) with their details, audit events (process crashes, app stops), feature
    flags, space developer roles (others get CC's 403 NotAuthorized on every change), the org quota
    and its usage summary (deployments beyond it get CC's 422).
  * Time: everything moves by the stand-in's ``clock`` (injectable; tests share their fake one) and
    ``Timings``, never by how often a client asks: jobs, staging and upload processing take seconds;
    instances go STARTING -> RUNNING once their health check passes; a crashing instance runs a moment,
    crashes and is restarted as Diego's restart calculator says (at once, then 30 s doubling to 16 min),
    CRASHED while it waits, each crash an audit event (actor: its process, data.version); deployments
    advance as CC's deployment updater does, batch by batch with max_in_flight, the old processes
    scaled down as the new one grows; a cancel ends an updater cycle later.
  * Instances: each process's instances run with the env and image they started with (old ones keep
    theirs while a deployment brings up new ones); ``Faults.crash_when`` decides which crash,
    ``Faults.transient_crashes`` makes the next ones crash once at boot.
  * CC's refusals while a deployment is in flight: process scale and update (422), apply_manifest jobs
    that would touch the web process (FAILED), restart.
  * Docker staging through containers/image's reference rules: a tag with a digest, or an invalid
    reference, fails the build; the droplet's image is the stager's normalised name.
  * Sidecars (cloud_controller_ng app/messages/app_manifest_message.rb, app/actions/sidecar_create.rb,
    sidecar_update.rb, app_apply_manifest.rb, app/models/runtime/sidecar_model.rb,
    sidecar_process_type_model.rb, constraints/sidecar_memory_less_than_process_memory_policy.rb):
    manifest ``sidecars`` validated at once (every error of every entry, CC's wording) and applied by
    the job after the process is scaled, each entry creating or updating the app's sidecar of its name
    (sidecars the manifest leaves out stay); the memory policy (a process's sidecars must leave it
    memory, equal is refused; a scale or a deployment's memory_in_mb below them is refused too); the
    model's limits and unique indexes; ``GET/POST /v3/apps/:guid/sidecars``, ``GET /v3/processes/:guid/sidecars``,
    ``GET/PATCH/DELETE /v3/sidecars/:guid``; revisions record the app's sidecars
    (revision_create.rb), a sidecar change makes a new one ("Sidecars updated.") and a rollback
    restores the revision's sidecars. A sidecar runs within its process's memory: an instance's
    mem_quota and the org's usage are the process's memory, nothing is added for the sidecar.
  * Log Cache's read API (``GET /api/v1/read/<source id>``, the root's ``log_cache`` link) over the
    lines ``emit_app_log`` adds: its auth proxy's bare 404s, the 1000 limit, time windows, protojson.
  * Networking policy API v1 external: list, create, delete policies; the network.write scope, or a
    space developer without it when ``space_developer_self_service`` is on.
  * Tokens expire by the clock (UAA's access-token validity) and through the faults, on every API the
    stand-in fronts (CC and the policy server alike).
  * Pagination on every list, comma-separated filters, CC error bodies, ``X-Vcap-Request-Id`` on every
    answer, and the faults in ``Faults`` (502 from the router, 429 from CC's rate limiter with its
    Retry-After, 503 from UAA, slow answers, token expiry, failing staging, failing package processing,
    deployments that never get healthy, answers lost after CC acted).

Not covered (each answers like an unrouted CC path, 404 CF-NotFound, or a loud 400/422 naming the
stand-in, so a gap shows up as a failure and never as a silent success):
  * v2 API, logs other than Log Cache's read API, SSH, tasks, restart and restage, route/droplet relationship PATCHes,
    deletes other than a sidecar's, labels on resources other than apps, ``include``/``fields``/``label_selector`` query
    parameters, manifest ``services``/``random-route``, strategies other than rolling and
    canary, canary ``steps``, roles other than space developer, space quotas.
  * Sidecars: buildpack-origin sidecars (from a droplet's sidecars, SidecarSynchronizeFromAppDroplet),
    a sidecar's own log lines (APP/PROC/WEB/SIDECAR/<NAME>) and
    its instance env (Diego gives the app MEMORY_LIMIT minus the sidecars' memory), and running
    instances picking up a sidecar change only when they restart: the stand-in keeps no per-instance
    sidecar state, an instance's answers are the same with or without one.
  * Time moves only when a request arrives (each brings everything up to the clock's now), and the
    ISO timestamps CC shows (created_at) are wall-clock times, not the stand-in's clock; stats' usage
    figures are invented numbers.
  * A 429 from the networking API uses CC's body (the policy server has no rate limiter of its own).
"""
from __future__ import annotations

import base64
import binascii
import copy
import email.parser
import email.policy
import hashlib
import hmac
import io
import json
import re
import secrets
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import yaml

CC_API_VERSION = "3.195.0"
MAX_IN_FLIGHT_SINCE = "3.173.0"  # deployments take options.max_in_flight (cloud_controller_ng PR #3907)
_FLAG_DEFAULTS = {"diego_docker": False}  # models/runtime/feature_flag.rb
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 5000
# Every field cloud.gov's s3 broker puts in a binding's credentials (cloud-gov/s3-broker broker.go,
# Bind): the key pair, the bucket and its region, the regional and the FIPS endpoint (host names, no
# scheme), the other buckets the key reaches, and a URI.
DEFAULT_S3_CREDENTIALS: dict[str, Any] = {
    "access_key_id": "AKIAFAKESTANDIN",
    "secret_access_key": "fake-s3-secret-DO-NOT-LEAK",
    "bucket": "cg-fake-bucket",
    "region": "us-gov-west-1",
    "endpoint": "s3.us-gov-west-1.amazonaws.com",
    "fips_endpoint": "s3-fips.us-gov-west-1.amazonaws.com",
    "additional_buckets": [],
    # cloud.gov's S3 broker embeds the key pair in the URI too, so leak checks must look here as well.
    "uri": "s3://AKIAFAKESTANDIN:fake-s3-secret-DO-NOT-LEAK@s3-us-gov-west-1.amazonaws.com/cg-fake-bucket",
}
_TOKEN_PATHS = ("/login/oauth/token", "/uaa/oauth/token")
TRANSIENT_PANIC = 'panic: Get "https://registry-1.docker.io/v2/": dial tcp: i/o timeout'  # a boot-time upstream blip
# UAA's access-token validity for the cf client (uaa.yml clients.cf.access-token-validity: 1200 s, of
# which UAA reports expires_in one second less).
ACCESS_TOKEN_SECONDS = 1199
REFRESH_TOKEN_SECONDS = 2592000  # clients.cf.refresh-token-validity: 30 days, counted from the login
# Where the stand-in's blobstore answers pre-signed URLs: in CF it is S3 or WebDAV, not CC.
_BLOBSTORE = "/blobstore"
_JSON = "application/json; charset=utf-8"
_ACTIVE_STATES = ("DEPLOYING", "PREPAUSED", "PAUSED", "CANCELING")  # DeploymentModel::ACTIVE_STATES
# ProcessScale::SidecarMemoryLessThanProcessMemory (app/actions/process_scale.rb)
_SCALE_BELOW_SIDECARS = "The requested memory allocation is not large enough to run all of your sidecar processes"
# CC's `maximum_app_disk_in_mb` (config default 2048): a process's disk above it fails its validation
# (app/models/runtime/constraints/max_disk_quota_policy.rb).
MAXIMUM_APP_DISK_IN_MB = 2048


def _disk_refused(disk_in_mb: int) -> str | None:
    if disk_in_mb > MAXIMUM_APP_DISK_IN_MB:
        return (f"Disk quota too much disk requested (requested {disk_in_mb} MB - must be less than "
                f"{MAXIMUM_APP_DISK_IN_MB} MB)")
    return None


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timings:
    """How long the platform takes, in seconds of the stand-in's clock: state moves with time, never
    with the number of requests a client makes."""

    job: float = 0.5  # an apply_manifest job or a broker operation (app/jobs/v3/*)
    upload: float = 0.5  # uploaded bits processed into a READY package (app/jobs/v3/package_bits.rb)
    staging: float = 1.5  # a build: Diego's staging task (dockerapplifecycle builder, buildpack lifecycle)
    start: float = 1.0  # an instance STARTING until its health check passes (executor healthcheck)
    crash_after: float = 1.0  # a crashing instance runs this long once healthy, then crashes
    cancel: float = 0.5  # CANCELING to CANCELED: the deployment updater's next cycle


# For runs on real time (a notebook under papermill): the same order of events, in tenths of a second.
FAST_TIMINGS = Timings(job=0.02, upload=0.02, staging=0.05, start=0.02, crash_after=0.05, cancel=0.02)
IMMEDIATE_RESTARTS, BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, MAX_RESTARTS = 3, 30.0, 960.0, 200


def restart_delay(crash_count: int) -> float:
    """How long Diego waits before restarting an instance after its `crash_count`th crash (bbs
    models/restart_calculator.go): at once for the first two crashes, then 30 s doubling per crash up
    to 16 min; after 200 crashes never again (it stays CRASHED)."""
    if crash_count < IMMEDIATE_RESTARTS:
        return 0.0
    if crash_count >= MAX_RESTARTS:
        return float("inf")
    return min(BACKOFF_SECONDS * 2 ** (crash_count - IMMEDIATE_RESTARTS), MAX_BACKOFF_SECONDS)

@dataclass
class Faults:
    """Mutable switches, read on every request, so a test can flip them between calls."""

    build_fails: bool = False  # builds go STAGING -> FAILED ("StagingError - Staging error: staging failed")
    deployment_never_healthy: bool = False  # deployments stay ACTIVE/DEPLOYING until cancelled
    # After N more authenticated CC requests every issued access token becomes invalid (401
    # CF-InvalidAuthToken) until the client gets a new one, e.g. with its refresh token. One-shot.
    expire_token_after: int | None = None
    transient_502: int = 0  # the next N CC/networking requests answer 502 (from the router)
    # The next N CC/networking requests answer 429 with Retry-After: 1. Like CC's rate limiter it skips
    # GET / and /v3; the policy server has no limiter of its own, so its 429 borrows CC's body.
    rate_limited_429: int = 0
    retry_after_seconds: int = 1  # the Retry-After those 429s carry
    uaa_unavailable: int = 0  # the next N token requests answer 503 (UAA restarting) with Retry-After
    slow_seconds: float = 0.0  # every CC response (not UAA, not networking) is delayed this long
    # Decides whether instances of an app crash: given the environment and docker image they started
    # with, the exit description of the crash (as Diego reports it), or None when they run. Crashing
    # instances flap (CRASHED, STARTING, RUNNING, ...) in stats, each crash recorded as an audit event,
    # and a rolling deployment onto them never finishes, as in CC.
    crash_when: Callable[[Mapping[str, Any], str | None], str | None] | None = None
    package_processing_fails: bool = False  # uploaded bits end FAILED, as when the blobstore refuses them
    # The next N instances a deployment or a start brings up crash once at boot and then run: Diego's
    # executor restarts a crashed instance at once for its first crashes (rep/bbs crash policy,
    # models/actual_lrp.go ShouldRestartCrash). Each leaves one crash audit event of its process.
    transient_crashes: int = 0
    # Mutating CC requests that take effect, but whose answer is lost: the gorouter answers 502
    # (proxy/round_tripper: endpoint_failure) after CC acted, as when the backend timed out. Each
    # entry is "METHOD path-regex" and is used up by the first request it matches; "*" matches any.
    lost_answers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in saw it, kept in arrival order in ``FakeCloudFoundry.requests``."""

    method: str
    path: str
    query: dict[str, list[str]]
    # Parsed JSON; YAML text for apply_manifest; form dict for the token endpoint; for a multipart
    # upload {field: {"filename", "size"}}; None when there was no body.
    body: object
    status: int
    request_id: str
    authenticated: bool  # a valid access token was presented and accepted

    @property
    def mutating(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE") and self.path not in _TOKEN_PATHS


# --------------------------------------------------------------------------------------------------
# Internal model (one dataclass per CC resource; presenters below turn them into API JSON)
# --------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _guid() -> str:
    return str(uuid.uuid4())


@dataclass
class _Org:
    name: str
    guid: str = field(default_factory=_guid)
    quota_guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Space:
    name: str
    org_guid: str
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Domain:
    name: str
    internal: bool
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Process:
    app_guid: str
    type: str = "web"
    instances: int = 1
    memory_in_mb: int = 1024
    disk_in_mb: int = 1024
    log_rate_limit: int = -1
    command: str | None = None
    health_check_type: str = "port"
    health_check_endpoint: str | None = None
    health_check_timeout: int | None = None
    health_check_invocation_timeout: int | None = None
    health_check_interval: int | None = None
    revision_guid: str | None = None
    # What its instances started with (None: never started): each process's instances run with their
    # own, so old ones crash or run as they did while a deployment brings up new ones.
    started_env: dict[str, Any] | None = None
    started_image: str | None = None
    # When each instance (by index) last booted, on the stand-in's clock; its state follows from it.
    started: list[float] = field(default_factory=list)
    boot_crash: set[int] = field(default_factory=set)  # indexes that crash once at boot (transient)
    crashes_seen: dict[tuple[int, float], int] = field(default_factory=dict)  # (index, boot) -> events recorded
    guid: str = field(default_factory=_guid)
    version: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _App:
    name: str
    space_guid: str
    lifecycle_type: str  # "docker" or "buildpack"
    buildpacks: list[str] = field(default_factory=list)
    stack: str | None = "cflinuxfs4"
    state: str = "STOPPED"
    droplet_guid: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    # Web processes, oldest first. A rolling deployment adds one and removes the others when it ends,
    # as CC does, so the web process guid changes across a deployment.
    processes: list[_Process] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # What its instances started with: the env and image at the last start or deployment.
    running_env: dict[str, Any] = field(default_factory=dict)
    running_image: str | None = None
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    @property
    def web(self) -> _Process:
        return self.processes[-1]


@dataclass
class _Package:
    app_guid: str
    type: str  # "docker" or "bits"
    state: str
    image: str | None = None
    username: str | None = None  # docker registry credentials Diego pulls the image with
    password: str | None = None
    sha256: str | None = None
    error: str | None = None
    bits: bytes = b""
    uploaded_t: float = 0.0  # on the stand-in's clock
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Droplet:
    app_guid: str
    package_guid: str
    lifecycle_type: str
    image: str | None
    stack: str | None
    buildpacks: list[str]
    sha256: str | None
    state: str = "STAGED"
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Build:
    app_guid: str
    package_guid: str
    lifecycle_type: str
    stack: str | None
    buildpacks: list[str]
    created_by: str
    state: str = "STAGING"
    error: str | None = None
    droplet_guid: str | None = None
    created_t: float = 0.0  # on the stand-in's clock
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Revision:
    app_guid: str
    version: int
    droplet_guid: str
    env: dict[str, Any]
    commands: dict[str, str | None]
    description: str
    # The app's sidecars when it was recorded (RevisionCreate): name, command, memory_in_mb and
    # process_types in the order they were attached, as RevisionPresenter shows them.
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Sidecar:
    """SidecarModel (app/models/runtime/sidecar_model.rb) with its SidecarProcessTypeModel rows: a
    command run in every instance of the app's processes of the given types."""

    app_guid: str
    name: str
    command: str
    process_types: list[str]  # as attached; the presenter sorts them (SidecarMixin#process_types)
    memory_in_mb: int | None = None  # counted within the process's memory, not on top of it
    origin: str = "user"  # SidecarModel::ORIGIN_USER; "buildpack" ones come from droplets
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Deployment:
    app_guid: str
    strategy: str
    max_in_flight: int
    droplet_guid: str
    previous_droplet_guid: str | None
    revision_guid: str | None
    revision_version: int | None
    original_instances: int
    web_instances: int | None = None
    memory_in_mb: int | None = None
    state: str = "DEPLOYING"  # the deprecated field, still required by the contract
    status_value: str = "ACTIVE"
    status_reason: str | None = "DEPLOYING"
    deploying_process_guid: str | None = None
    new_processes: list[dict[str, str]] = field(default_factory=list)
    running_env: dict[str, Any] = field(default_factory=dict)  # what the new instances start with
    running_image: str | None = None
    previous_env: dict[str, Any] = field(default_factory=dict)  # what the old ones run with
    previous_image: str | None = None
    changed_t: float = 0.0  # when its status last changed, on the stand-in's clock
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    status_updated_at: str = field(default_factory=_now)
    last_healthy_at: str = field(default_factory=_now)

    def set_status(self, state: str, value: str, reason: str, at: float = 0.0) -> None:
        self.state, self.status_value, self.status_reason = state, value, reason
        self.updated_at = self.status_updated_at = _now()
        self.changed_t = at


@dataclass
class _Destination:
    app_guid: str
    port: int = 8080
    protocol: str = "http1"
    guid: str = field(default_factory=_guid)


@dataclass
class _Route:
    space_guid: str
    domain_guid: str
    host: str
    path: str
    destinations: list[_Destination] = field(default_factory=list)
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


class _SidecarInvalid(Exception):
    """SidecarCreate::InvalidSidecar / SidecarUpdate::InvalidSidecar: a 422 from the endpoints, a
    FAILED apply_manifest job ("For application '<name>': ...") from a manifest."""


class _JobFailure(Exception):
    """Raised by a job's completion step; the job goes FAILED with this CC error."""

    def __init__(self, detail: str, code: int = 10008, title: str = "CF-UnprocessableEntity") -> None:
        super().__init__(detail)
        self.error = {"code": code, "title": title, "detail": detail}


@dataclass
class _Job:
    operation: str
    resource_type: str  # the link name CC uses: "space", "service_instances", ...
    resource_guid: str
    complete: Callable[[], None]
    state: str = "PROCESSING"
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    created_t: float = 0.0  # on the stand-in's clock
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _ServiceOffering:
    name: str
    description: str
    broker_guid: str = field(default_factory=_guid)
    guid: str = field(default_factory=_guid)
    catalog_id: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _ServicePlan:
    name: str
    offering_guid: str
    description: str
    guid: str = field(default_factory=_guid)
    catalog_id: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _LastOperation:
    type: str = "create"
    state: str = "in progress"
    description: str = ""
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def present(self) -> dict[str, Any]:
        return {"type": self.type, "state": self.state, "description": self.description,
                "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass
class _ServiceInstance:
    name: str
    space_guid: str
    plan_guid: str
    tags: list[str]
    last_operation: _LastOperation = field(default_factory=_LastOperation)
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _ServiceKey:
    name: str
    instance_guid: str
    last_operation: _LastOperation = field(default_factory=_LastOperation)
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _AuditEvent:
    type: str
    actor: dict[str, str]
    target: dict[str, str]
    data: dict[str, Any]
    space_guid: str
    org_guid: str
    guid: str = field(default_factory=_guid)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)


@dataclass
class _Token:
    subject: str  # user name or client id
    client_id: str
    grant_type: str
    scope: str
    refresh_token: str | None
    expires_at: float = float("inf")  # by the stand-in's clock; UAA's access_token_validity


# --------------------------------------------------------------------------------------------------
# Errors and responses
# --------------------------------------------------------------------------------------------------

@dataclass
class _Resp:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _s3_error(status: int, code: str, message: str) -> _Resp:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"</Error>").encode()
    return _Resp(status, body, {"Content-Type": "application/xml"})


def _json_resp(status: int, payload: object, headers: Mapping[str, str] | None = None) -> _Resp:
    return _Resp(status, json.dumps(payload).encode(), {"Content-Type": _JSON, **(headers or {})})


class _CCError(Exception):
    """A Cloud Controller error: ``{"errors": [{"code", "title", "detail"}]}`` (errors/v2.yml codes)."""

    def __init__(self, status: int, code: int, title: str, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.headers = dict(headers or {})

    def response(self) -> _Resp:
        body = {"errors": [{"code": self.code, "title": self.title, "detail": self.detail}]}
        return _json_resp(self.status, body, self.headers)


class _CompoundError(_CCError):
    """CC's CompoundError: several 422s in one answer, as the space apply_manifest gives every
    validation error of every app at once (space_manifests_controller.rb compound_error!)."""

    def __init__(self, details: list[str]) -> None:
        super().__init__(422, 10008, "CF-UnprocessableEntity", details[0])
        self.details = details

    def response(self) -> _Resp:
        return _json_resp(422, {"errors": [{"code": 10008, "title": "CF-UnprocessableEntity", "detail": detail}
                                           for detail in self.details]})


def _unknown_error() -> _CCError:
    # What CC answers for an exception it does not rescue (errors/v2.yml UnknownError).
    return _CCError(500, 10001, "CF-UnknownError", "An unknown error occurred.")


class _RawError(Exception):
    """An error from a service that is not CC (UAA, policy server, router): its own body shape."""

    def __init__(self, resp: _Resp) -> None:
        super().__init__(resp.status)
        self.resp = resp


def _not_found(what: str) -> _CCError:
    return _CCError(404, 10010, "CF-ResourceNotFound", f"{what} not found")


def _unknown_request() -> _CCError:
    return _CCError(404, 10000, "CF-NotFound", "Unknown request")


def _unprocessable(detail: str) -> _CCError:
    return _CCError(422, 10008, "CF-UnprocessableEntity", detail)


def _bad_query(detail: str) -> _CCError:
    return _CCError(400, 10005, "CF-BadQueryParameter", f"The query parameter is invalid: {detail}")


def _parse_error() -> _CCError:
    return _CCError(400, 1001, "CF-MessageParseError", "Request invalid due to parse error: invalid request body")


def _invalid_token() -> _CCError:
    # cloudfoundry_client refreshes only on exactly this code and title (client.py _is_token_expired).
    return _CCError(401, 1000, "CF-InvalidAuthToken", "Invalid Auth Token")


def _uaa_error(status: int, error: str, description: str) -> _RawError:
    return _RawError(_json_resp(status, {"error": error, "error_description": description}))


def _policy_error(status: int, message: str) -> _RawError:
    return _RawError(_json_resp(status, {"error": message}))


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------

@dataclass
class _Req:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    raw: bytes
    user: str = ""

    def json_object(self, required: bool = True) -> dict[str, Any]:
        """The body as a JSON object; CC answers 400 MessageParseError for anything else."""
        if not self.raw.strip():
            if required:
                raise _parse_error()
            return {}
        try:
            value = json.loads(self.raw)
        except (ValueError, UnicodeDecodeError):
            raise _parse_error() from None
        if not isinstance(value, dict):
            raise _parse_error()
        return value


def _decode_form(raw: bytes) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}


def _multipart_fields(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, bytes). The stdlib cgi module is
    deprecated, so this goes through the email parser, which understands the same MIME framing."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _csv(values: list[str]) -> list[str]:
    return [item for value in values for item in value.split(",")]


_MEMORY_UNITS = {"B": 1 / (1024 * 1024), "K": 1 / 1024, "KB": 1 / 1024, "M": 1, "MB": 1, "G": 1024,
                 "GB": 1024, "T": 1024 * 1024, "TB": 1024 * 1024}


def _megabytes(value: object, what: str, app_name: str) -> int:
    """Manifest sizes like "512M" or "1G". CC rejects bare numbers: a unit is required."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]+)\s*", str(value))
    if not match or match.group(2).upper() not in _MEMORY_UNITS:
        raise _unprocessable(f"For application '{app_name}': {what} must use a supported unit: "
                             "B, K, KB, M, MB, G, GB, T, or TB")
    megabytes = int(int(match.group(1)) * _MEMORY_UNITS[match.group(2).upper()])
    if megabytes <= 0:
        raise _unprocessable(f"For application '{app_name}': {what} must be greater than 0MB")
    return megabytes


# ByteQuantity::BYTESPATTERN (lib/cloud_controller/byte_quantity.rb): units are optional "i"/"B" suffixed.
_BYTES_PATTERN = re.compile(r"(-?\d+(?:\.\d+)?)([KMGT]i?B?|B)", re.IGNORECASE)
_BYTE_UNITS = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIDECAR_KEYS = ("name", "command", "process_types", "memory_in_mb")  # SidecarCreateMessage's allowed keys


def _sidecar_manifest_memory(value: object) -> object:
    """AppManifestMessage#sidecar_create_attributes: `convert_to_mb(memory) || memory`. A size with a
    unit becomes megabytes; anything else (a bare 512, "lots") is passed on as written, for the
    message's numericality check to judge: so a bare integer is megabytes here, unlike app memory."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    if value is None or value is False or not text:  # blank: ByteConverter#convert_to_mb gives nil
        return value
    if not re.match(r"-?\d+(?:\.\d+)?", str(value)):  # ByteConverter: NonNumericError
        return value
    match = _BYTES_PATTERN.fullmatch(text)
    if match is None:  # ByteQuantity::InvalidByteQuantityError
        return value
    size = int(float(match.group(1)) * _BYTE_UNITS[match.group(2)[0].upper()])
    return int(size / (1024 * 1024))  # ByteQuantity.to_megabytes truncates toward zero


def _blank(value: object) -> bool:
    """Rails' Object#blank?: nil, false, whitespace-only strings, empty collections."""
    if value is None or value is False:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (list, dict)) and not value


def _sidecar_message_errors(message: Mapping[str, Any], *, update: bool = False) -> list[str]:
    """The full messages of SidecarCreateMessage / SidecarUpdateMessage (app/messages/sidecar_create_message.rb,
    sidecar_update_message.rb), in their validators' order; an update checks only the keys it sends."""
    errors: list[str] = []
    extra = [key for key in message if key not in _SIDECAR_KEYS]
    if extra:
        joined = "', '".join(extra)
        errors.append(f"Unknown field(s): '{joined}'")
    for key, label in (("name", "Name"), ("command", "Command")):
        if update and key not in message:
            continue
        if _blank(message.get(key)):
            errors.append(f"{label} can't be blank")
        if not isinstance(message.get(key), str):
            errors.append(f"{label} must be a string")
    if not update or "process_types" in message:
        types = message.get("process_types")
        if not isinstance(types, list):
            errors.append("Process types must be an array")
        # ActiveModel's LengthValidator counts nil as "" and a string by its characters.
        length = len(types) if isinstance(types, (list, str, dict)) else len(str(types)) if types is not None else 0
        if length < 1:
            errors.append("Process types must have at least 1 process_type")
    memory = message.get("memory_in_mb")
    if memory is not None:  # numericality: { only_integer: true, greater_than: 0 }, allow_nil: true
        number: float | None
        if isinstance(memory, bool) or not isinstance(memory, (int, float, str)):
            number = None
        else:
            try:
                number = float(memory)
            except ValueError:
                number = None
        if number is None or number != number or number in (float("inf"), float("-inf")):
            errors.append("Memory in mb is not a number")
        elif not (isinstance(memory, int) or (isinstance(memory, str) and re.fullmatch(r"[+-]?\d+", memory))):
            errors.append("Memory in mb must be an integer")
        elif number <= 0:
            errors.append("Memory in mb must be greater than 0")
    return errors


def _sidecar_model_errors(name: str, command: str) -> list[str]:
    # SidecarModel#validate (app/models/runtime/sidecar_model.rb); Sequel joins them with ", ".
    errors = []
    if len(name) > 255:
        errors.append("Name is too long (maximum is 255 characters)")
    if len(command) > 4096:
        errors.append("Command is too long (maximum is 4096 characters)")
    return errors


def _sidecar_process_type_error(types: list[Any]) -> str | None:
    """SidecarProcessTypeModel (sidecar_process_type_model.rb): each row validated as it is saved, and
    the unique (sidecar, type) index; the first failing row ends the transaction."""
    seen: set[str] = set()
    for value in types:
        text = str(value) if not isinstance(value, str) else value
        if _blank(value):
            return "type is not present"
        if len(text) > 255:
            return "Process type is too long (maximum is 255 characters)"
        if text in seen:
            return f"sidecar_guid and type Sidecar is already associated with process type {text}"
        seen.add(text)
    return None


# --------------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------------

_Handler = Callable[..., _Resp]


class FakeCloudFoundry:
    """In-memory Cloud Foundry (CC v3 + UAA + policy server) served on 127.0.0.1:<free port>."""

    def __init__(self, *, users: Mapping[str, str] | None = None, clients: Mapping[str, str] | None = None,
                 org: str = "cloud-gov", spaces: tuple[str, ...] = ("registry-mirror-staging", "registry-mirror"),
                 s3_credentials: Mapping[str, Any] | None = None, timings: Timings = Timings(),
                 cc_version: str = CC_API_VERSION, non_developers: Iterable[str] = (),
                 without_scopes: Iterable[str] = (), feature_flags: Mapping[str, bool] | None = None,
                 org_quota: Mapping[str, int | None] | None = None,
                 space_developer_self_service: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        """`non_developers`: users and clients with no space developer role (everyone else has it in
        every space). `without_scopes`: scopes UAA leaves out of every token (e.g. network.write).
        `org_quota`: total_memory_in_mb / total_instances of the org's quota (None: unlimited).
        `space_developer_self_service`: the policy server's enable_space_developer_self_service.
        `clock`: the platform's time (seconds), by which tokens expire; tests share a fake one."""
        self.clock = clock
        self.users: dict[str, str] = dict(users if users is not None else {"deployer": "deployer-password"})
        self.clients: dict[str, str] = dict(clients if clients is not None else {"ci-deployer": "ci-secret"})
        self.cc_version = cc_version
        self.non_developers = set(non_developers)
        self.without_scopes = set(without_scopes)
        self.space_developer_self_service = space_developer_self_service
        # diego_docker defaults to off in CC; a foundation that runs docker apps (as ours) turns it on.
        self.feature_flags: dict[str, bool] = {"diego_docker": True, **(feature_flags or {})}
        self.org_quota: dict[str, int | None] = {"total_memory_in_mb": None, "total_instances": None,
                                                 **(org_quota or {})}
        self._token_key = secrets.token_bytes(32)  # signs the JWTs this UAA issues
        self.s3_credentials: dict[str, Any] = dict(s3_credentials if s3_credentials is not None
                                                   else DEFAULT_S3_CREDENTIALS)
        self.timings = timings
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

        self._orgs: list[_Org] = [_Org(org)]
        self._spaces: list[_Space] = [_Space(name, self._orgs[0].guid) for name in spaces]
        # Shared domains, as on cloud.gov: the internal one for container-to-container traffic.
        self._domains: list[_Domain] = [_Domain("app.cloud.gov", internal=False),
                                         _Domain("apps.internal", internal=True)]
        self._apps: list[_App] = []
        self._app_logs: dict[str, list[dict[str, Any]]] = {}  # source id (app guid) -> LOG envelopes, oldest first
        self._packages: list[_Package] = []
        self._blob_key = secrets.token_bytes(32)  # signs the blobstore's pre-signed URLs
        self._droplets: list[_Droplet] = []
        self._builds: list[_Build] = []
        self._revisions: list[_Revision] = []
        self._sidecars: list[_Sidecar] = []  # every app's, oldest first (CC lists them by id)
        self._deployments: list[_Deployment] = []
        self._routes: list[_Route] = []
        self._jobs: list[_Job] = []
        offering = _ServiceOffering("s3", "Use AWS S3 buckets to store files")
        self._offerings: list[_ServiceOffering] = [offering]
        self._plans: list[_ServicePlan] = [_ServicePlan("basic", offering.guid, "A basic S3 bucket")]
        self._instances: list[_ServiceInstance] = []
        self._keys: list[_ServiceKey] = []
        self._policies: list[dict[str, Any]] = []
        self._events: list[_AuditEvent] = []
        self._access_tokens: dict[str, _Token] = {}
        self._refresh_tokens: dict[str, _Token] = {}
        self._routes_table: list[tuple[str, re.Pattern[str], _Handler]] = self._build_routes()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _HTTPHandler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        # A short poll interval: stop() waits up to one interval, and tests start a stand-in each.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-cf", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeCloudFoundry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def revoke_tokens(self) -> None:
        """Every access and refresh token stops working (UAA restarted with a new key, a revocation)."""
        with self._lock:
            self._access_tokens.clear()
            self._refresh_tokens.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- internal views for assertions -----------------------------------------------------------

    def app(self, name: str) -> dict[str, Any] | None:
        """What the platform holds for an app, beyond what the API shows in one call."""
        with self._lock:
            app = next((a for a in self._apps if a.name == name), None)
            if app is None:
                return None
            droplet = self._find(self._droplets, app.droplet_guid)
            return {
                "guid": app.guid, "name": app.name, "space_guid": app.space_guid, "state": app.state,
                "droplet_guid": app.droplet_guid, "image": droplet.image if droplet else None,
                "lifecycle": {"type": app.lifecycle_type, "buildpacks": list(app.buildpacks), "stack": app.stack},
                "instances": app.web.instances, "memory_in_mb": app.web.memory_in_mb,
                "disk_in_mb": app.web.disk_in_mb, "env": copy.deepcopy(app.env),
                "annotations": dict(app.annotations), "running_env": copy.deepcopy(app.running_env),
                "health_check": {"type": app.web.health_check_type, "endpoint": app.web.health_check_endpoint,
                                 "timeout": app.web.health_check_timeout},
                "web_process_guids": [p.guid for p in app.processes],
                "routes": [self._route_url(r) for r in self._routes_of(app)],
                "sidecars": [self._present_sidecar(s) for s in self._sidecars_of(app)],
            }

    def deployments(self, app_name: str) -> list[dict[str, Any]]:
        with self._lock:
            guids = {a.guid for a in self._apps if a.name == app_name}
            return [{"guid": d.guid, "app_guid": d.app_guid, "state": d.state, "status_value": d.status_value,
                     "status_reason": d.status_reason, "strategy": d.strategy, "max_in_flight": d.max_in_flight,
                     "droplet_guid": d.droplet_guid, "previous_droplet_guid": d.previous_droplet_guid,
                     "revision_guid": d.revision_guid, "revision_version": d.revision_version}
                    for d in self._deployments if d.app_guid in guids]

    def revisions(self, app_name: str) -> list[dict[str, Any]]:
        with self._lock:
            guids = {a.guid for a in self._apps if a.name == app_name}
            return [{"guid": r.guid, "version": r.version, "droplet_guid": r.droplet_guid,
                     "env": copy.deepcopy(r.env), "description": r.description}
                    for r in self._revisions if r.app_guid in guids]

    def policies(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._policies)

    # ---- request handling ------------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: Message, raw: bytes) -> _Resp:
        request_id = _guid()
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        kind = self._kind(path)
        req = _Req(method, path, query, headers, raw)
        authenticated = False
        try:
            with self._lock:
                fault = self._fault_response(kind, path, headers)
                if fault is not None:
                    authenticated = self._peek_token(headers) is not None
                    resp = fault
                else:
                    self._tick()
                    # Like CC, an unrouted path is a 404 before any token check.
                    handler, params = self._match(req)
                    if kind == "cc" and path not in ("/", "/v3"):
                        req.user = self._authenticate_cc(headers)
                        authenticated = True
                        if method in ("POST", "PUT", "PATCH", "DELETE") and req.user in self.non_developers:
                            # Readable but not writable (an auditor, a manager): CC's NotAuthorized.
                            raise _CCError(403, 10003, "CF-NotAuthorized",
                                           "You are not authorized to perform the requested action")
                    elif kind == "networking":
                        req.user = self._authenticate_networking(headers)
                        authenticated = True
                    resp = handler(req, **params)
                    if kind == "cc" and method != "GET" and resp.status < 400 and self._answer_lost(method, path):
                        resp = _Resp(502, b"502 Bad Gateway: Registered endpoint failed to handle the request.\n",
                                     {"Content-Type": "text/plain; charset=utf-8",
                                      "X-Cf-Routererror": "endpoint_failure (context deadline exceeded)"})
        except _CCError as error:
            resp = error.response()
        except _RawError as error:
            resp = error.resp
        except Exception as error:  # a bug in the stand-in: answer like CC's 500, but say what broke
            resp = _CCError(500, 10001, "CF-ServerError", f"stand-in bug: {error!r}").response()
        if kind == "cc" and self.faults.slow_seconds > 0:
            time.sleep(self.faults.slow_seconds)  # outside the lock: other requests keep flowing
        resp.headers["X-Vcap-Request-Id"] = request_id
        record = RecordedRequest(method, path, query, self._body_for_record(req), resp.status, request_id,
                                 authenticated)
        with self._lock:
            self.requests.append(record)
        return resp

    def _answer_lost(self, method: str, path: str) -> bool:
        for entry in self.faults.lost_answers:
            wanted, _, pattern = entry.partition(" ")
            if entry == "*" or (wanted == method and re.fullmatch(pattern, path)):
                self.faults.lost_answers.remove(entry)
                return True
        return False

    @staticmethod
    def _kind(path: str) -> str:
        if path in _TOKEN_PATHS or path.startswith(("/login/", "/uaa/")):
            return "uaa"
        if path.startswith("/networking/"):
            return "networking"
        if path.startswith("/api/v1/"):
            return "logcache"
        if path.startswith(_BLOBSTORE + "/"):
            return "blobstore"
        return "cc"

    @staticmethod
    def _body_for_record(req: _Req) -> object:
        if not req.raw:
            return None
        content_type = req.headers.get("Content-Type", "")
        if req.path in _TOKEN_PATHS:
            return _decode_form(req.raw)
        if req.path.endswith("/actions/apply_manifest"):
            return req.raw.decode("utf-8", "replace")
        if content_type.startswith("multipart/form-data"):
            return {name: {"filename": filename, "size": len(data)}
                    for name, (filename, data) in _multipart_fields(content_type, req.raw).items()}
        try:
            return json.loads(req.raw)
        except (ValueError, UnicodeDecodeError):
            return req.raw.decode("utf-8", "replace")

    def _fault_response(self, kind: str, path: str, headers: Message) -> _Resp | None:
        if kind == "uaa" and path in _TOKEN_PATHS and self.faults.uaa_unavailable > 0:
            self.faults.uaa_unavailable -= 1
            return _Resp(503, b"503 Service Unavailable", {"Content-Type": "text/plain; charset=utf-8",
                                                           "Retry-After": str(self.faults.retry_after_seconds)})
        if kind in ("uaa", "blobstore"):
            return None
        if self.faults.transient_502 > 0:
            self.faults.transient_502 -= 1
            # A 502 comes from the gorouter, not from CC: plain text, with the router's error header.
            return _Resp(502, b"502 Bad Gateway: Registered endpoint failed to handle the request.\n",
                         {"Content-Type": "text/plain; charset=utf-8", "X-Cf-Routererror": "endpoint_failure"})
        # CC's RateLimiter skips the root documents (root_api?: /, /v3), so the fault waits for the next
        # request it would really limit.
        if self.faults.rate_limited_429 > 0 and not (kind == "cc" and path in ("/", "/v3")):
            self.faults.rate_limited_429 -= 1
            wait = self.faults.retry_after_seconds
            limit_headers = {"Retry-After": str(wait), "X-RateLimit-Limit": "20000", "X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset": str(int(time.time()) + wait)}
            if self._bearer(headers) is None:  # CC limits callers without a user token per IP
                return _CCError(429, 10014, "CF-IPBasedRateLimitExceeded",
                                "Rate Limit Exceeded: Unauthenticated requests from this IP address have exceeded "
                                "the limit. Please log in.", limit_headers).response()
            return _CCError(429, 10013, "CF-RateLimitExceeded", "Rate Limit Exceeded", limit_headers).response()
        return None

    # ---- authentication --------------------------------------------------------------------------

    @staticmethod
    def _bearer(headers: Message) -> str | None:
        value = headers.get("Authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def _peek_token(self, headers: Message) -> _Token | None:
        token = self._bearer(headers)
        return self._access_tokens.get(token) if token else None

    def _valid_token(self, token: str) -> _Token | None:
        """The token's record while it is valid: known to UAA, not past its `exp` by the clock, and not
        expired by the `expire_token_after` fault (which counts requests to every API the stand-in
        fronts: CC and the policy server both ask UAA, so a token dies for both at once)."""
        record = self._access_tokens.get(token)
        if record is None:
            return None
        if self.clock() >= record.expires_at:
            del self._access_tokens[token]
            return None
        if self.faults.expire_token_after is not None:
            if self.faults.expire_token_after <= 0:
                self.faults.expire_token_after = None
                self._access_tokens.clear()  # refresh tokens survive: that is how clients recover
                return None
            self.faults.expire_token_after -= 1
        return record

    def _authenticate_cc(self, headers: Message) -> str:
        token = self._bearer(headers)
        if token is None:
            raise _CCError(401, 10002, "CF-NotAuthenticated", "Authentication error")
        record = self._valid_token(token)
        if record is None:
            raise _invalid_token()
        return record.subject

    def _authenticate_networking(self, headers: Message) -> str:
        # The policy server has its own error bodies (cf-networking-release auth_middleware.go): 401
        # without a header or for a token UAA rejects, 403 for a token without the network scopes.
        token = self._bearer(headers)
        if token is None:
            raise _policy_error(401, "missing authorization header")
        record = self._valid_token(token)
        if record is None:
            raise _policy_error(401, "failed to verify token with uaa")
        scopes = record.scope.split()
        # auth_middleware.go: list and write both need network.admin or network.write, checked before
        # any access to the apps, unless enable_space_developer_self_service is on: then a space
        # developer passes without the scopes (policy-server handlers check the apps' spaces instead).
        self_served = self.space_developer_self_service and record.subject not in self.non_developers
        if not {"network.admin", "network.write"} & set(scopes) and not self_served:
            raise _policy_error(403, f"provided scopes [{' '.join(scopes)}] do not include allowed scopes "
                                     "[network.admin network.write]")
        return record.subject

    # ---- routing ---------------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], _Handler]]:
        g = r"(?P<guid>[^/]+)"
        table: list[tuple[str, str, _Handler]] = [
            ("GET", "/", self._h_root),
            ("GET", "/v3", self._h_v3_root),
            ("GET", "/api/v1/read/(?P<source_id>[^/]+)", self._h_log_cache_read),
            ("POST", "/login/oauth/token", self._h_token),
            ("POST", "/uaa/oauth/token", self._h_token),
            ("GET", "/v3/organizations", self._h_list_orgs),
            ("GET", "/v3/spaces", self._h_list_spaces),
            ("POST", f"/v3/spaces/{g}/actions/apply_manifest", self._h_apply_manifest),
            ("GET", "/v3/apps", self._h_list_apps),
            ("GET", f"/v3/apps/{g}", self._h_get_app),
            ("PATCH", f"/v3/apps/{g}", self._h_patch_app),
            ("POST", f"/v3/apps/{g}/actions/start", self._h_start_app),
            ("POST", f"/v3/apps/{g}/actions/stop", self._h_stop_app),
            ("POST", f"/v3/apps/{g}/actions/restart", self._h_restart_app),
            ("GET", f"/v3/apps/{g}/environment_variables", self._h_get_env),
            ("PATCH", f"/v3/apps/{g}/environment_variables", self._h_patch_env),
            ("GET", f"/v3/apps/{g}/processes/(?P<type>[^/]+)", self._h_get_app_process),
            ("GET", f"/v3/apps/{g}/routes", self._h_app_routes),
            ("GET", f"/v3/apps/{g}/droplets/current", self._h_current_droplet),
            ("GET", f"/v3/apps/{g}/sidecars", self._h_app_sidecars),
            ("POST", f"/v3/apps/{g}/sidecars", self._h_create_sidecar),
            ("GET", f"/v3/processes/{g}/sidecars", self._h_process_sidecars),
            ("GET", f"/v3/sidecars/{g}", self._h_get_sidecar),
            ("PATCH", f"/v3/sidecars/{g}", self._h_update_sidecar),
            ("DELETE", f"/v3/sidecars/{g}", self._h_delete_sidecar),
            ("GET", f"/v3/apps/{g}/revisions", self._h_app_revisions),
            ("GET", f"/v3/apps/{g}/revisions/deployed", self._h_deployed_revisions),
            ("GET", f"/v3/revisions/{g}", self._h_get_revision),
            ("GET", f"/v3/revisions/{g}/environment_variables", self._h_revision_env),
            ("GET", "/v3/audit_events", self._h_list_events),
            ("GET", "/v3/feature_flags/(?P<name>[a-z_]+)", self._h_feature_flag),
            ("GET", "/v3/roles", self._h_list_roles),
            ("GET", f"/v3/organizations/{g}/usage_summary", self._h_org_usage),
            ("GET", f"/v3/organization_quotas/{g}", self._h_org_quota),
            ("GET", "/v3/domains", self._h_list_domains),
            ("GET", "/v3/routes", self._h_list_routes),
            ("GET", f"/v3/processes/{g}", self._h_get_process),
            ("GET", f"/v3/processes/{g}/stats", self._h_process_stats),
            ("POST", f"/v3/processes/{g}/actions/scale", self._h_scale_process),
            ("PATCH", f"/v3/processes/{g}", self._h_update_process),
            ("GET", f"/v3/jobs/{g}", self._h_get_job),
            ("POST", "/v3/packages", self._h_create_package),
            ("GET", "/v3/packages", self._h_list_packages),
            ("GET", "/v3/builds", self._h_list_builds),
            ("GET", f"/v3/packages/{g}", self._h_get_package),
            ("POST", f"/v3/packages/{g}/upload", self._h_upload_package),
            ("GET", f"/v3/packages/{g}/download", self._h_download_package),
            ("GET", f"{_BLOBSTORE}/packages/{g}", self._h_blobstore_package),
            ("POST", "/v3/builds", self._h_create_build),
            ("GET", f"/v3/builds/{g}", self._h_get_build),
            ("GET", f"/v3/droplets/{g}", self._h_get_droplet),
            ("POST", "/v3/deployments", self._h_create_deployment),
            ("GET", "/v3/deployments", self._h_list_deployments),
            ("GET", f"/v3/deployments/{g}", self._h_get_deployment),
            ("POST", f"/v3/deployments/{g}/actions/cancel", self._h_cancel_deployment),
            ("POST", f"/v3/deployments/{g}/actions/continue", self._h_continue_deployment),
            ("GET", "/v3/service_offerings", self._h_list_offerings),
            ("GET", "/v3/service_plans", self._h_list_plans),
            ("GET", "/v3/service_instances", self._h_list_instances),
            ("POST", "/v3/service_instances", self._h_create_instance),
            ("GET", f"/v3/service_instances/{g}", self._h_get_instance),
            ("GET", "/v3/service_credential_bindings", self._h_list_keys),
            ("POST", "/v3/service_credential_bindings", self._h_create_key),
            ("GET", f"/v3/service_credential_bindings/{g}", self._h_get_key),
            ("GET", f"/v3/service_credential_bindings/{g}/details", self._h_key_details),
            ("GET", "/networking/v1/external/policies", self._h_list_policies),
            ("POST", "/networking/v1/external/policies", self._h_create_policies),
            ("POST", "/networking/v1/external/policies/delete", self._h_delete_policies),
        ]
        return [(method, re.compile(pattern + r"\Z"), handler) for method, pattern, handler in table]

    def _match(self, req: _Req) -> tuple[_Handler, dict[str, str]]:
        for method, pattern, handler in self._routes_table:
            match = pattern.match(req.path)
            if match and method == req.method:
                return handler, match.groupdict()
        # Rails answers an unrouted method like an unknown path; the other services have their own 404s.
        kind = self._kind(req.path)
        if kind == "networking":
            raise _RawError(_Resp(404, b"404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"}))
        if req.path in _TOKEN_PATHS:
            raise _uaa_error(405, "method_not_allowed", f"Request method '{req.method}' is not supported")
        if kind == "uaa":
            raise _RawError(_json_resp(404, {"error": "Not Found"}))
        raise _unknown_request()

    # ---- helpers ---------------------------------------------------------------------------------

    def _href(self, path: str) -> dict[str, str]:
        return {"href": self.url + path}

    @staticmethod
    def _find(items: Iterable[Any], guid: str | None) -> Any:
        return next((item for item in items if item.guid == guid), None) if guid else None

    def _get(self, items: Iterable[Any], guid: str, what: str) -> Any:
        item = self._find(items, guid)
        if item is None:
            raise _not_found(what)
        return item

    # ---- time ------------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Everything that happens by the clock, brought up to now before a request is answered: jobs
        and builds finish, uploads are processed, instances boot, crash and restart (their crash
        events recorded), deployments advance."""
        now = self.clock()
        for job in self._jobs:
            if job.state == "PROCESSING" and now - job.created_t >= self.timings.job:
                self._complete_job(job)
        for build in self._builds:
            if build.state == "STAGING" and now - build.created_t >= self.timings.staging:
                self._finish_build(build)
        for package in self._packages:
            if package.state == "PROCESSING_UPLOAD" and now - package.uploaded_t >= self.timings.upload:
                if self.faults.package_processing_fails:
                    package.state, package.error = "FAILED", "Package upload failed: the blobstore refused the bits"
                else:
                    package.state = "READY"
                package.updated_at = _now()
        for app in self._apps:
            if app.state == "STARTED":
                for process in app.processes:
                    self._record_due_crashes(app, process, now)
        for deployment in self._deployments:
            self._advance_deployment(deployment, now)

    def _boot(self, process: _Process, instances: int, at: float) -> None:
        """Resize to `instances`: new indexes boot at `at`, removed ones stop."""
        process.instances = instances
        process.started = process.started[:instances] + [at] * max(0, instances - len(process.started))

    def _boot_all(self, process: _Process, at: float) -> None:
        process.started = [at] * process.instances
        process.crashes_seen.clear()

    def _instance_state(self, app: _App, process: _Process, index: int, now: float) -> tuple[str, float]:
        """(state, when it began) of one instance at `now`: STARTING until its health check passes,
        then RUNNING; one that crashes runs `crash_after`, crashes, and is restarted as Diego's restart
        calculator says (at once at first, then backing off), CRASHED while it waits."""
        boot = process.started[index] if index < len(process.started) else now
        if index in process.boot_crash:
            return "STARTING", boot
        reason = self._crash_reason(*self._started_with(app, process))
        if reason is None:
            ready = boot + self.timings.start
            return ("RUNNING", ready) if now >= ready else ("STARTING", boot)
        for crash_count, crashed_at in enumerate(self._crash_times(boot, now), start=1):
            restart = crashed_at + restart_delay(crash_count)
            if now < restart:
                return "CRASHED", crashed_at
            boot = restart
        ready = boot + self.timings.start
        return ("RUNNING", ready) if now >= ready else ("STARTING", boot)

    def _crash_times(self, boot: float, now: float) -> Iterator[float]:
        """When an always-crashing instance booted at `boot` crashed, up to `now`."""
        for crash_count in range(1, MAX_RESTARTS + 1):
            crashed_at = boot + self.timings.start + self.timings.crash_after
            if crashed_at > now:
                return
            yield crashed_at
            boot = crashed_at + restart_delay(crash_count)

    def _record_due_crashes(self, app: _App, process: _Process, now: float) -> None:
        """Crash audit events for every crash up to now, each once (Diego reports each crash to CC)."""
        for index in sorted(process.boot_crash):
            boot = process.started[index] if index < len(process.started) else now
            crashed_at = boot + self.timings.start / 2
            if crashed_at <= now:
                # The registry panics at boot when its upstream blips; restarted at once, it runs.
                process.boot_crash.discard(index)
                self._crash_event(app, process, index, TRANSIENT_PANIC, 1)
                if index < len(process.started):
                    process.started[index] = crashed_at
        reason = self._crash_reason(*self._started_with(app, process))
        if reason is None:
            return
        for index, boot in enumerate(process.started):
            seen = process.crashes_seen.get((index, boot), 0)
            times = list(self._crash_times(boot, now))
            for crash_count in range(seen + 1, len(times) + 1):
                self._crash_event(app, process, index, reason, crash_count)
            process.crashes_seen[(index, boot)] = len(times)

    def _paginate(self, req: _Req, path: str, items: list[Any], present: Callable[[Any], dict[str, Any]],
                  filters: Mapping[str, Callable[[Any, list[str]], bool]],
                  order_fields: tuple[str, ...] = ("created_at", "updated_at")) -> _Resp:
        """A CC list: filters, order_by, page/per_page validated like CC, links like PaginationPresenter."""
        unsupported = {"include", "fields", "label_selector", "created_ats", "updated_ats"} & req.query.keys()
        if unsupported:
            raise _bad_query(f"{', '.join(sorted(unsupported))} (real CC accepts this; the stand-in does "
                             "not implement it)")
        known = set(filters) | {"page", "per_page", "order_by"}
        unknown = sorted(set(req.query) - known)
        if unknown:
            raise _bad_query(f"Unknown query parameter(s): '{', '.join(unknown)}'. Valid parameters are: "
                             f"'{', '.join(sorted(known))}'")
        page = self._int_param(req, "page", 1)
        per_page = self._int_param(req, "per_page", DEFAULT_PER_PAGE)
        if page < 1:
            raise _bad_query("Page must be greater than 0")
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise _bad_query(f"Per page must be between 1 and {MAX_PER_PAGE}")
        selected = list(items)
        filter_params: dict[str, str] = {}
        for name, predicate in filters.items():
            if name in req.query:
                values = _csv(req.query[name])
                filter_params[name] = ",".join(values)
                selected = [item for item in selected if predicate(item, values)]
        order_by = req.query.get("order_by", [""])[-1]
        if order_by:
            key = order_by.lstrip("+-")
            if key not in order_fields:
                raise _bad_query(f"Order by can only be: '{', '.join(order_fields)}'")
            selected.sort(key=lambda item: getattr(item, key), reverse=order_by.startswith("-"))
            filter_params["order_by"] = order_by
        total = len(selected)
        last = max(1, -(-total // per_page))

        def link(number: int) -> dict[str, str]:
            params = dict(sorted({**filter_params, "page": str(number), "per_page": str(per_page)}.items()))
            return self._href(f"{path}?{urlencode(params)}")

        body = {
            "pagination": {"total_results": total, "total_pages": last, "first": link(1), "last": link(last),
                           "next": link(page + 1) if page < last else None,
                           "previous": link(page - 1) if page > 1 else None},
            "resources": [present(item) for item in selected[(page - 1) * per_page: page * per_page]],
        }
        return _json_resp(200, body)

    @staticmethod
    def _int_param(req: _Req, name: str, default: int) -> int:
        raw = req.query.get(name, [str(default)])[-1]
        try:
            return int(raw)
        except ValueError:
            raise _bad_query(f"{name.replace('_', ' ').capitalize()} must be an integer") from None

    @staticmethod
    def _check_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise _unprocessable(f"Unknown field(s): '{', '.join(unknown)}'")

    @staticmethod
    def _relationship_guid(body: Mapping[str, Any], name: str) -> str | None:
        relationships = body.get("relationships")
        if not isinstance(relationships, dict):
            return None
        data = (relationships.get(name) or {}).get("data") if isinstance(relationships.get(name), dict) else None
        guid = data.get("guid") if isinstance(data, dict) else None
        return guid if isinstance(guid, str) else None

    def _metadata(self) -> dict[str, dict[str, str]]:
        return {"labels": {}, "annotations": {}}

    # ---- Log Cache -------------------------------------------------------------------------------

    def emit_app_log(self, app_name: str, text: str, *, instance: int = 0, stream: str = "OUT",
                     at_ns: int | None = None) -> None:
        """One line an app instance wrote, as Loggregator hands it to Log Cache (a LOG envelope)."""
        with self._lock:
            app = next(a for a in self._apps if a.name == app_name)
            logs = self._app_logs.setdefault(app.guid, [])
            stamp = at_ns if at_ns is not None else max(time.time_ns(), (int(logs[-1]["timestamp"]) + 1) if logs else 0)
            logs.append({"timestamp": str(stamp), "source_id": app.guid, "instance_id": str(instance),
                         "deprecated_tags": {}, "tags": {"source_type": "APP/PROC/WEB", "app_name": app.name},
                         "log": {"payload": base64.b64encode(text.encode()).decode(), "type": stream}})
            logs.sort(key=lambda e: int(e["timestamp"]))

    def _h_log_cache_read(self, req: _Req, source_id: str) -> _Resp:
        """Log Cache's read API behind its cf-auth-proxy (log-cache-release, src/internal/auth/
        cf_auth_middleware.go): no token, a token UAA rejects, or a source the user may not read (CAPI
        knows no such app) all answer 404 with an empty body; admins (logs.admin, doppler.firehose)
        read any source. Then the reader (src/internal/routing/local_store_reader.go): limit above
        1000 or below 0 is an error (grpc-gateway's 500 body), 0 means 100, end_time defaults to now,
        start_time is inclusive and end_time exclusive; envelopes are protojson (proto names, int64 as
        strings, bytes as base64), oldest first unless descending."""
        token = self._bearer(req.headers)
        record = self._valid_token(token) if token else None
        not_found = _RawError(_Resp(404, b"", {"Content-Type": "text/plain; charset=utf-8"}))
        if record is None:
            raise not_found
        admin = {"logs.admin", "doppler.firehose"} & set(record.scope.split())
        if not admin and not any(a.guid == source_id for a in self._apps):
            raise not_found

        def number(name: str, default: int) -> int:
            values = req.query.get(name) or [""]
            try:
                return int(values[0]) if values[0] != "" else default
            except ValueError:
                raise _RawError(_json_resp(400, {"code": 3, "message": f"bad {name}", "details": []})) from None
        start, end, limit = number("start_time", 0), number("end_time", 0), number("limit", 0)

        def failure(message: str) -> _RawError:
            return _RawError(_json_resp(500, {"code": 2, "message": message, "details": []}))
        if end and start > end:
            raise failure(f"StartTime ({start}) must be before EndTime ({end})")
        if limit > 1000:
            raise failure(f"limit ({limit}) must be 1000 or less")
        if limit < 0:
            raise failure(f"limit ({limit}) must be greater than zero")
        end = end or time.time_ns()
        limit = limit or 100
        types = {t.upper() for v in req.query.get("envelope_types", []) for t in v.split(",") if t}
        if types - {"ANY", "LOG", "COUNTER", "GAUGE", "TIMER", "EVENT"}:
            raise _RawError(_json_resp(400, {"code": 3, "message": "invalid envelope_types", "details": []}))
        wanted = [e for e in self._app_logs.get(source_id, []) if start <= int(e["timestamp"]) < end
                  and (not (types - {"ANY"}) or "LOG" in types)]
        if (req.query.get("descending") or ["false"])[0] == "true":
            wanted = wanted[::-1]
        return _json_resp(200, {"envelopes": {"batch": copy.deepcopy(wanted[:limit])}})

    # ---- root documents --------------------------------------------------------------------------

    def _h_root(self, req: _Req) -> _Resp:
        base = self.url
        # No cloud_controller_v2 link: the stand-in serves no v2, and cloudfoundry_client skips a missing one.
        return _json_resp(200, {"links": {
            "self": {"href": base},
            "cloud_controller_v3": {"href": f"{base}/v3", "meta": {"version": self.cc_version}},
            "network_policy_v0": {"href": f"{base}/networking/v0/external"},
            "network_policy_v1": {"href": f"{base}/networking/v1/external"},
            "login": {"href": f"{base}/login"},
            "uaa": {"href": f"{base}/uaa"},
            # The real one is its own host (log-cache.<system domain>); here the same server serves it.
            "log_cache": {"href": base},
            "credhub": None,
        }})

    def _h_v3_root(self, req: _Req) -> _Resp:
        names = ("app_usage_events", "apps", "audit_events", "buildpacks", "builds", "deployments", "domains",
                 "droplets", "environment_variable_groups", "feature_flags", "info", "isolation_segments",
                 "organizations", "organization_quotas", "packages", "processes", "resource_matches", "roles",
                 "routes", "security_groups", "service_brokers", "service_instances",
                 "service_credential_bindings", "service_offerings", "service_plans", "service_route_bindings",
                 "service_usage_events", "spaces", "space_quotas", "stacks", "tasks", "users")
        links = {"self": self._href("/v3")} | {name: self._href(f"/v3/{name}") for name in names}
        return _json_resp(200, {"links": links})

    # ---- UAA -------------------------------------------------------------------------------------

    def _h_token(self, req: _Req) -> _Resp:
        form = _decode_form(req.raw)
        client_id, client_secret = self._client_auth(req.headers, form)
        grant = form.get("grant_type")
        if not grant:
            raise _uaa_error(400, "invalid_request", "Missing grant type")
        if grant == "client_credentials":
            if client_id not in self.clients or self.clients[client_id] != client_secret:
                raise _uaa_error(401, "unauthorized", "Bad credentials")
            # UAA issues no refresh token for client_credentials: the client re-authenticates instead.
            return self._issue(_Token(client_id, client_id, grant, "cloud_controller.read cloud_controller.write "
                                      "network.write uaa.none", None))
        if not self._known_client(client_id, client_secret):
            raise _uaa_error(401, "unauthorized", "Bad credentials")
        if grant == "password":
            username, password = form.get("username", ""), form.get("password", "")
            if username not in self.users or self.users[username] != password:
                raise _uaa_error(401, "unauthorized", "Bad credentials")
            return self._issue(_Token(username, client_id, grant, "openid cloud_controller.read "
                                      "cloud_controller.write network.write uaa.user", secrets.token_urlsafe(24)))
        if grant == "refresh_token":
            record = self._refresh_tokens.get(form.get("refresh_token", ""))
            if record is not None and self.clock() >= record.expires_at:
                record = None  # past UAA's refresh-token validity: the client must log in again
            if record is None or record.client_id != client_id:
                raise _uaa_error(401, "invalid_token", "Invalid refresh token")
            return self._issue(record)
        raise _uaa_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant}")

    def _known_client(self, client_id: str, client_secret: str) -> bool:
        # "cf" is the CLI's public client (empty secret), the one cloudfoundry_client uses by default.
        if client_id == "cf":
            return client_secret == ""
        return self.clients.get(client_id) == client_secret

    @staticmethod
    def _client_auth(headers: Message, form: Mapping[str, str]) -> tuple[str, str]:
        value = headers.get("Authorization", "")
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(encoded.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _uaa_error(401, "unauthorized", "Bad credentials") from None
            return client_id, secret
        return form.get("client_id", ""), form.get("client_secret", "")

    def _issue(self, record: _Token) -> _Resp:
        # UAA's access tokens are JWTs; clients read user_id/client_id and scope from them.
        scope = [s for s in record.scope.split() if s not in self.without_scopes]
        record = _Token(record.subject, record.client_id, record.grant_type, " ".join(scope), record.refresh_token)
        now = self.clock()
        claims: dict[str, Any] = {"jti": secrets.token_hex(16), "client_id": record.client_id, "cid": record.client_id,
                                  "grant_type": record.grant_type, "scope": scope, "iat": int(now),
                                  "exp": int(now) + ACCESS_TOKEN_SECONDS, "iss": f"{self.url}/uaa/oauth/token"}
        if record.grant_type != "client_credentials":
            claims |= {"user_id": _user_guid(record.subject), "user_name": record.subject}
        access = _jwt(claims, self._token_key)
        self._access_tokens[access] = _Token(record.subject, record.client_id, record.grant_type, record.scope,
                                             record.refresh_token, now + ACCESS_TOKEN_SECONDS)
        body: dict[str, Any] = {"access_token": access, "token_type": "bearer", "expires_in": ACCESS_TOKEN_SECONDS,
                                "scope": record.scope, "jti": secrets.token_hex(16)}
        if record.refresh_token is not None:
            if record.refresh_token not in self._refresh_tokens:
                self._refresh_tokens[record.refresh_token] = _Token(
                    record.subject, record.client_id, record.grant_type, record.scope, record.refresh_token,
                    now + REFRESH_TOKEN_SECONDS)
            body["refresh_token"] = record.refresh_token
        return _json_resp(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    # ---- organizations, spaces, domains ----------------------------------------------------------

    def _present_org(self, org: _Org) -> dict[str, Any]:
        return {"guid": org.guid, "created_at": org.created_at, "updated_at": org.updated_at, "name": org.name,
                "suspended": False, "relationships": {"quota": {"data": {"guid": org.quota_guid}}},
                "metadata": self._metadata(),
                "links": {"self": self._href(f"/v3/organizations/{org.guid}"),
                          "domains": self._href(f"/v3/organizations/{org.guid}/domains"),
                          "default_domain": self._href(f"/v3/organizations/{org.guid}/domains/default"),
                          "quota": self._href(f"/v3/organization_quotas/{org.quota_guid}")}}

    def _h_list_orgs(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/organizations", self._orgs, self._present_org, {
            "names": lambda o, v: o.name in v, "guids": lambda o, v: o.guid in v}, ("created_at", "updated_at", "name"))

    def _present_space(self, space: _Space) -> dict[str, Any]:
        return {"guid": space.guid, "created_at": space.created_at, "updated_at": space.updated_at,
                "name": space.name,
                "relationships": {"organization": {"data": {"guid": space.org_guid}}, "quota": {"data": None}},
                "metadata": self._metadata(),
                "links": {"self": self._href(f"/v3/spaces/{space.guid}"),
                          "features": self._href(f"/v3/spaces/{space.guid}/features"),
                          "organization": self._href(f"/v3/organizations/{space.org_guid}"),
                          "apply_manifest": {**self._href(f"/v3/spaces/{space.guid}/actions/apply_manifest"),
                                             "method": "POST"}}}

    def _h_list_spaces(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/spaces", self._spaces, self._present_space, {
            "names": lambda s, v: s.name in v, "guids": lambda s, v: s.guid in v,
            "organization_guids": lambda s, v: s.org_guid in v}, ("created_at", "updated_at", "name"))

    def _present_domain(self, domain: _Domain) -> dict[str, Any]:
        # Shared domains have no owning organization and, for http domains, no router group: CC answers
        # null for both.
        return {"guid": domain.guid, "created_at": domain.created_at, "updated_at": domain.updated_at,
                "name": domain.name, "internal": domain.internal, "router_group": None,
                "supported_protocols": ["http"], "metadata": self._metadata(),
                "relationships": {"organization": {"data": None}, "shared_organizations": {"data": []}},
                "links": {"self": self._href(f"/v3/domains/{domain.guid}"),
                          "route_reservations": self._href(f"/v3/domains/{domain.guid}/route_reservations")}}

    def _h_list_domains(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/domains", self._domains, self._present_domain, {
            "names": lambda d, v: d.name in v, "guids": lambda d, v: d.guid in v,
            "organization_guids": lambda d, v: any(o.guid in v for o in self._orgs)})

    # ---- apps, env, processes, stats -------------------------------------------------------------

    def _present_app(self, app: _App) -> dict[str, Any]:
        base = f"/v3/apps/{app.guid}"
        lifecycle: dict[str, Any] = ({"type": "docker", "data": {}} if app.lifecycle_type == "docker" else
                                     {"type": "buildpack", "data": {"buildpacks": list(app.buildpacks),
                                                                    "stack": app.stack}})
        return {"guid": app.guid, "name": app.name, "state": app.state, "created_at": app.created_at,
                "updated_at": app.updated_at, "lifecycle": lifecycle,
                "relationships": {"space": {"data": {"guid": app.space_guid}}},
                "metadata": {"labels": dict(app.labels), "annotations": dict(app.annotations)},
                "links": {"self": self._href(base), "space": self._href(f"/v3/spaces/{app.space_guid}"),
                          "processes": self._href(f"{base}/processes"), "packages": self._href(f"{base}/packages"),
                          "environment_variables": self._href(f"{base}/environment_variables"),
                          "current_droplet": self._href(f"{base}/droplets/current"),
                          "droplets": self._href(f"{base}/droplets"), "tasks": self._href(f"{base}/tasks"),
                          "start": {**self._href(f"{base}/actions/start"), "method": "POST"},
                          "stop": {**self._href(f"{base}/actions/stop"), "method": "POST"},
                          "revisions": self._href(f"{base}/revisions"),
                          "deployed_revisions": self._href(f"{base}/revisions/deployed"),
                          "features": self._href(f"{base}/features")}}

    def _h_list_apps(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/apps", self._apps, self._present_app, {
            "names": lambda a, v: a.name in v, "guids": lambda a, v: a.guid in v,
            "space_guids": lambda a, v: a.space_guid in v,
            "organization_guids": lambda a, v: self._space_of(a).org_guid in v,
            "lifecycle_type": lambda a, v: a.lifecycle_type in v}, ("created_at", "updated_at", "name"))

    def _space_of(self, app: _App) -> _Space:
        return self._get(self._spaces, app.space_guid, "Space")

    def _h_get_app(self, req: _Req, guid: str) -> _Resp:
        return _json_resp(200, self._present_app(self._get(self._apps, guid, "App")))

    def _h_patch_app(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        body = req.json_object()
        self._check_fields(body, {"metadata"})  # name and lifecycle updates: not modelled, refused loudly
        metadata = body.get("metadata") or {}
        self._check_fields(metadata, {"labels", "annotations"})
        for kind, store in (("labels", app.labels), ("annotations", app.annotations)):
            values = metadata.get(kind) or {}
            if not isinstance(values, dict):
                raise _unprocessable(f"Metadata {kind} must be an object")
            for key, value in values.items():
                if not re.fullmatch(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", key):
                    raise _unprocessable(f"Metadata {kind} key error: '{key}' is not a valid key")
                if value is None:
                    store.pop(key, None)  # null deletes, as for environment variables
                elif kind == "annotations" and (not isinstance(value, str) or len(value) > 5000):
                    raise _unprocessable("Metadata annotations value error: must be a string of at most 5000")
                else:
                    store[key] = value
        app.updated_at = _now()  # metadata makes no revision: it is not code or configuration
        return _json_resp(200, self._present_app(app))

    def _h_start_app(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        if app.droplet_guid is None:
            raise _unprocessable("Assign a droplet before starting this app.")
        if app.state != "STARTED":
            self._start_instances(app)
            app.web.revision_guid = self._update_app_revision(app).guid
        return _json_resp(200, self._present_app(app))

    def _h_restart_app(self, req: _Req, guid: str) -> _Resp:
        """AppRestart (app/actions/app_restart.rb): stop, then start with today's environment and the
        current droplet (a new revision when either changed, as AppStart records), 200 with the app."""
        app = self._get(self._apps, guid, "App")
        if app.droplet_guid is None:
            raise _unprocessable("Assign a droplet before starting this app.")
        if self._deploying(app):
            raise _unprocessable("Cannot restart the app while a deployment is in flight.")
        app.state = "STOPPED"
        self._record_app_event("audit.app.restart", app, req.user)
        self._start_instances(app)
        app.web.revision_guid = self._update_app_revision(app).guid
        return _json_resp(200, self._present_app(app))

    def _h_stop_app(self, req: _Req, guid: str) -> _Resp:
        """AppStop.stop (app/actions/app_stop.rb): the app and each of its processes desired STOPPED and an
        audit.app.stop event (AppEventRepository#record_app_stop), every time, stopped already or not;
        200 with the app (AppsV3Controller#stop). Droplets, revisions, routes and deployments stay."""
        app = self._get(self._apps, guid, "App")
        app.state, app.updated_at = "STOPPED", _now()
        for process in app.processes:
            process.updated_at = app.updated_at
        self._record_app_event("audit.app.stop", app, req.user)
        return _json_resp(200, self._present_app(app))

    def _record_app_event(self, event_type: str, app: _App, who: str) -> None:
        """An audit event a user's action on an app leaves (create_app_audit_event): the user as actor."""
        space = self._space_of(app)
        actor = {"guid": _user_guid(who) if who in self.users else who, "type": "user", "name": who}
        self._events.append(_AuditEvent(event_type, actor, {"guid": app.guid, "type": "app", "name": app.name}, {},
                                        space.guid, space.org_guid))

    def _start_instances(self, app: _App) -> None:
        """The app's instances start now, with today's environment and the current droplet's image."""
        droplet = self._find(self._droplets, app.droplet_guid)
        app.state, app.updated_at = "STARTED", _now()
        app.running_env, app.running_image = copy.deepcopy(app.env), droplet.image if droplet else None
        for process in app.processes:
            process.started_env, process.started_image = copy.deepcopy(app.running_env), app.running_image
            self._boot_all(process, self.clock())
        self._transient_boot_crashes(app.web)

    def _crash_reason(self, env: Mapping[str, Any], image: str | None) -> str | None:
        return self.faults.crash_when(env, image) if self.faults.crash_when is not None else None

    @staticmethod
    def _started_with(app: _App, process: _Process) -> tuple[Mapping[str, Any], str | None]:
        if process.started_env is not None:
            return process.started_env, process.started_image
        return app.running_env, app.running_image

    def _transient_boot_crashes(self, process: _Process) -> None:
        """Faults.transient_crashes: the next instances to boot crash once at boot, restarted at once."""
        count = min(self.faults.transient_crashes, process.instances)
        if count > 0:
            self.faults.transient_crashes -= count
            process.boot_crash |= set(range(process.instances - count, process.instances))

    def _crash_event(self, app: _App, process: _Process, index: int, reason: str, crash_count: int) -> None:
        """Diego's report of one crash, as CC records it (audit.app.process.crash, from
        app/repositories/app_event_repository.rb create_app_crash_event): the process as actor, and in
        data its index, reason, exit description, crash count and the process version the instance ran."""
        space = self._space_of(app)
        self._events.append(_AuditEvent(
            "audit.app.process.crash", {"guid": process.guid, "type": "process", "name": process.type},
            {"guid": app.guid, "type": "app", "name": app.name},
            {"instance": _guid(), "index": index, "cell_id": _guid(), "reason": "CRASHED", "exit_status": 1,
             "exit_description": reason[:1000], "crash_count": crash_count, "crash_timestamp": time.time_ns(),
             "version": process.version},
            space.guid, space.org_guid))

    def _present_event(self, event: _AuditEvent) -> dict[str, Any]:
        return {"guid": event.guid, "created_at": event.created_at, "updated_at": event.updated_at,
                "type": event.type, "actor": dict(event.actor), "target": dict(event.target), "data": event.data,
                "space": {"guid": event.space_guid}, "organization": {"guid": event.org_guid},
                "links": {"self": self._href(f"/v3/audit_events/{event.guid}")}}

    def _h_list_events(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/audit_events", self._events, self._present_event, {
            "types": lambda e, v: e.type in v, "target_guids": lambda e, v: e.target["guid"] in v,
            "space_guids": lambda e, v: e.space_guid in v, "organization_guids": lambda e, v: e.org_guid in v})

    def _h_feature_flag(self, req: _Req, name: str) -> _Resp:
        if name not in self.feature_flags:
            raise _not_found("Feature flag")
        # A flag still at its default has no row in CC's table: no update time.
        changed = self.feature_flags[name] != _FLAG_DEFAULTS.get(name, False)
        return _json_resp(200, {"name": name, "enabled": self.feature_flags[name],
                                "updated_at": "2024-01-01T00:00:00Z" if changed else None,
                                "custom_error_message": None,
                                "links": {"self": self._href(f"/v3/feature_flags/{name}")}})

    def _h_list_roles(self, req: _Req) -> _Resp:
        # Everyone the stand-in knows is a space developer in every space, unless listed otherwise.
        roles = [{"guid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"role:{who}:{space.guid}")), "type": "space_developer",
                  "user": _user_guid(who) if who in self.users else who, "space": space.guid}
                 for who in [*self.users, *self.clients] if who not in self.non_developers
                 for space in self._spaces]

        def present(role: dict[str, str]) -> dict[str, Any]:
            return {"guid": role["guid"], "type": role["type"], "created_at": "2024-01-01T00:00:00Z",
                    "updated_at": "2024-01-01T00:00:00Z",
                    "relationships": {"user": {"data": {"guid": role["user"]}},
                                      "space": {"data": {"guid": role["space"]}}, "organization": {"data": None}},
                    "links": {"self": self._href(f"/v3/roles/{role['guid']}"),
                              "user": self._href(f"/v3/users/{role['user']}"),
                              "space": self._href(f"/v3/spaces/{role['space']}")}}

        return self._paginate(req, "/v3/roles", roles, present, {
            "types": lambda r, v: r["type"] in v, "user_guids": lambda r, v: r["user"] in v,
            "space_guids": lambda r, v: r["space"] in v, "organization_guids": lambda r, v: False})

    def _org_usage(self, org: _Org) -> tuple[int, int]:
        started = [a for a in self._apps if a.state == "STARTED" and self._space_of(a).org_guid == org.guid]
        instances = sum(p.instances for a in started for p in a.processes)
        return instances, sum(p.instances * p.memory_in_mb for a in started for p in a.processes)

    def _h_org_usage(self, req: _Req, guid: str) -> _Resp:
        org = self._get(self._orgs, guid, "Organization")
        instances, memory = self._org_usage(org)
        return _json_resp(200, {"usage_summary": {"started_instances": instances, "memory_in_mb": memory},
                                "links": {"self": self._href(f"/v3/organizations/{guid}/usage_summary"),
                                          "organization": self._href(f"/v3/organizations/{guid}")}})

    def _h_org_quota(self, req: _Req, guid: str) -> _Resp:
        org = next((o for o in self._orgs if o.quota_guid == guid), None)
        if org is None:
            raise _not_found("Organization quota")
        return _json_resp(200, {
            "guid": guid, "created_at": org.created_at, "updated_at": org.updated_at, "name": "default",
            "apps": {"total_memory_in_mb": self.org_quota["total_memory_in_mb"], "per_process_memory_in_mb": None,
                     "total_instances": self.org_quota["total_instances"], "per_app_tasks": None,
                     "log_rate_limit_in_bytes_per_second": None},
            "services": {"paid_services_allowed": True, "total_service_instances": None,
                         "total_service_keys": None},
            "routes": {"total_routes": None, "total_reserved_ports": None}, "domains": {"total_domains": None},
            "relationships": {"organizations": {"data": [{"guid": org.guid}]}},
            "links": {"self": self._href(f"/v3/organization_quotas/{guid}")}})

    def _check_quota(self, app: _App, extra_instances: int, memory_in_mb: int) -> None:
        """CC refuses to start instances beyond the org's quota (422, as for scale and deployments)."""
        instances, memory = self._org_usage(self._get(self._orgs, self._space_of(app).org_guid, "Organization"))
        limit_memory, limit_instances = self.org_quota["total_memory_in_mb"], self.org_quota["total_instances"]
        if limit_memory is not None and memory + extra_instances * memory_in_mb > limit_memory:
            raise _unprocessable("memory quota_exceeded")
        if limit_instances is not None and instances + extra_instances > limit_instances:
            raise _unprocessable("app_instance_limit app_instance_limit_exceeded")

    def _env_body(self, app: _App) -> dict[str, Any]:
        base = f"/v3/apps/{app.guid}"
        return {"var": copy.deepcopy(app.env),
                "links": {"self": self._href(f"{base}/environment_variables"), "app": self._href(base)}}

    def _h_get_env(self, req: _Req, guid: str) -> _Resp:
        return _json_resp(200, self._env_body(self._get(self._apps, guid, "App")))

    def _h_patch_env(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        body = req.json_object()
        self._check_fields(body, {"var"})
        variables = body.get("var")
        if not isinstance(variables, dict):
            raise _unprocessable("Var must be an object")
        for name in variables:
            if name.startswith("VCAP_"):
                raise _unprocessable("Var Environment variable names cannot start with VCAP_")
            if name == "PORT":
                raise _unprocessable("Var Environment variable names cannot be PORT")
        for name, value in variables.items():
            if value is None:
                app.env.pop(name, None)  # null removes the variable
            else:
                app.env[name] = value
        app.updated_at = _now()
        return _json_resp(200, self._env_body(app))

    def _present_process(self, process: _Process) -> dict[str, Any]:
        app = self._get(self._apps, process.app_guid, "App")
        data: dict[str, Any] = {"timeout": process.health_check_timeout,
                                "invocation_timeout": process.health_check_invocation_timeout,
                                "interval": process.health_check_interval}
        if process.health_check_type == "http":
            data["endpoint"] = process.health_check_endpoint
        revision = {"data": {"guid": process.revision_guid}} if process.revision_guid else None
        base = f"/v3/processes/{process.guid}"
        return {"guid": process.guid, "type": process.type, "command": process.command,
                "instances": process.instances, "memory_in_mb": process.memory_in_mb,
                "disk_in_mb": process.disk_in_mb, "log_rate_limit_in_bytes_per_second": process.log_rate_limit,
                "health_check": {"type": process.health_check_type, "data": data},
                "readiness_health_check": {"type": "process", "data": {"invocation_timeout": None, "interval": None}},
                "relationships": {"app": {"data": {"guid": process.app_guid}}, "revision": revision},
                "metadata": self._metadata(), "created_at": process.created_at, "updated_at": process.updated_at,
                "version": process.version,
                "links": {"self": self._href(base), "scale": {**self._href(f"{base}/actions/scale"), "method": "POST"},
                          "app": self._href(f"/v3/apps/{app.guid}"),
                          "space": self._href(f"/v3/spaces/{app.space_guid}"), "stats": self._href(f"{base}/stats")}}

    def _process(self, guid: str) -> tuple[_App, _Process]:
        for app in self._apps:
            for process in app.processes:
                if process.guid == guid:
                    return app, process
        raise _not_found("Process")

    def _h_get_app_process(self, req: _Req, guid: str, type: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        if type != "web":
            raise _not_found("Process")
        # The newest web process is the one a running deployment is bringing up, as in CC.
        return _json_resp(200, self._present_process(app.web))

    def _h_get_process(self, req: _Req, guid: str) -> _Resp:
        return _json_resp(200, self._present_process(self._process(guid)[1]))

    def _h_scale_process(self, req: _Req, guid: str) -> _Resp:
        """ProcessScale: instances (and memory/disk) at once, 202 with the process; refused while a
        deployment of the app is in flight, and beyond the org's quota, as CC does."""
        app, process = self._process(guid)
        body = req.json_object()
        self._check_fields(body, {"instances", "memory_in_mb", "disk_in_mb", "log_rate_limit_in_bytes_per_second"})
        instances = body.get("instances", process.instances)
        if not isinstance(instances, int) or isinstance(instances, bool) or instances < 0:
            raise _unprocessable("Instances must be greater than or equal to 0")
        memory = body.get("memory_in_mb", process.memory_in_mb)
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise _unprocessable("Memory in mb must be greater than 0")  # ProcessScaleMessage
        if process.type == "web" and self._deploying(app):
            # app/actions/process_scale.rb: ScaleDisabledDuringDeployment (errors/v3.yml 390016).
            raise _CCError(422, 390016, "CF-ScaleDisabledDuringDeployment",
                           "Cannot scale this process while a deployment is in flight.")
        if self._sidecar_memory_refused(process, memory):
            raise _unprocessable(_SCALE_BELOW_SIDECARS)  # ProcessesController#scale
        disk = body.get("disk_in_mb", process.disk_in_mb)
        if not isinstance(disk, int) or isinstance(disk, bool) or disk < 1:
            raise _unprocessable("Disk in mb must be greater than 0")  # ProcessScaleMessage
        if refused := _disk_refused(disk):
            raise _unprocessable(refused)
        if app.state == "STARTED" and instances > process.instances:
            self._check_quota(app, instances - process.instances, process.memory_in_mb)
        process.memory_in_mb, process.disk_in_mb = memory, disk
        self._boot(process, instances, self.clock())
        process.updated_at = _now()
        return _json_resp(202, self._present_process(process))

    def _h_update_process(self, req: _Req, guid: str) -> _Resp:
        """ProcessUpdate (app/actions/process_update.rb): command and health check; refused for the web
        process while a deployment of the app is in flight, as CC's process model validation does."""
        app, process = self._process(guid)
        body = req.json_object()
        self._check_fields(body, {"command", "health_check", "readiness_health_check", "metadata"})
        if process.type == "web" and self._deploying(app):
            raise _unprocessable("Cannot update this process while a deployment is in flight.")
        if "command" in body:
            process.command = body["command"]
        health = body.get("health_check")
        if isinstance(health, dict):
            if health.get("type") not in (None, "port", "process", "http"):
                raise _unprocessable("Health check type must be 'port', 'process', or 'http'")
            process.health_check_type = health.get("type") or process.health_check_type
            data = health.get("data") or {}
            process.health_check_endpoint = data.get("endpoint", process.health_check_endpoint)
            process.health_check_timeout = data.get("timeout", process.health_check_timeout)
        process.updated_at = _now()
        return _json_resp(200, self._present_process(process))

    def _h_process_stats(self, req: _Req, guid: str) -> _Resp:
        """ProcessStatsPresenter: one entry per instance, its state by the clock (STARTING until its
        health check passes, RUNNING, CRASHED while Diego backs off before a restart, DOWN when stopped)."""
        app, process = self._process(guid)
        resources: list[dict[str, Any]] = []
        now = self.clock()
        reason = self._crash_reason(*self._started_with(app, process))
        for index in range(process.instances):
            if app.state != "STARTED":
                # CC's down_instance_stats_hash: a DOWN instance has no host, usage or quotas.
                resources.append({"type": process.type, "index": index, "state": "DOWN", "uptime": 0,
                                  "isolation_segment": None, "details": None})
                continue
            # InstancesStatsReporter (lib/cloud_controller/diego/reporters/instances_stats_reporter.rb):
            # every instance Diego has (STARTING, RUNNING, CRASHED) gets the full entry; usage is zero
            # until log-cache has a reading of a running one.
            state, since = self._instance_state(app, process, index, now)
            running = state == "RUNNING"
            resources.append({
                "type": process.type, "index": index, "state": state, "routable": running,
                "usage": ({"time": _now(), "cpu": 0.01, "mem": 64 * 1024 * 1024, "disk": 128 * 1024 * 1024}
                          if running else {"time": _now(), "cpu": 0, "mem": 0, "disk": 0}),
                "host": f"10.0.16.{10 + index}", "instance_internal_ip": f"10.255.0.{10 + index}",
                "instance_ports": [{"external": 61000 + index, "internal": 8080,
                                    "external_tls_proxy_port": 61100 + index, "internal_tls_proxy_port": 61001}],
                "uptime": int(now - since) if running else 0, "mem_quota": process.memory_in_mb * 1024 * 1024,
                "disk_quota": process.disk_in_mb * 1024 * 1024, "fds_quota": 16384, "isolation_segment": None,
                "details": (reason or "")[:200] or None if state == "CRASHED" else None})
        return _json_resp(200, {"resources": resources})

    # ---- routes ----------------------------------------------------------------------------------

    def _route_url(self, route: _Route) -> str:
        domain = self._get(self._domains, route.domain_guid, "Domain")
        return f"{route.host}.{domain.name}{route.path}" if route.host else f"{domain.name}{route.path}"

    def _routes_of(self, app: _App) -> list[_Route]:
        return [r for r in self._routes if any(d.app_guid == app.guid for d in r.destinations)]

    def _present_route(self, route: _Route) -> dict[str, Any]:
        base = f"/v3/routes/{route.guid}"
        return {"guid": route.guid, "protocol": "http", "created_at": route.created_at,
                "updated_at": route.updated_at, "host": route.host, "path": route.path, "port": None,
                "url": self._route_url(route),
                "destinations": [{"guid": d.guid, "app": {"guid": d.app_guid, "process": {"type": "web"}},
                                  "weight": None, "port": d.port, "protocol": d.protocol} for d in route.destinations],
                "options": {}, "metadata": self._metadata(),
                "relationships": {"space": {"data": {"guid": route.space_guid}},
                                  "domain": {"data": {"guid": route.domain_guid}}},
                "links": {"self": self._href(base), "space": self._href(f"/v3/spaces/{route.space_guid}"),
                          "destinations": self._href(f"{base}/destinations"),
                          "domain": self._href(f"/v3/domains/{route.domain_guid}")}}

    def _route_filters(self) -> dict[str, Callable[[Any, list[str]], bool]]:
        return {"app_guids": lambda r, v: any(d.app_guid in v for d in r.destinations),
                "guids": lambda r, v: r.guid in v, "hosts": lambda r, v: r.host in v,
                "paths": lambda r, v: r.path in v, "domain_guids": lambda r, v: r.domain_guid in v,
                "space_guids": lambda r, v: r.space_guid in v,
                "organization_guids": lambda r, v: self._get(self._spaces, r.space_guid, "Space").org_guid in v}

    def _h_list_routes(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/routes", self._routes, self._present_route, self._route_filters())

    def _h_app_routes(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        filters = {k: v for k, v in self._route_filters().items() if k not in ("app_guids", "organization_guids")}
        return self._paginate(req, f"/v3/apps/{guid}/routes", self._routes_of(app), self._present_route, filters)

    # ---- sidecars --------------------------------------------------------------------------------

    @staticmethod
    def _present_sidecar(sidecar: _Sidecar) -> dict[str, Any]:
        # SidecarPresenter (app/presenters/v3/sidecar_presenter.rb): no links, no metadata, and
        # memory_in_mb null when the sidecar has no limit of its own.
        return {"guid": sidecar.guid, "name": sidecar.name, "command": sidecar.command,
                "process_types": sorted(sidecar.process_types), "memory_in_mb": sidecar.memory_in_mb,
                "origin": sidecar.origin, "relationships": {"app": {"data": {"guid": sidecar.app_guid}}},
                "created_at": sidecar.created_at, "updated_at": sidecar.updated_at}

    def _sidecars_of(self, app: _App) -> list[_Sidecar]:
        return [sidecar for sidecar in self._sidecars if sidecar.app_guid == app.guid]

    def _process_sidecars(self, process: _Process) -> list[_Sidecar]:
        # ProcessModel#sidecars: joined on the app and the process type, so every web process of the
        # app (the ones a deployment adds too) runs the app's web sidecars.
        return [sidecar for sidecar in self._sidecars
                if sidecar.app_guid == process.app_guid and process.type in sidecar.process_types]

    def _sidecar_memory_refused(self, process: _Process, memory_in_mb: int) -> bool:
        """ProcessModel#validate_sidecar_memory, when a scale changes the memory: the process's
        sidecars must leave it some (SidecarMemoryLessThanProcessMemoryPolicy with nothing added)."""
        if memory_in_mb == process.memory_in_mb:
            return False  # Sequel validates it only when the column changed
        return sum(s.memory_in_mb or 0 for s in self._process_sidecars(process)) >= memory_in_mb

    def _check_sidecar_memory(self, app: _App, process_types: list[Any], memory_in_mb: Any,
                              existing: _Sidecar | None) -> None:
        """SidecarMemoryLessThanProcessMemoryPolicy
        (app/models/runtime/constraints/sidecar_memory_less_than_process_memory_policy.rb): for each of
        the app's processes of those types, the memory of its other sidecars plus this one's must stay
        below the process's memory, equal is refused. A sidecar counts within its process's memory:
        Diego gives the instance the process's memory, and the app's own MEMORY_LIMIT is what the
        sidecars leave (lib/cloud_controller/diego/environment.rb)."""
        for process in app.processes:
            if process.type not in process_types:
                continue
            others = [s for s in self._process_sidecars(process) if existing is None or s.name != existing.name]
            if memory_in_mb is not None and not isinstance(memory_in_mb, int):
                # A quoted number ("256") passes the message's numericality check, then the policy adds
                # it to an Integer: a TypeError nothing rescues.
                raise _unknown_error()
            if sum(s.memory_in_mb or 0 for s in others) + (memory_in_mb or 0) >= process.memory_in_mb:
                raise _SidecarInvalid("The memory allocation defined is too large to run with the dependent "
                                      f'"{process.type}" process')

    def _name_taken(self, app_guid: str, name: str, sidecar: _Sidecar | None = None) -> bool:
        return any(s.app_guid == app_guid and s.name == name and s is not sidecar for s in self._sidecars)

    def _sidecar_create(self, app: _App, message: Mapping[str, Any]) -> _Sidecar:
        """SidecarCreate.create (app/actions/sidecar_create.rb) on a validated message: the memory
        policy when a memory is given, then the model's own validations and unique indexes."""
        if "memory_in_mb" in message:
            self._check_sidecar_memory(app, message["process_types"], message["memory_in_mb"], None)
        errors = _sidecar_model_errors(message["name"], message["command"])
        if errors:
            raise _SidecarInvalid(", ".join(errors))
        if self._name_taken(app.guid, message["name"]):  # SidecarModel#around_save
            raise _SidecarInvalid(f"Sidecar with name '{message['name']}' already exists for given app")
        error = _sidecar_process_type_error(message["process_types"])
        if error:
            raise _SidecarInvalid(error)  # the transaction takes the sidecar back with it
        memory = message.get("memory_in_mb")
        sidecar = _Sidecar(app.guid, message["name"], message["command"],
                           [str(t) for t in message["process_types"]], int(memory) if memory is not None else None)
        self._sidecars.append(sidecar)
        return sidecar

    def _sidecar_update(self, sidecar: _Sidecar, message: Mapping[str, Any]) -> _Sidecar:
        """SidecarUpdate.update (app/actions/sidecar_update.rb): only the keys the message has; the
        memory policy, without this sidecar's old self, whenever memory or process types change."""
        app = self._get(self._apps, sidecar.app_guid, "App")
        if "memory_in_mb" in message or "process_types" in message:
            self._check_sidecar_memory(app, message.get("process_types", sidecar.process_types),
                                       message["memory_in_mb"] if "memory_in_mb" in message else sidecar.memory_in_mb,
                                       sidecar)
        name, command = message.get("name", sidecar.name), message.get("command", sidecar.command)
        errors = _sidecar_model_errors(name, command)
        if errors:
            raise _SidecarInvalid(", ".join(errors))
        if self._name_taken(sidecar.app_guid, name, sidecar):
            raise _SidecarInvalid(f"Sidecar with name '{name}' already exists for given app")
        if "process_types" in message:
            error = _sidecar_process_type_error(message["process_types"])
            if error:
                raise _SidecarInvalid(error)
            sidecar.process_types = [str(t) for t in message["process_types"]]
        sidecar.name, sidecar.command = name, command
        if "memory_in_mb" in message:
            memory = message["memory_in_mb"]
            sidecar.memory_in_mb = int(memory) if memory is not None else None
        sidecar.updated_at = _now()
        return sidecar

    def _sidecar_list(self, req: _Req, path: str, sidecars: list[_Sidecar]) -> _Resp:
        # SidecarsListMessage (app/messages/sidecars_list_message.rb) takes no filter of its own: only
        # ListMessage's guids and paging. The contract's names, label_selector and order_by=name are
        # not CC's (CC answers them 400).
        return self._paginate(req, path, sidecars, self._present_sidecar, {"guids": lambda s, v: s.guid in v})

    def _h_app_sidecars(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        return self._sidecar_list(req, f"/v3/apps/{guid}/sidecars", self._sidecars_of(app))

    def _h_process_sidecars(self, req: _Req, guid: str) -> _Resp:
        _, process = self._process(guid)
        return self._sidecar_list(req, f"/v3/processes/{guid}/sidecars", self._process_sidecars(process))

    def _h_get_sidecar(self, req: _Req, guid: str) -> _Resp:
        return _json_resp(200, self._present_sidecar(self._get(self._sidecars, guid, "Sidecar")))

    def _h_create_sidecar(self, req: _Req, guid: str) -> _Resp:
        # SidecarsController#create (app/controllers/v3/sidecars_controller.rb)
        app = self._get(self._apps, guid, "App")
        body = req.json_object()
        errors = _sidecar_message_errors(body)
        if errors:
            raise _unprocessable(", ".join(errors))
        try:
            sidecar = self._sidecar_create(app, body)
        except _SidecarInvalid as error:
            raise _unprocessable(str(error)) from None
        return _json_resp(201, self._present_sidecar(sidecar))

    def _h_update_sidecar(self, req: _Req, guid: str) -> _Resp:
        sidecar = self._get(self._sidecars, guid, "Sidecar")
        body = req.json_object()
        errors = _sidecar_message_errors(body, update=True)
        if errors:
            raise _unprocessable(", ".join(errors))
        try:
            self._sidecar_update(sidecar, body)
        except _SidecarInvalid as error:
            raise _unprocessable(str(error)) from None
        return _json_resp(200, self._present_sidecar(sidecar))

    def _h_delete_sidecar(self, req: _Req, guid: str) -> _Resp:
        # SidecarDelete.delete: at once, 204; running instances keep it until they restart.
        self._sidecars.remove(self._get(self._sidecars, guid, "Sidecar"))
        return _Resp(204, b"", {})

    # ---- apply_manifest and jobs -----------------------------------------------------------------

    _MANIFEST_UNSUPPORTED = ("services", "random-route", "features", "cnb")

    def _h_apply_manifest(self, req: _Req, guid: str) -> _Resp:
        space = self._get(self._spaces, guid, "Space")
        if not req.headers.get("Content-Type", "").startswith("application/x-yaml"):
            raise _CCError(400, 1003, "CF-InvalidContentType", "Invalid content type, expected: application/x-yaml")
        try:
            manifest = yaml.safe_load(req.raw.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raise _parse_error() from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("applications"), list) \
                or not manifest["applications"]:
            raise _unprocessable("Applications must be an array of at least one application")
        parsed = [self._parse_manifest_app(index, entry) for index, entry in enumerate(manifest["applications"])]
        # CC creates missing apps before it answers (AppFindOrCreateSkeleton); the job does the rest.
        apps = [self._find_or_create_app(space, spec) for spec in parsed]

        def complete() -> None:
            for app, spec in zip(apps, parsed):
                try:
                    self._apply_manifest_app(app, spec)
                except _JobFailure as failure:
                    raise _JobFailure(f"For application '{app.name}': {failure}") from None
                except _CCError as error:  # not among the errors SpaceApplyManifestActionJob prefixes
                    raise _JobFailure(error.detail, error.code, error.title) from None

        job = self._new_job("space.apply_manifest", "space", space.guid, complete)
        return _Resp(202, b"", {"Location": f"{self.url}/v3/jobs/{job.guid}"})

    def _parse_manifest_app(self, index: int, entry: object) -> dict[str, Any]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise _unprocessable(f"For application at index {index}: Name must not be empty")
        name = entry["name"]
        for key in self._MANIFEST_UNSUPPORTED:
            if key in entry:
                raise _unprocessable(f"For application '{name}': the stand-in does not implement manifest key '{key}'")
        spec: dict[str, Any] = {"name": name, "docker": "docker" in entry}
        if "sidecars" in entry:
            spec["sidecars"] = self._parse_manifest_sidecars(name, entry["sidecars"])
        web = dict(entry)
        for process in entry.get("processes") or []:
            if not isinstance(process, dict) or process.get("type") != "web":
                raise _unprocessable(f"For application '{name}': the stand-in implements only the web process")
            web.update(process)
        if "instances" in web:
            if not isinstance(web["instances"], int) or web["instances"] < 0:
                raise _unprocessable(f"For application '{name}': Instances must be greater than or equal to 0")
            spec["instances"] = web["instances"]
        if "memory" in web:
            spec["memory_in_mb"] = _megabytes(web["memory"], "Memory", name)
        if "disk_quota" in web:
            spec["disk_in_mb"] = _megabytes(web["disk_quota"], "Disk quota", name)
        if "command" in web:
            spec["command"] = web["command"]
        health_type = web.get("health-check-type")
        if health_type is not None:
            if health_type not in ("port", "process", "http"):
                raise _unprocessable(f"For application '{name}': Health check type must be 'port', 'process', "
                                     "or 'http'")
            spec["health_check_type"] = health_type
        for key, target in (("health-check-http-endpoint", "health_check_endpoint"),
                            ("timeout", "health_check_timeout"),
                            ("health-check-invocation-timeout", "health_check_invocation_timeout"),
                            ("health-check-interval", "health_check_interval")):
            if key in web:
                spec[target] = web[key]
        env = entry.get("env")
        if env is not None:
            if not isinstance(env, dict):
                raise _unprocessable(f"For application '{name}': Env must be an object of keys and values")
            # CC stores manifest values as strings.
            spec["env"] = {str(k): v if isinstance(v, str) else "" if v is None else json.dumps(v)
                           for k, v in env.items()}
        buildpacks = entry.get("buildpacks") or ([entry["buildpack"]] if entry.get("buildpack") else None)
        if buildpacks is not None:
            spec["buildpacks"] = [str(b) for b in buildpacks]
        if "stack" in entry:
            spec["stack"] = entry["stack"]
        routes = entry.get("routes")
        if routes is not None:
            if not isinstance(routes, list) or not all(isinstance(r, dict) and isinstance(r.get("route"), str)
                                                        for r in routes):
                raise _unprocessable(f"For application '{name}': Routes must be a list of route objects")
            spec["routes"] = [r["route"] for r in routes]
        if entry.get("no-route") is True:
            spec["routes"] = []
        return spec

    @staticmethod
    def _parse_manifest_sidecars(app_name: str, value: object) -> list[dict[str, Any]]:
        """AppManifestMessage#validate_sidecars! and #sidecar_create_attribute_mappings
        (app/messages/app_manifest_message.rb): each entry becomes a SidecarCreateMessage of its name,
        command, process_types and memory (other keys are ignored, and none is renamed: it is
        `process_types`, never `process-types`); every error of every entry is answered at once."""
        prefix = f"For application '{app_name}': "
        if not isinstance(value, list):
            raise _CompoundError([prefix + "Sidecars must be an array of sidecar configurations"])
        messages: list[dict[str, Any]] = []
        errors: list[str] = []
        for entry in value:
            if not isinstance(entry, dict):
                # `sidecar[:name]` on a string, list or nil raises inside CC, unrescued: its 500.
                raise _unknown_error()
            message = {"name": entry.get("name"), "memory_in_mb": _sidecar_manifest_memory(entry.get("memory")),
                       "command": entry.get("command"), "process_types": entry.get("process_types")}
            message = {key: item for key, item in message.items() if item is not None}  # Hash#compact
            messages.append(message)
            name = message.get("name")
            for error in _sidecar_message_errors(message):
                # An entry with a name prefixes its errors with it; one without gets them downcased.
                errors.append(f'Sidecar "{name}": {error}' if not _blank(name) else f"Sidecar {error.lower()}")
        if errors:
            raise _CompoundError([prefix + error for error in errors])
        return messages

    def _find_or_create_app(self, space: _Space, spec: Mapping[str, Any]) -> _App:
        app = next((a for a in self._apps if a.space_guid == space.guid and a.name == spec["name"]), None)
        if app is None:
            lifecycle = "docker" if spec["docker"] else "buildpack"
            app = _App(spec["name"], space.guid, lifecycle, stack=None if lifecycle == "docker" else "cflinuxfs4")
            app.processes.append(_Process(app.guid))
            self._apps.append(app)
        return app

    _PROCESS_KEYS = ("instances", "memory_in_mb", "disk_in_mb", "command", "health_check_type",
                     "health_check_endpoint", "health_check_timeout", "health_check_invocation_timeout",
                     "health_check_interval")

    def _deploying(self, app: _App) -> bool:
        """AppModel#deploying?: a deployment of the app is in one of the ACTIVE states."""
        return any(d.app_guid == app.guid and d.state in _ACTIVE_STATES for d in self._deployments)

    def _apply_manifest_app(self, app: _App, spec: Mapping[str, Any]) -> None:
        # In CC's order: lifecycle, process scale and health check, env, then routes; a route error
        # stops the job but leaves the earlier changes in place.
        if self._deploying(app) and any(key in spec for key in self._PROCESS_KEYS):
            # AppApplyManifest goes through ProcessScale / ProcessUpdate (app/actions/process_scale.rb,
            # process_update.rb), which refuse the web process of a deploying app: the job fails.
            what = "scale" if any(k in spec for k in ("instances", "memory_in_mb", "disk_in_mb")) else "update"
            raise _JobFailure(f"Cannot {what} this process while a deployment is in flight.")
        if spec["docker"]:
            app.lifecycle_type, app.stack, app.buildpacks = "docker", None, []
        elif "buildpacks" in spec or "stack" in spec:
            app.buildpacks = spec.get("buildpacks", app.buildpacks)
            app.stack = spec.get("stack", app.stack)
        if "memory_in_mb" in spec:
            for process in app.processes:
                if self._sidecar_memory_refused(process, spec["memory_in_mb"]):
                    raise _JobFailure(_SCALE_BELOW_SIDECARS)
        if "disk_in_mb" in spec and (refused := _disk_refused(spec["disk_in_mb"])):
            raise _JobFailure(refused)  # the job prefixes the application's name
        for process in app.processes:
            for key in self._PROCESS_KEYS:
                if key in spec:
                    setattr(process, key, spec[key])
            self._boot(process, process.instances, self.clock())
            process.updated_at = _now()
        # After the processes are scaled, before env and routes (AppApplyManifest#apply): each entry
        # updates the app's sidecar of its name, or creates one. Sidecars the manifest leaves out stay.
        for message in spec.get("sidecars", []):
            existing = next((sidecar for sidecar in reversed(self._sidecars)  # find_sidecar: the last one
                             if sidecar.app_guid == app.guid and sidecar.name == message["name"]), None)
            try:
                if existing is None:
                    self._sidecar_create(app, message)
                else:
                    self._sidecar_update(existing, message)
            except _SidecarInvalid as error:
                raise _JobFailure(str(error)) from None
        if "env" in spec:
            app.env.update(spec["env"])
        for url in spec.get("routes", []):
            route = self._find_or_create_route(app, url)
            if not any(d.app_guid == app.guid for d in route.destinations):
                route.destinations.append(_Destination(app.guid))
        app.updated_at = _now()

    def _find_or_create_route(self, app: _App, url: str) -> _Route:
        host_and_domain, slash, path = url.partition("/")
        path = slash + path if path else ""
        labels = host_and_domain.split(".")
        # CC tries the whole name as a domain first, then drops one leading label at a time.
        for cut in range(len(labels)):
            domain = next((d for d in self._domains if d.name == ".".join(labels[cut:])), None)
            if domain is None:
                continue
            host = ".".join(labels[:cut])
            route = next((r for r in self._routes if r.domain_guid == domain.guid and r.host == host
                          and r.path == path), None)
            if route is None:
                route = _Route(app.space_guid, domain.guid, host, path)
                self._routes.append(route)
            return route
        raise _JobFailure(f"No domains exist for route {url}")

    def _new_job(self, operation: str, resource_type: str, resource_guid: str,
                 complete: Callable[[], None]) -> _Job:
        job = _Job(operation, resource_type, resource_guid, complete, created_t=self.clock())
        self._jobs.append(job)
        return job

    @staticmethod
    def _complete_job(job: _Job) -> None:
        try:
            job.complete()
            job.state = "COMPLETE"
        except _JobFailure as failure:
            job.state, job.errors = "FAILED", [failure.error]
        job.updated_at = _now()

    def _h_get_job(self, req: _Req, guid: str) -> _Resp:
        job: _Job = self._get(self._jobs, guid, "Job")
        links = {"self": self._href(f"/v3/jobs/{job.guid}"),
                 job.resource_type: self._href(f"/v3/{'spaces' if job.resource_type == 'space' else job.resource_type}/"
                                               f"{job.resource_guid}")}
        return _json_resp(200, {"guid": job.guid, "created_at": job.created_at, "updated_at": job.updated_at,
                                "operation": job.operation, "state": job.state, "errors": job.errors,
                                "warnings": job.warnings, "links": links})

    # ---- packages, builds, droplets --------------------------------------------------------------

    def _present_package(self, package: _Package) -> dict[str, Any]:
        base = f"/v3/packages/{package.guid}"
        links: dict[str, Any] = {"self": self._href(base)}
        if package.type == "bits":
            links["upload"] = {**self._href(f"{base}/upload"), "method": "POST"}
            links["download"] = {**self._href(f"{base}/download"), "method": "GET"}
        links["app"] = self._href(f"/v3/apps/{package.app_guid}")
        # PackagePresenter: the password is censored whenever a username is set.
        data: dict[str, Any] = ({"image": package.image, "username": package.username,
                                 "password": "***" if package.username else None}
                                if package.type == "docker" else
                                {"error": package.error, "checksum": {"type": "sha256", "value": package.sha256}})
        return {"guid": package.guid, "created_at": package.created_at, "updated_at": package.updated_at,
                "type": package.type, "data": data, "state": package.state,
                "relationships": {"app": {"data": {"guid": package.app_guid}}}, "metadata": self._metadata(),
                "links": links}

    def _h_create_package(self, req: _Req) -> _Resp:
        body = req.json_object()
        self._check_fields(body, {"type", "data", "relationships", "metadata"})
        app = self._find(self._apps, self._relationship_guid(body, "app"))
        if app is None:
            raise _unprocessable("App is invalid. Ensure it exists and you have access to it.")
        kind = body.get("type")
        if kind not in ("docker", "bits"):
            raise _unprocessable("Type must be one of 'bits', 'docker'")
        if kind == "docker":
            if app.lifecycle_type != "docker":
                raise _unprocessable("Cannot create a docker package for a buildpack app.")
            data = body.get("data") if isinstance(body.get("data"), dict) else {}
            image = data.get("image")
            if not isinstance(image, str) or not image:
                raise _unprocessable("Data Image required")
            username, password = data.get("username"), data.get("password")
            if (username is None) != (password is None):
                raise _unprocessable("Data Username and password must both be provided")
            package = _Package(app.guid, "docker", "READY", image=image, username=username,
                               password=password)  # nothing to upload
        else:
            if app.lifecycle_type == "docker":
                raise _unprocessable("Cannot create a bits package for a Docker app.")
            package = _Package(app.guid, "bits", "AWAITING_UPLOAD")
        self._packages.append(package)
        return _json_resp(201, self._present_package(package))

    def _h_list_packages(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/packages", self._packages, self._present_package, {
            "app_guids": lambda p, v: p.app_guid in v, "guids": lambda p, v: p.guid in v,
            "types": lambda p, v: p.type in v, "states": lambda p, v: p.state in v})

    def _h_get_package(self, req: _Req, guid: str) -> _Resp:
        package: _Package = self._get(self._packages, guid, "Package")
        return _json_resp(200, self._present_package(package))

    def _h_upload_package(self, req: _Req, guid: str) -> _Resp:
        package: _Package = self._get(self._packages, guid, "Package")
        if package.type != "bits":
            raise _unprocessable("Package type must be bits.")
        if package.state != "AWAITING_UPLOAD":
            raise _CCError(400, 150004, "CF-PackageBitsAlreadyUploaded",
                           "Bits may be uploaded only once. Create a new package to upload different bits.")
        content_type = req.headers.get("Content-Type", "")
        fields = _multipart_fields(content_type, req.raw) if content_type.startswith("multipart/form-data") else {}
        if "bits" not in fields and "resources" not in fields:
            raise _unprocessable("Upload must include either resources or bits")
        bits = fields.get("bits", (None, b""))[1]
        if "bits" in fields and not zipfile.is_zipfile(io.BytesIO(bits)):
            raise _CCError(400, 160001, "CF-AppBitsUploadInvalid", "The app upload is invalid: not a zip file")
        package.sha256, package.bits = hashlib.sha256(bits).hexdigest(), bits
        package.state, package.updated_at, package.uploaded_t = "PROCESSING_UPLOAD", _now(), self.clock()
        return _json_resp(200, self._present_package(package))

    def _h_download_package(self, req: _Req, guid: str) -> _Resp:
        # PackagesController#download: the same checks in the same order, then, with an external
        # blobstore (S3, the usual production setup), a 302 to a pre-signed URL of the blob.
        package: _Package = self._get(self._packages, guid, "Package")
        if package.type != "bits":
            raise _unprocessable("Package type must be bits.")
        if package.state != "READY":
            raise _unprocessable("Package has no bits to download.")
        expires = str(int(time.time()) + 3600)
        # Another host name for the same socket, as S3 is another host than CC: a client that
        # follows the redirect must not carry CC's token there.
        blobstore = self.url.replace("://127.0.0.1:", "://localhost:")
        return _Resp(302, b"", {"Location": f"{blobstore}{_BLOBSTORE}/packages/{guid}?Expires={expires}"
                                            f"&Signature={self._blob_signature(guid, expires)}"})

    def _h_blobstore_package(self, req: _Req, guid: str) -> _Resp:
        """The blobstore behind the pre-signed URL, answering as S3 does (XML errors, no CC token)."""
        if req.headers.get("Authorization"):
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                                                     "query parameter, Signature query string parameter or the "
                                                     "Authorization header should be specified")
        expires = (req.query.get("Expires") or [""])[0]
        signature = (req.query.get("Signature") or [""])[0]
        if not expires.isdigit() or int(expires) < time.time() or not hmac.compare_digest(
                signature, self._blob_signature(guid, expires)):
            return _s3_error(403, "AccessDenied", "Request has expired or the signature does not match")
        package = self._find(self._packages, guid)
        if package is None or not package.bits:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return _Resp(200, package.bits, {"Content-Type": "application/zip"})

    def _blob_signature(self, guid: str, expires: str) -> str:
        return hmac.new(self._blob_key, f"{guid}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _present_build(self, build: _Build) -> dict[str, Any]:
        lifecycle: dict[str, Any] = ({"type": "docker", "data": {}} if build.lifecycle_type == "docker" else
                                     {"type": "buildpack",
                                      "data": {"buildpacks": build.buildpacks, "stack": build.stack}})
        links: dict[str, Any] = {"self": self._href(f"/v3/builds/{build.guid}"),
                                 "app": self._href(f"/v3/apps/{build.app_guid}")}
        if build.droplet_guid:
            links["droplet"] = self._href(f"/v3/droplets/{build.droplet_guid}")
        return {"guid": build.guid, "created_at": build.created_at, "updated_at": build.updated_at,
                "created_by": {"guid": _user_guid(build.created_by), "name": build.created_by,
                               "email": build.created_by},
                "state": build.state, "staging_memory_in_mb": 1024, "staging_disk_in_mb": 1024,
                "staging_log_rate_limit_bytes_per_second": -1, "error": build.error, "lifecycle": lifecycle,
                "package": {"guid": build.package_guid},
                "droplet": {"guid": build.droplet_guid} if build.droplet_guid else None,
                "relationships": {"app": {"data": {"guid": build.app_guid}}}, "metadata": self._metadata(),
                "links": links}

    def _h_create_build(self, req: _Req) -> _Resp:
        body = req.json_object()
        self._check_fields(body, {"package", "lifecycle", "metadata", "staging_memory_in_mb", "staging_disk_in_mb",
                                  "staging_log_rate_limit_bytes_per_second", "environment_variables"})
        package_ref = body.get("package")
        package = self._find(self._packages, package_ref.get("guid") if isinstance(package_ref, dict) else None)
        if package is None:
            raise _unprocessable("Unable to use package. Ensure that the package exists and you have access to it.")
        if package.state != "READY":
            raise _unprocessable("Package must be in READY state to stage")
        app = self._get(self._apps, package.app_guid, "App")
        if package.type == "docker" and not self.feature_flags.get("diego_docker"):
            raise _CCError(403, 330002, "CF-FeatureDisabled", "Feature Disabled: diego_docker")
        build = _Build(app.guid, package.guid, app.lifecycle_type, app.stack, list(app.buildpacks), req.user,
                       created_t=self.clock())
        self._builds.append(build)
        return _json_resp(201, self._present_build(build))

    def _h_list_builds(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/builds", self._builds, self._present_build, {
            "app_guids": lambda b, v: b.app_guid in v, "package_guids": lambda b, v: b.package_guid in v,
            "states": lambda b, v: b.state in v})

    def _h_get_build(self, req: _Req, guid: str) -> _Resp:
        build: _Build = self._get(self._builds, guid, "Build")
        return _json_resp(200, self._present_build(build))

    def _finish_build(self, build: _Build) -> None:
        build.updated_at = _now()
        if self.faults.build_fails:
            build.state, build.error = "FAILED", "StagingError - Staging error: staging failed"
            return
        package: _Package = self._get(self._packages, build.package_guid, "Package")
        image = package.image
        if package.type == "docker":
            try:
                image = staged_image(package.image or "")
            except ValueError as refused:
                # The docker stager (dockerapplifecycle builder) goes through containers/image, whose
                # error ends the staging task; CC records it as the build's StagingError.
                build.state, build.error = "FAILED", f"StagingError - Staging error: {refused}"
                return
        detected = ["staticfile_buildpack"] if build.lifecycle_type == "buildpack" and not build.buildpacks \
            else build.buildpacks
        droplet = _Droplet(build.app_guid, package.guid, build.lifecycle_type, image=image,
                           stack=build.stack, buildpacks=detected,
                           sha256=None if package.type == "docker" else hashlib.sha256(build.guid.encode()).hexdigest())
        self._droplets.append(droplet)
        build.state, build.droplet_guid = "STAGED", droplet.guid

    def _present_droplet(self, droplet: _Droplet) -> dict[str, Any]:
        docker = droplet.lifecycle_type == "docker"
        links: dict[str, Any] = {
            "self": self._href(f"/v3/droplets/{droplet.guid}"),
            "package": self._href(f"/v3/packages/{droplet.package_guid}"),
            "app": self._href(f"/v3/apps/{droplet.app_guid}"),
            "assign_current_droplet": {**self._href(f"/v3/apps/{droplet.app_guid}/relationships/current_droplet"),
                                       "method": "PATCH"}}
        if not docker:
            links["download"] = self._href(f"/v3/droplets/{droplet.guid}/download")
        return {"guid": droplet.guid, "created_at": droplet.created_at, "updated_at": droplet.updated_at,
                "state": droplet.state, "error": None,
                "lifecycle": {"type": droplet.lifecycle_type, "data": {}},
                "execution_metadata": "" if not docker else json.dumps({"cmd": [], "ports": [{"Port": 8080}]}),
                "process_types": {"web": "" if docker else "sh boot.sh"},
                "checksum": None if docker else {"type": "sha256", "value": droplet.sha256},
                "buildpacks": None if docker else [{"name": b, "detect_output": b, "version": "1.0.0",
                                                    "buildpack_name": b} for b in droplet.buildpacks],
                "stack": droplet.stack, "image": droplet.image,
                "relationships": {"app": {"data": {"guid": droplet.app_guid}}}, "metadata": self._metadata(),
                "links": links}

    def _h_get_droplet(self, req: _Req, guid: str) -> _Resp:
        return _json_resp(200, self._present_droplet(self._get(self._droplets, guid, "Droplet")))

    def _h_current_droplet(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        return _json_resp(200, self._present_droplet(self._get(self._droplets, app.droplet_guid or "", "Droplet")))

    # ---- revisions -------------------------------------------------------------------------------

    def _present_revision(self, revision: _Revision) -> dict[str, Any]:
        droplet = self._find(self._droplets, revision.droplet_guid)
        base = f"/v3/revisions/{revision.guid}"
        return {"guid": revision.guid, "version": revision.version, "droplet": {"guid": revision.droplet_guid},
                "processes": {ptype: {"command": command} for ptype, command in revision.commands.items()},
                "sidecars": copy.deepcopy(revision.sidecars), "description": revision.description,
                "deployable": droplet is not None and droplet.state == "STAGED",
                "relationships": {"app": {"data": {"guid": revision.app_guid}}}, "metadata": self._metadata(),
                "created_at": revision.created_at, "updated_at": revision.updated_at,
                "links": {"self": self._href(base), "app": self._href(f"/v3/apps/{revision.app_guid}"),
                          "environment_variables": self._href(f"{base}/environment_variables")}}

    def _revisions_of(self, app: _App) -> list[_Revision]:
        return [r for r in self._revisions if r.app_guid == app.guid]

    def _h_app_revisions(self, req: _Req, guid: str) -> _Resp:
        app = self._get(self._apps, guid, "App")
        return self._paginate(req, f"/v3/apps/{guid}/revisions", self._revisions_of(app), self._present_revision,
                              {"versions": lambda r, v: str(r.version) in v})

    def _h_deployed_revisions(self, req: _Req, guid: str) -> _Resp:
        # "Deployed" = the revisions of the app's started web processes: two while a deployment runs.
        app = self._get(self._apps, guid, "App")
        wanted = {p.revision_guid for p in app.processes} if app.state == "STARTED" else set()
        deployed = [r for r in self._revisions_of(app) if r.guid in wanted]
        return self._paginate(req, f"/v3/apps/{guid}/revisions/deployed", deployed, self._present_revision, {})

    def _h_get_revision(self, req: _Req, guid: str) -> _Resp:
        return _json_resp(200, self._present_revision(self._get(self._revisions, guid, "Revision")))

    def _h_revision_env(self, req: _Req, guid: str) -> _Resp:
        revision: _Revision = self._get(self._revisions, guid, "Revision")
        return _json_resp(200, {"var": copy.deepcopy(revision.env),
                                "links": {"self": self._href(f"/v3/revisions/{guid}/environment_variables"),
                                          "revision": self._href(f"/v3/revisions/{guid}"),
                                          "app": self._href(f"/v3/apps/{revision.app_guid}")}})

    def _latest_revision(self, app: _App) -> _Revision | None:
        revisions = self._revisions_of(app)
        return revisions[-1] if revisions else None

    def _new_revision(self, app: _App, droplet_guid: str, env: dict[str, Any], commands: dict[str, str | None],
                      description: str) -> _Revision:
        latest = self._latest_revision(app)
        revision = _Revision(app.guid, (latest.version % 9999) + 1 if latest else 1, droplet_guid,
                             copy.deepcopy(env), dict(commands), description, self._sidecar_snapshot(app))
        self._revisions.append(revision)
        return revision

    def _sidecar_snapshot(self, app: _App) -> list[dict[str, Any]]:
        # RevisionCreate (app/actions/revision_create.rb) copies the app's sidecars into the revision as
        # RevisionSidecarModel rows; RevisionPresenter#sidecars shows name, command, memory, types.
        return [{"name": s.name, "command": s.command, "memory_in_mb": s.memory_in_mb,
                 "process_types": list(s.process_types)} for s in self._sidecars_of(app)]

    @staticmethod
    def _sidecar_hashes(sidecars: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # SidecarMixin#to_hash, sorted by name: name, command and sorted types. Memory is not in it, so
        # a memory change alone makes no new revision.
        return [{"name": s["name"], "command": s["command"], "types": sorted(s["process_types"])}
                for s in sorted(sidecars, key=lambda s: s["name"])]

    @classmethod
    def _revision_reasons(cls, latest: _Revision, droplet_guid: str, env: Mapping[str, Any],
                          commands: Mapping[str, str | None], sidecars: list[dict[str, Any]]) -> list[str]:
        # RevisionResolver.revision_reasons
        reasons = []
        if latest.droplet_guid != droplet_guid:
            reasons.append("New droplet deployed.")
        if latest.env != env:
            reasons.append("New environment variables deployed.")
        if latest.commands != commands:
            reasons.append("Custom start command updated for 'web' process.")
        if cls._sidecar_hashes(latest.sidecars) != cls._sidecar_hashes(sidecars):
            reasons.append("Sidecars updated.")
        return sorted(reasons)

    def _update_app_revision(self, app: _App) -> _Revision:
        commands = {"web": app.web.command}
        latest = self._latest_revision(app)
        if latest is None:
            return self._new_revision(app, app.droplet_guid or "", app.env, commands, "Initial revision.")
        reasons = self._revision_reasons(latest, app.droplet_guid or "", app.env, commands, self._sidecar_snapshot(app))
        if not reasons:
            return latest
        return self._new_revision(app, app.droplet_guid or "", app.env, commands, " ".join(reasons))

    def _rollback_revision(self, app: _App, target: _Revision) -> _Revision:
        latest = self._latest_revision(app)
        reasons = self._revision_reasons(latest, target.droplet_guid, target.env, target.commands,
                                         target.sidecars) if latest else []
        if latest is not None and not reasons:
            raise _unprocessable("Unable to rollback. The code and configuration you are rolling back to is the "
                                 "same as the deployed revision.")
        reasons.append(f"Rolled back to revision {target.version}.")
        app.env = copy.deepcopy(target.env)
        # DeploymentTargetState#apply_sidecars (lib/cloud_controller/deployments/deployment_target_state.rb):
        # the app's sidecars are replaced by new ones made from the revision's (new guids, origin user).
        self._sidecars = [s for s in self._sidecars if s.app_guid != app.guid]
        self._sidecars += [_Sidecar(app.guid, s["name"], s["command"], list(s["process_types"]), s["memory_in_mb"])
                           for s in target.sidecars]
        return self._new_revision(app, target.droplet_guid, target.env, target.commands, " ".join(reasons))

    # ---- deployments -----------------------------------------------------------------------------

    def _present_deployment(self, deployment: _Deployment) -> dict[str, Any]:
        base = f"/v3/deployments/{deployment.guid}"
        links: dict[str, Any] = {"self": self._href(base), "app": self._href(f"/v3/apps/{deployment.app_guid}")}
        if deployment.state in _ACTIVE_STATES:
            links["cancel"] = {**self._href(f"{base}/actions/cancel"), "method": "POST"}
        if deployment.state == "PAUSED":
            links["continue"] = {**self._href(f"{base}/actions/continue"), "method": "POST"}
        options: dict[str, Any] = {"max_in_flight": deployment.max_in_flight}
        if deployment.web_instances is not None:
            options["web_instances"] = deployment.web_instances
        if deployment.memory_in_mb is not None:
            options["memory_in_mb"] = deployment.memory_in_mb
        status: dict[str, Any] = {"value": deployment.status_value, "reason": deployment.status_reason,
                                  "details": {"last_successful_healthcheck": deployment.last_healthy_at,
                                              "last_status_change": deployment.status_updated_at}}
        if deployment.strategy == "canary":
            status["canary"] = {"steps": {"current": 1, "total": 1}}
        return {"guid": deployment.guid, "created_at": deployment.created_at, "updated_at": deployment.updated_at,
                # "state" is deprecated and gone from newer CC presenters, but the 3.195.0 contract requires it.
                "state": deployment.state, "status": status, "strategy": deployment.strategy, "options": options,
                "droplet": {"guid": deployment.droplet_guid},
                "previous_droplet": {"guid": deployment.previous_droplet_guid},
                "new_processes": list(deployment.new_processes),
                "revision": ({"guid": deployment.revision_guid, "version": deployment.revision_version}
                             if deployment.revision_guid else None),
                "relationships": {"app": {"data": {"guid": deployment.app_guid}}}, "metadata": self._metadata(),
                "links": links}

    def _h_create_deployment(self, req: _Req) -> _Resp:
        body = req.json_object()
        self._check_fields(body, {"droplet", "revision", "strategy", "options", "relationships", "metadata"})
        app = self._find(self._apps, self._relationship_guid(body, "app"))
        if app is None:
            raise _unprocessable("Unable to use app. Ensure that the app exists and you have access to it.")
        strategy = body.get("strategy") or "rolling"
        if strategy not in ("rolling", "canary"):
            raise _unprocessable(f"Strategy '{strategy}' is not implemented by the stand-in (rolling, canary)"
                                 if strategy == "recreate" else "Strategy must be one of rolling, canary")
        if "options" in body and _version(self.cc_version) < _version(MAX_IN_FLIGHT_SINCE):
            # Before CC 3.173.0 `options` was no allowed key: BaseMessage's unknown-field check.
            raise _unprocessable("Unknown field(s): 'options'")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise _unprocessable("Options must be an object")
        self._check_fields(options, {"max_in_flight", "web_instances", "memory_in_mb"})
        max_in_flight = options.get("max_in_flight", 1)
        if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
            raise _unprocessable("Max in flight must be an integer greater than 0")
        for key in ("web_instances", "memory_in_mb"):
            if key in options and (not isinstance(options[key], int) or options[key] < 1):
                raise _unprocessable(f"{key.replace('_', ' ').capitalize()} must be an integer greater than 0")
        droplet_ref, revision_ref = body.get("droplet"), body.get("revision")
        if droplet_ref and revision_ref:
            raise _unprocessable("Cannot set both fields 'droplet' and 'revision'")
        target_revision: _Revision | None = None
        if revision_ref:
            target_revision = self._find(self._revisions, revision_ref.get("guid") if isinstance(revision_ref, dict)
                                         else None)
            if target_revision is None or target_revision.app_guid != app.guid:
                raise _unprocessable("The revision does not exist")
            droplet = self._find(self._droplets, target_revision.droplet_guid)
            if droplet is None:
                raise _unprocessable("Invalid revision. Please specify a revision with a valid droplet in the request.")
        elif droplet_ref:
            droplet = self._find(self._droplets, droplet_ref.get("guid") if isinstance(droplet_ref, dict) else None)
            if droplet is None or droplet.app_guid != app.guid or droplet.state != "STAGED":
                raise _unprocessable("Unable to assign current droplet. Ensure the droplet exists and belongs to "
                                     "this app.")
        else:
            droplet = self._find(self._droplets, app.droplet_guid)
            if droplet is None:
                raise _unprocessable("Invalid droplet. Please specify a droplet in the request or set a current "
                                     "droplet for the app.")

        if "memory_in_mb" in options and self._sidecar_memory_refused(app.web, options["memory_in_mb"]):
            # DeploymentCreate sets the new process's memory and saves it: ProcessModel#validate_sidecar_memory
            # fails, and the controller answers Sequel's raw message for it.
            raise _unprocessable("memory process_memory_insufficient_for_sidecars")
        # DeploymentCreate: the app's current droplet switches now (cancel switches it back) and the
        # revision is recorded now, so both show in the 201.
        previous_droplet = app.droplet_guid
        previous = next((d for d in self._deployments if d.app_guid == app.guid and d.status_value == "ACTIVE"), None)
        app.droplet_guid = droplet.guid
        revision = self._rollback_revision(app, target_revision) if target_revision else self._update_app_revision(app)
        original = previous.original_instances if previous else app.processes[0].instances
        deployment = _Deployment(app.guid, strategy, max_in_flight, droplet.guid, previous_droplet, revision.guid,
                                 revision.version, original, web_instances=options.get("web_instances"),
                                 memory_in_mb=options.get("memory_in_mb"),
                                 state="PREPAUSED" if strategy == "canary" else "DEPLOYING")
        deployment.previous_env, deployment.previous_image = copy.deepcopy(app.running_env), app.running_image
        deployment.changed_t = self.clock()
        self._deployments.append(deployment)

        if app.state == "STOPPED":
            # A stopped app has nothing to roll: CC starts it and finalizes the deployment at once,
            # whatever its instances then do (DEPLOYED says nothing about their health).
            web = app.web
            self._check_quota(app, deployment.web_instances or web.instances, deployment.memory_in_mb or web.memory_in_mb)
            web.revision_guid = revision.guid
            if deployment.web_instances is not None:
                self._boot(web, deployment.web_instances, self.clock())
            if deployment.memory_in_mb is not None:
                web.memory_in_mb = deployment.memory_in_mb
            self._start_instances(app)
            deployment.set_status("DEPLOYED", "FINALIZED", "DEPLOYED")
            return _json_resp(201, self._present_deployment(deployment))

        if previous is not None:
            # CC's supersede_deployment: FINALIZED/SUPERSEDED; the deprecated state says DEPLOYED only for a
            # deployment that was rolling, CANCELED for a paused or cancelling one.
            previous.set_status("DEPLOYED" if previous.state == "DEPLOYING" else "CANCELED", "FINALIZED", "SUPERSEDED",
                                self.clock())
        desired = deployment.web_instances or original
        newest = app.web
        process = _Process(app.guid, instances=1 if strategy == "canary" else min(max_in_flight, desired),
                           memory_in_mb=deployment.memory_in_mb or newest.memory_in_mb, disk_in_mb=newest.disk_in_mb,
                           command=revision.commands.get("web"), health_check_type=newest.health_check_type,
                           health_check_endpoint=newest.health_check_endpoint,
                           health_check_timeout=newest.health_check_timeout,
                           health_check_invocation_timeout=newest.health_check_invocation_timeout,
                           health_check_interval=newest.health_check_interval, revision_guid=revision.guid)
        self._check_quota(app, process.instances, process.memory_in_mb)
        app.processes.append(process)
        deployment.deploying_process_guid = process.guid
        deployment.new_processes = [{"guid": process.guid, "type": "web"}]
        # The new instances start with today's env and the new droplet; the old ones keep serving.
        deployment.running_env, deployment.running_image = copy.deepcopy(app.env), droplet.image
        process.started_env, process.started_image = deployment.running_env, deployment.running_image
        self._boot_all(process, self.clock())
        self._transient_boot_crashes(process)
        return _json_resp(201, self._present_deployment(deployment))

    def _advance_deployment(self, deployment: _Deployment, now: float) -> None:
        """The deployment updater (lib/cloud_controller/deployment_updater/actions/scale.rb, cancel.rb,
        finalize.rb) up to `now`: once every new instance is RUNNING, the new process grows by
        max_in_flight and the old ones shrink by as many; at the target count it finalizes, the old
        processes go. A cancel ends a cycle later with the new process gone and the old one scaled back.
        New instances that never pass their health check (crash-looping) hold it ACTIVE for ever."""
        if deployment.status_value != "ACTIVE" or deployment.state == "PAUSED":
            return
        app = self._get(self._apps, deployment.app_guid, "App")
        process = self._find(app.processes, deployment.deploying_process_guid)
        if deployment.state == "CANCELING":
            if now - deployment.changed_t < self.timings.cancel:
                return
            if process is not None:
                app.processes.remove(process)
            if app.processes:
                self._boot(app.processes[0], deployment.original_instances, now)
            deployment.set_status("CANCELED", "FINALIZED", "CANCELED", now)
            return
        if process is None or self.faults.deployment_never_healthy:
            return
        while True:
            healthy_at = self._all_running_since(app, process, now)
            if healthy_at is None:
                return  # CC keeps waiting for the new instances' health checks
            if deployment.state == "PREPAUSED":
                deployment.set_status("PAUSED", "ACTIVE", "PAUSED", healthy_at)  # the canary is up; wait
                return
            desired = deployment.web_instances or deployment.original_instances
            if process.instances >= desired:
                app.processes = [process]
                app.running_env, app.running_image = deployment.running_env, deployment.running_image
                deployment.last_healthy_at = _now()
                deployment.set_status("DEPLOYED", "FINALIZED", "DEPLOYED", healthy_at)
                return
            # Scale: the oldest web processes lose max_in_flight instances, the new one gains as many
            # (up to the target), together in one updater cycle.
            self._boot(process, min(process.instances + deployment.max_in_flight, desired), healthy_at)
            step = deployment.max_in_flight
            for old in app.processes:
                if old is not process and step > 0:
                    take = min(old.instances, step)
                    self._boot(old, old.instances - take, healthy_at)
                    step -= take

    def _all_running_since(self, app: _App, process: _Process, now: float) -> float | None:
        """When the last of the process's instances became RUNNING, or None while one is not."""
        since = []
        for index in range(process.instances):
            state, at = self._instance_state(app, process, index, now)
            if state != "RUNNING":
                return None
            since.append(at)
        return max(since, default=now)

    def _h_get_deployment(self, req: _Req, guid: str) -> _Resp:
        deployment: _Deployment = self._get(self._deployments, guid, "Deployment")
        return _json_resp(200, self._present_deployment(deployment))

    def _h_list_deployments(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/deployments", self._deployments, self._present_deployment, {
            "app_guids": lambda d, v: d.app_guid in v, "guids": lambda d, v: d.guid in v,
            "states": lambda d, v: d.state in v, "status_values": lambda d, v: d.status_value in v,
            "status_reasons": lambda d, v: d.status_reason in v})

    def _h_cancel_deployment(self, req: _Req, guid: str) -> _Resp:
        deployment: _Deployment = self._get(self._deployments, guid, "Deployment")
        if deployment.state not in _ACTIVE_STATES:
            raise _unprocessable(f"Cannot cancel a deployment with status: {deployment.status_value} and reason: "
                                 f"{deployment.status_reason}")
        app = self._get(self._apps, deployment.app_guid, "App")
        app.droplet_guid = deployment.previous_droplet_guid  # DeploymentCancel restores it at once
        app.running_env, app.running_image = deployment.previous_env, deployment.previous_image
        deployment.set_status("CANCELING", "ACTIVE", "CANCELING", self.clock())
        # DeploymentsController#cancel ends in `head :ok`: an empty 200, whatever the 3.195.0 contract
        # documents (an erratum in tests/fakes/test_cf_stand_in.py).
        return _Resp(200, b"", {})

    def _h_continue_deployment(self, req: _Req, guid: str) -> _Resp:
        deployment: _Deployment = self._get(self._deployments, guid, "Deployment")
        if deployment.state != "PAUSED":
            raise _unprocessable(f"Cannot continue a deployment with status: {deployment.status_value} and "
                                 f"reason: {deployment.status_reason}")
        deployment.set_status("DEPLOYING", "ACTIVE", "DEPLOYING", self.clock())
        return _json_resp(200, self._present_deployment(deployment))

    # ---- services --------------------------------------------------------------------------------

    def _present_offering(self, offering: _ServiceOffering) -> dict[str, Any]:
        return {"guid": offering.guid, "name": offering.name, "description": offering.description,
                "available": True, "tags": ["AWS", "S3", "object-storage"], "requires": [],
                "created_at": offering.created_at, "updated_at": offering.updated_at, "shareable": True,
                "documentation_url": "https://cloud.gov/docs/services/s3/",
                "broker_catalog": {"id": offering.catalog_id, "metadata": {}, "maximum_polling_duration": None,
                                   "features": {"plan_updateable": False, "bindable": True,
                                                "instances_retrievable": False, "bindings_retrievable": False,
                                                "allow_context_updates": False}},
                "relationships": {"service_broker": {"data": {"guid": offering.broker_guid}}},
                "metadata": self._metadata(),
                "links": {"self": self._href(f"/v3/service_offerings/{offering.guid}"),
                          "service_plans": self._href(f"/v3/service_plans?service_offering_guids={offering.guid}"),
                          "service_broker": self._href(f"/v3/service_brokers/{offering.broker_guid}")}}

    def _h_list_offerings(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/service_offerings", self._offerings, self._present_offering, {
            "names": lambda o, v: o.name in v, "guids": lambda o, v: o.guid in v,
            "available": lambda o, v: "true" in v, "space_guids": lambda o, v: True,
            "organization_guids": lambda o, v: True}, ("created_at", "updated_at", "name"))

    def _present_plan(self, plan: _ServicePlan) -> dict[str, Any]:
        return {"guid": plan.guid, "name": plan.name, "description": plan.description, "visibility_type": "public",
                "available": True, "free": True, "costs": [], "created_at": plan.created_at,
                "updated_at": plan.updated_at, "maintenance_info": {},
                "broker_catalog": {"id": plan.catalog_id, "metadata": {}, "maximum_polling_duration": None,
                                   "features": {"plan_updateable": False, "bindable": True}},
                "schemas": {"service_instance": {"create": {"parameters": {}}, "update": {"parameters": {}}},
                            "service_binding": {"create": {"parameters": {}}}},
                "relationships": {"service_offering": {"data": {"guid": plan.offering_guid}}},
                "metadata": self._metadata(),
                "links": {"self": self._href(f"/v3/service_plans/{plan.guid}"),
                          "service_offering": self._href(f"/v3/service_offerings/{plan.offering_guid}"),
                          "visibility": self._href(f"/v3/service_plans/{plan.guid}/visibility")}}

    def _offering_of(self, plan: _ServicePlan) -> _ServiceOffering:
        return self._get(self._offerings, plan.offering_guid, "Service offering")

    def _h_list_plans(self, req: _Req) -> _Resp:
        return self._paginate(req, "/v3/service_plans", self._plans, self._present_plan, {
            "names": lambda p, v: p.name in v, "guids": lambda p, v: p.guid in v,
            "service_offering_names": lambda p, v: self._offering_of(p).name in v,
            "service_offering_guids": lambda p, v: p.offering_guid in v,
            "service_instance_guids": lambda p, v: any(i.plan_guid == p.guid and i.guid in v for i in self._instances),
            "available": lambda p, v: "true" in v, "space_guids": lambda p, v: True,
            "organization_guids": lambda p, v: True}, ("created_at", "updated_at", "name"))

    def _present_instance(self, instance: _ServiceInstance) -> dict[str, Any]:
        base = f"/v3/service_instances/{instance.guid}"
        return {"guid": instance.guid, "created_at": instance.created_at, "updated_at": instance.updated_at,
                "name": instance.name, "tags": list(instance.tags), "type": "managed", "maintenance_info": {},
                "upgrade_available": False, "dashboard_url": None, "last_operation": instance.last_operation.present(),
                "relationships": {"space": {"data": {"guid": instance.space_guid}},
                                  "service_plan": {"data": {"guid": instance.plan_guid}}},
                "metadata": self._metadata(),
                "links": {"self": self._href(base), "space": self._href(f"/v3/spaces/{instance.space_guid}"),
                          "service_plan": self._href(f"/v3/service_plans/{instance.plan_guid}"),
                          "service_credential_bindings":
                              self._href(f"/v3/service_credential_bindings?service_instance_guids={instance.guid}"),
                          "service_route_bindings":
                              self._href(f"/v3/service_route_bindings?service_instance_guids={instance.guid}"),
                          "parameters": self._href(f"{base}/parameters"),
                          "shared_spaces": self._href(f"{base}/relationships/shared_spaces")}}

    def _h_list_instances(self, req: _Req) -> _Resp:
        plan_name = {p.guid: p.name for p in self._plans}
        return self._paginate(req, "/v3/service_instances", self._instances, self._present_instance, {
            "names": lambda i, v: i.name in v, "guids": lambda i, v: i.guid in v,
            "space_guids": lambda i, v: i.space_guid in v, "type": lambda i, v: "managed" in v,
            "organization_guids": lambda i, v: self._get(self._spaces, i.space_guid, "Space").org_guid in v,
            "service_plan_guids": lambda i, v: i.plan_guid in v,
            "service_plan_names": lambda i, v: plan_name.get(i.plan_guid) in v}, ("created_at", "updated_at", "name"))

    def _h_get_instance(self, req: _Req, guid: str) -> _Resp:
        instance = self._get(self._instances, guid, "Service instance")
        return _json_resp(200, self._present_instance(instance))

    def _h_create_instance(self, req: _Req) -> _Resp:
        body = req.json_object()
        self._check_fields(body, {"type", "name", "relationships", "parameters", "tags", "metadata",
                                  "maintenance_info"})
        if body.get("type") != "managed":
            raise _unprocessable("The stand-in implements only managed service instances"
                                 if body.get("type") == "user-provided" else "Type must be one of 'managed', "
                                                                              "'user-provided'")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _unprocessable("Name must be a string")
        space = self._find(self._spaces, self._relationship_guid(body, "space"))
        if space is None:
            raise _unprocessable("Invalid space. Ensure that the space exists and you have access to it.")
        plan = self._find(self._plans, self._relationship_guid(body, "service_plan"))
        if plan is None:
            raise _unprocessable("Invalid service plan. Ensure that the service plan exists, is available, and you "
                                 "have access to it.")
        if any(i.name == name and i.space_guid == space.guid for i in self._instances):
            raise _unprocessable(f"The service instance name is taken: {name}.")
        instance = _ServiceInstance(name, space.guid, plan.guid, [str(t) for t in body.get("tags") or []])
        self._instances.append(instance)

        def complete() -> None:
            instance.last_operation.state, instance.last_operation.updated_at = "succeeded", _now()

        job = self._new_job("service_instance.create", "service_instances", instance.guid, complete)
        return _Resp(202, b"", {"Location": f"{self.url}/v3/jobs/{job.guid}"})

    def _present_key(self, key: _ServiceKey) -> dict[str, Any]:
        base = f"/v3/service_credential_bindings/{key.guid}"
        return {"guid": key.guid, "created_at": key.created_at, "updated_at": key.updated_at, "name": key.name,
                "type": "key", "last_operation": key.last_operation.present(), "metadata": self._metadata(),
                "relationships": {"service_instance": {"data": {"guid": key.instance_guid}}},
                "links": {"self": self._href(base), "details": self._href(f"{base}/details"),
                          "parameters": self._href(f"{base}/parameters"),
                          "service_instance": self._href(f"/v3/service_instances/{key.instance_guid}")}}

    def _h_list_keys(self, req: _Req) -> _Resp:
        instance_name = {i.guid: i.name for i in self._instances}
        return self._paginate(req, "/v3/service_credential_bindings", self._keys, self._present_key, {
            "type": lambda k, v: "key" in v, "names": lambda k, v: k.name in v, "guids": lambda k, v: k.guid in v,
            "service_instance_guids": lambda k, v: k.instance_guid in v,
            "service_instance_names": lambda k, v: instance_name.get(k.instance_guid) in v,
            "app_guids": lambda k, v: False, "app_names": lambda k, v: False}, ("created_at", "updated_at", "name"))

    def _h_get_key(self, req: _Req, guid: str) -> _Resp:
        key = self._get(self._keys, guid, "Service credential binding")
        return _json_resp(200, self._present_key(key))

    def _h_create_key(self, req: _Req) -> _Resp:
        body = req.json_object()
        self._check_fields(body, {"type", "name", "relationships", "parameters", "metadata"})
        if body.get("type") != "key":
            raise _unprocessable("The stand-in implements only service keys (type: key)"
                                 if body.get("type") == "app" else "Type must be 'app' or 'key'")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _unprocessable("Name can't be blank")
        instance_guid = self._relationship_guid(body, "service_instance")
        instance = self._find(self._instances, instance_guid)
        if instance is None:
            raise _unprocessable(f"The service instance could not be found: {instance_guid}")
        if instance.last_operation.state == "in progress":
            raise _unprocessable("There is an operation in progress for the service instance.")
        if any(k.name == name and k.instance_guid == instance.guid for k in self._keys):
            raise _unprocessable(f"The binding name is invalid. Key binding names must be unique. The service "
                                 f"instance already has a key binding with name '{name}'.")
        key = _ServiceKey(name, instance.guid)
        self._keys.append(key)

        def complete() -> None:
            key.last_operation.state, key.last_operation.updated_at = "succeeded", _now()

        job = self._new_job("service_bindings.create", "service_credential_bindings", key.guid, complete)
        return _Resp(202, b"", {"Location": f"{self.url}/v3/jobs/{job.guid}"})

    def _h_key_details(self, req: _Req, guid: str) -> _Resp:
        key: _ServiceKey = self._get(self._keys, guid, "Service credential binding")
        if key.last_operation.state != "succeeded":
            # ServiceCredentialBindingsController#not_found_with_message!
            raise _CCError(404, 10010, "CF-ResourceNotFound", f"Creation of service key {key.last_operation.state}")
        return _json_resp(200, {"credentials": copy.deepcopy(self.s3_credentials)})

    # ---- networking policy API v1 ----------------------------------------------------------------

    def _h_list_policies(self, req: _Req) -> _Resp:
        ids = set(_csv(req.query.get("id", [])))
        sources = set(_csv(req.query.get("source_id", [])))
        destinations = set(_csv(req.query.get("dest_id", [])))
        selected = [p for p in self._policies
                    if (not ids or p["source"]["id"] in ids or p["destination"]["id"] in ids)
                    and (not sources or p["source"]["id"] in sources)
                    and (not destinations or p["destination"]["id"] in destinations)]
        return _json_resp(200, {"total_policies": len(selected), "policies": copy.deepcopy(selected)})

    def _parse_policies(self, req: _Req) -> list[dict[str, Any]]:
        # The policy server's mapper/validator messages, prefixed as its ErrorResponse does.
        try:
            body = json.loads(req.raw or b"null")
        except (ValueError, UnicodeDecodeError):
            raise _policy_error(400, "mapper: unmarshal json: invalid character") from None
        policies = body.get("policies") if isinstance(body, dict) else None
        if not isinstance(policies, list) or not policies:
            raise _policy_error(400, "mapper: missing policies")
        parsed = []
        for policy in policies:
            source = policy.get("source") if isinstance(policy, dict) else None
            destination = policy.get("destination") if isinstance(policy, dict) else None
            if not isinstance(source, dict) or not source.get("id"):
                raise _policy_error(400, "mapper: missing source id")
            if not isinstance(destination, dict) or not destination.get("id"):
                raise _policy_error(400, "mapper: missing destination id")
            protocol = destination.get("protocol")
            if not protocol:
                raise _policy_error(400, "mapper: missing destination protocol")
            if protocol not in ("tcp", "udp"):
                raise _policy_error(400, "mapper: invalid destination protocol, specify either udp or tcp")
            ports = destination.get("ports")
            if not isinstance(ports, dict) or not isinstance(ports.get("start"), int) \
                    or not isinstance(ports.get("end"), int):
                raise _policy_error(400, "mapper: missing destination ports")
            start, end = ports["start"], ports["end"]
            if not 1 <= start <= 65535 or not 1 <= end <= 65535:
                raise _policy_error(400, f"mapper: invalid port range {start}-{end}, must be in range 1-65535")
            if start > end:
                raise _policy_error(400, f"mapper: invalid port range {start}-{end}, start must be less than or "
                                         "equal to end")
            parsed.append({"source": {"id": source["id"]},
                           "destination": {"id": destination["id"], "protocol": protocol,
                                           "ports": {"start": start, "end": end}}})
        known = {a.guid for a in self._apps}
        if any(p["source"]["id"] not in known or p["destination"]["id"] not in known for p in parsed):
            raise _policy_error(403, "one or more applications cannot be found or accessed")
        return parsed

    def _h_create_policies(self, req: _Req) -> _Resp:
        for policy in self._parse_policies(req):
            if policy not in self._policies:  # creating an existing policy is a no-op, not an error
                self._policies.append(policy)
        return _json_resp(200, {})

    def _h_delete_policies(self, req: _Req) -> _Resp:
        for policy in self._parse_policies(req):
            if policy in self._policies:
                self._policies.remove(policy)
        return _json_resp(200, {})


_REF_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_REF_TAG = re.compile(r"[\w][\w.-]{0,127}")
_REF_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def staged_image(reference: str) -> str:
    """The droplet image a docker staging reports for `reference`, or ValueError with the words of
    containers/image when it refuses it.

    Models containers/image `docker/reference/normalize.go` (ParseNormalizedNamed: docker.io is the
    default domain, official images live under library/, no tag and no digest means :latest) and
    `docker/docker_transport.go` newReference, which refuses a reference with both a tag and a digest;
    dockerapplifecycle `builder/builder.go` stages through it and reports the normalised name, without
    the docker.io domain (e.g. library/registry@sha256:...)."""
    name, at, digest = reference.partition("@")
    if at and not _REF_DIGEST.fullmatch(digest):
        raise ValueError(f"invalid reference format: {reference!r}")
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _REF_TAG.fullmatch(tag):
            raise ValueError(f"invalid reference format: {reference!r}")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if domain in ("docker.io", "index.docker.io") and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_REF_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise ValueError(f"invalid reference format: repository name must be lowercase: {reference!r}")
    if tag and digest:
        raise ValueError("Docker references with both a tag and digest are currently not supported")
    named = path if domain in ("docker.io", "index.docker.io") else f"{domain}/{path}"
    return f"{named}@{digest}" if digest else f"{named}:{tag or 'latest'}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _jwt(claims: Mapping[str, Any], key: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    return signing + "." + part(hmac.new(key, signing.encode(), hashlib.sha256).digest())


def _user_guid(name: str) -> str:
    # Stable per name, so the same user shows the same guid in every build.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-cf-user:{name}"))


class _HTTPHandler(BaseHTTPRequestHandler):
    """Reads the whole request, hands it to the FakeCloudFoundry, writes its answer (keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would delay the second

    def _serve(self) -> None:
        fake: FakeCloudFoundry = self.server.fake  # type: ignore[attr-defined]
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        resp = fake._handle(self.command, self.path, self.headers, raw)
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        self.wfile.write(resp.body)

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # tests read FakeCloudFoundry.requests instead of stderr
