"""What incident_triage.ipynb calls: start the walk for the platform the parameters name, apply the
gated remedy, walk again, keep the evidence."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ParameterError, VerificationError
from ..parameters import Settings
from ..platforms.registry import platform_for
from .remedies import RemedyResult, check_remedy
from .triage import Diagnosis, Triage

if TYPE_CHECKING:
    from ..platforms.base import TriageEvidence

# distribution's reference grammar, for a repository on Docker Hub and a tag (no digest, no host)
PROBE_IMAGE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
                         r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")


def start_triage(settings: Settings, *, probe_image: str = "library/hello:latest", slow_seconds: float = 2.0,
                 recent_minutes: float = 15.0, stuck_minutes: float = 10.0, public_url: str = "",
                 remedy: str = "", scale_to: int = 0) -> Triage:
    """A walk over the stack the parameters name; checks `remedy` now, before anything is looked at."""
    check_remedy(remedy, scale_to)
    name = probe_image.removeprefix("docker.io/")
    # A first component with a dot names another registry's host (docker's normalisation rule).
    if not PROBE_IMAGE.fullmatch(name) or ("/" in name and "." in name.split("/")[0]):
        raise ParameterError(f"parameter 'probe_image' must be a Docker Hub repository and tag such as "
                             f"library/hello:latest, got {probe_image!r}")
    for name, value in (("slow_seconds", slow_seconds), ("recent_minutes", recent_minutes),
                        ("stuck_minutes", stuck_minutes)):
        if value < 0:
            raise ParameterError(f"parameter {name!r} must not be negative, got {value}")
    platform = platform_for(settings, settings.load_security_rules())

    def evidence() -> TriageEvidence:
        # A platform refuses what it cannot use (public_url where it knows its endpoint) right here,
        # when Triage opens the first walk's evidence, before anything is looked at.
        return platform.triage_evidence(probe_image=probe_image, recent_minutes=recent_minutes,
                                        stuck_minutes=stuck_minutes, public_url=public_url)

    return Triage(platform, evidence, slow_seconds=slow_seconds)


def check_again(triage: Triage, result: RemedyResult) -> Triage | None:
    """The same walk again after an applied remedy; None when nothing was applied."""
    if not result.applied:
        return None
    again = triage.again()
    again.walk()
    return again


def final_verdict(diagnosis: Diagnosis, result: RemedyResult, again: Triage | None) -> str:
    if again is None:
        return diagnosis.verdict()
    after = again.diagnose()
    if after.healthy and diagnosis.healthy:
        return f"APPLIED {result.remedy}: the same checks pass again."
    if after.healthy:
        return f"FIXED by {result.remedy}: the same checks pass again. Before: {diagnosis.cause}."
    return f"NOT FIXED by {result.remedy}: {after.verdict()}"


def require_fixed(result: RemedyResult, again: Triage | None) -> None:
    """A remedy that was applied and did not fix the chain fails the run (the pipeline sees it)."""
    if again is not None and not again.diagnose().healthy:
        raise VerificationError(f"remedy {result.remedy} was applied but the chain still fails: "
                                f"{again.diagnose().verdict()}")


def write_results(folder: Path, triage: Triage, diagnosis: Diagnosis, result: RemedyResult,
                  again: Triage | None) -> list[Path]:
    """The findings (CSV) and the diagnosis with the remedy's outcome, time, environment and versions
    (JSON), beside the notebook; each run's files carry its UTC time in their names, so the next run
    never overwrites an incident's record."""
    from datetime import datetime, timezone

    from .. import __version__

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    findings = folder / f"triage_findings-{stamp}.csv"
    triage.to_frame().to_csv(findings, index=False)
    written = [findings]
    if again is not None:
        after = folder / f"triage_findings_after_remedy-{stamp}.csv"
        again.to_frame().to_csv(after, index=False)
        written.append(after)
    settings = triage.target.settings
    summary = folder / f"triage_diagnosis-{stamp}.json"
    with open(summary, "x") as out:  # "x": an existing record is never replaced
        json.dump({
            "time": now.isoformat(), "environment": settings.environment, "platform": settings.platform,
            "versions": {"registry": settings.registry.version, "runbooks": __version__},
            "verdict": final_verdict(diagnosis, result, again),
            "diagnosis": asdict(diagnosis), "remedy": asdict(result),
            "after": asdict(again.diagnose()) if again is not None else None,
            "seconds": round(triage.seconds, 2)}, out, indent=2)
    written.append(summary)
    return written
