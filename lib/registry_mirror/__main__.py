"""Small command line for the Makefile:
`python -m registry_mirror {status,down,endpoint,build-registry} [--params FILE ...]`, and for the
pipeline's tasks `task-params --params FILE --out FILE [--security-rules FILE] [--image-digest-file FILE]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ParameterError, RunbookError
from .parameters import load_params_file
from .pipeline_params import write_task_params
from .platforms import platform_for
from .registry_build import build_registry, uses_debian_package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_mirror")
    parser.add_argument("command", choices=["status", "down", "endpoint", "build-registry", "task-params"])
    parser.add_argument("--params", action="append", help="params file (build-registry takes several)")
    parser.add_argument("--out", type=Path, help="task-params: where to write the derived params file")
    parser.add_argument("--security-rules", type=Path, help="task-params: the private rules file")
    parser.add_argument("--image-digest-file", type=Path, help="task-params: the registry-image resource's digest")
    args = parser.parse_args(argv)
    files = args.params or ["params/local.yaml"]
    try:
        if args.command == "task-params":
            if args.out is None:
                raise ParameterError("task-params needs --out")
            print(write_task_params(Path(files[0]), args.out, security_rules=args.security_rules,
                                    image_digest_file=args.image_digest_file))
            return 0
        if args.command == "build-registry":
            # Every registry version a params file names, so the pin lives in params alone.
            for version in sorted({load_params_file(f).registry.version for f in files}):
                if not uses_debian_package(version):
                    build = build_registry(version)
                    print(f"registry {version}: {build.binary} (sha256 {build.sha256[:16]}...)")
            return 0
        settings = load_params_file(files[0])
        platform = platform_for(settings, settings.load_security_rules())
        if args.command == "status":
            status = platform.status()
            print(status if hasattr(status, "condition") else status.to_string(index=False))
        elif args.command == "endpoint":
            print(platform.usage())  # type: ignore[union-attr]
        else:
            print(platform.down())
    except RunbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
