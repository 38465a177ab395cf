"""The registry version production pins, run for real: what production starts with is what runs here.

Each test below backs one line of docs/registry-versions.md.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from registry_mirror.client_pull import pull_with_skopeo
from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.platforms.local.daemons import daemon_env
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local.mirrors import mirror_healthy, mirror_registry_binary, start_mirror_instance
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.rollout import set_service
from registry_mirror.platforms.local.state import StackState
from registry_mirror.parameters import load_params_file
from registry_mirror.processes import ProcessRecord, free_port, start_process, stop_process, wait_until
from registry_mirror.registry_build import built_registry
from registry_mirror.registry_config import registry_env
from registry_mirror.rendering import render_cf_manifests
from registry_mirror.sample_images import SampleImage, seed_registry
from registry_mirror.registry_config import S3Location
from registry_mirror.security_rules import SecurityRules

pytestmark = pytest.mark.integration

PRODUCTION = load_params_file("params/production.yaml")
# Placeholder ranges: rendering for CF insists on trusted routers; none of this reaches nginx here.
CF_RULES = SecurityRules.model_validate({"allow": ["10.10.0.0/16"], "trusted_routers": ["10.0.0.0/24"]})
# The config the registry:3 image ships at /etc/distribution/config.yml: on CF the manifest's
# REGISTRY_* variables are applied over this file, so the test starts from the same one.
IMAGE_DEFAULT_CONFIG = {
    "version": 0.1,
    "log": {"fields": {"service": "registry"}},
    "storage": {"cache": {"blobdescriptor": "inmemory"}, "filesystem": {"rootdirectory": "/var/lib/registry"}},
    "http": {"addr": ":5000", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
}
# Keys the 3.x S3 driver reads (distribution v3 registry/storage/driver/s3-aws); its parameters are an
# untyped map, so an unknown key there would be ignored without a word.
S3_KEYS_3X = {"accesskey", "secretkey", "region", "regionendpoint", "forcepathstyle", "bucket", "encrypt", "keyid",
              "secure", "skipverify", "v4auth", "chunksize", "multipartcopychunksize", "multipartcopymaxconcurrency",
              "multipartcopythresholdsize", "rootdirectory", "storageclass", "useragent", "objectacl",
              "sessiontoken", "usedualstack", "accelerate", "loglevel", "maxrequestspersecond"}
UNRECOGNIZED = re.compile(r"ignoring unrecognized environment variable (REGISTRY_[A-Z0-9_]+)", re.IGNORECASE)


@pytest.fixture
def started(stack: LocalPlatform) -> Iterator[list[ProcessRecord]]:
    """Processes a test starts beside the stack; stopped by PID afterwards."""
    records: list[ProcessRecord] = []
    yield records
    for record in records:
        stop_process(record)
    assert not any(r.alive() for r in records)


def test_the_stack_runs_the_version_production_pins_as_built_from_its_module(stack: LocalPlatform) -> None:
    assert stack.settings.registry.version == PRODUCTION.registry.version
    build = built_registry(PRODUCTION.registry.version)
    assert build is not None, "bootstrap did not build the registry production pins"
    build.verify()
    state = StackState.load(stack.paths.state_file)
    for name in state.mirrors:
        exe = Path(f"/proc/{state.processes[name].pid}/exe").resolve()
        assert str(exe) == build.binary
        assert "v" + PRODUCTION.registry.version in Path(state.processes[name].log).read_text().splitlines()[0]


def test_production_manifest_env_started_by_3x_serves_a_pull_through_the_proxy(
        stack: LocalPlatform, started: list[ProcessRecord]) -> None:
    name = "mirror-production-env"
    debug_port = free_port()
    env = _production_env(stack, name, debug_port)
    config = stack.paths.config / f"{name}-image-default.yml"
    config.write_text(yaml.safe_dump(IMAGE_DEFAULT_CONFIG))
    log = stack.paths.logs / f"{name}.log"
    instance = start_mirror_instance(name, executable=mirror_registry_binary(PRODUCTION.registry.version),
                                     config_file=config, socket_path=stack.paths.mirror_socket(name), log=log,
                                     secrets=env)
    started.append(instance.record)
    assert UNRECOGNIZED.findall(log.read_text()) == []

    state = StackState.load(stack.paths.state_file)
    original = list(state.mirrors)
    try:
        set_service(stack.configs, state, [name])  # the proxy now reaches this instance alone
        # An image of its own: a sample another test pulled may still be in the proxy's cache.
        image = SampleImage("library/production-env", "latest", platforms=("linux/amd64", "linux/arm64"))
        seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
        pulled = pull_with_skopeo(f"docker.io/{image.repository}:{image.tag}",
                                  registries_conf=stack.client_configs().registries_conf, arch="arm64")
        assert pulled.layers >= 1
    finally:
        set_service(stack.configs, StackState.load(stack.paths.state_file), original)
    served = [line for line in log.read_text().splitlines()
              if '"http.request.uri":"/v2/library/production-env/manifests' in line]
    assert served, "the pull did not reach the instance started from the production env"
    # The Prometheus counters the pull-savings analysis reads exist on the debug address.
    metrics = requests.get(f"http://127.0.0.1:{debug_port}/metrics", timeout=5).text
    assert 'registry_proxy_requests_total{type="manifest"}' in metrics
    assert "registry_proxy_hits_total" in metrics and "registry_proxy_misses_total" in metrics


def test_every_key_the_local_yaml_emits_is_read_by_3x(stack: LocalPlatform, started: list[ProcessRecord]) -> None:
    config = stack.configs.mirror_config("mirror-keys")
    assert set(config["storage"]["s3"]) <= S3_KEYS_3X, set(config["storage"]["s3"]) - S3_KEYS_3X
    # YAML keys the registry does not know are dropped silently; the same keys as REGISTRY_* variables
    # go through its env parser, which names every one it does not recognise.
    env = {**registry_env(config), **_secrets(stack)}
    log = _start_from_env(stack, "mirror-keys", env, started)
    assert UNRECOGNIZED.findall(log.read_text()) == []


def test_an_unknown_key_is_caught(stack: LocalPlatform, started: list[ProcessRecord]) -> None:
    """Control for the test above: a misspelt key is named in the log."""
    env = {**registry_env(stack.configs.mirror_config("mirror-typo")), **_secrets(stack), "REGISTRY_PROXY_TTLL": "1h"}
    log = _start_from_env(stack, "mirror-typo", env, started)
    assert UNRECOGNIZED.findall(log.read_text()) == ["REGISTRY_PROXY_TTLL"]


@pytest.mark.parametrize("version", ["2.8.2", PRODUCTION.registry.version])
def test_both_versions_panic_at_start_when_the_upstream_is_unreachable(tmp_path: Path, version: str,
                                                                      started: list[ProcessRecord]) -> None:
    closed = free_port()
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
                                      "http": {"addr": str(tmp_path / "r.sock"), "net": "unix"},
                                      "proxy": {"remoteurl": f"http://127.0.0.1:{closed}"}}))
    log = tmp_path / "registry.log"
    executable = mirror_registry_binary(version)
    assert executable is not None
    record = start_process("upstream-down", [executable, "serve", str(config)], log=log, env=daemon_env())
    started.append(record)
    wait_until(lambda: "panic:" in log.read_text(errors="replace"), timeout=30, what="the start-up panic")
    assert f"127.0.0.1:{closed}/v2/" in log.read_text(errors="replace")
    wait_until(lambda: not record.alive() or _reap(record), timeout=10, what="the process to exit")


def _reap(record: ProcessRecord) -> bool:
    from registry_mirror.processes import exit_status

    return exit_status(record) is not None


def _production_env(stack: LocalPlatform, name: str, debug_port: int) -> dict[str, str]:
    """The production manifest's env, with local values only where the platform differs."""
    assert stack.settings.storage is not None
    manifests = render_cf_manifests(PRODUCTION, CF_RULES, s3=S3Location(
        bucket=stack.settings.storage.bucket, region=stack.settings.storage.region))
    env = dict(manifests.mirror_env)
    swapped = {
        # S3: SeaweedFS instead of AWS (on CF bucket and region come from the service key).
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": f"http://{stack.local.address}:{stack.local.s3_port}",
        "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
        "REGISTRY_STORAGE_S3_SECURE": "false",
        # Upstream: the Docker Hub stand-in and its account instead of registry-1.docker.io.
        "REGISTRY_PROXY_REMOTEURL": stack.hub_url,
        "REGISTRY_PROXY_USERNAME": stack.settings.upstream.username or "",
        # Listener: a unix socket instead of :5000, and the debug server on loopback instead of :5001.
        "REGISTRY_HTTP_ADDR": str(stack.paths.mirror_socket(name)),
        "REGISTRY_HTTP_NET": "unix",
        "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}",
    }
    assert {"REGISTRY_PROXY_REMOTEURL", "REGISTRY_HTTP_ADDR", "REGISTRY_HTTP_DEBUG_ADDR"} <= set(env)
    return {**env, **swapped, **_secrets(stack)}


def _secrets(stack: LocalPlatform) -> dict[str, str]:
    return stack.mirror_secret_env(LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False))


def _start_from_env(stack: LocalPlatform, name: str, env: dict[str, str],
                    started: list[ProcessRecord]) -> Path:
    config = stack.paths.config / f"{name}-image-default.yml"
    config.write_text(yaml.safe_dump(IMAGE_DEFAULT_CONFIG))
    log = stack.paths.logs / f"{name}.log"
    instance = start_mirror_instance(name, executable=mirror_registry_binary(stack.settings.registry.version),
                                     config_file=config, socket_path=stack.paths.mirror_socket(name), log=log,
                                     secrets=env)
    started.append(instance.record)
    assert mirror_healthy(stack.paths.mirror_socket(name))
    return log
