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


def _cidr(value: str) -> str:
    """Accept an exact network in CIDR form; a host address gets its /32 or /128."""
    if not isinstance(value, str):
        raise ValueError("must be a CIDR string such as '10.0.0.0/8'")
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


class SecurityRules(BaseModel):
    """Allow/deny ranges for clients, and the router ranges trusted to report a client's address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[Cidr] = Field(min_length=1, description="client ranges that may pull")
    deny: list[Cidr] = Field(default_factory=list, description="ranges refused even inside an allowed range")
    trusted_routers: list[Cidr] = Field(
        default_factory=list,
        description="addresses of the routers/load balancers whose X-Forwarded-For entries are believed",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SecurityRules:
        allowed = set(self.allow)
        for index, cidr in enumerate(self.deny):
            if cidr in allowed:
                raise KeyedValueError(("deny", index), "is both allowed and denied")
        for index, cidr in enumerate(self.trusted_routers):
            # Trusting a huge range lets any client in it forge the address nginx acts on.
            if ipaddress.ip_network(cidr).prefixlen < 8:
                raise KeyedValueError(("trusted_routers", index), "is too broad (shorter than /8): any "
                                      "client inside it could forge X-Forwarded-For")
        return self

    def summary(self) -> dict[str, int]:
        """What a notebook may show: counts, never the ranges."""
        return {"allow": len(self.allow), "deny": len(self.deny), "trusted_routers": len(self.trusted_routers)}

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
        raise ParameterError(describe_validation_error(exc, source=source, prefix=prefix)) from None
