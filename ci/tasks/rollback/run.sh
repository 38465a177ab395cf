#!/usr/bin/env bash
# Runs notebooks/rollback.ipynb, confirmed: this task exists to roll back.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$here/ci/tasks/lib.sh"
require ENVIRONMENT COMPONENT
params="$(task_params)"
run_notebook rollback "$params" -p component "$COMPONENT" -p revision "${REVISION:-}" -p confirm_rollback True
