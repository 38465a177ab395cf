"""Remedies: each one gated by a parameter that fails closed, each with a dry run, each followed by
the same checks again (the notebook walks the chain a second time).

    redeploy          deploy the stack to what its parameters say (local: restarts what died,
                      recreates the bucket, re-renders configs)
    redeploy-proxy    re-render the proxy's config from the parameters and deploy it
    replace-mirrors   new mirror instances, one at a time, each health-checked before an old one leaves
    cancel-deployment cancel the app's active deployment (Cloud Foundry)
    rollback          deploy the previous revision (Cloud Foundry)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParameterError
from .triage import Diagnosis

REMEDIES = ("redeploy", "redeploy-proxy", "replace-mirrors", "cancel-deployment", "rollback")


@dataclass(frozen=True)
class RemedyResult:
    remedy: str | None
    applied: bool
    dry_run: bool
    detail: str  # what was (or would be) done, or why nothing was

    def __repr__(self) -> str:
        head = "DRY RUN" if self.dry_run else ("APPLIED" if self.applied else "NOT APPLIED")
        return f"{head}: {self.remedy or 'no remedy'}: {self.detail}"


def choose_remedy(diagnosis: Diagnosis, asked: str) -> str | None:
    """The remedy to apply: `asked` when given (it must be a known one), else the diagnosis's own."""
    if asked and asked not in REMEDIES:
        raise ParameterError(f"parameter 'remedy' must be one of {', '.join(REMEDIES)} or empty, got {asked!r}")
    return asked or diagnosis.remedy


def apply_remedy(target: object, diagnosis: Diagnosis, *, remedy: str = "", confirm: bool = False,
                 dry_run: bool = False) -> RemedyResult:
    """Apply the remedy when `confirm` is set; `dry_run` shows what it would do; neither does nothing."""
    chosen = choose_remedy(diagnosis, remedy)
    if diagnosis.healthy and not remedy:
        return RemedyResult(None, False, dry_run, "the chain is healthy: nothing to remedy")
    if chosen is None:
        return RemedyResult(None, False, dry_run, diagnosis.advice)
    if not confirm and not dry_run:
        return RemedyResult(chosen, False, False, "the gate is closed (apply_remedy=False): diagnosis only; "
                                                  "set dry_run=True to see what it would do")
    run = _runner(target, chosen)
    detail = run(dry_run)
    return RemedyResult(chosen, not dry_run, dry_run, detail)


def _runner(target: object, remedy: str):  # type: ignore[no-untyped-def]
    from ..local_platform import LocalPlatform

    if isinstance(target, LocalPlatform):
        def local(dry_run: bool) -> str:
            if remedy in ("cancel-deployment", "rollback"):
                raise ParameterError(f"remedy {remedy!r} is for Cloud Foundry; the local platform has no deployments")
            report = target.deploy(dry_run=dry_run, replace_mirrors=remedy == "replace-mirrors")
            return report.changes()
        return local
    from .cloudfoundry_remedies import cloudfoundry_runner

    return cloudfoundry_runner(target, remedy)

