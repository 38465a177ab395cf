"""What every platform offers the runbooks: the `Platform` protocol and the one `PlatformStatus` type.

A platform is one folder under `platforms/` (its implementation, its policy checks, its triage
evidence) plus one `register()` call in `platforms/registry.py`'s list. Runbooks, the CLI, checks and
incidents talk to a platform only through this protocol; nothing outside the registry asks which
kind of platform it is.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pandas as pd

if TYPE_CHECKING:
    from ..checks.report import PolicyCheck
    from ..client_pull import PullResult
    from ..deploy_report import DeployReport
    from ..incidents.triage import Facts, Finding
    from ..parameters import Settings
    from ..preflight import PreflightReport
    from ..rendering import ClientConfigs
    from ..security_rules import SecurityRules

# Components a deploy, rollback or scale may name. "all" is the whole stack.
COMPONENTS = ("all", "registry", "proxy")


@dataclass(frozen=True)
class PlatformStatus:
    """Which state the deployment is in (one line whose first word is the state: RUNNING, DEGRADED,
    STOPPED, NOT DEPLOYED, GONE, DEPLOY FAILED, ...), then one row per process or app (data)."""

    condition: str
    processes: pd.DataFrame

    @property
    def healthy(self) -> bool:
        return self.condition.startswith("RUNNING")

    def _repr_html_(self) -> str:
        return f"<p><b>{self.condition}</b></p>" + self.processes.to_html(index=False)

    def __repr__(self) -> str:
        table = self.processes.to_string(index=False) if not self.processes.empty else ""
        return f"{self.condition}\n{table}".rstrip()


class TriageEvidence(Protocol):
    """One walk's evidence gatherer: the findings of one layer of the chain, given what is known so far."""

    def new_facts(self) -> Facts:
        """Empty facts that already say what this platform is like (a brokered S3, network policies)."""

    def check(self, layer: str, facts: Facts) -> list[Finding]: ...


class FaultLibrary(Protocol):
    """Faults drill.ipynb can inject for real on a platform, and undo by deploying again."""

    names: tuple[str, ...]

    def catalogue(self) -> pd.DataFrame: ...

    def inject(self, fault: str, *, dry_run: bool) -> str: ...

    def active(self) -> list[str]: ...

    def undo(self, *, dry_run: bool) -> str: ...


CheckFn = Callable[[], "PolicyCheck"]


@runtime_checkable
class Platform(Protocol):
    """A place the mirror runs. Every method is idempotent; every mutating one takes `dry_run`, which
    runs the same code path and records what it would do without doing it."""

    name: str  # the registered name, as params' `platform:` gives it
    settings: Settings
    rules: SecurityRules
    # Components this platform deploys separately (the local stack deploys only "all").
    components: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        """host[:port] of the public endpoint."""

    @property
    def public_url(self) -> str:
        """The public endpoint as a URL (scheme included)."""

    def preflight(self) -> PreflightReport: ...

    def deploy(self, *, dry_run: bool = False, component: str = "all",
               replace_mirrors: bool = False) -> DeployReport:
        """Bring the platform to what the parameters say. `replace_mirrors`: new mirror instances even
        when nothing changed (one at a time, each healthy before an old one leaves)."""

    def status(self) -> PlatformStatus: ...

    def down(self, *, dry_run: bool = False) -> DeployReport:
        """Stop every part; keep data (the bucket, the cache, the apps' revisions)."""

    def rollback(self, *, component: str, revision: str = "", dry_run: bool = True) -> DeployReport:
        """Cancel an active deployment, else deploy `revision` (default: the previous one). A platform
        that keeps no revisions says so in a skipped step."""

    def cancel_deployments(self, *, dry_run: bool = False) -> DeployReport:
        """Cancel every active deployment (CC puts back what served before); nothing active: a no-op."""

    def scale(self, *, component: str, instances: int, dry_run: bool = False) -> DeployReport:
        """Run `instances` of `component` now; the parameters still say what the next deploy brings."""

    def rendered_configs(self) -> dict[str, str]:
        """Every config this platform would deploy, by name (may hold private ranges: show digests)."""

    def client_configs(self) -> ClientConfigs: ...

    def usage(self) -> str:
        """How a user points a client at the endpoint (what `python -m registry_mirror endpoint` prints)."""

    def verification_pull(self, image: str, *, dry_run: bool = False) -> PullResult | None:
        """Pull `image` through the public endpoint from this machine; None when this machine is not a
        client the platform admits (then the pipeline's integration job pulls) or on a dry run."""

    def policy_checks(self, *, public_url: str = "", image: str = "") -> Mapping[str, CheckFn]:
        """verify_policies' checks by id (checks/catalogue.py lists them): each a call that proves one."""

    def triage_evidence(self, *, probe_image: str, recent_minutes: float, stuck_minutes: float,
                        public_url: str = "") -> TriageEvidence:
        """A fresh evidence gatherer for one walk of incident triage."""

    def remedy(self, name: str, *, scale_to: int = 0, dry_run: bool = False) -> str:
        """Carry out one remedy of incidents/remedies.py (already gated there); what was or would be done.
        A remedy with no form here raises ParameterError."""

    def faults(self) -> FaultLibrary:
        """The faults a drill may inject here; ParameterError on a platform where drills cannot run."""

    def api_calls(self) -> pd.DataFrame:
        """The platform API calls this run made (method, path, status, request_id, sent); empty if none."""

    def access_logs(self, folder: str, *, since_ns: int = 0) -> tuple[list[str], list[str]]:
        """Log files holding the security proxy's access lines and the mirrors' JSON lines (for the
        usage ledger): where the platform keeps them, or written into `folder` from its log store."""
