"""Is the mirror protected and working? A table of checks, each with its evidence.

Every check says what it proves, how it looked, what it expected and what it saw, and on failure
what to do next. Every platform reports the same checks (catalogue.py); one that cannot apply
there says why (`n/a`) instead of vanishing. Allow-list ranges never appear in the results: checks
name the role of an address ("an allowed client", "a denied client"), not the address or range.

    catalogue, report      what the checks are; results as data
    client                 what a client sees through the public endpoint (every platform)
    upstream, addresses    the upstream's view; which addresses play which user
    local                  the local platform's checks (each platform's own live in its folder)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..platforms.local.stack import LocalPlatform
from .local import local_checks
from .report import PolicyCheck, PolicyReport, run_checks


if TYPE_CHECKING:
    from ..platforms.base import Platform


def verify_policies(target: Platform, *, public_url: str | None = None,
                    image: str | None = None) -> PolicyReport:
    """Run every check against the target's platform.

    `public_url` (CF only): how this machine reaches the proxy's public route, when not https://route.
    `image`: the docker.io image the pull checks fetch (default: a tiny one every upstream serves).
    """
    if isinstance(target, LocalPlatform):
        if public_url is not None:
            raise ValueError("public_url is for Cloud Foundry; the local platform knows its endpoint")
        return run_checks("local", local_checks(target, image=image))
    return run_checks(target.name, target.policy_checks(public_url=public_url or "", image=image or ""))


__all__ = ["PolicyCheck", "PolicyReport", "verify_policies"]
