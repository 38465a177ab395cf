"""Choose the platform the parameters name. Both platforms offer deploy/preflight/status/down."""
from __future__ import annotations

import hashlib

import pandas as pd

from .client_pull import PullResult, pull_with_skopeo
from .deploy_report import DeployReport
from .errors import ParameterError
from .local_platform import LocalPlatform
from .parameters import Settings
from .security_rules import SecurityRules

COMPONENTS = ("all", "registry", "proxy")


def platform_for(settings: Settings, rules: SecurityRules) -> LocalPlatform:
    if settings.platform == "local":
        return LocalPlatform(settings, rules)
    raise ParameterError("platform 'cloudfoundry' cannot be driven yet: the Cloud Foundry platform is "
                         "tracked in issue 3; use params/local.yaml")


def check_component(component: str, settings: Settings) -> str:
    if component not in COMPONENTS:
        raise ParameterError(f"parameter 'component' must be one of {', '.join(COMPONENTS)}, got {component!r}")
    if settings.platform == "local" and component != "all":
        raise ParameterError("the local platform deploys the whole stack: use component 'all'")
    return component


SAMPLE_IMAGE = "docker.io/library/hello:latest"


def verify_pull(platform: LocalPlatform, *, image: str = SAMPLE_IMAGE, dry_run: bool = False) -> PullResult | None:
    """Pull `image` by its docker.io name through the public endpoint, as a user's client would."""
    if dry_run:
        return None
    return pull_with_skopeo(image, registries_conf=platform.client_configs().registries_conf)


def config_overview(configs: dict[str, str], rules: SecurityRules) -> pd.DataFrame:
    """Rendered configs by name, size and digest: safe to show even where they hold private ranges."""
    rows = [{"config": name, "lines": text.count("\n"), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
            for name, text in configs.items()]
    frame = pd.DataFrame(rows)
    frame.attrs["rules"] = rules.summary()
    return frame


def deploy_summary(platform: LocalPlatform, report: DeployReport, pull: PullResult | None) -> pd.DataFrame:
    """One table an operator reads last: what runs, where the endpoint is, whether a pull worked."""
    rows = [{"item": "result", "value": report.verdict()},
            {"item": "public endpoint", "value": f"http://{platform.endpoint}"},
            {"item": "verification pull", "value": pull.verdict() if pull else "not run (dry run)"}]
    status = platform.status()
    for _, row in status.iterrows():
        rows.append({"item": row["component"], "value": f"pid {row['pid']}, running={row['running']}"})
    rows.append({"item": "client configs", "value": str(platform.paths.client_dir)})
    return pd.DataFrame(rows)
