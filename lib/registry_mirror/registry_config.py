"""The registry's (distribution's) configuration, for the version being deployed.

The config is built as data so that one source yields both forms the platforms need: a YAML file
(local) and `REGISTRY_*` environment variables (a Cloud Foundry manifest). Secrets are never part of
it: the platform hands them to the process as the variables named in SECRET_ENV.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from .parameters import Settings

# Variables a platform sets from secrets at run time; never rendered, never displayed.
SECRET_ENV = {
    "s3_access_key": "REGISTRY_STORAGE_S3_ACCESSKEY",
    "s3_secret_key": "REGISTRY_STORAGE_S3_SECRETKEY",
    "upstream_password": "REGISTRY_PROXY_PASSWORD",
    # Signs upload state; a proxy takes no uploads, but every instance behind one route must share it.
    "http_secret": "REGISTRY_HTTP_SECRET",
}

# How long a mirror finishes in-flight pulls after SIGTERM before it exits.
DRAIN_SECONDS = 9


@dataclass(frozen=True)
class VersionProfile:
    """What a distribution release understands; keys a release lacks are not emitted."""

    major: int
    minor: int

    @classmethod
    def of(cls, version: str) -> VersionProfile:
        major, minor, *_ = (int(p) for p in version.split("."))
        return cls(major, minor)

    @property
    def has_proxy_ttl(self) -> bool:
        return self.major >= 3

    @property
    def has_forcepathstyle(self) -> bool:
        # 2.8 ignores the key and goes path-style whenever regionendpoint is set.
        return self.major >= 3

    @property
    def has_proxy_metrics(self) -> bool:
        # 2.8 has only expvar counters, whose proxy hits/misses are wrong (distribution bug 4044).
        return self.major >= 3

    @property
    def config_path(self) -> str:
        return "/etc/distribution/config.yml" if self.major >= 3 else "/etc/docker/registry/config.yml"


@dataclass(frozen=True)
class S3Location:
    """Where the cache lives: from params locally, from the service key on Cloud Foundry."""

    bucket: str
    region: str
    endpoint: str | None = None  # None means AWS itself
    root_directory: str = "/"


@dataclass(frozen=True)
class Listener:
    """Where the registry listens: a unix socket locally (no TCP port at all), :5000 on CF."""

    addr: str
    net: str = "tcp"


def registry_config(settings: Settings, *, s3: S3Location, listener: Listener,
                    instance: str = "mirror") -> dict[str, Any]:
    """The registry config as data, for the version in settings.registry.version."""
    profile = VersionProfile.of(settings.registry.version)
    s3_params: dict[str, Any] = {
        "region": s3.region,
        "bucket": s3.bucket,
        "rootdirectory": s3.root_directory,
        "v4auth": True,
        "secure": True,
    }
    if s3.endpoint:
        s3_params["regionendpoint"] = s3.endpoint
        s3_params["secure"] = s3.endpoint.startswith("https://")
        if profile.has_forcepathstyle:
            s3_params["forcepathstyle"] = True

    proxy: dict[str, Any] = {"remoteurl": settings.upstream.url}
    if settings.upstream.username:
        proxy["username"] = settings.upstream.username
    if profile.has_proxy_ttl:
        proxy["ttl"] = settings.registry.cache_ttl

    http: dict[str, Any] = {
        "addr": listener.addr,
        # CF sends SIGTERM and kills after 10 s; finish in-flight pulls inside that window.
        "draintimeout": f"{DRAIN_SECONDS}s",
        # A manifest by tag differs with the client's Accept lines; saying so lets the proxy cache keep
        # one copy per Accept (nginx hashes every Accept line for Vary, even where $http_accept shows
        # only the first), and the proxy stores no tag answer that lacks it.
        "headers": {"X-Content-Type-Options": ["nosniff"], "Vary": ["Accept"]},
    }
    if listener.net != "tcp":
        http["net"] = listener.net
    if profile.has_proxy_metrics and listener.net == "tcp":
        # Only on CF: port 5001 has no route, so only the container itself sees it.
        http["debug"] = {"addr": ":5001", "prometheus": {"enabled": True, "path": "/metrics"}}

    return {
        "version": 0.1,
        "log": {
            "level": settings.registry.log_level,
            # JSON lines are what the cache and savings analyses parse.
            "formatter": "json",
            "fields": {"service": "registry-mirror", "instance": instance},
            # Otherwise an Apache-style access line is mixed into the JSON stream.
            "accesslog": {"disabled": True},
        },
        "storage": {
            "s3": s3_params,
            # A 307 to a pre-signed S3 URL would let layer bytes bypass the allow-listing proxy.
            "redirect": {"disable": True},
            # Expiry of cached content deletes blobs; without this the TTL can only grow the bucket.
            "delete": {"enabled": True},
            # No blob descriptor cache: an in-memory one answers "present" for a blob retention (or the
            # proxy TTL) deleted, and the registry then serves it from storage with nothing behind it
            # instead of fetching it again. Without it every blob request asks storage: one more small
            # S3 read per blob request (docs/retention.md has the measurement).
            # A pull-through cache takes no uploads; purging would list the bucket on every start.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
        "proxy": proxy,
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }


def registry_config_yaml(config: dict[str, Any]) -> str:
    return "# Rendered by registry_mirror; secrets are passed as environment variables.\n" + yaml.safe_dump(
        config, sort_keys=False, default_flow_style=False)


# What every mirror process gets in its environment besides its config, on every platform. The 3.x
# registry exports OpenTelemetry traces to localhost:4318 unless told not to, and logs a failed export
# every 10 s per instance; nothing collects them here.
REGISTRY_PROCESS_ENV: dict[str, str] = {"OTEL_TRACES_EXPORTER": "none"}


def registry_env(config: dict[str, Any]) -> dict[str, str]:
    """The same config as REGISTRY_* variables, as the CF manifest carries it, with REGISTRY_PROCESS_ENV.

    `REGISTRY_STORAGE=s3` is needed because it replaces the image's whole default storage map; the
    registry applies the variables in name order, so it lands before the REGISTRY_STORAGE_S3_* ones.
    The order returned here is only for a readable manifest.
    """
    env: dict[str, str] = {}
    storage = config["storage"]
    drivers = [k for k in storage if k not in ("redirect", "delete", "cache", "maintenance")]
    env["REGISTRY_STORAGE"] = drivers[0]
    for key, value in config.items():
        if key == "version":
            continue
        _flatten(f"REGISTRY_{key.upper()}", value, env)
    env.update(REGISTRY_PROCESS_ENV)
    return dict(sorted(env.items(), key=lambda kv: (len(kv[0].split("_")), kv[0])))


def _yaml_valued(prefix: str) -> bool:
    """Maps the registry only understands when the variable carries the whole map as YAML.

    http.headers: header names hold dashes. storage.<section>.<key>: the registry keeps storage
    sections as untyped maps; a map built from variables there is a map[string]interface{}, which it
    refuses (2.8.2 and 3.x panic at start: "uploadpurging config key must contain additional keys").
    """
    return prefix == "REGISTRY_HTTP_HEADERS" or (prefix.startswith("REGISTRY_STORAGE_") and prefix.count("_") >= 3)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict) and not _yaml_valued(prefix):
        for key, inner in value.items():
            _flatten(f"{prefix}_{str(key).upper()}", inner, out)
        return
    if isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    elif isinstance(value, (dict, list)):
        # A whole map or list as YAML (see _yaml_valued).
        out[prefix] = yaml.safe_dump(value, default_flow_style=True).strip()
    else:
        out[prefix] = str(value)
