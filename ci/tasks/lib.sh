# Shared by the task scripts (sourced). The working directory of a task is the build's folder, with
# each input and output in a subfolder; `src` is this repository.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="$(pwd)"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/notebooks}"
mkdir -p "$OUT_DIR"

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
  (cd "$ROOT" && python -m registry_mirror "${args[@]}") >/dev/null
  echo "$OUT_DIR/params.yaml"
}

# papermill one runbook; the executed notebook is kept (and packed) whether it passed or not.
run_notebook() {
  local name="$1" params="$2"
  shift 2
  local status=0
  (cd "$ROOT" && python -m papermill --log-level WARNING --no-progress-bar "notebooks/$name.ipynb" \
     "$OUT_DIR/$name.ipynb" -f "$params" "$@") || status=$?
  # Packed outside the folder, then moved in: an archive growing inside the folder it reads makes
  # tar fail with "file changed as we read it".
  local packed
  packed="$(mktemp)"
  tar -czf "$packed" -C "$OUT_DIR" --exclude='*.tgz' . && mv "$packed" "$OUT_DIR/${BUILD_JOB_NAME:-$name}-${BUILD_NAME:-local}.tgz"
  return "$status"
}
