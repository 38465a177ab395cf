"""Addresses that play the users of the policy checks, chosen from the rules (never printed)."""
from __future__ import annotations

import ipaddress

from ..security_rules import SecurityRules


def sample_addresses(rules: SecurityRules) -> tuple[str | None, str | None, str | None]:
    """Loopback addresses that play an allowed, an explicitly denied and an unlisted client."""
    def first(candidates: list[ipaddress.IPv4Address], want: bool | None) -> str | None:
        for addr in candidates:
            if addr.is_loopback and rules.verdict(addr) is want:
                return str(addr)
        return None

    def hosts(cidrs: list[str]) -> list[ipaddress.IPv4Address]:
        out = []
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr)
            if net.version == 4:
                out.append(net.network_address if net.num_addresses == 1 else net.network_address + 1)
        return out

    spare = [ipaddress.IPv4Address(f"127.0.{b}.{c}") for b, c in ((0, 254), (0, 77), (0, 199), (1, 1), (9, 9))]
    return first(hosts(rules.allow), True), first(hosts(rules.deny), False), first(spare, None)


def denied_example(rules: SecurityRules) -> str | None:
    """An address the rules refuse, to forge: inside a deny range, else in no range at all (never shown)."""
    candidates = [ipaddress.ip_network(c)[0] for c in rules.deny]
    candidates += [ipaddress.ip_address(a) for a in ("192.0.2.1", "2001:db8::1")]  # documentation ranges
    for address in candidates:
        if not rules.verdict(address):
            return str(address)
    return None
