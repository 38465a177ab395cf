"""Cloud Foundry runbooks against the CF API stand-in (tests/fakes/cf_api.py) and a real Docker Hub
stand-in (token service + docker-registry) that holds the registry image the params pin."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from registry_mirror.local_components import hub_seeder, start_hub_stand_in
from registry_mirror.processes import ProcessRecord, free_port, stop_process
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.fakes.cf_api import FakeCloudFoundry

ROOT = Path(__file__).resolve().parents[2]
HUB_USER, HUB_TOKEN = "cloudgovmirror", "hub-token-DO-NOT-LEAK-7d1f"
CF_USER, CF_PASSWORD = "deployer", "deployer-password"
REGISTRY_IMAGE = SampleImage("library/registry", "3.0.0")
RULES = {"allow": ["10.10.0.0/16"], "deny": ["10.10.66.0/24"], "trusted_routers": ["10.0.0.0/24"]}


@dataclass
class Hub:
    url: str
    digest: str
    processes: list[ProcessRecord] = field(default_factory=list)


@pytest.fixture(scope="session")
def docker_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """Docker Hub stand-in holding library/registry:3.0.0, for the preflight's digest check."""
    root = tmp_path_factory.mktemp("hub")
    port, token_port = free_port(), free_port()
    token, hub = start_hub_stand_in(data_dir=root / "data", config_dir=root / "config", logs=root,
                                    address="127.0.0.1", port=port, token_port=token_port,
                                    username=HUB_USER, password=HUB_TOKEN)
    try:
        url = f"http://127.0.0.1:{port}"
        seeded = seed_registry(url, hub_seeder(root / "config"), [REGISTRY_IMAGE])
        yield Hub(url, seeded[0].digest, [token, hub])
    finally:
        for rec in (hub, token):
            stop_process(rec)
        assert not any(r.alive() for r in (hub, token))


@pytest.fixture
def cf() -> Iterator[FakeCloudFoundry]:
    with FakeCloudFoundry(users={CF_USER: CF_PASSWORD}) as fake:
        yield fake


@dataclass
class Run:
    returncode: int
    stderr: str
    notebook: Path

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
        data = yaml.safe_load((ROOT / f"params/{environment}.yaml").read_text())
        rules = self.tmp / "security-rules.yaml"
        rules.write_text(yaml.safe_dump(RULES))
        data["registry"]["image"] = f"registry:3.0.0@{self.hub.digest}"
        data["upstream"].update(url=self.hub.url, username=HUB_USER, password_env="TEST_DOCKERHUB_TOKEN")
        data["proxy"]["security_rules_file"] = str(rules)
        data["cloudfoundry"].update({"api": self.cf.url, "poll_interval_seconds": 0.02,
                                     "deploy_timeout_seconds": 20, "org": "cloud-gov", **cf_overrides})
        return data

    def run(self, notebook: str, params: dict[str, Any], **options: Any) -> Run:
        self.count += 1
        path = self.tmp / f"params-{self.count}.yaml"
        path.write_text(yaml.safe_dump({**params, **options}))
        out = self.tmp / f"{Path(notebook).stem}-{self.count}.ipynb"
        result = subprocess.run(
            [sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
             str(ROOT / "notebooks" / notebook), str(out), "-f", str(path)],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=self.env)
        return Run(result.returncode, result.stderr, out)


@pytest.fixture
def runner(tmp_path: Path, docker_hub: Hub, cf: FakeCloudFoundry) -> CfRunner:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CF_", "TEST_"))}
    env.update(CF_USERNAME=CF_USER, CF_PASSWORD=CF_PASSWORD, TEST_DOCKERHUB_TOKEN=HUB_TOKEN)
    return CfRunner(tmp_path, docker_hub, cf, env)
