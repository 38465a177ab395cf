"""The first thing every runbook shows: the answer, then what it was asked.

`open_summary` (called by the validating cell, so it is the notebook's first output) shows a box
with the verdict (pending until the run reaches it), the environment and platform, the time, what
was run, the next command, and the effective parameters with secrets and the private allow-list
masked. `RunbookSummary.conclude` fills in the verdict: Jupyter updates the box in place (a display
id), so the executed notebook and its HTML export open on the answer. Headless, papermill shows no
cell output; the verdict line also goes to the terminal papermill runs in, and a failing cell says
its one sentence there before papermill's traceback (`install_failure_line`).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .progress import to_terminal
from .yaml_files import one_line

# Keys whose values are never shown, wherever they sit in the parameters.
SECRET_WORDS = ("password", "secret", "token", "access_key", "secret_key", "accesskey")
PRIVATE_KEYS = ("security_rules",)  # the allow-list is private: counted, never listed

# What to run next, per runbook and outcome ({params}: the params file this run was given).
NEXT = {
    "deploy.ipynb": ("papermill notebooks/verify_policies.ipynb out.ipynb -f {params}",
                     "papermill notebooks/incident_triage.ipynb out.ipynb -f {params}"),
    "incident_triage.ipynb": ("nothing: the chain is healthy (after a remedy: "
                              "papermill notebooks/verify_policies.ipynb out.ipynb -f {params})",
                              "papermill notebooks/incident_triage.ipynb out.ipynb -f {params} -p apply_remedy True "
                              "(the remedy above; -p dry_run True first shows what it does), or "
                              "papermill notebooks/rollback.ipynb out.ipynb -f {params} -p component registry"),
    "drill.ipynb": ("papermill notebooks/incident_triage.ipynb out.ipynb -f {params} (find the fault)",
                    "papermill notebooks/drill.ipynb out.ipynb -f {params} -p undo True"),
    "verify_policies.ipynb": ("nothing: the policies hold",
                              "papermill notebooks/incident_triage.ipynb out.ipynb -f {params}, then "
                              "papermill notebooks/deploy.ipynb out.ipynb -f {params}"),
    "rollback.ipynb": ("papermill notebooks/verify_policies.ipynb out.ipynb -f {params}",
                       "papermill notebooks/incident_triage.ipynb out.ipynb -f {params}"),
    "teardown.ipynb": ("nothing: to deploy again, papermill notebooks/deploy.ipynb out.ipynb -f {params}",
                       "papermill notebooks/teardown.ipynb out.ipynb -f {params} -p confirm_teardown True"),
    "pull_savings.ipynb": ("papermill notebooks/cache_usage.ipynb out.ipynb -f {params}",
                           "papermill notebooks/pull_savings.ipynb out.ipynb -f {params} -p log_sources <files>"),
    "retention.ipynb": ("papermill notebooks/cache_usage.ipynb out.ipynb -f {params}",
                        "papermill notebooks/retention.ipynb out.ipynb -f {params} -p dry_run True"),
    "cache_usage.ipynb": ("papermill notebooks/pull_savings.ipynb out.ipynb -f {params}",
                          "papermill notebooks/cache_usage.ipynb out.ipynb -f {params} -p quota_gb <GB>"),
}

_CURRENT: list[RunbookSummary] = []  # the open summary a failing cell concludes


@dataclass
class RunbookSummary:
    notebook: str
    environment: str
    platform: str
    params_file: str  # the -f file papermill was given, else params/<environment>.yaml
    parameters: dict[str, Any]  # effective, masked
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    verdict: str = ""
    ok: bool | None = None
    next_step: str = ""
    _display: Any = None

    @property
    def headline(self) -> str:
        return self.verdict or "RUNNING: the verdict appears here when the run reaches it"

    def conclude(self, verdict: str, *, ok: bool | None = None, next_step: str = "") -> str:
        """Fill in the verdict (first line of `verdict`), update the box, tell the terminal; returns it."""
        self.verdict = one_line(verdict.strip().splitlines()[0] if verdict.strip() else verdict)
        self.ok = ok if ok is not None else _judge(self.verdict)
        good, bad = NEXT.get(self.notebook, ("", ""))
        planned = (f"the same papermill command with the gate open (dry_run False, or the confirm_* parameter "
                   f"True) applies this plan; parameters: papermill --help-notebook notebooks/{self.notebook}")
        chosen = {True: good, False: bad, None: planned}[self.ok]
        self.next_step = next_step or chosen.format(params=self.params_file)
        if self._display is not None:
            self._display.update(self)
        to_terminal(f"{self.notebook}: {self.verdict}" + (f" Next: {self.next_step}" if self.next_step else ""))
        return self.verdict

    def __repr__(self) -> str:
        lines = [self.headline, f"{self.environment} on {self.platform}, {self.notebook} "
                 f"-f {self.params_file}, started {self.started:%Y-%m-%d %H:%M:%S} UTC"]
        if self.next_step:
            lines.append(f"next: {self.next_step}")
        lines.append(f"parameters: papermill --help-notebook notebooks/{self.notebook}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = {True: "#1b7f3b", False: "#b3261e", None: "#8a6d00"}[self.ok if self.verdict else None]
        mark = {True: "&#10004;", False: "&#10008;", None: "&#9679;"}[self.ok if self.verdict else None]
        rows = "".join(f"<tr><td style='text-align:left;padding-right:1em'>{html.escape(k)}</td>"
                       f"<td style='text-align:left'><code>{html.escape(_show(v))}</code></td></tr>"
                       for k, v in self.parameters.items())
        next_html = (f"<div style='margin-top:.4em'><b>Next:</b> <code>{html.escape(self.next_step)}</code></div>"
                     if self.next_step else "")
        return (f"<div style='border-left:6px solid {colour};padding:.6em 1em;margin:.3em 0;"
                f"background:#f7f7f7;max-width:100%;white-space:normal'>"
                f"<div data-runbook-verdict style='font-size:1.25em;font-weight:bold;color:{colour};"
                f"overflow-wrap:anywhere'>"
                f"{mark} {html.escape(self.headline)}</div>"
                f"<div style='margin-top:.3em'><b>{html.escape(self.environment)}</b> on "
                f"<b>{html.escape(self.platform)}</b> &middot; {html.escape(self.notebook)} with "
                f"<code>-f {html.escape(self.params_file)}</code> &middot; started "
                f"{self.started:%Y-%m-%d %H:%M:%S} UTC</div>{next_html}"
                f"<details style='margin-top:.4em'><summary>Effective parameters (secrets and allow-list masked); "
                f"all of them: <code>papermill --help-notebook notebooks/{html.escape(self.notebook)}</code>"
                f"</summary><table>{rows}</table></details></div>")


def open_summary(notebook: str, settings: Any, options: dict[str, Any]) -> RunbookSummary:
    """The summary box of this run, shown now (the verdict pending); `conclude` fills it in."""
    from .papermill_files import check_papermill_files
    from .readable import configure_display

    from .parameters import PROJECT_ROOT

    files = check_papermill_files()
    params_file = f"params/{settings.environment}.yaml"
    if files:
        last = files[-1].resolve()
        params_file = str(last.relative_to(PROJECT_ROOT)) if last.is_relative_to(PROJECT_ROOT) else str(last)
    parameters = {**options, **flatten(settings.model_dump(mode="json"))}
    summary = RunbookSummary(notebook, settings.environment, settings.platform, params_file, mask(parameters))
    _CURRENT[:] = [summary]
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return summary
    if get_ipython() is not None:  # pandas' display options are the kernel's own, never a library caller's
        configure_display()
        summary._display = display(summary, display_id=True)
        install_failure_line()
    return summary


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in PRIVATE_KEYS:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def mask(parameters: dict[str, Any]) -> dict[str, Any]:
    """Secrets shown as set or not, the allow-list by its size; the rest as given."""
    shown: dict[str, Any] = {}
    for key, value in parameters.items():
        leaf = key.rsplit(".", 1)[-1].lower()
        if leaf in PRIVATE_KEYS and isinstance(value, dict):
            shown[key] = ", ".join(f"{len(v)} {k}" for k, v in value.items() if isinstance(v, list)) + " (hidden)"
        elif any(word in leaf for word in SECRET_WORDS) and not leaf.endswith("_env") and value:
            shown[key] = "*** (set)"
        else:
            shown[key] = value
    return shown


def install_failure_line() -> None:
    """A failing cell says its one sentence first: in the summary box and on the terminal, before the
    traceback that papermill prints at the end."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "_runbook_failure_line", False):
        return

    def handler(self: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> Any:
        sentence = one_line(str(value)) or etype.__name__
        if _CURRENT and not _CURRENT[0].verdict:
            _CURRENT[0].conclude(f"FAILED: {sentence}", ok=False,
                                 next_step="correct what the sentence names, then run the same command again")
        else:
            to_terminal(f"FAILED: {sentence}")
        return self.showtraceback((etype, value, tb), tb_offset=tb_offset)

    shell.set_custom_exc((Exception,), handler)
    shell._runbook_failure_line = True


def _judge(verdict: str) -> bool | None:
    head = verdict.split(":", 1)[0].upper()
    if any(word in head for word in ("DRY RUN", "PLAN", "NOT APPLIED")):
        return None
    if head.startswith("NOT ") or any(word in head for word in ("FAIL", "BROKEN", "ERROR", "DEGRADED", "REFUSED")):
        return False
    return True


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return "null" if value is None else str(value)
