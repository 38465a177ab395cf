"""Is the mirror protected and working? A table of checks, each with its evidence.

Every check says what it proves, how it looked, what it expected and what it saw, and on failure
what to do next. Every platform reports the same checks (catalogue.py); one that cannot apply
there says why (`n/a`) instead of vanishing. Allow-list ranges never appear in the results: checks
name the role of an address ("an allowed client", "a denied client"), not the address or range.

    catalogue, report      what the checks are; results as data
    client                 what a client sees through the public endpoint (every platform)
    upstream, addresses    the upstream's view; which addresses play which user

Each platform's own checks live in its folder (platforms/<name>/checks.py) and reach this package
through `Platform.policy_checks`; nothing here imports a platform.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .report import PolicyCheck, PolicyReport, run_checks

if TYPE_CHECKING:
    from ..platforms.base import Platform


def verify_policies(target: Platform, *, public_url: str | None = None, image: str | None = None) -> PolicyReport:
    """Run every check against the platform.

    `public_url`: how this machine reaches the proxy's public route, where that is not the endpoint
    itself (Cloud Foundry); a platform that knows its endpoint refuses it.
    `image`: the docker.io image the pull checks fetch (default: a tiny one every upstream serves).
    """
    return run_checks(target.name, target.policy_checks(public_url=public_url or "", image=image or ""))


__all__ = ["PolicyCheck", "PolicyReport", "verify_policies"]
