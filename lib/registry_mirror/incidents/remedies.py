"""Remedies: each one gated by a parameter that fails closed, each with a dry run, each followed by
the same checks again (the notebook walks the chain a second time).

    redeploy          deploy the stack to what its parameters say (local: restarts what died,
                      recreates the bucket, re-renders configs)
    redeploy-proxy    re-render the proxy's config from the parameters and deploy it
    replace-mirrors   new mirror instances, one at a time, each health-checked before an old one leaves
    cancel-deployment cancel the app's active deployment (Cloud Foundry)
    rollback          deploy the previous revision (Cloud Foundry)
    scale-mirrors     run `scale_to` mirror instances now (extra capacity; the params still say what
                      the next deploy brings back)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ParameterError
from ..parameters import did_you_mean
from .triage import Diagnosis

if TYPE_CHECKING:
    from ..platforms.base import Platform

REMEDIES = ("redeploy", "redeploy-proxy", "replace-mirrors", "cancel-deployment", "rollback", "scale-mirrors")


@dataclass(frozen=True)
class RemedyResult:
    remedy: str | None
    applied: bool
    dry_run: bool
    detail: str  # what was (or would be) done, or why nothing was

    def __repr__(self) -> str:
        head = "DRY RUN" if self.dry_run else ("APPLIED" if self.applied else "NOT APPLIED")
        return f"{head}: {self.remedy or 'no remedy'}: {self.detail}"


def check_remedy(remedy: str, scale_to: int = 0) -> None:
    """Refuse an unknown remedy, or scaling without a count, before anything is looked at."""
    if remedy and remedy not in REMEDIES:
        raise ParameterError(f"parameter 'remedy' must be one of {', '.join(REMEDIES)} or empty, got {remedy!r}"
                             + did_you_mean(remedy, REMEDIES))
    if remedy == "scale-mirrors" and scale_to < 1:
        raise ParameterError(f"parameter 'scale_to' must be at least 1 for remedy scale-mirrors, got {scale_to}")
    if scale_to < 0:
        raise ParameterError(f"parameter 'scale_to' must not be negative, got {scale_to}")


def apply_remedy(target: Platform, diagnosis: Diagnosis, *, remedy: str = "", confirm: bool = False,
                 dry_run: bool = False, scale_to: int = 0) -> RemedyResult:
    """Apply the remedy when `confirm` is set; `dry_run` shows what it would do; neither does nothing."""
    check_remedy(remedy, scale_to)
    chosen = remedy or diagnosis.remedy  # the operator's choice, else the diagnosis's own
    if diagnosis.healthy and not remedy:
        return RemedyResult(None, False, dry_run, "the chain is healthy: nothing to remedy")
    if chosen is None:
        return RemedyResult(None, False, dry_run, diagnosis.advice)
    if not confirm and not dry_run:
        return RemedyResult(chosen, False, False, "the gate is closed (apply_remedy=False): diagnosis only; "
                                                  "set dry_run=True to see what it would do")
    detail = target.remedy(chosen, scale_to=scale_to, dry_run=dry_run)
    return RemedyResult(chosen, not dry_run, dry_run, detail)
