#!/usr/bin/env bash
# Runs notebooks/rollback.ipynb, confirmed: this task exists to roll back. After a failed deploy of
# the same build (its `deploy-notebooks` output given), it rolls back only what that deploy changed:
# with `on_failure: cancel` the deploy runbook has usually cancelled back already, and a rollback
# then would overshoot to the revision before the one that served before the build.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$here/ci/tasks/lib.sh"
require ENVIRONMENT COMPONENT
params="$(task_params)"
record="$BUILD_DIR/deploy-notebooks/before-deploy.json"
guard=()
if [ -z "${REVISION:-}" ] && [ -d "$BUILD_DIR/deploy-notebooks" ] && [ ! -f "$record" ]; then
  # The deploy task stopped before it recorded what served, so before it could change anything.
  echo "NO ROLLBACK: the deploy failed before it touched the environment (no before-deploy.json)" \
    | tee "$OUT_DIR/rollback-decision.txt"
  exit 0
elif [ -z "${REVISION:-}" ] && [ -f "$record" ]; then
  guard=(--params "$params" --component "$COMPONENT" --record "$record")
  decision=0
  python -m registry_mirror.pipeline_rollback decide "${guard[@]}" >"$OUT_DIR/rollback-decision.txt" || decision=$?
  cat "$OUT_DIR/rollback-decision.txt"
  [ "$decision" -eq 10 ] && exit 0
  [ "$decision" -ne 0 ] && exit "$decision"
elif [ -z "${REVISION:-}" ]; then
  echo "no record of what a deploy changed: rolling back to the revision before the deployed one"
fi
run_notebook rollback "$params" -p component "$COMPONENT" -p revision "${REVISION:-}" -p confirm_rollback True
if [ "${#guard[@]}" -gt 0 ]; then
  python -m registry_mirror.pipeline_rollback confirm "${guard[@]}"
fi
