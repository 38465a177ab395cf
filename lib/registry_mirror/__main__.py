"""The command line the Makefile and the pipeline's tasks use; each subcommand takes only its own flags.

    python -m registry_mirror status         [--params FILE]     one line of state, then each process or app
    python -m registry_mirror endpoint       [--params FILE]     where the mirror answers and how to point clients
    python -m registry_mirror down           [--params FILE] [--confirm]   stop everything, keep data
    python -m registry_mirror build-registry  --params FILE ...  build each registry version the files pin
    python -m registry_mirror build-test-tools                   build the pinned Go clients the tests run
    python -m registry_mirror build-blob-fanout                  build the proxy's blob-fanout from lib/blob-fanout
    python -m registry_mirror task-params     --params FILE --out FILE [--security-rules FILE]
                                              [--image-digest-file FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .blob_fanout import fanout_binary, source_version
from .errors import ParameterError, RunbookError
from .parameters import load_params_file
from .pipeline_params import write_task_params
from .platforms.registry import platform_for
from .go_tools import PINNED, build_tool
from .registry_build import build_registry, uses_debian_package

DEFAULT_PARAMS = "params/local.yaml"


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        print(args.run(args))
    except RunbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def status(args: argparse.Namespace) -> str:
    return repr(_platform(args).status())


def endpoint(args: argparse.Namespace) -> str:
    return _platform(args).usage()


def down(args: argparse.Namespace) -> str:
    report = _platform(args).down(dry_run=not args.confirm)
    if args.confirm:
        return repr(report)
    return f"{report!r}\nnothing was stopped: this was the plan; add --confirm to stop it"


def build_registries(args: argparse.Namespace) -> str:
    # Every registry version a params file names, so the pin lives in params alone.
    lines = []
    for version in sorted({load_params_file(f).registry.version for f in args.params}):
        if not uses_debian_package(version):
            build = build_registry(version)
            lines.append(f"registry {version}: {build.binary} (sha256 {build.sha256[:16]}...)")
    return "\n".join(lines) or "every params file runs Debian's registry package: nothing to build"


def build_test_tools(args: argparse.Namespace) -> str:
    # The OCI conformance suite and crane, at the versions go_tools.PINNED names.
    builds = {name: build_tool(name) for name in PINNED}
    return "\n".join(f"{name} {b.version}: {b.binary} (sha256 {b.sha256[:16]}...)" for name, b in builds.items())


def build_fanout(args: argparse.Namespace) -> str:
    binary = fanout_binary(log=lambda line: print(line, file=sys.stderr))
    return f"blob-fanout {source_version()}: {binary}"


def task_params(args: argparse.Namespace) -> str:
    if not args.params:
        raise ParameterError("task-params needs --params: the environment's params file")
    return str(write_task_params(Path(args.params), args.out, security_rules=args.security_rules,
                                 image_digest_file=args.image_digest_file))


def _platform(args: argparse.Namespace) -> Any:
    settings = load_params_file(args.params or DEFAULT_PARAMS)
    return platform_for(settings, settings.load_security_rules())


class _Once(argparse.Action):
    """A flag that may be given once: a second --params would otherwise silently win or be ignored."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise ParameterError(f"{option_string} was given twice; this command takes one params file")
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry_mirror",
                                     description="Operate the registry mirror from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Any, help: str, *, params: str = "one") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        if params == "one":
            sub.add_argument("--params", action=_Once, help=f"params file (default {DEFAULT_PARAMS})")
        elif params == "several":
            sub.add_argument("--params", action="append", required=True, help="params file; give several")
        return sub

    command("status", status, "the deployment's state in one line, then each process or app")
    command("endpoint", endpoint, "where the mirror answers and how to point skopeo, podman or docker at it")
    down_cmd = command("down", down, "stop every part of the deployment; data and cache are kept")
    down_cmd.add_argument("--confirm", action="store_true", help="really stop it (without: show the plan)")
    command("build-registry", build_registries, "build each registry version the params files pin",
            params="several")
    command("build-test-tools", build_test_tools, "build the pinned Go clients the tests run (OCI conformance, crane)",
            params="none")
    command("build-blob-fanout", build_fanout, "build the proxy's blob-fanout (Go) from lib/blob-fanout",
            params="none")
    task = command("task-params", task_params, "the params file a pipeline task runs the runbook with")
    task.add_argument("--out", type=Path, required=True, help="where to write the derived params file")
    task.add_argument("--security-rules", type=Path, help="the private rules file")
    task.add_argument("--image-digest-file", type=Path, help="the registry-image resource's digest file")
    return parser


if __name__ == "__main__":
    sys.exit(main())
