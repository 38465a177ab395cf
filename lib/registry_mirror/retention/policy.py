"""The retention policy: a size budget, an age limit, a protection window, and pinned images."""
from __future__ import annotations

import fnmatch
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import ParameterError
from ..yaml_files import describe_validation_error

_BUDGET = re.compile(r"^(0|[0-9]+(\.[0-9]+)?(K|KB|M|MB|G|GB|T|TB))$")
_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
# An image pattern: repository[:tag] with shell wildcards, e.g. library/python:3.12 or library/*.
_PATTERN = re.compile(r"^[a-z0-9*?._/\-\[\]]+(:[A-Za-z0-9*?._\-\[\]]+)?$")


def _budget(value: str) -> str:
    if not _BUDGET.match(value):
        raise ValueError(f"'{value}' is not a size such as 500M or 1.5G, or 0 for no budget")
    return value


def _patterns(values: list[str]) -> list[str]:
    for value in values:
        if not _PATTERN.match(value):
            raise ValueError(f"'{value}' is not an image pattern such as library/python:3.12 or library/*")
    return values


class RetentionPolicy(BaseModel):
    # strict and closed, like the deployment's settings: a misspelt key is refused, not ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    budget: Annotated[str, AfterValidator(_budget)] = "0"  # the bucket's size limit; 0: no size bound
    evict_after_days: int = Field(default=0, ge=0, le=3650)  # evict what nobody pulled for this long; 0: never by age
    protect_days: float = Field(default=0.0, ge=0, le=3650)  # never evict what was pulled this recently; 0: none
    pinned: Annotated[list[str], AfterValidator(_patterns)] = []  # images never evicted (repository[:tag] patterns)
    price_per_gb_month: float = Field(default=0.0, ge=0)  # the S3 price, for the verdict's monthly figure
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")  # ISO 4217 code of the price: every cost shows it
    grace_seconds: float = Field(default=60.0, ge=0, le=3600)  # links gone -> blob data deleted: in-flight reads finish
    ledger_prefix: str = Field(default="retention/ledger/", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$")

    @property
    def budget_bytes(self) -> int:
        """The budget in bytes (decimal units, as S3 bills); 0 for none."""
        if self.budget == "0":
            return 0
        number, unit = re.match(r"^([0-9.]+)([KMGT])", self.budget).groups()  # type: ignore[union-attr]
        return int(float(number) * _UNITS[unit])

    def is_pinned(self, repository: str, tag: str) -> bool:
        names = [repository, f"{repository}:{tag}"] if tag else [repository]
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.pinned for name in names)


def retention_policy(values: dict, *, source: str) -> RetentionPolicy:
    """Validate the runbook's retention parameters; the error names the parameter."""
    try:
        policy = RetentionPolicy.model_validate(values)
    except ValidationError as exc:
        raise ParameterError(describe_validation_error(exc, source=source)) from None
    if policy.ledger_prefix.startswith("docker/"):
        raise ParameterError(f"{source}: 'ledger_prefix' must be outside docker/, which the registry owns")
    return policy
