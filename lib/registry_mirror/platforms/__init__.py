"""Choose the platform the parameters name. Both platforms offer deploy/preflight/status/down."""
from __future__ import annotations

import hashlib

import pandas as pd

from .cloudfoundry.platform import CloudFoundryPlatform
from ..client_pull import PullResult
from ..deploy_report import DeployReport
from ..errors import ParameterError
from .local import LocalPlatform
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
    if not isinstance(platform, LocalPlatform):
        return None
    return platform.verification_pull(image, dry_run=dry_run)


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
        if local:
            rows.append({"item": "stack", "value": status.condition})
            status = status.processes
        for _, row in status.iterrows():
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
        return platform.rollback(component=component, revision=revision, dry_run=dry_run)
    return platform.rollback(component=component, revision=revision or None, dry_run=dry_run)  # type: ignore[arg-type]


def calls_table(platform: Platform) -> pd.DataFrame:
    """CF calls of this run with their request ids (empty on the local platform)."""
    if isinstance(platform, LocalPlatform):
        return platform.api_calls()
    if platform._session is None:
        return pd.DataFrame(columns=["method", "path", "status", "request_id", "sent"])
    return pd.DataFrame([vars(c) for c in platform.session.calls])
