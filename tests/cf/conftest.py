"""Cloud Foundry runbooks against the CF API stand-in (tests/fakes/cf_api.py) and a real Docker Hub
stand-in (token service + docker-registry) that holds the registry image the params pin.

Most tests drive the runbooks in-process (`Foundation`, and the cell-by-cell helpers of
tests/cf/runbooks.py) through `CloudFoundryPlatform` on a fake clock; one papermill run per runbook
(`CfRunner`) proves the notebook itself: its exit code and that no secret reaches it."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
import yaml

from registry_mirror.credentials import Secret
from registry_mirror.parameters import validate_settings
from registry_mirror.platforms.cloudfoundry import CloudFoundryPlatform
from registry_mirror.platforms.cloudfoundry.session import CfCredentials, CfSession
from registry_mirror.platforms.local.daemons import daemon_env
from registry_mirror.platforms.local.hub_stand_in import hub_seeder, start_hub_stand_in
from registry_mirror.platforms.local.mirrors import mirror_registry_binary
from registry_mirror.processes import (
    ProcessRecord, free_port, port_is_free, start_process, stop_process, wait_until,
)
from registry_mirror.rendering import MIRROR_PORT
from registry_mirror.sample_images import SAMPLE_IMAGES, SampleImage, seed_registry
from tests.fakes.cf_api import FAST_TIMINGS, FakeCloudFoundry
from tests.fakes.cf_edge import Edge, cf_edge

ROOT = Path(__file__).resolve().parents[2]
HUB_USER, HUB_TOKEN = "cloudgovmirror", "hub-token-DO-NOT-LEAK-7d1f"
CF_USER, CF_PASSWORD = "deployer", "deployer-password"
# The release production pins: the mirror app runs it and the hub stand-in holds its image.
REGISTRY_VERSION = yaml.safe_load((ROOT / "params/production.yaml").read_text())["registry"]["version"]
REGISTRY_IMAGE = SampleImage("library/registry", REGISTRY_VERSION)
# The worker that runs the runbooks is 127.0.0.1 here (allowed); the load balancer of the CF edge
# stand-in is 127.0.0.4 (trusted). The 10.x ranges stand for a real estate's.
RULES = {"allow": ["10.10.0.0/16", "127.0.0.1/32"], "deny": ["10.10.66.0/24", "127.0.0.66/32"],
         "trusted_routers": ["10.0.0.0/24", "127.0.0.4/32"]}
CHECK_IMAGE = "docker.io/library/hello:latest"  # seeded in the hub stand-in; Docker Hub's would be hello-world
# What must never reach a notebook, a log, an error or a report.
SECRETS = (CF_PASSWORD, HUB_TOKEN, "fake-s3-secret-DO-NOT-LEAK", "AKIAFAKESTANDIN")


@dataclass
class Hub:
    url: str
    digest: str
    processes: list[ProcessRecord] = field(default_factory=list)


@pytest.fixture(scope="session")
def docker_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """Docker Hub stand-in holding library/registry:<production's version>, for the preflight's digest check."""
    root = tmp_path_factory.mktemp("hub")
    port, token_port = free_port(), free_port()
    token, hub, front = start_hub_stand_in(data_dir=root / "data", config_dir=root / "config", logs=root,
                                    address="127.0.0.1", port=port, token_port=token_port,
                                    username=HUB_USER, password=HUB_TOKEN)
    try:
        url = f"http://127.0.0.1:{port}"
        hello = next(i for i in SAMPLE_IMAGES if i.repository == "library/hello")
        seeded = seed_registry(url, hub_seeder(root / "config"), [REGISTRY_IMAGE, hello])
        yield Hub(url, seeded[0].digest, [token, hub, front])
    finally:
        for rec in (front, hub, token):
            stop_process(rec)
        assert not any(r.alive() for r in (front, hub, token))


@pytest.fixture(scope="session")
def mirror_app(docker_hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """STAND-IN for the mirror app's container: the registry version the params pin, in proxy mode on
    the hub stand-in, listening where its apps.internal name leads (<address>:5000). It stores on
    disk: the S3 service is not what a client through the public route can see."""
    root = tmp_path_factory.mktemp("mirror-app")
    address = next(a for a in (f"127.0.{n}.20" for n in range(20, 250)) if port_is_free(a, MIRROR_PORT))
    config = root / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": False},
                    "redirect": {"disable": True}},
        "http": {"addr": f"{address}:{MIRROR_PORT}", "secret": secrets.token_hex(16)},
        "proxy": {"remoteurl": docker_hub.url, "username": HUB_USER, "password": HUB_TOKEN}}))
    executable = mirror_registry_binary(REGISTRY_VERSION)
    assert executable, f"registry {REGISTRY_VERSION} is not built: run `make bootstrap`"
    record = start_process("mirror-app", [executable, "serve", str(config)], log=root / "mirror.log",
                           env=daemon_env())
    try:
        wait_until(lambda: _answers(f"http://{address}:{MIRROR_PORT}/v2/"), timeout=30, what="the mirror app")
        yield address
    finally:
        stop_process(record)
        assert not record.alive()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def cc_session(cf: FakeCloudFoundry) -> requests.Session:
    """Logged in to the CF stand-in as the deployer, as someone acting behind the runbooks' back would be."""
    token = requests.post(f"{cf.url}/login/oauth/token", auth=("cf", ""), timeout=10, data={
        "grant_type": "password", "username": CF_USER, "password": CF_PASSWORD}).json()["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"bearer {token}"
    return session


@contextmanager
def public_route(cf: FakeCloudFoundry, mirror_address: str) -> Iterator[Edge]:
    """The proxy app as deployed, reachable the way the worker reaches its route: its current package,
    downloaded from the CF stand-in, runs behind the CF edge stand-ins with the app's sidecars."""
    session = cc_session(cf)
    app = cf.app("docker-registry-proxy")["guid"]
    droplet = session.get(f"{cf.url}/v3/apps/{app}/droplets/current", timeout=10).json()
    bits = session.get(droplet["links"]["package"]["href"] + "/download", timeout=10)
    assert bits.status_code == 200, bits.text
    # Each instance runs the app's sidecars beside nginx.
    sidecars = session.get(f"{cf.url}/v3/apps/{app}/sidecars", timeout=10).json()["resources"]
    with cf_edge(package=bits.content, sidecars=[s["command"] for s in sidecars],
                 env={"MIRROR_ROUTE": mirror_address}) as edge:
        yield edge


@pytest.fixture
def cf() -> Iterator[FakeCloudFoundry]:
    with FakeCloudFoundry(users={CF_USER: CF_PASSWORD}) as fake:
        yield fake


def staged_params(tmp: Path, hub: Hub, cf: FakeCloudFoundry, environment: str = "staging",
                  **cf_overrides: Any) -> dict[str, Any]:
    """params/<environment>.yaml pointed at the stand-ins, with the test's rules file and short waits."""
    data = yaml.safe_load((ROOT / f"params/{environment}.yaml").read_text())
    rules = tmp / "security-rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    data["registry"]["image"] = f"registry@{hub.digest}"
    data["upstream"].update(url=hub.url, username=HUB_USER, password_env="TEST_DOCKERHUB_TOKEN")
    data["proxy"]["security_rules_file"] = str(rules)
    # Seconds of the fake clock, which cost nothing: the stand-in takes them as the platform would.
    data["cloudfoundry"].update({"api": cf.url, "poll_interval_seconds": 0.25, "health_settle_seconds": 2.0,
                                 "deploy_timeout_seconds": 20, "org": "cloud-gov", **cf_overrides})
    return data


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        # Run at every wait of the code under test: someone else acting meanwhile (another operator).
        self.meanwhile: list[Callable[[], None]] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for act in list(self.meanwhile):
            act()

    def clock(self) -> float:
        return self.now


def session_on(cf: FakeCloudFoundry, clock: FakeClock, *, password: str = CF_PASSWORD) -> CfSession:
    """A CF session as the deployer, whose waits run on `clock`."""
    return CfSession(cf.url, CfCredentials("password", CF_USER, Secret("CF_PASSWORD", password)),
                     sleep=clock.sleep, clock=clock.clock)


@dataclass
class Foundation:
    """The stand-ins, for runbooks driven in-process: `platform(params)` is what `platform_for` gives a
    notebook, with a session on a fake clock, so waits and retries take no time."""

    tmp: Path
    hub: Hub
    cf: FakeCloudFoundry
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        # The stand-in's time is the runbooks' fake clock, plus real time for whoever polls on real
        # time (a notebook under papermill, a test acting behind the runbooks' back).
        start = time.monotonic()
        self.cf.clock = lambda: self.clock.now + (time.monotonic() - start)

    def params(self, environment: str = "staging", **cf_overrides: Any) -> dict[str, Any]:
        return staged_params(self.tmp, self.hub, self.cf, environment, **cf_overrides)

    def platform(self, params: dict[str, Any], *, password: str = CF_PASSWORD) -> CloudFoundryPlatform:
        settings = validate_settings(params, source="test params")
        return CloudFoundryPlatform(settings, settings.load_security_rules(),
                                    session=session_on(self.cf, self.clock, password=password))


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pipeline job puts in the environment: CF and upstream credentials."""
    for name in ("CF_CLIENT_ID", "CF_CLIENT_SECRET", "TEST_IMAGE_PULL_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CF_USERNAME", CF_USER)
    monkeypatch.setenv("CF_PASSWORD", CF_PASSWORD)
    monkeypatch.setenv("TEST_DOCKERHUB_TOKEN", HUB_TOKEN)


@pytest.fixture
def foundation(tmp_path: Path, docker_hub: Hub, cf: FakeCloudFoundry, credentials: None) -> Foundation:
    return Foundation(tmp_path, docker_hub, cf)


def assert_no_secret(*texts: str) -> None:
    for secret in SECRETS:
        for text in texts:
            assert secret not in text


@dataclass
class Run:
    returncode: int
    stderr: str
    notebook: Path

    def assert_no_secret(self) -> None:
        """Nothing secret in the executed notebook (outputs, parameters, metadata) or in the log."""
        assert_no_secret(self.notebook.read_text(), self.stderr)

    def outputs(self) -> str:
        nb = nbformat.read(self.notebook, as_version=4)
        parts = []
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                parts.append(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
                             + str(out.get("evalue", "")))
        return "\n".join(parts)


@dataclass
class CfRunner:
    """Writes a params file for the stand-ins and runs a runbook under papermill, as Concourse does."""

    tmp: Path
    hub: Hub
    cf: FakeCloudFoundry
    env: dict[str, str]
    count: int = 0

    def params(self, environment: str = "staging", **cf_overrides: Any) -> dict[str, Any]:
        return staged_params(self.tmp, self.hub, self.cf, environment,
                             **{"poll_interval_seconds": 0.02, "health_settle_seconds": 0.15, **cf_overrides})

    def run(self, notebook: str, params: dict[str, Any], **options: Any) -> Run:
        """A notebook waits on real time: short polls and settle window, with the stand-in's FAST_TIMINGS."""
        self.count += 1
        path = self.tmp / f"params-{self.count}.yaml"
        real_time = {**params, "cloudfoundry": {**params["cloudfoundry"], "poll_interval_seconds": 0.02,
                                                "health_settle_seconds": 0.15}}
        path.write_text(yaml.safe_dump({**real_time, **options}))
        out = self.tmp / f"{Path(notebook).stem}-{self.count}.ipynb"
        result = subprocess.run(
            [sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
             str(ROOT / "notebooks" / notebook), str(out), "-f", str(path)],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=self.env)
        return Run(result.returncode, result.stderr, out)


@pytest.fixture
def cf_env() -> dict[str, str]:
    """The environment a pipeline job gives the runbooks: CF and upstream credentials, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CF_", "TEST_"))}
    env.update(CF_USERNAME=CF_USER, CF_PASSWORD=CF_PASSWORD, TEST_DOCKERHUB_TOKEN=HUB_TOKEN)
    return env


@pytest.fixture
def runner(tmp_path: Path, docker_hub: Hub, cf: FakeCloudFoundry, cf_env: dict[str, str]) -> CfRunner:
    cf.timings = FAST_TIMINGS  # the notebook's waits are real
    return CfRunner(tmp_path, docker_hub, cf, cf_env)
