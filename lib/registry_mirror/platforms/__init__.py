"""Platforms: where the mirror runs. `platform_for` opens the one the parameters name (registry.py);
every platform offers the same `Platform` protocol (base.py). The helpers below are what the deploy
and rollback runbooks call on whichever platform they hold.

    base          the Platform protocol, PlatformStatus
    registry      platforms by name
    local/        the whole topology on this machine, real processes on loopback
    cloudfoundry/ Cloud Foundry through the CC v3 API
"""
from __future__ import annotations

import hashlib

import pandas as pd

from ..client_pull import PullResult
from ..deploy_report import DeployReport
from ..errors import ParameterError
from ..parameters import Settings
from ..security_rules import SecurityRules
from .base import COMPONENTS, Platform, PlatformStatus
from .registry import platform_for

SAMPLE_IMAGE = "docker.io/library/hello:latest"


def check_component(component: str, settings: Settings) -> str:
    """Refuse a component the platform the parameters name does not deploy on its own, before anything
    is opened or changed."""
    if component not in COMPONENTS:
        raise ParameterError(f"parameter 'component' must be one of {', '.join(COMPONENTS)}, got {component!r}")
    platform = platform_for(settings, settings.load_security_rules())
    if component not in platform.components:
        raise ParameterError(f"the {platform.name} platform deploys only {', '.join(platform.components)}: "
                             f"parameter 'component' cannot be {component!r}")
    return component


def verify_pull(platform: Platform, *, image: str = SAMPLE_IMAGE, dry_run: bool = False) -> PullResult | None:
    """Pull `image` by its docker.io name through the public endpoint, as a user's client would; None
    where this machine is not a client the platform admits (the pipeline's integration job pulls)."""
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
    rows = [{"item": "result", "value": report.verdict()},
            {"item": "public endpoint", "value": platform.public_url},
            {"item": "verification pull",
             "value": pull.verdict() if pull else ("not run (dry run)" if report.dry_run
                                                   else "by the pipeline's integration job")}]
    if not report.dry_run:
        status = platform.status()
        rows.append({"item": "state", "value": status.condition})
        for _, row in status.processes.iterrows():
            # Marks, not True/False: "running ✔, ready ✘" reads at a glance.
            details = ", ".join(f"{str(k).replace('_', ' ')} {_MARKS[bool(v)] if pd.api.types.is_bool(v) else v}"
                                for k, v in row.items() if k not in ("component", "log"))
            rows.append({"item": row["component"], "value": details})
    return pd.DataFrame(rows)


_MARKS = {True: "\u2714", False: "\u2718"}


def rollback(platform: Platform, *, component: str, revision: str = "", dry_run: bool = True) -> DeployReport:
    """Roll one app back: cancel its active deployment, else deploy `revision` (default: the previous)."""
    if component not in ("registry", "proxy"):
        raise ParameterError(f"parameter 'component' must be registry or proxy, got {component!r}")
    return platform.rollback(component=component, revision=revision, dry_run=dry_run)


def calls_table(platform: Platform) -> pd.DataFrame:
    """Platform API calls of this run with their request ids (empty where there is no API)."""
    return platform.api_calls()


__all__ = ["COMPONENTS", "Platform", "PlatformStatus", "SAMPLE_IMAGE", "calls_table", "check_component",
           "config_overview", "deploy_summary", "platform_for", "rollback", "verify_pull"]
