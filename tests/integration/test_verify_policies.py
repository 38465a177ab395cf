"""verify_policies on the local stack: all checks pass on a good deploy, and each deliberately broken
deployment fails exactly the checks that prove what it broke (plus config drift, since each break is
a hand edit of what runs). After each break the stack is repaired where it was broken: a deploy
re-renders and reloads the proxy; only a break of the mirrors replaces them.

The passing run calls what verify_policies.ipynb's cells call, in-process; the notebook runs under
papermill on a broken stack, where it must exit non-zero and name the check.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.parameters import resolve_project_path, runbook_parameters
from registry_mirror.platforms import platform_for
from registry_mirror.platforms.local.mirrors import mirror_registry_binary, start_mirror_instance
from registry_mirror.platforms.local.nginx import reload_nginx
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.state import StackState
from registry_mirror.checks import verify_policies
from registry_mirror.processes import free_port, stop_process
from registry_mirror.registry_config import registry_config_yaml
from tests.support import first_screen, settings_as_parameters

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
VERIFY_OPTIONS = {"results_json": str, "public_url": str, "check_image": str}  # verify_policies.ipynb's


def test_every_check_passes_on_a_good_deploy_and_the_notebook_says_so(stack: LocalPlatform, tmp_path: Path) -> None:
    """verify_policies.ipynb's cells, in-process, with its defaults and a results file."""
    results = tmp_path / "results.json"
    settings, options = runbook_parameters({**settings_as_parameters(stack.settings), "results_json": str(results),
                                            "public_url": "", "check_image": ""},
                                           notebook="verify_policies.ipynb", options=VERIFY_OPTIONS)
    target = platform_for(settings, settings.load_security_rules())
    report = verify_policies(target, public_url=options["public_url"] or None, image=options["check_image"] or None)
    report.write_json(resolve_project_path(options["results_json"]))
    report.raise_for_failures()
    data = json.loads(results.read_text())
    assert data["ok"] and data["failed"] == []
    statuses = {c["id"]: c["status"] for c in data["checks"]}
    assert {s for s in statuses.values()} <= {"pass", "n/a"}
    assert statuses["network-policy"] == "n/a" and statuses["forged-xff"] == "pass"
    assert report.verdict().startswith("ALL CHECKS PASSED on local")


def _edit_proxy(stack: LocalPlatform, old: str, new: str) -> Callable[[], None]:
    def apply() -> None:
        conf = stack.paths.config / "proxy.conf"
        text = conf.read_text()
        assert old in text
        conf.write_text(text.replace(old, new, 1))
        state = StackState.load(stack.paths.state_file)
        reload_nginx(state.processes["proxy"], conf=conf, prefix=stack.paths.nginx_prefix("proxy"))
    return apply


def _restart_mirrors_with(stack: LocalPlatform, edit: Callable[[dict], None]) -> None:
    state = StackState.load(stack.paths.state_file)
    env = stack.mirror_secret_env(LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False))
    for name in state.mirrors:
        config = stack.configs.mirror_config(name)
        edit(config)
        path = stack.paths.config / f"{name}.yml"
        path.write_text(registry_config_yaml(config))
        stop_process(state.processes[name])
        state.processes[name] = start_mirror_instance(name, executable=_registry(stack), config_file=path, socket_path=stack.paths.mirror_socket(name),
                                                      log=stack.paths.logs / f"{name}.log", secrets=env).record
    state.save(stack.paths.state_file)


def _expose_extra_instance(stack: LocalPlatform) -> None:
    state = StackState.load(stack.paths.state_file)
    name = "mirror-99-0"
    config = stack.configs.mirror_config(name)
    config["http"] = {"addr": f"127.0.0.1:{free_port()}"}
    path = stack.paths.config / f"{name}.yml"
    path.write_text(registry_config_yaml(config))
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    from registry_mirror.processes import start_process
    from registry_mirror.platforms.local.daemons import daemon_env

    state.processes[name] = start_process(name, [_registry(stack), "serve", str(path)], log=stack.paths.logs / f"{name}.log",
                                          env=daemon_env(stack.mirror_secret_env(secrets)))
    state.save(stack.paths.state_file)
    from registry_mirror.processes import tcp_listeners, wait_until

    wait_until(lambda: tcp_listeners(state.processes[name].pid), timeout=30, what="exposed instance listening")


def _registry(stack: LocalPlatform) -> str:
    executable = mirror_registry_binary(stack.settings.registry.version)
    assert executable is not None
    return executable


def _run_unpackaged_binary(stack: LocalPlatform) -> None:
    """Replace one instance with the same registry bytes run from a copy outside the pinned build."""
    state = StackState.load(stack.paths.state_file)
    name = state.mirrors[0]
    rec = state.processes[name]
    copy = stack.paths.root / "unpinned" / "registry"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy2(os.readlink(f"/proc/{rec.pid}/exe"), copy)
    environ = dict(e.split(b"=", 1) for e in open(f"/proc/{rec.pid}/environ", "rb").read().split(b"\0") if b"=" in e)
    env = {k.decode(): v.decode() for k, v in environ.items()}
    stop_process(rec)
    from registry_mirror.processes import start_process, wait_until
    from registry_mirror.platforms.local.mirrors import mirror_healthy

    state.processes[name] = start_process(name, [str(copy), "serve", str(stack.paths.config / f"{name}.yml")],
                                          log=stack.paths.logs / f"{name}.log", env=env)
    state.save(stack.paths.state_file)
    wait_until(lambda: mirror_healthy(stack.paths.mirror_socket(name)), timeout=30, what="unpinned instance")


def _set_redirect(config: dict) -> None:
    config["storage"]["redirect"] = {"disable": False}


BREAKS = {
    "too-broad-real-ip": (lambda s: _edit_proxy(s, "set_real_ip_from unix:;", "set_real_ip_from unix:;\n    set_real_ip_from 127.0.0.0/8;")(),
                          {"forged-xff", "config-matches"}),
    "missing-deny-all": (lambda s: _edit_proxy(s, "default 0;", "default 1;")(), {"denied-by-default", "config-matches"}),
    "denied-range-allowed": (lambda s: _edit_proxy(s, "127.0.0.66/32 0;", "127.0.0.66/32 1;")(), {"denied-listed", "config-matches"}),
    "push-not-blocked": (lambda s: _edit_proxy(s, "default 1;\n        GET 0;", "default 0;\n        GET 0;")(),
                         {"push-refused-proxy", "config-matches"}),
    "redirect-enabled": (lambda s: _restart_mirrors_with(s, _set_redirect), {"no-s3-redirect", "config-matches"}),
    "mirror-on-tcp": (_expose_extra_instance, {"mirror-not-exposed", "config-matches"}),
    "unpinned-registry": (_run_unpackaged_binary, {"image-pinned"}),
    "catalog-open": (lambda s: _edit_proxy(s, "location = /v2/_catalog {", "location = /v2/_catalog-off {")(),
                     {"catalog-refused", "config-matches"}),
    "socket-folder-open": (lambda s: s.paths.shared.chmod(0o2755), {"mirror-not-exposed"}),
}
if os.geteuid() == 0:
    BREAKS["workers-as-root"] = (lambda s: _edit_proxy(s, f"user {s.paths.access.user};", "user root;")(),
                                 {"mirror-not-exposed", "config-matches"})


# Breaks of the mirror instances: a deploy keeps instances that run healthy, so only a replacement
# puts these back. Every other break is undone by a plain deploy (config re-rendered, proxy reloaded,
# socket folder mode reset, the extra instance stopped by the repair below).
MIRROR_BREAKS = {"redirect-enabled", "unpinned-registry"}


@pytest.fixture
def broken(stack: LocalPlatform) -> Iterator[Callable[[str], set[str]]]:
    """Applies a break and returns the checks it must fail; afterwards repairs what it broke and proves
    the stack whole again with every check."""
    applied: list[str] = []

    def apply(name: str) -> set[str]:
        applied.append(name)
        breaker, expected = BREAKS[name]
        breaker(stack)
        return expected

    yield apply
    state = StackState.load(stack.paths.state_file)
    extra = state.processes.pop("mirror-99-0", None)
    if extra is not None:
        stop_process(extra)
        state.save(stack.paths.state_file)
    stack.deploy(replace_mirrors=bool(MIRROR_BREAKS & set(applied)))
    assert verify_policies(stack).ok, "the stack was not restored"


@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_deployment_fails_exactly_the_check_that_proves_it(stack: LocalPlatform,
                                                                     broken: Callable[[str], set[str]],
                                                                     name: str) -> None:
    assert verify_policies(stack).ok
    expected = broken(name)
    report = verify_policies(stack)
    # A hand-edited config also fails config-matches: what runs is not what the params render.
    assert set(report.failed) == expected, report
    with pytest.raises(Exception, match="|".join(sorted(expected))):
        report.raise_for_failures()
    failed = [c for c in report.checks if c.status == "fail"]
    assert all(c.next_step for c in failed)
    assert "127.0.0.66/32" not in report.to_frame().to_string()


@pytest.mark.notebooks
def test_the_notebook_fails_and_names_the_broken_check(stack: LocalPlatform, broken: Callable[[str], set[str]],
                                                       tmp_path: Path) -> None:
    broken("missing-deny-all")
    params = tmp_path / "params.yaml"
    results = tmp_path / "results.json"
    params.write_text(yaml.safe_dump({**settings_as_parameters(stack.settings), "results_json": str(results)}))
    out = tmp_path / "out.ipynb"
    run = subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
                          str(ROOT / "notebooks/verify_policies.ipynb"), str(out), "-f", str(params)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode != 0
    assert "VerificationError" in run.stderr and "denied-by-default" in run.stderr
    assert "the geo block's default must be 0" in run.stderr  # what to do next
    assert set(json.loads(results.read_text())["failed"]) == {"denied-by-default", "config-matches"}
    secrets = [v for v in json.loads(stack.paths.secrets_file.read_text()).values() if isinstance(v, str)
               and len(v) >= 12]
    assert not any(value in out.read_text() for value in secrets), "the executed notebook holds a secret"
    # The first screen of the executed notebook (HTML, no code) opens on the failed verdict.
    assert "NOT PROTECTED OR NOT WORKING: failed denied-by-default" in first_screen(out, tmp_path / "screen")
