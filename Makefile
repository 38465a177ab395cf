# Two commands set up a fresh Debian 12 machine (both idempotent):
#   make demo   bootstrap, then deploy the local stack with the deploy runbook and pull through it
#   make test   bootstrap, then run every test (the nbmake pass included); never touches a stack you run
# The developer loop, once bootstrapped:
#   make test-fast   the tests that need no local stack and no kernel (pytest markers, see pyproject.toml)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := docker-registry nginx skopeo podman iproute2 curl goaccess chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT := .out
PYTEST_ARGS ?=
# Two pytest-xdist workers, one per core: the session stack's tests mostly wait on processes, so the
# rest of the suite runs beside them (tests/conftest.py keeps every stack user on one worker).
WORKERS ?= -n 2 --dist loadgroup

.PHONY: bootstrap apt users venv tools demo test test-fast nbmake nbmake-in-place throwaway-only down status lab \
	lab-prepare clean bench

bootstrap: apt users venv tools

# nginx workers never run as root: a stack run by root runs them as a system user of its own
# (registry-mirror-<8 hex>, no login, no home), which the deploy creates and `make down` removes, so
# one stack's workers cannot reach another's sockets. This only checks the tools for that are there.
# A stack run by anyone else runs its workers as that user and needs none of this.
users:
	@if [ "$$(id -u)" = 0 ] && ! command -v useradd >/dev/null; then \
	  echo "useradd is missing (package passwd): a stack run as root cannot create its nginx workers' user"; \
	  exit 1; \
	fi

# The registry version production pins (and any other a params file names), and the Go clients
# `make test` runs (the OCI conformance suite, crane), built from the Go module proxy into .tools/ once,
# and the proxy's blob-fanout from this checkout's lib/blob-fanout;
# a second run only checks the recorded checksums.
tools: venv
	@$(BIN)/python -m registry_mirror build-registry --params params/production.yaml --params params/local.yaml \
	  --params params/staging.yaml
	@$(BIN)/python -m registry_mirror build-test-tools
	@$(BIN)/python -m registry_mirror build-blob-fanout

# Install only what is missing, so a second run does not touch apt at all.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: bootstrap
	@mkdir -p $(OUT)
	$(BIN)/papermill notebooks/deploy.ipynb $(OUT)/deploy.ipynb -f params/local.yaml --log-level WARNING
	@$(BIN)/python -m registry_mirror endpoint

# pytest exits 5 when it collected nothing: a broken suite, said so here (make itself exits 2 on any
# failed recipe, so whoever runs make cannot tell 5 from other failures).
test: bootstrap
	@status=0; $(BIN)/python -m pytest $(WORKERS) $(PYTEST_ARGS) || status=$$?; \
	  if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests, which is a broken suite" >&2; fi; \
	  exit $$status

# Unit tests, the CF stand-in and in-process seam tests: no local stack, no kernel, no nbmake pass.
FAST_MARKERS := not integration and not notebooks and not nbmake
test-fast: venv
	$(BIN)/python -m pytest -m "$(FAST_MARKERS)" $(WORKERS) $(PYTEST_ARGS)

# Every runbook under nbmake with its default parameters (the local platform, every gate closed), run
# by tests/notebooks/test_nbmake_pass.py in a throwaway copy of the project inside a private network
# namespace, so the default stack's folder and ports are never the ones you use. `make test` runs it too.
nbmake: bootstrap
	$(BIN)/python -m pytest -m nbmake $(PYTEST_ARGS)

# The body of that pass, only ever run inside the throwaway copy: the stack comes up first (`make demo`;
# deploy.ipynb then finds it unchanged) and goes down after, pass or fail.
nbmake-in-place: throwaway-only
	@status=0; $(MAKE) -s -o bootstrap demo && \
	  $(BIN)/python -m pytest --nbmake notebooks/ -p no:cacheprovider -o addopts= -q || status=$$?; \
	  $(BIN)/python -m registry_mirror down --confirm >/dev/null; exit $$status

throwaway-only:
	@[ -n "$(NBMAKE_THROWAWAY)" ] || { echo "nbmake-in-place deploys the default stack where it runs; \
	use make nbmake, which runs it in a throwaway copy" >&2; exit 1; }

status:
	@$(BIN)/python -m registry_mirror status

down:
	@$(BIN)/python -m registry_mirror down --confirm

# An operator's session: the runbook with a params file's values filled in (papermill --prepare-only:
# parameters injected, nothing run), opened in JupyterLab on 127.0.0.1 to step through cell by cell.
#   make lab                                   incident_triage.ipynb with params/local.yaml
#   make lab LAB_NOTEBOOK=drill LAB_ARGS='-p fault mirror-dead'
#   make lab LAB_PORT=8890                     another port when 8888 is taken
# The prepared notebook goes to lab/ (ignored by git), not under .out/: Jupyter Server refuses to
# open anything in a hidden folder, so a URL into .out/ would open only the Launcher.
LAB_NOTEBOOK ?= incident_triage
LAB_PARAMS ?= params/local.yaml
LAB_DIR ?= lab
LAB_ARGS ?=
lab-prepare: venv
	@mkdir -p $(LAB_DIR)
	@$(BIN)/papermill --prepare-only --log-level WARNING --no-progress-bar notebooks/$(LAB_NOTEBOOK).ipynb \
	  $(LAB_DIR)/$(LAB_NOTEBOOK).ipynb -f $(LAB_PARAMS) $(LAB_ARGS)
	@echo "prepared $(LAB_DIR)/$(LAB_NOTEBOOK).ipynb from $(LAB_PARAMS)"

# JupyterLab's own banner names only /lab?token=..., which opens the Launcher; the line this recipe
# prints opens the prepared notebook: root_dir is its folder, so the path is its name, never hidden.
# The port is fixed (no retries), so the printed URL is the one that answers.
LAB_PORT ?= 8888
lab: bootstrap lab-prepare
	@token=$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))'); \
	  echo "open http://127.0.0.1:$(LAB_PORT)/lab/tree/$(LAB_NOTEBOOK).ipynb?token=$$token (Ctrl-C stops JupyterLab)"; \
	  exec $(BIN)/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --ServerApp.port_retries=0 --no-browser \
	    $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) --IdentityProvider.token=$$token \
	    --ServerApp.root_dir=$(abspath $(LAB_DIR))

clean: down
	rm -rf .state $(OUT) lab

bench: bootstrap
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python bench/deploy_overhead.py
	$(BIN)/python bench/blob_throughput.py
	cd bench && ../$(BIN)/python resilience.py
	cd bench && ../$(BIN)/python log_analysis.py
	cd bench && ../$(BIN)/python cache_inventory.py
	cd bench && ../$(BIN)/python triage.py
	cd bench && ../$(BIN)/python lifecycle.py
	cd bench && ../$(BIN)/python stampede.py
	cd bench && ../$(BIN)/python conformance.py
