#!/usr/bin/env bash
# Unit tests and notebook hygiene: fast, no local stack, no network beyond loopback.
set -euo pipefail
cd "$(dirname "$0")/../../.."
python -m pytest tests/unit ${PYTEST_ARGS:-}
