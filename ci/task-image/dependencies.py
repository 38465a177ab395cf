"""Print the project's dependencies (and those of the named extras) from pyproject.toml, one a line,
for `pip install -r`: the task image holds the dependencies only, never the library itself, so a task
runs the library of the commit its `src` input holds."""
from __future__ import annotations

import sys
import tomllib


def main(pyproject: str, *extras: str) -> None:
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    optional = project.get("optional-dependencies", {})
    for requirement in [*project["dependencies"], *(r for extra in extras for r in optional[extra])]:
        print(requirement)


if __name__ == "__main__":
    main(*sys.argv[1:])
