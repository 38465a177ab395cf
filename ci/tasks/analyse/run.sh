#!/usr/bin/env bash
# Runs both analysis notebooks and renders each as HTML without its code, for people to read.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$here/ci/tasks/lib.sh"
require ENVIRONMENT BUCKET
params="$(task_params)"
status=0
run_notebook cache_usage "$params" -p bucket "$BUCKET" -p s3_endpoint "${S3_ENDPOINT:-}" \
  -p quota_gb "${QUOTA_GB:-0}" -p price_per_gb_month "${PRICE_PER_GB_MONTH:-0}" \
  -r currency "${CURRENCY:-USD}" -p output_dir "$OUT_DIR/tables" || status=$?
# With the mirrors' logs the pulls that reached Docker Hub are exact; without, an upper bound.
mirror_logs=()
[ -d "$BUILD_DIR/mirror-logs" ] && mirror_logs=(-p mirror_logs "$BUILD_DIR/mirror-logs")
run_notebook pull_savings "$params" -p log_sources "$BUILD_DIR/proxy-logs" "${mirror_logs[@]}" \
  -p limit_per_window "${LIMIT_PER_WINDOW:-0}" -p output_dir "$OUT_DIR/tables" || status=$?
# Rendered before the task exits, so the one archive lib.sh packs at exit holds the HTML too.
for name in cache_usage pull_savings; do
  if [ -f "$OUT_DIR/$name.ipynb" ]; then
    python -m jupyter nbconvert --to html --no-input "$OUT_DIR/$name.ipynb" --output-dir "$OUT_DIR" \
      --log-level WARN || status=$?
  fi
done
exit "$status"
