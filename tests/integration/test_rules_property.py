"""Generated security rules: every accepted set renders a config nginx accepts and whose decisions,
asked with real requests from loopback addresses, match a reference evaluation; every refused set is
refused before anything starts, without quoting a range."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from registry_mirror.errors import ParameterError
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local.nginx import nginx_test, reload_nginx, start_nginx
from registry_mirror.parameters import load_params_file
from registry_mirror.processes import ProcessRecord, free_port, stop_process
from registry_mirror.rendering import NginxTarget, render_nginx_conf
from registry_mirror.security_rules import SecurityRules, parse_security_rules

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _v4_loopback_range() -> st.SearchStrategy[str]:
    return st.builds(lambda host, prefix: str(ipaddress.ip_network(f"127.{host >> 16 & 255}.{host >> 8 & 255}."
                                                                    f"{host & 255}/{prefix}", strict=False)),
                     st.sampled_from([0, 1, 2, 10, 66, 0x0100, 0x0101, 0x010100, 0x010101, 0x0A0B0C, 0xFFFFFF]),
                     st.integers(min_value=8, max_value=32))


# Loopback ranges (asked with real requests), plus some that only have to render: other IPv4 and IPv6
# ranges, too-broad ones and scoped ones (which must be refused).
RANGES = st.one_of(
    *[_v4_loopback_range()] * 8,
    st.sampled_from(["0.0.0.0/0", "10.0.0.0/8", "10.255.0.0/16", "192.0.2.0/24", "::/0", "::/9", "::1/128",
                     "2001:db8::/32", "2001:db8:1::/48", "fe80::%eth0/64", "fd00::/8"]),
)
RULES = st.fixed_dictionaries({
    "allow": st.lists(RANGES, min_size=1, max_size=4, unique=True),
    "deny": st.lists(RANGES, max_size=3, unique=True),
    # Mostly narrow ranges, as router and load-balancer ranges are; now and then an unsafe one.
    "trusted_routers": st.lists(st.one_of(st.sampled_from(["127.200.0.0/24", "127.201.0.7/32", "::1/128"]),
                                          RANGES), max_size=2, unique=True),
})


def reference_allows(rules: SecurityRules, address: str) -> bool:
    """Most specific matching range wins; no match is a refusal."""
    addr = ipaddress.ip_address(address)
    best: tuple[int, bool] | None = None
    for cidr, allowed in [(c, True) for c in rules.allow] + [(c, False) for c in rules.deny]:
        net = ipaddress.ip_network(cidr)
        if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, allowed)
    return bool(best and best[1])


def probe_addresses(rules: SecurityRules) -> list[str]:
    """Addresses on both sides of every loopback boundary the rules draw."""
    found = {"127.0.0.1", "127.0.0.66", "127.3.4.5"}
    for cidr in [*rules.allow, *rules.deny]:
        net = ipaddress.ip_network(cidr)
        if net.version == 4 and net.subnet_of(LOOPBACK):
            found |= {str(net.network_address), str(net.broadcast_address)}
            if net.num_addresses > 2:
                found.add(str(net.network_address + 1))
            for outside in (int(net.network_address) - 1, int(net.broadcast_address) + 1):
                if ipaddress.ip_address(outside) in LOOPBACK:
                    found.add(str(ipaddress.ip_address(outside)))
    # .0 and .255 of a /24 are ordinary host addresses on loopback; 127.255.255.255 cannot be bound.
    return sorted(a for a in found if a != "127.255.255.255")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessRecord, Path, Path, int]]:
    root = tmp_path_factory.mktemp("rules")
    port = free_port()
    conf = root / "proxy.conf"
    conf.write_text(_render(SecurityRules(allow=["127.0.0.1/32"]), root, port))
    record = start_nginx("rules-proxy", conf=conf, prefix=root, log=root / "stderr.log", ready=("127.0.0.1", port),
                         upstream_required=False)
    try:
        yield record, conf, root, port
    finally:
        stop_process(record)
    assert not record.alive()


def _render(rules: SecurityRules, root: Path, port: int) -> str:
    # Allowed requests go on to a mirror socket where nothing listens: 502. Refused ones get 403.
    target = NginxTarget.local(root, name="rules", listen=f"127.0.0.1:{port}", logs=root,
                               upstream_servers=(f"unix:{root / 'no-mirror.sock'}",))
    return render_nginx_conf(rules, target, real_ip_from=[])


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=RULES)
def test_generated_rules_render_and_decide_as_the_reference(proxy, tmp_path: Path, data: dict) -> None:
    record, conf, root, port = proxy
    try:
        rules = parse_security_rules(data, source="rules.yaml")
    except ParameterError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("rules.yaml: ")
        for cidr in [c for values in data.values() for c in values]:
            assert cidr not in message, "a refused range was quoted back"
        _assert_refused_before_anything_starts(tmp_path, data)
        event("refused")
        return
    event("accepted")
    conf.write_text(_render(rules, root, port))
    nginx_test(conf, root)
    reload_nginx(record, conf=conf, prefix=root)
    for address in probe_addresses(rules):
        status = client_from(address).get(f"http://127.0.0.1:{port}/v2/", timeout=5).status_code
        expected = 502 if reference_allows(rules, address) else 403
        assert status == expected, f"{address}: nginx answered {status}, the reference says {expected}"


def _assert_refused_before_anything_starts(tmp_path: Path, data: dict) -> None:
    """The same rules in a params file: refused at load, and the state folder is never created."""
    params = yaml.safe_load(Path("params/local.yaml").read_text())
    state = tmp_path / "never-created"
    params["local"]["state_dir"] = str(state)
    params["proxy"]["security_rules"] = data
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParameterError):
        load_params_file(path)
    assert not state.exists()


def test_the_reference_is_not_trivial() -> None:
    rules = SecurityRules(allow=["127.0.0.0/8", "127.1.1.0/24"], deny=["127.1.0.0/16"])
    assert [reference_allows(rules, a) for a in ("127.0.0.1", "127.1.0.1", "127.1.1.1", "10.0.0.1")] == [
        True, False, True, False]
