#!/usr/bin/env bash
# Ledger update and plan (and, when the job asks, eviction) with retention.ipynb; the verdict line is
# kept beside the notebook for the Slack message.
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$here/ci/tasks/lib.sh"
require ENVIRONMENT BUCKET
params="$(task_params)"
status=0
run_notebook retention "$params" -p bucket "$BUCKET" -p s3_endpoint "${S3_ENDPOINT:-}" \
  -r budget "${BUDGET:-0}" -p evict_after_days "${EVICT_AFTER_DAYS:-0}" \
  -p protect_days "${PROTECT_DAYS:-1}" \
  -p price_per_gb_month "${PRICE_PER_GB_MONTH:-0}" -r currency "${CURRENCY:-USD}" -p update_ledger True \
  -p dry_run "$(bool "${DRY_RUN:-true}")" -p confirm_eviction "$(bool "${CONFIRM_EVICTION:-false}")" \
  -p output_dir "$OUT_DIR/tables" || status=$?
# The lines the notebook read from Log Cache are kept for the savings report too: Log Cache holds only
# recent lines, and nothing else writes the proxy-logs and mirror-logs resources the report job reads.
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
for kind in proxy mirror; do
  read_lines="$OUT_DIR/tables/logs/$kind.log"
  # Always one file, empty on a quiet day: the put takes exactly one, and "no requests" is an answer.
  if [ -d "$BUILD_DIR/$kind-logs" ]; then
    if [ -f "$read_lines" ]; then gzip -c "$read_lines"; else gzip -c </dev/null; fi \
      > "$BUILD_DIR/$kind-logs/$ENVIRONMENT-$stamp.log.gz"
  fi
done
if [ -f "$OUT_DIR/tables/retention_verdict.txt" ]; then
  cp "$OUT_DIR/tables/retention_verdict.txt" "$OUT_DIR/retention-verdict.txt"
else
  echo "registry mirror: the retention run failed before its plan; see the build" > "$OUT_DIR/retention-verdict.txt"
fi
exit "$status"
