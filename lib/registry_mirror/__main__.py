"""Small command line for the Makefile: `python -m registry_mirror {status,down} [--params FILE]`."""
from __future__ import annotations

import argparse
import sys

from .errors import RunbookError
from .parameters import load_params_file
from .platforms import platform_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_mirror")
    parser.add_argument("command", choices=["status", "down"])
    parser.add_argument("--params", default="params/local.yaml")
    args = parser.parse_args(argv)
    try:
        settings = load_params_file(args.params)
        platform = platform_for(settings, settings.load_security_rules())
        if args.command == "status":
            print(platform.status().to_string(index=False))
        else:
            print(platform.down())
    except RunbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
