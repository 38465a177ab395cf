"""`python -m registry_mirror <command> --params <a CF params file>` works, or refuses in one sentence."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import registry_mirror.parameters
from registry_mirror.__main__ import main
from tests.cf.conftest import ROOT, RULES, Foundation

NO_CREDENTIALS = ("error: no Cloud Foundry credentials: set CF_USERNAME and CF_PASSWORD, or CF_CLIENT_ID and "
                  "CF_CLIENT_SECRET")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project as the pipeline checks it out: the params files, and the private rules file beside them."""
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "private-config").mkdir()
    (tmp_path / "private-config/security-rules.yaml").write_text(yaml.safe_dump(RULES))
    monkeypatch.setattr(registry_mirror.parameters, "PROJECT_ROOT", tmp_path)
    for name in ("CF_USERNAME", "CF_PASSWORD", "CF_CLIENT_ID", "CF_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_endpoint_prints_how_clients_point_at_the_route(project: Path, environment: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoint", "--params", f"params/{environment}.yaml"]) == 0
    route = yaml.safe_load((project / f"params/{environment}.yaml").read_text())["cloudfoundry"]["proxy_route"]
    out = capsys.readouterr().out
    assert f"https://{route}" in out and "registries.conf" in out


@pytest.mark.parametrize("command", ["status", "down"])
def test_without_cf_credentials_status_and_down_refuse_in_one_sentence(project: Path, command: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--params", "params/production.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == NO_CREDENTIALS and captured.out == ""


def test_status_reads_the_foundation(foundation: Foundation, capsys: pytest.CaptureFixture[str]) -> None:
    params = foundation.tmp / "stand-in.yaml"
    params.write_text(yaml.safe_dump(foundation.params("staging")))
    assert main(["status", "--params", str(params)]) == 0
    assert capsys.readouterr().out.startswith("NOT DEPLOYED: docker-registry-mirror and docker-registry-proxy "
                                              "do not exist")
