# Shared by the task scripts (sourced). The working directory of a task is the build's folder, with
# each declared input and output in a subfolder; `src` is this repository at the commit the build got.
# Concourse gives a task only its params and ATC_EXTERNAL_URL (no BUILD_* variables), so a record's
# name is made here from what the build ran.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="$(pwd)"
TASK_NAME="$(basename "$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)")"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/notebooks}"
mkdir -p "$OUT_DIR"
# The library, templates/ and params/ of the checked commit: the image holds dependencies only.
export PYTHONPATH="$ROOT/lib"
# Jupyter, IPython and matplotlib write under HOME; a task's user may have none, or none it can write.
if [ -z "${HOME:-}" ] || [ ! -w "${HOME:-/nonexistent}" ]; then
  HOME="$(mktemp -d)"
  export HOME
fi

require() {
  for name in "$@"; do
    if [ -z "${!name:-}" ]; then
      echo "task: parameter $name is required (see the task.yml)" >&2
      exit 2
    fi
  done
}

bool() {
  case "$1" in true|True|1|yes) echo True ;; *) echo False ;; esac
}

# The params file for this run: params/<env>.yaml (or PARAMS_FILE) with the private rules and, when
# the registry-image input is there, its digest. Values only; secrets stay in the environment.
task_params() {
  local source="${PARAMS_FILE:-$ROOT/params/$ENVIRONMENT.yaml}"
  local args=(task-params --params "$source" --out "$OUT_DIR/params.yaml")
  [ -f "$BUILD_DIR/security-rules/security-rules.yaml" ] && args+=(--security-rules "$BUILD_DIR/security-rules/security-rules.yaml")
  [ -f "$BUILD_DIR/registry-image/digest" ] && args+=(--image-digest-file "$BUILD_DIR/registry-image/digest")
  # `|| return`: this runs in a command substitution, where `set -e` does not stop the function.
  (cd "$ROOT" && python -m registry_mirror "${args[@]}") >/dev/null || return
  echo "$OUT_DIR/params.yaml"
}

# The name of this build's record: what ran (task, environment, component), the versions it ran
# (the commit the git resource wrote to .git/ref, the registry image's digest) and when, so no
# build's archive replaces another's in the artifacts bucket.
record_name() {
  local ref digest
  ref="$(head -c 12 "$ROOT/.git/ref" 2>/dev/null || git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  digest="$(sed -n 's/^sha256:\(.\{12\}\).*/\1/p' "$BUILD_DIR/registry-image/digest" 2>/dev/null || true)"
  local parts=("$TASK_NAME" "${ENVIRONMENT:-any}")
  [ -n "${COMPONENT:-}" ] && parts+=("$COMPONENT")
  parts+=("src-$ref")
  [ -n "$digest" ] && parts+=("registry-$digest")
  parts+=("$(date -u +%Y%m%dT%H%M%SZ)")
  (IFS=-; echo "${parts[*]}")
}

# One archive per task run (the s3 resource's put refuses a glob matching more than one file), made
# when the task exits, so every notebook, report and table the task wrote is in it, pass or fail.
pack_record() {
  local status=$? packed name
  trap - EXIT
  name="$(record_name)"
  # Packed outside the folder, then moved in: an archive growing inside the folder it reads makes
  # tar fail with "file changed as we read it".
  packed="$(mktemp)"
  if tar -czf "$packed" -C "$OUT_DIR" --exclude='*.tgz' . && mv "$packed" "$OUT_DIR/$name.tgz"; then
    echo "task: record kept as $name.tgz" >&2
  else
    echo "task: could not pack the record" >&2
    [ "$status" -eq 0 ] && status=1
  fi
  exit "$status"
}
trap pack_record EXIT

# papermill one runbook; the executed notebook is kept (and packed at exit) whether it passed or not.
run_notebook() {
  local name="$1" params="$2"
  shift 2
  (cd "$ROOT" && python -m papermill --log-level WARNING --no-progress-bar "notebooks/$name.ipynb" \
     "$OUT_DIR/$name.ipynb" -f "$params" "$@")
}
