"""Jinja rendering of every text the platforms and users need: nginx.conf files, CF manifests and
client mirror configs. The registry's own config is data (registry_config.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from .blob_fanout import BINARY as FANOUT_BINARY, fanout_argv
from .errors import ParameterError
from .parameters import PROJECT_ROOT, PROXY_MANIFEST_CACHE_MB, Settings
from .registry_config import registry_config, registry_env, S3Location, Listener
from .security_rules import SecurityRules

TEMPLATES = PROJECT_ROOT / "templates"

# What the CF nginx buildpack substitutes when the app starts.
BUILDPACK_PORT = "{{port}}"
BUILDPACK_NAMESERVERS = "{{nameservers}}"
BUILDPACK_MIRROR_ROUTE = '{{env "MIRROR_ROUTE"}}'
# The instance's own container IP: with route integrity the Envoy sidecar connects to nginx from it.
BUILDPACK_INSTANCE_IP = '{{env "CF_INSTANCE_INTERNAL_IP"}}'
MIRROR_PORT = 5000
# The app's folder, where the buildpack runs nginx and CF runs the sidecar.
BUILDPACK_HOME = '{{env "HOME"}}'
FANOUT_SOCKET = "blob-fanout.sock"
MIRROR_PASS_SOCKET = "mirror-pass.sock"


@dataclass(frozen=True)
class NginxTarget:
    """Where and how one nginx runs: the parts of nginx.conf that differ between platforms."""

    kind: str
    listen: str
    error_log: str
    access_log: str
    pid_file: str | None = None
    user: str | None = None
    workers: int | str = "auto"
    temp_paths: tuple[tuple[str, str], ...] = ()
    upstream_servers: tuple[str, ...] = ()  # local: the mirror instances' sockets
    resolver: str = BUILDPACK_NAMESERVERS
    mirror_host: str = BUILDPACK_MIRROR_ROUTE
    mirror_port: int = MIRROR_PORT
    # blob-fanout's socket, and the proxy's own way to the mirror that blob-fanout takes.
    fanout_socket: str = f"{BUILDPACK_HOME}/{FANOUT_SOCKET}"
    mirror_pass_socket: str = f"{BUILDPACK_HOME}/{MIRROR_PASS_SOCKET}"

    @classmethod
    def local(cls, run_dir: Path, *, name: str, listen: str, logs: Path,
              upstream_servers: tuple[str, ...] = (), user: str | None = None,
              temp_dir: Path | None = None, sockets_dir: Path | None = None) -> NginxTarget:
        """`temp_dir` (default `run_dir`) holds nginx's temp folders, `sockets_dir` (default `run_dir`)
        blob-fanout's socket and the proxy's own way to the mirror."""
        temp = (temp_dir or run_dir) / name
        sockets = sockets_dir or run_dir
        return cls(
            kind="local",
            listen=listen,
            error_log=str(logs / f"{name}.error.log"),
            access_log=str(logs / f"{name}.access.log"),
            pid_file=str(run_dir / f"{name}.pid"),
            user=user,
            workers=2,
            temp_paths=tuple((k, str(temp / k)) for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            upstream_servers=upstream_servers,
            fanout_socket=str(sockets / FANOUT_SOCKET),
            mirror_pass_socket=str(sockets / MIRROR_PASS_SOCKET),
        )

    @classmethod
    def cloudfoundry(cls) -> NginxTarget:
        # The buildpack runs nginx in the app's directory and collects stdout/stderr as app logs.
        return cls(kind="cloudfoundry", listen=BUILDPACK_PORT, error_log="stderr",
                   access_log="/dev/stdout")


@dataclass(frozen=True)
class BlobCache:
    """The security proxy's on-disk cache of blobs (content-addressed, so never stale)."""

    path: str
    max_size: str  # nginx units, e.g. 2g

    @classmethod
    def sized(cls, size: str, path: str) -> BlobCache | None:
        """From params (`2G`, `512M`, or `0` for no cache)."""
        if size == "0":
            return None
        return cls(path=path, max_size=size.rstrip("B").lower())


@dataclass(frozen=True)
class ManifestCache:
    """The security proxy's cache of manifests: by digest for good, by tag for `tag_seconds`, then
    revalidated in the background and served stale while anything behind the proxy fails."""

    path: str
    tag_seconds: int = 60
    timeout_seconds: int = 15
    max_size: str = f"{PROXY_MANIFEST_CACHE_MB}m"  # manifests are a few KB: thousands fit

    @classmethod
    def from_settings(cls, settings: Settings, path: str) -> ManifestCache:
        return cls(path=path, tag_seconds=settings.proxy.tag_cache_seconds,
                   timeout_seconds=settings.proxy.manifest_timeout_seconds)


def render_nginx_conf(rules: SecurityRules, target: NginxTarget, *, real_ip_from: list[str] | None = None,
                      blob_cache: BlobCache | None = None, public_host: str | None = None,
                      expose_catalog: bool = False, manifest_cache: ManifestCache | None = None) -> str:
    """nginx.conf of the security proxy.

    `real_ip_from` defaults to the rules' trusted routers; the local platform adds `unix:` because
    its router stand-in reaches the proxy over a unix socket. `public_host` is the Host the registry
    is told (the public route): a client's own Host header never reaches it, so nothing the registry
    builds from it (Location, WWW-Authenticate) can point elsewhere. `expose_catalog` serves
    /v2/_catalog, which lists every repository the mirror holds.
    """
    sources = list(rules.trusted_routers if real_ip_from is None else real_ip_from)
    return _render("nginx/security-proxy.conf.j2", rules=rules, target=target, real_ip_from=sources,
                   blob_cache=blob_cache, public_host=public_host, expose_catalog=expose_catalog,
                   manifest_cache=manifest_cache)


def render_router_conf(target: NginxTarget, *, listen: str, proxy_socket: Path) -> str:
    """nginx.conf of the local router stand-in."""
    return _render("nginx/router-stand-in.conf.j2", target=target, listen=listen, proxy_socket=proxy_socket)


def render_cf_router_conf(target: NginxTarget, *, listen: str, load_balancer_address: str, gorouter_listen: str,
                          envoy: str) -> str:
    """nginx.conf of the CF-shaped router stand-in (load balancer + gorouter hops), for chain tests."""
    return _render("nginx/cf-router-stand-in.conf.j2", target=target, listen=listen,
                   load_balancer_address=load_balancer_address, gorouter_listen=gorouter_listen, envoy=envoy)


@dataclass(frozen=True)
class Sidecar:
    """A process CF runs beside the app's own in each instance (app manifest `sidecars`)."""

    name: str
    command: str
    memory: str


# blob-fanout beside nginx: CF's launcher runs the command with bash in the app's folder, so $HOME is
# that folder; blobs in flight go to $TMPDIR (the flag's default), on the instance's disk.
CF_FANOUT_SIDECAR = Sidecar(
    name=FANOUT_BINARY,
    command=" ".join(fanout_argv(f"./{FANOUT_BINARY}", listen=f"unix:$HOME/{FANOUT_SOCKET}",
                                 upstream=f"unix:$HOME/{MIRROR_PASS_SOCKET}")),
    memory="32M")


@dataclass(frozen=True)
class CfManifests:
    mirror: str
    proxy: str
    proxy_nginx_conf: str
    mirror_env: dict[str, str] = field(default_factory=dict)


def render_cf_manifests(settings: Settings, rules: SecurityRules, *, s3: S3Location) -> CfManifests:
    """Both CF manifests and the proxy app's nginx.conf; the mirror's config travels as REGISTRY_* env."""
    cf = settings.cloudfoundry
    if cf is None or settings.registry.image is None:
        raise ValueError("CF manifests need platform cloudfoundry settings")
    if not rules.trusted_routers:
        # Behind the CF router every connection comes from the router: with no trusted router range
        # nginx would apply the allow/deny policy to the router's address instead of the client's.
        raise ParameterError("security rules: trusted_routers is empty; on cloudfoundry it must hold the "
                             "router ranges, or the allow/deny policy judges the router, not the client")
    config = registry_config(settings, s3=s3, listener=Listener(addr=f":{MIRROR_PORT}"), instance=cf.mirror_app)
    env = registry_env(config)
    mirror = _render("cf/mirror-manifest.yml.j2", app=cf.mirror_app, instances=settings.registry.instances,
                     memory=settings.registry.memory, image=settings.registry.image, route=cf.mirror_route,
                     env=env)
    proxy = _render("cf/proxy-manifest.yml.j2", app=cf.proxy_app, instances=settings.proxy.instances,
                    memory=settings.proxy.memory, disk_quota=settings.proxy.disk_quota, route=cf.proxy_route, mirror_route=cf.mirror_route,
                    fanout=CF_FANOUT_SIDECAR)
    return CfManifests(mirror=mirror, proxy=proxy, mirror_env=env,
                       proxy_nginx_conf=render_nginx_conf(
                           rules, NginxTarget.cloudfoundry(), real_ip_from=cf_real_ip_sources(rules),
                           public_host=cf.proxy_route, expose_catalog=settings.proxy.expose_catalog,
                           # Relative to the app folder the buildpack runs nginx in; it counts against
                           # the instance's disk quota.
                           blob_cache=BlobCache.sized(settings.proxy.blob_cache_size, "blob-cache"),
                           manifest_cache=ManifestCache.from_settings(settings, "manifest-cache")))


def cf_real_ip_sources(rules: SecurityRules) -> list[str]:
    """Who may report a client's address on CF, and nobody else.

    With route integrity the instance's Envoy (a TCP proxy, so it adds no X-Forwarded-For entry)
    connects to nginx from the container's own IP, CF_INSTANCE_INTERNAL_IP (Diego executor,
    depot/containerstore/proxy_config_handler.go: the upstream is the container's internal IP), and
    the gorouter has appended its own peer, the load balancer (routing-release gorouter
    proxy/proxy.go: httputil.ReverseProxy). So nginx trusts exactly this instance's IP (filled in by
    the nginx buildpack at start) and the configured load-balancer/router ranges. Without Envoy the
    peer is the gorouter, whose range must then be among the trusted routers. Not 127.0.0.1 and not
    the container network: another app there reaches nginx from its own overlay IP and is judged by it.
    """
    return [BUILDPACK_INSTANCE_IP, *rules.trusted_routers]


@dataclass(frozen=True)
class ClientConfigs:
    """What users paste to pull docker.io images through the mirror."""

    daemon_json: str  # /etc/docker/daemon.json
    hosts_toml: str  # /etc/containerd/certs.d/docker.io/hosts.toml
    registries_conf: str  # /etc/containers/registries.conf(.d)

    def as_dict(self) -> dict[str, str]:
        return {"daemon.json": self.daemon_json, "hosts.toml": self.hosts_toml,
                "registries.conf": self.registries_conf}


def render_client_configs(endpoint: str, *, insecure: bool, primary: str = "docker.io") -> ClientConfigs:
    """Client configs for a mirror at `endpoint` (host[:port]).

    `primary` is where a client falls back when the mirror fails; tests and the local demo point it at
    the mirror too, so nothing leaves the machine.
    """
    scheme = "http" if insecure else "https"
    url = f"{scheme}://{endpoint}"
    return ClientConfigs(
        daemon_json=_render("clients/daemon.json.j2", url=url),
        hosts_toml=_render("clients/hosts.toml.j2", url=url, insecure=insecure),
        registries_conf=_render("clients/registries.conf.j2", host=endpoint, insecure=insecure,
                                primary=primary, primary_insecure=insecure and primary == endpoint),
    )


def _render(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context).rstrip() + "\n"


def _environment() -> jinja2.Environment:
    # StrictUndefined: a misspelt variable is an error, not an empty string in a security config.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)
