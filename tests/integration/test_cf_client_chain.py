"""The client-address chain of Cloud Foundry, reproduced on loopback with real nginx, and the security
proxy exactly as rendered for CF (templated by a stand-in of the nginx buildpack) at its end.

    client (127.0.0.x) -> load balancer (appends client) -> gorouter (appends the LB, 127.0.0.4)
        -> Envoy (TCP proxy from the container IP 127.0.0.2) -> nginx on 127.0.0.2
    neighbouring app (127.0.0.3, on the container network) -> nginx on 127.0.0.2 directly
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry_mirror.http_clients import client_from
from registry_mirror.processes import wait_until
from registry_mirror.rendering import BlobCache, NginxTarget, cf_real_ip_sources, render_nginx_conf
from registry_mirror.security_rules import SecurityRules
from tests.fakes.cf_edge import CONTAINER_IP, LOAD_BALANCER, NEIGHBOUR_APP, cf_edge

RULES = SecurityRules(allow=["127.0.0.10/32", "127.0.0.11/32", "127.0.0.64/29"], deny=["127.0.0.66/32"],
                      trusted_routers=[f"{LOAD_BALANCER}/32"])


@dataclass
class Chain:
    public: int  # the load balancer's port on 127.0.0.1
    app_port: int  # nginx's port on the container IP
    proxy_log: Path

    def ask(self, source: str, *, forged: str | None = None, direct: bool = False) -> tuple[int, str]:
        """GET /v2/ as `source`; returns the status and the client address nginx acted on."""
        headers = {"X-Forwarded-For": forged} if forged else {}
        # A marked URI finds this request's line, not a line of the edge's readiness probes logged late.
        marker = secrets.token_hex(6)
        base = f"http://{CONTAINER_IP}:{self.app_port}" if direct else f"http://127.0.0.1:{self.public}"
        url = f"{base}/v2/?ask={marker}"
        before = self.proxy_log.stat().st_size
        status = client_from(source).get(url, headers=headers, timeout=10).status_code
        line = wait_until(lambda: _new_access_line(self.proxy_log, before, marker), timeout=10,
                          what="the access log line")
        client = re.search(r"client=(\S+)", line)
        return status, client.group(1) if client else ""


def _new_access_line(log: Path, offset: int, marker: str) -> str | None:
    with open(log, "rb") as f:
        f.seek(offset)
        lines = [x for x in f.read().decode(errors="replace").splitlines()
                 if x.startswith("NginxLog") and marker in x]
    return lines[-1] if lines else None


def _start_chain(real_ip_from: list[str]) -> Iterator[Chain]:
    rendered = render_nginx_conf(RULES, NginxTarget.cloudfoundry(), real_ip_from=real_ip_from,
                                 blob_cache=BlobCache.sized("16M", "blob-cache"))
    # No mirror behind it: the answers these tests read are nginx's own (403, or 502 once let in).
    with cf_edge(rendered, env={"MIRROR_ROUTE": "127.0.0.1"}) as edge:
        yield Chain(public=edge.public, app_port=edge.app_port, proxy_log=edge.proxy_log)


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    yield from _start_chain(cf_real_ip_sources(RULES))


@pytest.mark.parametrize("who,source,forged,allowed,judged_as", [
    ("allowed", "127.0.0.10", None, True, "127.0.0.10"),
    ("allowed, second range", "127.0.0.65", None, True, "127.0.0.65"),
    ("denied", "127.0.0.66", None, False, "127.0.0.66"),
    ("unlisted", "127.0.0.77", None, False, "127.0.0.77"),
    ("denied, forging an allowed address", "127.0.0.66", "127.0.0.10", False, "127.0.0.66"),
    ("unlisted, forging a list", "127.0.0.77", "127.0.0.10, 127.0.0.11", False, "127.0.0.77"),
    ("unlisted, forging the load balancer", "127.0.0.77", LOAD_BALANCER, False, "127.0.0.77"),
])
def test_each_client_through_the_router_is_judged_by_its_own_address(
        chain: Chain, who: str, source: str, forged: str | None, allowed: bool, judged_as: str) -> None:
    status, client = chain.ask(source, forged=forged)
    assert client == judged_as, who
    assert (status != 403) is allowed, f"{who}: {status}"


@pytest.mark.parametrize("forged", [None, "127.0.0.10", f"127.0.0.10, {LOAD_BALANCER}"])
def test_a_neighbouring_app_on_the_container_network_cannot_claim_an_address(chain: Chain,
                                                                             forged: str | None) -> None:
    status, client = chain.ask(NEIGHBOUR_APP, forged=forged, direct=True)
    assert (status, client) == (403, NEIGHBOUR_APP)


def test_the_old_rendering_that_trusted_127_0_0_1_judges_every_client_as_the_container() -> None:
    """Control: trusting 127.0.0.1 (the previous premise) fails this chain for an allowed client."""
    chain = _start_chain(["127.0.0.1/32", *RULES.trusted_routers])
    old = next(chain)
    try:
        status, client = old.ask("127.0.0.10")
        assert (status, client) == (403, CONTAINER_IP)
    finally:
        chain.close()
