"""Rendering: nginx.conf files that real nginx accepts, CF manifests and client configs that match
reviewed golden files, version-aware registry configs, and registry configs (file and REGISTRY_* env
form) that start the real docker-registry 2.8.2.

UPDATE_GOLDEN=1 rewrites tests/golden/ from the current output (review the diff before committing).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from registry_mirror.errors import ParameterError
from registry_mirror.platforms.local.nginx import nginx_test
from registry_mirror.parameters import PROJECT_ROOT, Settings, load_params_file
from registry_mirror.processes import free_port, tcp_listeners, wait_until
from registry_mirror.registry_config import (
    REGISTRY_PROCESS_ENV,
    SECRET_ENV,
    Listener,
    S3Location,
    VersionProfile,
    registry_config,
    registry_config_yaml,
    registry_env,
)
from registry_mirror.rendering import (
    BUILDPACK_HOME,
    BUILDPACK_INSTANCE_IP,
    BUILDPACK_MIRROR_ROUTE,
    BUILDPACK_NAMESERVERS,
    BUILDPACK_PORT,
    BlobCache,
    ManifestCache,
    NginxTarget,
    render_cf_manifests,
    render_client_configs,
    render_nginx_conf,
    render_router_conf,
)
from registry_mirror.security_rules import SecurityRules
from registry_mirror.unix_http import unix_request

PARAMS = PROJECT_ROOT / "params"
GOLDEN = PROJECT_ROOT / "tests" / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
EXAMPLE_S3 = S3Location("example-bucket", "us-gov-west-1")
# Made-up private rules for the CF renderings (documentation ranges and RFC 1918 only).
EXAMPLE_RULES = SecurityRules(allow=["10.0.0.0/8", "192.0.2.0/24"], deny=["10.66.0.0/16"],
                              trusted_routers=["10.10.0.0/24", "10.10.1.0/24"])
SECRET_KEYS = {"accesskey", "secretkey", "password", "secret"}

needs_nginx = pytest.mark.skipif(shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
                                 reason="nginx is not installed")
needs_registry = pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry is not installed")


def _settings(name: str) -> Settings:
    return load_params_file(PARAMS / f"{name}.yaml")


# ---------------------------------------------------------------------------------------------
# nginx -t on every rendered nginx.conf


def _local_target(tmp_path: Path, name: str, listen: str, upstream_servers: tuple[str, ...] = ()) -> NginxTarget:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return NginxTarget.local(tmp_path / "run" / name, name=name, listen=listen, logs=tmp_path / "logs",
                             upstream_servers=upstream_servers)


def _nginx_t(tmp_path: Path, name: str, text: str) -> Path:
    prefix = tmp_path / "prefix" / name
    prefix.mkdir(parents=True)
    conf = tmp_path / f"{name}.conf"
    conf.write_text(text)
    nginx_test(conf, prefix)  # creates the *_temp_path dirs, raises with nginx's own words
    return conf


@needs_nginx
def test_local_security_proxy_conf_passes_nginx_t(tmp_path: Path) -> None:
    settings = _settings("local")
    rules = settings.load_security_rules()
    sockets = tuple(f"unix:{tmp_path}/mirror-{i}.sock" for i in (1, 2))
    target = _local_target(tmp_path, "proxy", f"unix:{tmp_path}/proxy.sock", sockets)
    text = render_nginx_conf(rules, target, real_ip_from=["unix:", *rules.trusted_routers])
    _nginx_t(tmp_path, "proxy", text)
    # What it says, beyond being accepted.
    public, mirror_pass = text.split("\n    server {")[1:]
    assert re.findall(r"set_real_ip_from (\S+);", text.split("\n    server {")[0]) == ["unix:"]
    # The proxy's own way to the mirror believes the client address that the public server passed on.
    assert f"listen unix:{target.mirror_pass_socket};" in mirror_pass and "set_real_ip_from unix:;" in mirror_pass
    assert "set_real_ip_from" not in public and "access_log off;" in mirror_pass
    for server in sockets:
        assert f"server {server} " in text
    for cidr in rules.allow:
        assert f"{cidr} 1;" in text
    for cidr in rules.deny:
        assert f"{cidr} 0;" in text
    assert "default 0;" in text  # an address no range matches is refused
    assert "resolver" not in text and "{{" not in text
    for kind, path in target.temp_paths:
        assert Path(path).is_dir(), kind


@needs_nginx
def test_router_stand_in_conf_passes_nginx_t(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    target = _local_target(tmp_path, "router", listen)
    text = render_router_conf(target, listen=listen, proxy_socket=tmp_path / "proxy.sock")
    _nginx_t(tmp_path, "router", text)
    assert f"listen {listen};" in text
    assert f"server unix:{tmp_path / 'proxy.sock'};" in text
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in text  # appends, as the CF router does


def _buildpack_substitute(text: str, *, port: int, temp_dir: Path) -> str:
    """What the nginx buildpack does at start, plus temp paths so that nginx -t stays in tmp_path."""
    for placeholder in (BUILDPACK_PORT, BUILDPACK_NAMESERVERS, BUILDPACK_MIRROR_ROUTE, BUILDPACK_INSTANCE_IP,
                        BUILDPACK_HOME):
        assert placeholder in text, placeholder
    text = (text.replace(BUILDPACK_PORT, str(port)).replace(BUILDPACK_NAMESERVERS, "127.0.0.1")
            .replace(BUILDPACK_MIRROR_ROUTE, "docker-registry-mirror-staging.apps.internal")
            .replace(BUILDPACK_INSTANCE_IP, "10.255.7.9").replace(BUILDPACK_HOME, str(temp_dir)))
    temp = "".join(f"\n    {kind}_temp_path {temp_dir / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                "uwsgi", "scgi"))
    return text.replace("http {", "http {" + temp, 1)


@needs_nginx
def test_cf_security_proxy_conf_passes_nginx_t_after_buildpack_substitution(tmp_path: Path) -> None:
    manifests = render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3)
    text = _buildpack_substitute(manifests.proxy_nginx_conf, port=free_port(), temp_dir=tmp_path / "temp")
    _nginx_t(tmp_path, "cf-proxy", text)
    assert "{{" not in text
    # Exactly this instance (where its Envoy connects from) and the routers: not 127.0.0.1, not the overlay.
    http_level = text.split("\n    server {")[0]
    assert re.findall(r"set_real_ip_from (\S+);", http_level) == ["10.255.7.9", *EXAMPLE_RULES.trusted_routers]
    # The internal route is re-resolved (a variable in proxy_pass), never pinned at start.
    assert re.search(r"set \$mirror_backend docker-registry-mirror-staging\.apps\.internal;", text)
    assert "proxy_pass http://$mirror_backend:5000;" in text
    assert re.search(r"resolver 127\.0\.0\.1 ipv6=off valid=\d+s;", text)


@needs_nginx
def test_nginx_t_control_an_unsubstituted_cf_conf_is_refused(tmp_path: Path) -> None:
    """The check above can fail: the buildpack placeholders are not valid nginx."""
    manifests = render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3)
    with pytest.raises(RuntimeError, match="nginx -t refused"):
        _nginx_t(tmp_path, "raw", manifests.proxy_nginx_conf)


def test_cf_manifests_refuse_rules_without_trusted_routers() -> None:
    """Behind the CF router, no trusted router means the policy judges the router's address."""
    rules = SecurityRules(allow=["10.0.0.0/8"])
    with pytest.raises(ParameterError, match="trusted_routers"):
        render_cf_manifests(_settings("staging"), rules, s3=EXAMPLE_S3)


def test_cf_manifests_need_cf_settings() -> None:
    with pytest.raises(ValueError, match="cloudfoundry"):
        render_cf_manifests(_settings("local"), EXAMPLE_RULES, s3=EXAMPLE_S3)


# ---------------------------------------------------------------------------------------------
# Golden files


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from {path}; if intended, UPDATE_GOLDEN=1 and review the diff"


def _env_text(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in env.items())


def test_golden_cf_mirror_manifest() -> None:
    manifests = render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3)
    _check_golden("cf/mirror-manifest.yml", manifests.mirror)
    app = yaml.safe_load(manifests.mirror)["applications"][0]
    assert app["name"] == "docker-registry-mirror"
    assert app["docker"]["image"] == _settings("staging").registry.image
    assert app["routes"] == [{"route": "docker-registry-mirror-staging.apps.internal"}]
    # Every env value is a string (CF refuses other types) and is the rendered env, in its order.
    assert app["env"] == manifests.mirror_env
    assert list(app["env"]) == list(manifests.mirror_env)
    assert all(isinstance(v, str) for v in app["env"].values())


def test_golden_cf_proxy_manifest() -> None:
    manifests = render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3)
    _check_golden("cf/proxy-manifest.yml", manifests.proxy)
    app = yaml.safe_load(manifests.proxy)["applications"][0]
    assert app["buildpacks"] == ["nginx_buildpack"]
    assert app["env"] == {"MIRROR_ROUTE": "docker-registry-mirror-staging.apps.internal"}
    for cidr in EXAMPLE_RULES.allow + EXAMPLE_RULES.deny + EXAMPLE_RULES.trusted_routers:
        assert cidr.split("/")[0] not in manifests.proxy  # the manifest is not private; the conf is


def test_golden_cf_proxy_nginx_conf() -> None:
    manifests = render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3)
    _check_golden("cf/proxy-nginx.conf", manifests.proxy_nginx_conf)


def test_golden_registry_env_3x() -> None:
    settings = _settings("staging")
    env = registry_env(registry_config(settings, s3=EXAMPLE_S3, listener=Listener(":5000")))
    _check_golden("registry-env-3.x.env", _env_text(env))
    # REGISTRY_STORAGE replaces the image's whole storage map, so it comes first.
    assert next(iter(env)) == "REGISTRY_STORAGE" and env["REGISTRY_STORAGE"] == "s3"


@pytest.mark.parametrize(("variant", "endpoint", "insecure", "primary"), [
    pytest.param("cf", "docker-registry.app.cloud.gov", False, "docker.io", id="cf-https"),
    pytest.param("local", "127.0.0.1:8080", True, "127.0.0.1:8080", id="local-http"),
])
def test_golden_client_configs(variant: str, endpoint: str, insecure: bool, primary: str) -> None:
    configs = render_client_configs(endpoint, insecure=insecure, primary=primary)
    for name, text in configs.as_dict().items():
        _check_golden(f"clients-{variant}/{name}", text)
    scheme = "http" if insecure else "https"
    # Each one parses as what its program reads, and points at the mirror.
    assert json.loads(configs.daemon_json) == {"registry-mirrors": [f"{scheme}://{endpoint}"]}
    hosts = tomllib.loads(configs.hosts_toml)
    assert hosts["server"] == "https://registry-1.docker.io"
    assert hosts["host"][f"{scheme}://{endpoint}"]["capabilities"] == ["pull", "resolve"]
    assert hosts["host"][f"{scheme}://{endpoint}"].get("skip_verify", False) is insecure
    registries = tomllib.loads(configs.registries_conf)
    [registry] = registries["registry"]
    assert registry["prefix"] == "docker.io" and registry["location"] == primary
    assert registry["mirror"] == [{"location": endpoint, **({"insecure": True} if insecure else {})}]
    # A local client must never fall back to the real Docker Hub.
    if variant == "local":
        assert registry.get("insecure") is True and "docker.io" not in registry["location"]


# ---------------------------------------------------------------------------------------------
# Version awareness and secrets


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def _config(name: str, *, endpoint: str | None = None, listener: Listener | None = None,
            version: str | None = None) -> dict[str, Any]:
    s3 = S3Location("registry-mirror", "us-east-1", endpoint)
    return registry_config(_at_version(_settings(name), version), s3=s3, listener=listener or Listener(":5000"))


def _at_version(settings: Settings, version: str | None) -> Settings:
    """The same params with another registry version (the Debian-packaged 2.8.2 is still supported)."""
    if version is None:
        return settings
    return settings.model_copy(update={"registry": settings.registry.model_copy(update={"version": version})})


LISTENERS = [pytest.param(Listener(":5000"), id="tcp"), pytest.param(Listener("/run/r.sock", "unix"), id="unix")]


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:8333"], ids=["aws", "endpoint"])
def test_282_config_has_no_keys_282_lacks(listener: Listener, endpoint: str | None) -> None:
    config = _config("local", endpoint=endpoint, listener=listener, version="2.8.2")
    assert "ttl" not in config["proxy"]
    assert "forcepathstyle" not in config["storage"]["s3"]
    assert "debug" not in config["http"]
    env = registry_env(config)
    assert not {"REGISTRY_PROXY_TTL", "REGISTRY_STORAGE_S3_FORCEPATHSTYLE"} & set(env)
    assert not any(k.startswith("REGISTRY_HTTP_DEBUG") for k in env)
    assert VersionProfile.of("2.8.2").config_path == "/etc/docker/registry/config.yml"


def test_3x_config_has_ttl_pathstyle_and_metrics() -> None:
    config = _config("staging", endpoint="https://s3.example.internal")
    assert config["proxy"]["ttl"] == "168h"
    assert config["storage"]["s3"]["forcepathstyle"] is True
    assert config["storage"]["s3"]["regionendpoint"] == "https://s3.example.internal"
    assert config["storage"]["s3"]["secure"] is True
    assert config["http"]["debug"]["prometheus"]["enabled"] is True
    assert VersionProfile.of("3.0.0").config_path == "/etc/distribution/config.yml"


def test_3x_config_without_endpoint_has_no_pathstyle() -> None:
    s3 = _config("staging")["storage"]["s3"]
    assert "forcepathstyle" not in s3 and "regionendpoint" not in s3 and s3["secure"] is True


def test_3x_ttl_follows_the_parameter() -> None:
    settings = _settings("staging")
    settings = settings.model_copy(update={"registry": settings.registry.model_copy(update={"cache_ttl": "0"})})
    assert registry_config(settings, s3=EXAMPLE_S3, listener=Listener(":5000"))["proxy"]["ttl"] == "0"


def test_http_endpoint_is_not_secure() -> None:
    assert _config("local", endpoint="http://127.0.0.1:8333")["storage"]["s3"]["secure"] is False


@pytest.mark.parametrize("name", ["local", "staging", "production"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_config_is_safe_behind_the_proxy_and_holds_no_secret(name: str, listener: Listener) -> None:
    config = _config(name, endpoint="http://127.0.0.1:8333", listener=listener)
    storage = config["storage"]
    assert storage["redirect"] == {"disable": True}  # no 307 to S3 around the proxy
    assert storage["delete"] == {"enabled": True}  # TTL expiry can delete
    assert not SECRET_KEYS & {k.lower() for k in _keys(config)}
    env = registry_env(config)
    assert env["REGISTRY_STORAGE_REDIRECT_DISABLE"] == "true"
    assert env["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    assert not set(SECRET_ENV.values()) & set(env)
    assert not any(part in SECRET_KEYS for k in env for part in k.lower().split("_"))
    text = registry_config_yaml(config) + _env_text(env)
    password = _settings("local").upstream.password
    assert password and password not in text
    assert "accesskey" not in text.lower() and "secretkey" not in text.lower()


def test_env_form_never_flattens_a_storage_parameter_map() -> None:
    """storage.maintenance.uploadpurging as variables per key makes the registry panic at start."""
    env = registry_env(_config("staging"))
    assert yaml.safe_load(env["REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING"]) == {"enabled": False}
    assert not any(k.startswith("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_") for k in env)
    assert yaml.safe_load(env["REGISTRY_HTTP_HEADERS"]) == {"X-Content-Type-Options": ["nosniff"], "Vary": ["Accept"]}


def test_env_form_carries_the_whole_config() -> None:
    """Rebuild the config from the variables (as the registry does) and compare."""
    config = _config("staging", endpoint="https://s3.example.internal")
    env = registry_env(config)
    rebuilt: dict[str, Any] = {"version": config["version"]}
    for name, value in env.items():
        if name == "REGISTRY_STORAGE" or not name.startswith("REGISTRY_"):
            continue
        path = name.removeprefix("REGISTRY_").lower().split("_")
        node = rebuilt
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value)

    def normalise(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k).lower(): normalise(v) for k, v in value.items()}
        return value if isinstance(value, (bool, list)) else yaml.safe_load(str(value))

    assert normalise(rebuilt) == normalise(config)


# ---------------------------------------------------------------------------------------------
# The rendered config starts the real registry


def _daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("REGISTRY_")}
    env.update(extra or {})
    return env


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is stopped by PID at the end and asserted gone."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode is not None
        assert not Path(f"/proc/{proc.pid}").exists() or _is_other_process(proc.pid), f"pid {proc.pid} still there"


def _is_other_process(pid: int) -> bool:
    # The PID may already have been reused by an unrelated process; ours was reaped by wait().
    try:
        return "docker-registry" not in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return True


def _start(processes: list[subprocess.Popen[bytes]], argv: list[str], log: Path,
           env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    processes.append(proc)
    return proc


def _died(proc: subprocess.Popen[bytes], log: Path):  # type: ignore[no-untyped-def]
    def reason() -> str | None:
        if proc.poll() is None:
            return None
        return f"exited {proc.returncode}: {log.read_text(errors='replace')[-800:]}"
    return reason


def _get(url: str) -> int:
    return requests.get(url, timeout=2).status_code


@pytest.fixture
def upstream(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    """A throwaway upstream registry (filesystem, no auth): the mirror checks its upstream at boot."""
    port = free_port()
    conf = tmp_path / "upstream.yml"
    conf.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "upstream-data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    log = tmp_path / "upstream.log"
    proc = _start(processes, ["docker-registry", "serve", str(conf)], log, _daemon_env())
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(f"{url}/v2/") == 200, timeout=20, what="upstream registry", abort=_died(proc, log))
    return url


def _with_upstream(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"upstream": settings.upstream.model_copy(update={"url": url})})


@needs_registry
def test_rendered_config_starts_registry_on_unix_socket(tmp_path: Path, upstream: str,
                                                        processes: list[subprocess.Popen[bytes]]) -> None:
    socket_path = tmp_path / "m.sock"
    assert len(str(socket_path)) < 100, "unix socket paths are limited to 108 bytes"
    # Debian's 2.8.2 with the config rendered for it; tests/integration/test_registry_3x.py does 3.x.
    settings = _with_upstream(_at_version(_settings("local"), "2.8.2"), upstream)
    config = registry_config(settings, s3=S3Location("registry-mirror", "us-east-1", "http://127.0.0.1:9"),
                             listener=Listener(str(socket_path), "unix"), instance="mirror-t")
    # S3 is covered by the integration tests; everything else is the rendered config.
    config["storage"].pop("s3")
    config["storage"] = {"filesystem": {"rootdirectory": str(tmp_path / "mirror-data")}, **config["storage"]}
    conf = tmp_path / "mirror.yml"
    conf.write_text(registry_config_yaml(config))
    log = tmp_path / "mirror.log"
    proc = _start(processes, ["docker-registry", "serve", str(conf)], log, _daemon_env())

    wait_until(lambda: unix_request(str(socket_path), "GET", "/v2/", timeout=2).status == 200, timeout=20,
               what="mirror on its unix socket", abort=_died(proc, log))
    assert tcp_listeners(proc.pid) == []
    pushed = unix_request(str(socket_path), "POST", "/v2/x/blobs/uploads/")
    assert pushed.status == 405 and json.loads(pushed.body)["errors"][0]["code"] == "UNSUPPORTED"
    logged = log.read_text()
    assert "backend redirection disabled" in logged
    assert f"proxy cache to {upstream}" in logged
    # JSON log lines with our fields: what the analyses parse.
    first = json.loads(logged.splitlines()[0])
    assert first["service"] == "registry-mirror" and first["instance"] == "mirror-t"


@needs_registry
def test_env_form_starts_registry(tmp_path: Path, upstream: str, processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    settings = _with_upstream(_at_version(_settings("local"), "2.8.2"), upstream)
    config = registry_config(settings, s3=S3Location("registry-mirror", "us-east-1", "http://127.0.0.1:9"),
                             listener=Listener(f"127.0.0.1:{port}"), instance="mirror-env")
    env = {k: v for k, v in registry_env(config).items() if not k.startswith("REGISTRY_STORAGE_S3_")}
    assert env.pop("REGISTRY_STORAGE") == "s3"
    env = {"REGISTRY_STORAGE": "filesystem",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "env-data"), **env}
    minimal = tmp_path / "minimal.yml"
    # The registry refuses a config without storage; the variables replace this one.
    minimal.write_text(yaml.safe_dump({"version": 0.1,
                                       "storage": {"filesystem": {"rootdirectory": str(tmp_path / "unused")}}}))
    log = tmp_path / "env.log"
    proc = _start(processes, ["docker-registry", "serve", str(minimal)], log, _daemon_env(env))
    url = f"http://127.0.0.1:{port}"

    wait_until(lambda: _get(f"{url}/v2/") == 200, timeout=20, what="registry from env", abort=_died(proc, log))
    base = requests.get(f"{url}/v2/", timeout=5)
    assert base.headers.get("X-Content-Type-Options") == "nosniff"  # REGISTRY_HTTP_HEADERS as YAML
    pushed = requests.post(f"{url}/v2/x/blobs/uploads/", timeout=5)
    assert pushed.status_code == 405
    assert pushed.json()["errors"][0]["code"] == "UNSUPPORTED"
    logged = log.read_text()
    assert "backend redirection disabled" in logged
    assert f"proxy cache to {upstream}" in logged
    assert json.loads(logged.splitlines()[0])["instance"] == "mirror-env"
    assert proc.poll() is None


# ---------------------------------------------------------------------------------------------
# What an operator reads at every start: nothing, unless it means something


def _nginx_t_warnings(tmp_path: Path, name: str, text: str) -> list[str]:
    prefix = tmp_path / "prefix" / name
    prefix.mkdir(parents=True)
    conf = tmp_path / f"{name}.conf"
    conf.write_text(text)
    nginx_test(conf, prefix)
    result = subprocess.run(["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "e.log"), "-t"],
                            capture_output=True, text=True, timeout=30)
    return [line for line in result.stderr.splitlines() if "[warn]" in line or "[emerg]" in line]


@needs_nginx
def test_both_security_proxy_renderings_start_without_warnings(tmp_path: Path) -> None:
    """Two proxy_next_upstream lines in one location made nginx warn `duplicate value` at every start."""
    settings = _settings("local")
    target = _local_target(tmp_path, "proxy", f"unix:{tmp_path}/proxy.sock", (f"unix:{tmp_path}/m.sock",))
    local = render_nginx_conf(settings.load_security_rules(), target, real_ip_from=["unix:"],
                              blob_cache=BlobCache.sized("16M", str(tmp_path / "blobs")),
                              manifest_cache=ManifestCache.from_settings(settings, str(tmp_path / "manifests")))
    cf = _buildpack_substitute(render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3)
                               .proxy_nginx_conf, port=free_port(), temp_dir=tmp_path / "temp")
    cf = cf.replace("blob-cache", str(tmp_path / "cf-blobs")).replace("manifest-cache", str(tmp_path / "cf-manifests"))
    assert _nginx_t_warnings(tmp_path, "local", local) == []
    assert _nginx_t_warnings(tmp_path, "cf", cf) == []


def test_every_mirror_process_is_told_not_to_export_traces() -> None:
    """registry 3.x logs a failed trace export to localhost:4318 every 10 s without this (both platforms:
    the CF manifest's env and the local instances' environment come from the same constant)."""
    env = render_cf_manifests(_settings("staging"), EXAMPLE_RULES, s3=EXAMPLE_S3).mirror_env
    assert env["OTEL_TRACES_EXPORTER"] == "none"
    assert REGISTRY_PROCESS_ENV == {"OTEL_TRACES_EXPORTER": "none"}
