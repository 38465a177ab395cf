"""Choose the platform the parameters name. Both platforms offer deploy/preflight/status/down."""
from __future__ import annotations

import hashlib
from dataclasses import replace

import pandas as pd

from .cloudfoundry import CloudFoundryPlatform
from ..client_pull import PullResult, pull_with_skopeo
from ..deploy_report import DeployReport, DeployStep
from ..errors import ParameterError, VerificationError
from .local.stack import LocalPlatform
from ..parameters import Settings
from ..security_rules import SecurityRules

COMPONENTS = ("all", "registry", "proxy")


Platform = LocalPlatform | CloudFoundryPlatform


def platform_for(settings: Settings, rules: SecurityRules) -> Platform:
    if settings.platform == "local":
        return LocalPlatform(settings, rules)
    return CloudFoundryPlatform(settings, rules)


def check_component(component: str, settings: Settings) -> str:
    if component not in COMPONENTS:
        raise ParameterError(f"parameter 'component' must be one of {', '.join(COMPONENTS)}, got {component!r}")
    if settings.platform == "local" and component != "all":
        raise ParameterError("the local platform deploys the whole stack: use component 'all'")
    return component


SAMPLE_IMAGE = "docker.io/library/hello:latest"


def verify_pull(platform: Platform, *, image: str = SAMPLE_IMAGE, dry_run: bool = False) -> PullResult | None:
    """Pull `image` by its docker.io name through the public endpoint, as a user's client would.

    On Cloud Foundry the pipeline's integration job pulls from its workers (which the allow-list
    admits); this machine is not one of them, so nothing is pulled here.
    """
    if dry_run or not isinstance(platform, LocalPlatform):
        return None
    try:
        pulled = pull_with_skopeo(image, registries_conf=platform.client_configs().registries_conf)
    except VerificationError as exc:
        # Tell "the storage is down" apart from "the mirror is broken": the remedy differs.
        cause = ("S3 is down too: restore it, then pull again" if not platform.storage_answers() else
                 "S3 answers, so the proxy or a mirror is broken: read `make status` and the logs")
        raise VerificationError(f"{exc} ({cause})") from None
    if not platform.storage_answers():
        return replace(pulled, note="S3 DOWN: served from the proxy's cache; images it does not hold fail "
                                    "until S3 is back")
    return pulled


def config_overview(configs: dict[str, str], rules: SecurityRules) -> pd.DataFrame:
    """Rendered configs by name, size and digest: safe to show even where they hold private ranges."""
    rows = [{"config": name, "lines": text.count("\n"), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
            for name, text in configs.items()]
    frame = pd.DataFrame(rows)
    frame.attrs["rules"] = rules.summary()
    return frame


def deploy_summary(platform: Platform, report: DeployReport, pull: PullResult | None) -> pd.DataFrame:
    """One table an operator reads last: what runs, where the endpoint is, whether a pull worked."""
    local = isinstance(platform, LocalPlatform)
    rows = [{"item": "result", "value": report.verdict()},
            {"item": "public endpoint", "value": f"{'http' if local else 'https'}://{platform.endpoint}"},
            {"item": "verification pull",
             "value": pull.verdict() if pull else ("not run (dry run)" if local else "by the pipeline's integration job")}]
    if not report.dry_run:
        status = platform.status()
        rows.append({"item": "stack", "value": status.condition})
        for _, row in status.processes.iterrows():
            details = ", ".join(f"{k}={v}" for k, v in row.items() if k != "component" and k != "log")
            rows.append({"item": row["component"], "value": details})
    if local:
        rows.append({"item": "client configs", "value": str(platform.paths.client_dir)})
    return pd.DataFrame(rows)


def rollback(platform: Platform, *, component: str, revision: str = "", dry_run: bool = True) -> DeployReport:
    """Roll one app back (Cloud Foundry); the local platform has no revisions and says so."""
    if component not in ("registry", "proxy"):
        raise ParameterError(f"parameter 'component' must be registry or proxy, got {component!r}")
    if isinstance(platform, LocalPlatform):
        report = DeployReport(platform="local", dry_run=dry_run, endpoint=platform.endpoint)
        report.steps.append(DeployStep(component, "rollback", "skipped",
                                       "the local platform keeps no revisions; redeploy the previous parameters"))
        return report
    return platform.rollback(component=component, revision=revision, dry_run=dry_run)


def calls_table(platform: Platform) -> pd.DataFrame:
    """CF calls of this run with their request ids (empty on the local platform)."""
    if isinstance(platform, LocalPlatform):
        return pd.DataFrame(columns=["method", "path", "status", "request_id", "sent"])
    return platform.api_calls()
