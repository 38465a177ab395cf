#!/usr/bin/env bash
# Runs notebooks/verify_policies.ipynb; the JSON results land beside the executed notebook.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$here/ci/tasks/lib.sh"
require ENVIRONMENT
params="$(task_params)"
run_notebook verify_policies "$params" -p results_json "$OUT_DIR/policy-results.json" \
  -p public_url "${PUBLIC_URL:-}" -p check_image "${CHECK_IMAGE:-}"
