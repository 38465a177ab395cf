#!/usr/bin/env bash
# Runs notebooks/deploy.ipynb for one component. Secrets stay in the environment: the runbook reads
# them by name; nothing secret is passed with -p or written to the derived params file.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$here/ci/tasks/lib.sh"
require ENVIRONMENT COMPONENT
params="$(task_params)"
# What served before this build: the rollback task (on_failure) undoes only what this build changed.
python -m registry_mirror.pipeline_rollback snapshot --params "$params" --component "$COMPONENT" \
  --record "$OUT_DIR/before-deploy.json"
run_notebook deploy "$params" -p component "$COMPONENT" -p dry_run "$(bool "${DRY_RUN:-false}")"
