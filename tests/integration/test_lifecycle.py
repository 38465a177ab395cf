"""Every way a user stops and starts the local stack, on kept state, with a pull after each.

These tests stop, kill and restart the shared stack, and each leaves it running again (the
`shared_stack` fixture checks). The same down/deploy cycle repeated for confidence is a benchmark:
bench/lifecycle.py reports failures out of N cycles.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from registry_mirror.client_pull import pull_with_skopeo
from registry_mirror.errors import DeployError
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.daemons import daemon_env
from registry_mirror.platforms.local.fanout import FANOUT
from registry_mirror.platforms.local.mirrors import mirror_registry_binary, start_mirror_instance
from registry_mirror.platforms.local.seaweedfs import SEAWEEDFS_PARTS, stop_seaweedfs_part
from registry_mirror.platforms.local.state import HUB_PARTS, StackState
from registry_mirror.processes import ProcessRecord, gone, session_members, start_process, stop_process, wait_until
from registry_mirror.registry_config import registry_config_yaml

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/hello:latest"


@pytest.fixture
def life(shared_stack: LocalPlatform) -> LocalPlatform:
    return shared_stack


def _records(platform: LocalPlatform) -> dict[str, ProcessRecord]:
    return dict(StackState.load(platform.paths.state_file).processes)


def _pull(platform: LocalPlatform) -> str:
    return pull_with_skopeo(IMAGE, registries_conf=platform.client_configs().registries_conf, timeout=60).digest


def _kill(record: ProcessRecord) -> None:
    """A crash: SIGKILL the process alone (an nginx master's workers live on, as they would)."""
    os.kill(record.pid, signal.SIGKILL)
    wait_until(lambda: not record.alive(), timeout=10, what=f"{record.name} to die")


def test_down_and_deploy_on_kept_state_and_the_cache_survives(life: LocalPlatform) -> None:
    life.deploy()
    digest = _pull(life)
    records = _records(life)
    life.down()
    assert life.status().condition.startswith("STOPPED"), life.status()
    assert not any(r.alive() for r in _records(life).values())
    assert all(gone(r) for r in records.values())
    life.deploy()
    assert _pull(life) == digest
    assert life.status().condition.startswith("RUNNING"), life.status()

    # What the mirror cached before the last `down` lives in S3: with the upstream stopped, it still pulls.
    records = _records(life)
    for name in HUB_PARTS:
        stop_process(records[name])
    try:
        assert _pull(life) == digest
        assert "not running: hub" in life.status().condition
    finally:
        life.deploy()


def test_a_machine_restart_leaves_stale_state_and_deploy_brings_the_stack_back(life: LocalPlatform) -> None:
    life.deploy()
    digest = _pull(life)
    records = _records(life)
    for record in records.values():  # the kernel stops everything at once, workers included
        members = session_members(record)
        # The leader first: an nginx master that saw a worker die first would start another one.
        for pid in [record.pid, *sorted(members - {record.pid})]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wait_until(lambda: all(gone(r) for r in records.values()), timeout=20, what="every process gone")
    assert life.paths.proxy_socket.exists()  # stale sockets and PIDs are left, as after a reboot
    assert life.status().condition.startswith("GONE"), life.status()

    report = life.deploy()
    assert report.ok and report.changed
    assert _pull(life) == digest
    assert life.status().condition.startswith("RUNNING"), life.status()


# The S3 relay is left out to save a SeaweedFS restart: the s3-down drill stops it and the triage
# runbook's redeploy brings it back (tests/integration/test_incident_triage.py).
@pytest.mark.parametrize("component", [*(p for p in SEAWEEDFS_PARTS if p != "s3-relay"), *HUB_PARTS, "mirror",
                                       FANOUT, "proxy", "router"])
def test_a_killed_component_is_named_and_the_next_deploy_restores_it_without_orphans(
        life: LocalPlatform, component: str) -> None:
    life.deploy()
    records = _records(life)
    name = next(n for n in records if n == component or (component == "mirror" and n.startswith("mirror-")))
    victim = records[name]
    _kill(victim)
    assert name in life.status().condition and life.status().condition.startswith("DEGRADED"), life.status()

    report = life.deploy()
    assert report.ok and report.changed, report
    assert gone(victim), f"{name}'s leftovers still run: {session_members(victim)}"
    _pull(life)
    status = life.status()
    assert status.condition.startswith("RUNNING"), status
    # Nothing is orphaned and nothing is unknown: every recorded process runs, one per role.
    now = _records(life)
    assert all(r.alive() for r in now.values())
    assert {"mirror" if n.startswith("mirror-") else n for n in now} == {
        *SEAWEEDFS_PARTS, *HUB_PARTS, "mirror", FANOUT, "proxy", "router"}
    assert sum(n.startswith("mirror-") for n in now) == life.settings.registry.instances
    for old in records.values():
        if now.get(old.name) != old:
            assert gone(old), f"{old.name} (pid {old.pid}) was replaced but still runs"


def test_down_after_a_failed_deploy_leaves_nothing_running(life: LocalPlatform) -> None:
    life.deploy()
    records = _records(life)
    gateway = records["s3-gateway"]
    os.kill(gateway.pid, signal.SIGSTOP)  # S3 accepts connections and never answers
    impatient = LocalPlatform(life.settings.model_copy(update={"local": life.local.model_copy(
        update={"ready_timeout_seconds": 3})}), life.rules)
    try:
        with pytest.raises(DeployError) as failed:
            impatient.deploy(replace_mirrors=True)
        message = str(failed.value)
        assert "s3" in message and "s3-gateway.log" in message, message
        status = life.status()
        assert status.condition.startswith("DEPLOY FAILED at s3"), status
    finally:
        life.down()
    assert all(gone(r) for r in records.values())
    assert all(gone(r) for r in _records(life).values())
    assert life.status().condition.startswith("STOPPED after a failed deploy"), life.status()
    life.deploy()
    assert life.status().condition.startswith("RUNNING")


def test_a_mirror_that_exits_because_storage_is_not_ready_is_started_again(life: LocalPlatform,
                                                                            tmp_path: Path) -> None:
    life.deploy()
    records = _records(life)
    filer = records["s3-filer"]
    stop_seaweedfs_part(filer)  # the gateway stays up and answers every request with an error
    name = "mirror-retry-test"
    config = tmp_path / f"{name}.yml"
    config.write_text(registry_config_yaml(life.configs.mirror_config(name)))
    log = life.paths.logs / f"{name}.log"
    socket_path = life.paths.mirror_socket(name)
    secrets = _secret_env(life)
    restarted: list[ProcessRecord] = []

    def bring_storage_back() -> None:
        # Once the mirror has panicked at least once, S3 comes back, as after a slow restart.
        wait_until(lambda: log.exists() and "panic:" in log.read_text(errors="replace"), timeout=60,
                   what="a first failed start")
        # Its working folder holds the security.toml the rest of SeaweedFS expects it to use.
        restarted.append(start_process(filer.name, filer.argv, log=Path(filer.log), env=daemon_env(),
                                       cwd=life.paths.secrets / "seaweedfs"))

    helper = threading.Thread(target=bring_storage_back)
    helper.start()
    started = None
    try:
        started = start_mirror_instance(name, executable=mirror_registry_binary(life.settings.registry.version),
                                        config_file=config, socket_path=socket_path, log=log,
                                        secrets=secrets, timeout=90)
        assert started.attempts >= 2, started
        assert "panic:" in started.failures[0] and "healthy after" in started.detail()
    finally:
        helper.join(timeout=90)
        if started is not None:
            stop_process(started.record)
        for record in restarted:
            stop_seaweedfs_part(record)
        life.deploy()  # the filer the test started is not the stack's: deploy restarts SeaweedFS
    assert life.status().condition.startswith("RUNNING")


def _secret_env(platform: LocalPlatform) -> dict[str, str]:
    from registry_mirror.credentials import LocalStackSecrets

    return platform.mirror_secret_env(LocalStackSecrets.load_or_create(platform.paths.secrets_file, create=False))
