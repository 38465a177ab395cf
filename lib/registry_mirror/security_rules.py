"""The security proxy's IP policy: who may pull, who may not, and whose X-Forwarded-For we believe.

In production these ranges are private: they come from a file whose path is given at run time and
only their counts are ever displayed.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .errors import ParameterError
from .yaml_files import KeyedValueError, describe_validation_error, read_yaml_mapping


# The broadest range each list accepts, per IP version. An allow range broader than this opens the
# mirror to a large part of the internet (refused unless `mirror_is_public`); a trusted range broader
# than this lets every host in it claim any client address.
BROADEST_ALLOW = {4: 8, 6: 16}
BROADEST_TRUSTED = {4: 16, 6: 48}


def _cidr(value: str) -> str:
    """Accept an exact network in CIDR form; a host address gets its /32 or /128."""
    if not isinstance(value, str):
        raise ValueError("must be a CIDR string such as '10.0.0.0/8'")
    if "%" in value:
        # Python accepts fe80::1%eth0; nginx refuses it in geo and set_real_ip_from.
        raise ValueError("has an IPv6 scope (%zone), which nginx does not accept; write the range without it")
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        # The ranges are private: name the entry by its key, never quote it.
        if "has host bits set" in str(exc):
            raise ValueError("has host bits set (write the network address, e.g. 10.0.0.0/8 "
                             "rather than 10.0.0.1/8)") from None
        raise ValueError("is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32") from None
    return str(network)


Cidr = Annotated[str, AfterValidator(_cidr)]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _uncovered(region: IPNetwork, covers: list[IPNetwork]) -> list[IPNetwork]:
    """The parts of `region` that no network in `covers` contains."""
    remaining = [region]
    for cover in covers:
        left: list[IPNetwork] = []
        for part in remaining:
            if part.subnet_of(cover):  # type: ignore[arg-type]
                continue
            if cover.subnet_of(part):  # type: ignore[arg-type]
                left.extend(part.address_exclude(cover))  # type: ignore[arg-type]
            else:
                left.append(part)
        remaining = left
    return remaining


class SecurityRules(BaseModel):
    """Allow/deny ranges for clients, and the router ranges trusted to report a client's address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[Cidr] = Field(min_length=1, description="client ranges that may pull")
    deny: list[Cidr] = Field(default_factory=list, description="ranges refused even inside an allowed range")
    trusted_routers: list[Cidr] = Field(
        default_factory=list,
        description="addresses of the routers/load balancers whose X-Forwarded-For entries are believed",
    )
    mirror_is_public: bool = Field(
        False, description="true only for a mirror meant to serve everyone: allows 0.0.0.0/0 and ::/0")
    labels: dict[Cidr, str] = Field(
        default_factory=dict,
        description="a name for an allow or deny range, shown in reports instead of the range (e.g. 'ci runners')")

    @model_validator(mode="after")
    def _consistent(self) -> SecurityRules:
        allowed = set(self.allow)
        for index, (cidr, label) in enumerate(self.labels.items()):
            if cidr not in allowed and cidr not in self.deny:
                raise KeyedValueError(("labels", index), "names a range that is in neither allow nor deny")
            if not label.strip() or "/" in label:
                raise KeyedValueError(("labels", index), "must be a name such as 'ci runners', not empty or a range")
        for index, cidr in enumerate(self.deny):
            if cidr in allowed:
                raise KeyedValueError(("deny", index), "is both allowed and denied")
        for index, cidr in enumerate(self.allow):
            net = ipaddress.ip_network(cidr)
            if net.prefixlen < BROADEST_ALLOW[net.version] and not self.mirror_is_public:
                raise KeyedValueError(("allow", index), f"is broader than /{BROADEST_ALLOW[net.version]} (IPv"
                                      f"{net.version}): that opens the mirror to the internet; set "
                                      "mirror_is_public: true if that is what you mean")
        for index, cidr in enumerate(self.trusted_routers):
            net = ipaddress.ip_network(cidr)
            # Trusting a huge range lets any client in it forge the address nginx acts on.
            if net.prefixlen < BROADEST_TRUSTED[net.version]:
                raise KeyedValueError(("trusted_routers", index), f"is broader than /{BROADEST_TRUSTED[net.version]}"
                                      f" (IPv{net.version}): any host inside it could forge X-Forwarded-For")
            if self._denies_some_of(net):
                raise KeyedValueError(("trusted_routers", index), "overlaps a deny range: a denied host there "
                                      "could claim any client address")
        return self

    def verdict(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool | None:
        """What the proxy decides for one client address, as nginx's geo block does: the most specific
        range that contains it wins; True allowed, False denied, None in no range (refused too)."""
        addr = ipaddress.ip_address(address)
        best: tuple[int, bool] | None = None
        for cidrs, allowed in ((self.allow, True), (self.deny, False)):
            for net in (ipaddress.ip_network(c) for c in cidrs):
                if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, allowed)
        return None if best is None else best[1]

    def _denies_some_of(self, net: IPNetwork) -> bool:
        """Does the policy (most specific range wins) deny any address inside `net`?"""
        allow = [ipaddress.ip_network(c) for c in self.allow]
        for deny in (ipaddress.ip_network(c) for c in self.deny):
            if deny.version != net.version or not deny.overlaps(net):
                continue
            region = net if net.subnet_of(deny) else deny  # CIDRs that overlap nest
            # Allow ranges more specific than this deny win where they lie; a deny nested in them again
            # is checked on its own turn of this loop.
            winners = [a for a in allow if a.version == net.version and a.prefixlen > deny.prefixlen]
            if _uncovered(region, winners):
                return True
        return False

    def check_platform(self, container_networks: list[str], *, source: str) -> None:
        """Refuse trusted ranges that overlap the platform's container network: any app there could
        connect to the proxy and present a forged X-Forwarded-For."""
        overlay = [ipaddress.ip_network(c) for c in container_networks]
        for index, cidr in enumerate(self.trusted_routers):
            if any(ipaddress.ip_network(cidr).overlaps(o) for o in overlay):
                raise ParameterError(f"{source}: 'trusted_routers[{index}]' overlaps the platform's container "
                                     "network (cloudfoundry.container_network): any app there could forge "
                                     "its client address")

    def summary(self) -> dict[str, int]:
        """What a notebook may show: counts, never the ranges."""
        allow = [ipaddress.ip_network(c) for c in self.allow]
        deny = [ipaddress.ip_network(c) for c in self.deny]
        return {"allow": len(self.allow), "deny": len(self.deny), "trusted_routers": len(self.trusted_routers),
                # Most specific wins: an allow range inside a deny range is allowed, the rest of the deny is not.
                "allow_inside_deny (allow wins there)": sum(
                    any(a != d and a.version == d.version and a.subnet_of(d) for d in deny) for a in allow),
                "deny_inside_allow (deny wins there)": sum(
                    any(a != d and a.version == d.version and d.subnet_of(a) for a in allow) for d in deny),
                "trusted_inside_allow": sum(any(
                    t.version == a.version and t.subnet_of(a) for a in allow)
                    for t in (ipaddress.ip_network(c) for c in self.trusted_routers)),
                "public": int(self.mirror_is_public)}

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.summary().items())
        return f"SecurityRules({counts} ranges; ranges hidden)"

    __str__ = __repr__


def load_security_rules(path: Path, *, label: str | None = None) -> SecurityRules:
    """Read a private security-rules file, raising ParameterError naming the file and key."""
    source = label or str(path)
    data = read_yaml_mapping(path, label=source)
    return parse_security_rules(data, source=source)


def parse_security_rules(data: Any, *, source: str, prefix: str = "") -> SecurityRules:
    """Validate rules given inline (local parameters) or read from a file."""
    from pydantic import ValidationError

    try:
        return SecurityRules.model_validate(data)
    except ValidationError as exc:
        # private: the ranges are never quoted back, not even a list mistakenly written as one string.
        raise ParameterError(describe_validation_error(exc, source=source, prefix=prefix, private=True)) from None
