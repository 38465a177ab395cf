"""The Cloud Foundry rendering on loopback, for tests that need a real mirror behind it: the security proxy
as rendered for the buildpack behind the edge stand-ins (tests/fakes/cf_edge.py), in front of a mirror
app: the registry release production pins, started from the production mirror manifest's env, with
local values only where the platform differs, on the shared stack's S3 and Docker Hub stand-in. The
proxy reaches it as it reaches the mirror route on CF: by a variable host, no keepalive."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests
import yaml

from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.parameters import load_params_file
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.daemons import daemon_env
from registry_mirror.platforms.cloudfoundry.push.package import proxy_bits
from registry_mirror.platforms.local.mirrors import mirror_registry_binary
from registry_mirror.processes import ProcessRecord, free_port, start_process, stop_process, wait_until
from registry_mirror.registry_config import S3Location
from registry_mirror.rendering import render_cf_manifests
from registry_mirror.security_rules import SecurityRules
from tests.fakes.cf_edge import LOAD_BALANCER, MIRROR_CONTAINER, cf_edge

PRODUCTION = load_params_file("params/production.yaml")
CLIENT = "127.0.0.10"  # allowed, as is 127.0.0.1 (where skopeo connects from)
CF_RULES = SecurityRules(allow=["127.0.0.1/32", f"{CLIENT}/32"], trusted_routers=[f"{LOAD_BALANCER}/32"])


@dataclass(frozen=True)
class CfChain:
    public: int  # the load balancer's port on 127.0.0.1: the proxy app's public route
    mirror_url: str  # the mirror app itself, as the proxy reaches it


@contextmanager
def cf_chain(stack: LocalPlatform) -> Iterator[CfChain]:
    port = free_port(MIRROR_CONTAINER)
    config = stack.paths.config / "cf-mirror-app.yml"
    # The registry:3 image's own default config, which the manifest's variables override.
    config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {"rootdirectory": "/unused"}},
                                      "http": {"addr": ":5000"}}))
    log = stack.paths.logs / "cf-mirror-app.log"
    record: ProcessRecord = start_process(
        "cf-mirror-app", [str(mirror_registry_binary(PRODUCTION.registry.version)), "serve", str(config)], log=log,
        env=daemon_env(_cf_mirror_env(stack, f"{MIRROR_CONTAINER}:{port}")))
    try:
        mirror_url = f"http://{MIRROR_CONTAINER}:{port}"
        wait_until(lambda: _answers(f"{mirror_url}/v2/"), timeout=30, what="the CF mirror app")
        manifests = render_cf_manifests(PRODUCTION, CF_RULES, s3=S3Location("unused", "unused"))
        # The app port of the mirror is 5000 on CF; here a free one.
        conf = manifests.proxy_nginx_conf.replace(":5000;", f":{port};")
        # The app as the deploy uploads it, with the sidecars its manifest declares.
        sidecars = [s["command"] for s in yaml.safe_load(manifests.proxy)["applications"][0].get("sidecars", [])]
        with cf_edge(package=proxy_bits(conf), sidecars=sidecars, env={"MIRROR_ROUTE": MIRROR_CONTAINER}) as edge:
            yield CfChain(public=edge.public, mirror_url=mirror_url)
    finally:
        stop_process(record)
    assert not record.alive()


def _cf_mirror_env(stack: LocalPlatform, listen: str) -> dict[str, str]:
    """The production mirror manifest's env, with local values only where the platform differs."""
    assert stack.settings.storage is not None
    manifests = render_cf_manifests(PRODUCTION, CF_RULES, s3=S3Location(
        bucket=stack.settings.storage.bucket, region=stack.settings.storage.region))
    secrets = stack.mirror_secret_env(LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False))
    return {**manifests.mirror_env,
            "REGISTRY_STORAGE_S3_REGIONENDPOINT": f"http://{stack.local.address}:{stack.local.s3_port}",
            "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true", "REGISTRY_STORAGE_S3_SECURE": "false",
            "REGISTRY_PROXY_REMOTEURL": stack.hub_url,
            "REGISTRY_PROXY_USERNAME": stack.settings.upstream.username or "",
            "REGISTRY_HTTP_ADDR": listen, "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{free_port()}", **secrets}


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
