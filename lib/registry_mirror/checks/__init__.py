"""Is the mirror protected and working? A table of checks, each with its evidence.

Every check says what it proves, how it looked, what it expected and what it saw, and on failure
what to do next. Every platform reports the same checks (catalogue.py); one that cannot apply
there says why (`n/a`) instead of vanishing. Allow-list ranges never appear in the results: checks
name the role of an address ("an allowed client", "a denied client"), not the address or range.

    catalogue, report      what the checks are; results as data
    client                 what a client sees through the public endpoint (every platform)
    upstream, addresses    the upstream's view; which addresses play which user
    cloudfoundry           the checks on Cloud Foundry (the local platform's are platforms/local/checks.py)
"""
from __future__ import annotations

from ..platforms.cloudfoundry.platform import CloudFoundryPlatform
from ..platforms.local import LocalPlatform
from .cloudfoundry import cf_checks
from .report import PolicyCheck, PolicyReport, run_checks


def verify_policies(target: LocalPlatform | CloudFoundryPlatform, *, public_url: str | None = None,
                    image: str | None = None) -> PolicyReport:
    """Run every check against the target's platform.

    `public_url` (CF only): how this machine reaches the proxy's public route, when not https://route.
    `image`: the docker.io image the pull checks fetch (default: a tiny one every upstream serves).
    """
    if isinstance(target, LocalPlatform):
        return run_checks(target.name, target.policy_checks(public_url=public_url or "", image=image or ""))
    return run_checks("cloudfoundry", cf_checks(target, public_url=public_url, image=image))


__all__ = ["PolicyCheck", "PolicyReport", "verify_policies"]
