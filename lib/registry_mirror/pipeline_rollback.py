"""What the pipeline's rollback task may undo: only what the failed deploy task of the same build changed.

The deploy task records the droplet the app served before the runbook ran (`snapshot`). When that
deploy fails with `on_failure: cancel`, the runbook has already cancelled back (Cloud Controller puts
back the previous droplet); rolling back then would move the environment one revision further back
than it was before the build. So the rollback task first compares (`decide`): the droplet from before
still serves -> nothing to roll back; no droplet before -> a first deploy, nothing to go back to;
otherwise roll back, and then `confirm` that the droplet from before serves again.

Run as `python -m registry_mirror.pipeline_rollback snapshot|decide|confirm --params P --component C
--record F`; `decide` exits 0 to roll back and NOTHING_TO_ROLL_BACK when there is nothing to do.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DeployError, ParameterError
from .parameters import Settings, load_params_file

NOTHING_TO_ROLL_BACK = 10


@dataclass(frozen=True)
class Served:
    """The droplet an app serves (None: the app or its droplet does not exist)."""
    app: str
    droplet: str | None


@dataclass(frozen=True)
class Decision:
    roll_back: bool
    reason: str


def decide(before: Served, now: Served) -> Decision:
    """Roll back only when this build left the app serving something other than what it served before."""
    if before.droplet is None:
        return Decision(False, f"{now.app} had no droplet before this build (a first deploy): nothing to go back "
                               "to, the failed app is left for debugging")
    if now.droplet == before.droplet:
        return Decision(False, f"{now.app} serves droplet {before.droplet}, as before this build (the deploy "
                               "runbook cancelled back, or changed nothing): nothing to roll back")
    return Decision(True, f"this build changed {now.app} from droplet {before.droplet} to {now.droplet}: "
                          "rolling back to the revision before")


def served(settings: Settings, component: str) -> Served:
    """What `component`'s app serves now, read from the platform's status."""
    from .platforms import platform_for

    if settings.cloudfoundry is None:
        raise ParameterError("the pipeline's rollback guard reads Cloud Foundry apps: params have no cloudfoundry")
    app = settings.cloudfoundry.mirror_app if component == "registry" else settings.cloudfoundry.proxy_app
    rows = platform_for(settings, settings.load_security_rules()).status().processes
    row = rows[rows["component"] == app]
    droplet = None if row.empty or "droplet" not in row else row["droplet"].iloc[0]
    return Served(app, droplet if isinstance(droplet, str) and droplet else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_mirror.pipeline_rollback", description=__doc__)
    parser.add_argument("action", choices=("snapshot", "decide", "confirm"))
    parser.add_argument("--params", required=True, type=Path)
    parser.add_argument("--component", required=True, choices=("registry", "proxy"))
    parser.add_argument("--record", required=True, type=Path, help="the deploy task's before-deploy record")
    args = parser.parse_args(argv)
    now = served(load_params_file(args.params), args.component)
    if args.action == "snapshot":
        args.record.write_text(json.dumps(asdict(now)) + "\n")
        print(f"before this deploy {now.app} serves droplet {now.droplet or '(none)'}")
        return 0
    before = Served(**json.loads(args.record.read_text()))
    if args.action == "decide":
        decision = decide(before, now)
        print(("ROLL BACK: " if decision.roll_back else "NO ROLLBACK: ") + decision.reason)
        return 0 if decision.roll_back else NOTHING_TO_ROLL_BACK
    if now.droplet != before.droplet:
        raise DeployError(f"after the rollback {now.app} serves droplet {now.droplet}, not {before.droplet} as "
                          "before this build: look at the rollback notebook and the app's revisions")
    print(f"{now.app} serves droplet {before.droplet} again, as before this build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
