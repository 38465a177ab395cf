#!/usr/bin/env bash
# Unit tests and notebook hygiene: fast, no local stack, no network beyond loopback.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# The checked commit's library, not one baked into the image (which holds dependencies only).
export PYTHONPATH="$PWD/lib"
if [ -z "${HOME:-}" ] || [ ! -w "${HOME:-/nonexistent}" ]; then
  HOME="$(mktemp -d)"  # the suite's notebook tests start kernels, which write under HOME
  export HOME
fi
python -m pytest tests/unit ${PYTEST_ARGS:-}
