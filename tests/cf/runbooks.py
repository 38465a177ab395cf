"""The CF runbooks' cells as library calls, in the notebooks' order, for in-process tests.

Each function makes the calls its notebook makes (notebooks hold no logic of their own), so a test
proves the runbook's behaviour without a kernel; one papermill run per runbook proves the notebook.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from registry_mirror.checks import PolicyReport, verify_policies
from registry_mirror.client_pull import PullResult
from registry_mirror.deploy_report import DeployReport
from registry_mirror.incidents.remedies import RemedyResult, apply_remedy
from registry_mirror.incidents.runbook import check_again, final_verdict, require_fixed, start_triage, write_results
from registry_mirror.parameters import validate_settings
from registry_mirror.platforms import calls_table, check_component, config_overview, deploy_summary, rollback, verify_pull
from registry_mirror.platforms.cloudfoundry import CloudFoundryPlatform


@dataclass
class Deployed:
    report: DeployReport
    pull: PullResult | None
    summary: pd.DataFrame
    text: str  # everything the notebook shows, cell by cell


def deploy_runbook(platform: CloudFoundryPlatform, *, dry_run: bool = False, component: str = "all") -> Deployed:
    """deploy.ipynb: configs, preflight (stops before any change), deploy, verification pull, summary."""
    check_component(component, platform.settings)
    configs = platform.rendered_configs()
    shown = [repr(platform.rules.summary()), configs["registry config (per instance)"],
             config_overview(configs, platform.rules).to_string()]
    preflight = platform.preflight()
    shown.append(repr(preflight))
    preflight.raise_for_failures()
    report = platform.deploy(dry_run=dry_run, component=component)
    pull = verify_pull(platform, dry_run=dry_run)
    summary = deploy_summary(platform, report, pull)
    shown += [repr(report), pull.verdict() if pull else "dry run: no pull", summary.to_string()]
    return Deployed(report, pull, summary, "\n".join(shown))


def rollback_runbook(platform: CloudFoundryPlatform, *, component: str = "registry", revision: str = "",
                     confirm: bool = False) -> tuple[DeployReport, pd.DataFrame]:
    """rollback.ipynb: status, the rollback (a dry run unless confirmed), the calls it made."""
    repr(platform.status())
    report = rollback(platform, component=component, revision=revision, dry_run=not confirm)
    return report, calls_table(platform)


def verify_runbook(platform: CloudFoundryPlatform, *, public_url: str, image: str, results: Path) -> PolicyReport:
    """verify_policies.ipynb: every check, the results as JSON; raise_for_failures is the caller's."""
    report = verify_policies(platform, public_url=public_url, image=image)
    report.write_json(results)
    return report


@dataclass
class Triaged:
    diagnosis: str  # the verdict of the first walk
    remedy: RemedyResult
    final: str  # what the notebook prints last
    text: str  # every layer's verdict, both walks, as the notebook shows them


def triage_runbook(params: dict, *, output_dir: Path, public_url: str, probe_image: str = "library/hello:latest",
                   slow_seconds: float = 2.0, recent_minutes: float = 15.0, stuck_minutes: float = 10.0,
                   remedy: str = "", scale_to: int = 0, apply: bool = False, dry_run: bool = False) -> Triaged:
    """incident_triage.ipynb: walk every layer, diagnose, the gated remedy, walk again, keep the evidence.
    Like the notebook, the platform comes from the parameters and the CF credentials in the environment."""
    settings = validate_settings(params, source="test params")
    triage = start_triage(settings, probe_image=probe_image, slow_seconds=slow_seconds,
                          recent_minutes=recent_minutes, stuck_minutes=stuck_minutes, public_url=public_url,
                          remedy=remedy, scale_to=scale_to)
    lines = [layer.verdict for layer in triage.walk()]
    diagnosis = triage.diagnose()
    result = apply_remedy(triage.target, diagnosis, remedy=remedy, confirm=apply, dry_run=dry_run, scale_to=scale_to)
    again = check_again(triage, result)
    lines += [layer.verdict for layer in again.layers] if again is not None else []
    final = final_verdict(diagnosis, result, again)
    require_fixed(result, again)
    write_results(output_dir, triage, diagnosis, result, again)
    return Triaged(diagnosis.verdict(), result, final, "\n".join([*lines, diagnosis.verdict(), repr(result), final]))
