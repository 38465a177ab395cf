"""The one typed model of a mirror deployment, validated before anything is started.

A params file (params/<env>.yaml) and a notebook's parameters cell hold the same top-level keys;
papermill's `-f params/<env>.yaml` injects the file's keys as notebook variables, and
`runbook_parameters(globals(), ...)` validates them the same way `load_params_file` validates a file.
"""
from __future__ import annotations

import ast
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ParameterError
from .papermill_files import check_papermill_files
from .runbook_summary import install_failure_line
from .security_rules import Cidr, SecurityRules, load_security_rules
from .yaml_files import KeyedValueError, describe_validation_error, read_yaml_mapping

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A runbook's `currency` option: the ISO 4217 code every cost it shows carries (the price's currency).
CURRENCY = re.compile(r"[A-Z]{3}")


def load_params_file(path: str | Path) -> Settings:
    """Read and validate params/<env>.yaml; errors name the file and the key."""
    label = _display_path(Path(path))
    data = read_yaml_mapping(resolve_project_path(path), label=label)
    return validate_settings(data, source=label)


def validate_settings(data: Mapping[str, Any], *, source: str) -> Settings:
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise ParameterError(describe_validation_error(exc, source=source)) from None


def runbook_parameters(namespace: Mapping[str, Any], *, notebook: str,
                       options: Mapping[str, type] | None = None,
                       only_on: tuple[str, ...] = (), elsewhere: str = "") -> tuple[Settings, dict[str, Any]]:
    """Validate a notebook's parameters as papermill left them in `globals()`.

    Papermill only warns about a parameter the notebook does not declare, so a misspelt key in a
    params file would silently run with the notebook's default; here it is an error instead.
    `options` are the runbook's own parameters (dry_run, confirmations), typed, with no default.
    `only_on`: the platforms the runbook serves; another one is refused first, before anything
    about that platform's settings or credentials is asked, saying `elsewhere` (what to use instead).
    """
    options = dict(options or {})
    names = _parameter_cell_names(namespace.get("In"))
    if names is None:  # not in IPython: every plain value in the namespace is a parameter
        given = {k: v for k, v in namespace.items() if _is_parameter(k, v)}
    else:  # in a kernel: only what the parameters cell and papermill's injected cell assigned
        given = {k: namespace[k] for k in names if k in namespace}
        install_failure_line()  # from here on a failing cell says its one sentence first, headless too
        check_papermill_files()  # an empty -f file injects nothing: refuse it rather than run on defaults
    source = f"{notebook} parameters"
    expected = set(SETTINGS_KEYS) | set(options)
    unknown = sorted(set(given) - expected)
    missing = sorted(expected - set(given))
    if unknown or missing:
        parts = [f"unknown parameter '{k}'{did_you_mean(k, expected)}" for k in unknown] + [
            f"missing parameter '{k}'" for k in missing]
        raise ParameterError(f"{source}: " + "; ".join(parts))
    if only_on and given["platform"] not in only_on:
        raise ParameterError(f"{source}: {Path(notebook).stem} is {' or '.join(only_on)}-only, and these "
                             f"parameters are for platform {given['platform']!r} (environment "
                             f"{given.get('environment')!r}); nothing was asked of that platform or changed"
                             + (f"; {elsewhere}" if elsewhere else ""))
    chosen: dict[str, Any] = {}
    for key, kind in options.items():
        value = given[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # papermill's -p reads "0" as an int
        # bool is an int in Python; a confirmation gate must be a real bool, not 1.
        if kind is bool and not isinstance(value, bool):
            raise ParameterError(f"{source}: '{key}' must be True or False, got {value!r}; papermill reads only "
                                 f"those two words as booleans: -p {key} True")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParameterError(f"{source}: '{key}' must be {kind.__name__}, got {type(value).__name__}")
        if key == "currency" and not CURRENCY.fullmatch(value):
            raise ParameterError(f"{source}: 'currency' must be an ISO 4217 code of three capital letters, such "
                                 f"as USD or EUR (the currency of price_per_gb_month), got {value!r}")
        chosen[key] = value
    settings = validate_settings({k: given[k] for k in SETTINGS_KEYS}, source=source)
    return settings, chosen


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'dry_run'?)' for a near miss of a valid name, else ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve_project_path(path: str | Path) -> Path:
    """Relative paths in params are relative to the project root, wherever the kernel runs."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


# ---------------------------------------------------------------------------------------------
# Field types


def _url(value: str, *, schemes: tuple[str, ...]) -> str:
    if "@" in value:
        # Checked first and without quoting the value: what precedes the @ may be a password.
        raise ValueError("must not carry credentials in the URL")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"'{value}' is not a {' or '.join(schemes)} URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"'{value}' must be a root URL with no path")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"'{value}' has an invalid port") from None
    return value.rstrip("/")


def _http_url(value: str) -> str:
    return _url(value, schemes=("http", "https"))


def _https_url(value: str) -> str:
    # Plain http only to a loopback address: a stand-in on this machine, never a real API.
    if value.startswith("http://") and (urlsplit(value).hostname or "") in ("127.0.0.1", "localhost"):
        return _url(value, schemes=("http",))
    return _url(value, schemes=("https",))


_SIZE = re.compile(r"^[1-9][0-9]*(M|MB|G|GB)$")
_DURATION = re.compile(r"^(0|([0-9]+(h|m|s))+)$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Digest only: Diego's docker stager and the cells pull through containers/image, which refuses a
# reference with both a tag and a digest ("Docker references with both a tag and digest are currently
# not supported"), so `registry:3.0.0@sha256:...` would fail the first staging. The version is data
# of its own (registry.version).
_DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*@sha256:[0-9a-f]{64}$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def _pattern(regex: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"'{value}' is not {what}")
        return value
    return AfterValidator(check)


HttpUrl = Annotated[str, AfterValidator(_http_url)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
Size = Annotated[str, _pattern(_SIZE, "a memory size such as 256M or 1G")]
CacheSize = Annotated[str, _pattern(re.compile(r"^(0|[1-9][0-9]*(M|MB|G|GB))$"),
                                    "a size such as 512M or 2G, or 0 for none")]
Duration = Annotated[str, _pattern(_DURATION, "a duration such as 168h, 90m or 0")]
Name = Annotated[str, _pattern(_NAME, "a lower-case name of letters, digits and dashes")]
EnvName = Annotated[str, _pattern(_ENV_NAME, "an environment variable name such as DOCKERHUB_TOKEN")]
Bucket = Annotated[str, _pattern(_BUCKET, "a valid S3 bucket name")]
PinnedImage = Annotated[str, _pattern(_DIGEST_REF, "an image pinned by digest alone (name@sha256:<64 hex>, "
                                                      "no tag: Cloud Foundry refuses a tag with a digest)")]
Version = Annotated[str, _pattern(_VERSION, "a version such as 2.8.2 (quote it in YAML)")]
Port = Annotated[int, Field(ge=1024, le=65535)]
InternalRoute = Annotated[str, _pattern(re.compile(r"^[a-z0-9-]+\.apps\.internal$"),
                                        "a route on apps.internal such as my-mirror.apps.internal")]


class _Model(BaseModel):
    # strict: YAML's `instances: "2"` or `version: 2.8` must fail, not be coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---------------------------------------------------------------------------------------------
# The model


class RegistrySettings(_Model):
    # distribution version the config is rendered for: 3.x as production pins; "2.8.2" runs Debian's package
    version: Version
    image: PinnedImage | None = None  # CF only: the registry image, pinned by digest
    instances: int = Field(ge=1, le=64)
    memory: Size
    # 3.x only, not emitted for 2.x: how long the registry's own scheduler keeps what it cached; "0"
    # (3.1+) leaves eviction to the retention runbook alone (docs/retention.md)
    cache_ttl: Duration = "168h"
    log_level: Literal["error", "warn", "info", "debug"] = "info"
    # CF only: the account Diego pulls the registry image with (anonymous pulls share a small limit);
    # its password or access token comes from the environment variable named here.
    image_pull_username: str | None = None
    image_pull_password_env: EnvName | None = None

    @model_validator(mode="after")
    def _pull_credentials(self) -> RegistrySettings:
        if (self.image_pull_username is None) != (self.image_pull_password_env is None):
            raise KeyedValueError("image_pull_username", "and image_pull_password_env go together")
        # ttl 0 runs no scheduler, and 3.0.x's shutdown then stops that nil scheduler: every stop and
        # rolling replacement ends in a nil-pointer panic (exit 2). 3.1.0 checks for it.
        if self.cache_ttl == "0" and self.version.startswith("3.0."):
            raise KeyedValueError("cache_ttl", "0 needs registry 3.1 or later: 3.0.x panics at every stop "
                                  "without a scheduler; keep a TTL on 3.0.x (retention evicts either way)")
        return self

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


class UpstreamSettings(_Model):
    url: HttpUrl  # the registry being mirrored (Docker Hub, or the local stand-in)
    username: str | None = None
    password: str | None = None  # only in params/local.yaml, for the local Docker Hub stand-in
    password_env: EnvName | None = None  # elsewhere: the environment variable holding the token

    @model_validator(mode="after")
    def _credentials(self) -> UpstreamSettings:
        if self.password is not None and self.password_env is not None:
            raise KeyedValueError("password", "give either password (local only) or password_env, not both")
        if (self.password is not None or self.password_env is not None) and not self.username:
            raise KeyedValueError("username", "is required with a password")
        return self

    def __repr__(self) -> str:
        return (f"UpstreamSettings(url={self.url!r}, username={self.username!r}, "
                f"password={'<hidden>' if self.password else None}, password_env={self.password_env!r})")

    # pydantic's own __str__ would print the password.
    __str__ = __repr__


class StorageSettings(_Model):
    bucket: Bucket
    region: str = Field(min_length=1, max_length=40)
    root_directory: str = Field(default="/", pattern=r"^/[A-Za-z0-9._/-]*$")


# The proxy's manifest cache on disk (rendering.ManifestCache): a fixed size, manifests being small.
PROXY_MANIFEST_CACHE_MB = 64


def size_mb(size: str) -> int:
    """A params size (256M, 1G, 512MB, or 0) in MB, as CC counts memory and disk."""
    number = size.rstrip("BGM")
    return int(number) * (1024 if "G" in size else 1)


class ProxySettings(_Model):
    instances: int = Field(ge=1, le=64)
    memory: Size
    security_rules_file: str | None = None  # private file (allow/deny/trusted_routers) read at run time
    security_rules: SecurityRules | None = None  # inline rules: only for the local environment
    blob_cache_size: CacheSize = "0"  # on-disk blob cache per proxy instance; 0 turns it off
    # Each proxy instance's disk on Cloud Foundry (the app's disk_quota): its caches, and every cold
    # layer in flight twice (nginx's copy for the cache and blob-fanout's spool). CC's default maximum
    # is 2G; the caches may take at most half of it.
    disk_quota: CacheSize = "2G"
    expose_catalog: bool = False  # /v2/_catalog lists every cached repository: refused unless true
    # A tag's manifest is served from the proxy for this long without asking Docker Hub; after that it
    # is revalidated in the background while the cached copy is served, and served stale while the
    # mirror, Docker Hub or S3 fail. 0 asks upstream on every tag request (no tag caching).
    tag_cache_seconds: int = Field(default=60, ge=0, le=86400)
    # How long a manifest request waits on the mirror (and so on Docker Hub) when nothing is cached.
    manifest_timeout_seconds: int = Field(default=15, ge=1, le=300)


class LocalSettings(_Model):
    address: str = "127.0.0.1"  # loopback address every public listener binds
    public_port: Port = 8080  # the router stand-in: the mirror's public endpoint
    hub_port: Port = 5100  # the Docker Hub stand-in: its registry, and its token service at /token
    hub_token_port: Port = 5101  # where the token service listens behind it (auth.docker.io)
    s3_port: Port = 8333  # SeaweedFS S3 API
    state_dir: str = ".state/local"  # processes, configs, data and logs of the stack
    seed_sample_images: bool = True  # push generated sample images into the Docker Hub stand-in
    ready_timeout_seconds: float = Field(60, gt=0, le=600)  # deadline for each component to answer

    @model_validator(mode="after")
    def _loopback(self) -> LocalSettings:
        import ipaddress

        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise KeyedValueError("address", f"{self.address!r} is not an IP address") from None
        # IPv4 only: endpoints are written as address:port (nginx listen, registries.conf), which an
        # IPv6 address such as ::1 would break.
        if ip.version != 4 or not ip.is_loopback:
            raise KeyedValueError("address", f"{self.address!r} is not an IPv4 loopback address; the local "
                                  "platform listens on 127.0.0.0/8 only")
        seen: dict[int, str] = {}
        for name in ("public_port", "hub_port", "hub_token_port", "s3_port"):
            port = getattr(self, name)
            if port in seen:
                raise KeyedValueError(name, f"{port} is already {seen[port]}; public_port, hub_port, "
                                      "hub_token_port and s3_port must differ")
            seen[port] = name
        return self


class CloudFoundrySettings(_Model):
    api: HttpsUrl  # the CC API, e.g. https://api.fr.cloud.gov
    org: str = Field(min_length=1)
    space: str = Field(min_length=1)
    mirror_app: Name
    proxy_app: Name
    mirror_route: InternalRoute  # must stay on apps.internal
    proxy_route: str = Field(pattern=r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")
    s3_service_instance: Name
    s3_service_plan: str = "basic"
    s3_service_key: Name
    # Which of the S3 service key's endpoints the mirror uses: cloud.gov's broker hands out both the
    # regional `endpoint` and a FIPS 140 validated `fips_endpoint`; FedRAMP systems must use the FIPS one.
    s3_endpoint: Literal["regional", "fips"] = "regional"
    max_in_flight: int = Field(default=1, ge=1, le=16)
    deploy_timeout_seconds: int = Field(default=900, ge=1, le=7200)  # per build and per deployment
    poll_interval_seconds: float = Field(default=2.0, gt=0, le=60)  # how often jobs/builds/deployments are polled
    # How long every instance must stay RUNNING before a deploy counts: a crash-looping instance is
    # RUNNING for a moment between crashes.
    health_settle_seconds: float = Field(default=10.0, ge=0, le=600)
    # Crashes of a deployment's new instances tolerated (Diego restarts them) before it fails; it fails
    # at once when every new instance is CRASHED. See docs/cloud-foundry.md.
    crash_budget: int = Field(default=3, ge=0, le=100)
    # The longest wait a rate-limited answer (429 Retry-After) may ask for; a longer one fails at once
    # with one sentence naming both, where CC's window could hold the runbook for an hour.
    max_retry_after_seconds: float = Field(default=300.0, ge=0, le=3600)
    # The container (overlay) network apps talk over: silk-controller's `network`, 10.255.0.0/16 by default.
    # No trusted router range may overlap it, or any app there could forge its client address.
    container_network: Cidr = "10.255.0.0/16"

    @model_validator(mode="after")
    def _routes(self) -> CloudFoundrySettings:
        if self.proxy_route.endswith(".apps.internal"):
            raise KeyedValueError("proxy_route", "must be public, not on apps.internal")
        return self


class Settings(_Model):
    environment: Literal["local", "staging", "production"]
    platform: Literal["local", "cloudfoundry"]
    on_failure: Literal["stop", "cancel"]  # stop: leave state for debugging; cancel: roll back
    registry: RegistrySettings
    upstream: UpstreamSettings
    storage: StorageSettings | None  # local only: CF takes bucket and region from the service key
    proxy: ProxySettings
    local: LocalSettings | None
    cloudfoundry: CloudFoundrySettings | None

    @model_validator(mode="after")
    def _platform(self) -> Settings:
        # Each problem names the key to change (KeyedValueError), not just the whole file.
        if self.platform == "local":
            if self.local is None:
                raise KeyedValueError("local", "is required for platform local")
            if self.cloudfoundry is not None:
                raise KeyedValueError("cloudfoundry", "must be null for platform local")
            if self.storage is None:
                raise KeyedValueError("storage", "is required for platform local")
        else:
            if self.cloudfoundry is None:
                raise KeyedValueError("cloudfoundry", "is required for platform cloudfoundry")
            if self.local is not None:
                raise KeyedValueError("local", "must be null for platform cloudfoundry")
            if self.registry.image is None:
                raise KeyedValueError(("registry", "image"), "must be an image pinned by digest on cloudfoundry")
            if self.environment == "local":
                raise KeyedValueError("environment", "local runs on platform local only")
            caches = size_mb(self.proxy.blob_cache_size) + PROXY_MANIFEST_CACHE_MB
            if caches > size_mb(self.proxy.disk_quota) // 2:
                raise KeyedValueError(("proxy", "blob_cache_size"), f"plus the {PROXY_MANIFEST_CACHE_MB}M manifest cache "
                                      f"must fit in half of proxy.disk_quota ({self.proxy.disk_quota}): the other "
                                      "half holds the layers in flight")
        if self.environment == "production" and self.on_failure != "cancel":
            raise KeyedValueError("on_failure", "must be cancel in production (roll back a failed deployment)")
        if self.environment != "local":
            if self.upstream.password is not None:
                raise KeyedValueError(("upstream", "password"), "may only be written in params for the local "
                                      "environment; use upstream.password_env")
            if self.proxy.security_rules is not None:
                raise KeyedValueError(("proxy", "security_rules"), "are private outside local; use "
                                      "proxy.security_rules_file")
        if (self.proxy.security_rules is None) == (self.proxy.security_rules_file is None):
            raise KeyedValueError("proxy", "give exactly one of security_rules and security_rules_file")
        return self

    def load_security_rules(self) -> SecurityRules:
        """The proxy's IP policy: inline (local) or from the private file named at run time."""
        if self.proxy.security_rules is not None:
            return self.proxy.security_rules
        assert self.proxy.security_rules_file is not None
        path = resolve_project_path(self.proxy.security_rules_file)
        label = f"proxy.security_rules_file ({_display_path(path)})"
        rules = load_security_rules(path, label=label)
        if self.cloudfoundry is not None:
            rules.check_platform([self.cloudfoundry.container_network], source=label)
        return rules


SETTINGS_KEYS: tuple[str, ...] = tuple(Settings.model_fields)

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


# First lines of the two cells that define parameters: ours, and the one papermill injects after it.
PARAMETERS_CELL_MARKER = "# Settings:"
_INJECTED_CELL_MARKER = "# Parameters"


def _parameter_cell_names(history: Any) -> set[str] | None:
    """Names assigned by the parameters cells run in this kernel (IPython's `In` history).

    Reading the cells, not the namespace, lets an operator re-run the validation cell in JupyterLab
    after later cells defined `settings`, `platform` and friends.
    """
    if not isinstance(history, list):
        return None
    names: set[str] = set()
    for source in history:
        if not isinstance(source, str):
            continue
        first = source.lstrip().split("\n", 1)[0].strip()
        if not (first.startswith(PARAMETERS_CELL_MARKER) or first == _INJECTED_CELL_MARKER):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names or None


def _is_parameter(name: str, value: Any) -> bool:
    if name.startswith("_") or name in _IPYTHON_NAMES:
        return False
    return not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT)) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)
