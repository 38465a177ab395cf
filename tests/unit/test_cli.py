"""`python -m registry_mirror`: every subcommand with every params file either works or refuses in one
sentence, before anything changes; each subcommand takes only its own flags."""
from __future__ import annotations

import pytest

from registry_mirror.__main__ import main

PARAMS = ["params/local.yaml", "params/staging.yaml", "params/production.yaml"]
CF_SECRETS = ["CF_USERNAME", "CF_PASSWORD", "CF_CLIENT_ID", "CF_CLIENT_SECRET", "SECURITY_RULES_FILE"]


@pytest.fixture(autouse=True)
def no_cf_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Without credentials a Cloud Foundry command must refuse before it calls anything off this machine.
    for name in CF_SECRETS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("command", [["status"], ["endpoint"], ["down"]])
def test_each_command_works_or_refuses_in_one_sentence(command: list[str], params: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*command, "--params", params])
    out, err = capsys.readouterr()
    if code == 0:
        assert out.strip() and not err
    else:
        assert code == 2 and not out
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err


def test_down_without_confirm_only_shows_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["down", "--params", "params/local.yaml"]) == 0
    assert "add --confirm" in capsys.readouterr().out


def test_a_second_params_file_is_refused_not_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--params", "params/local.yaml", "--params", "params/staging.yaml"]) == 2
    assert "--params was given twice" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["status", "--out", "x"], ["endpoint", "--confirm"], ["task-params"]])
def test_a_flag_of_another_command_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_a_missing_params_file_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--params", "params/nowhere.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "params/nowhere.yaml" in err[0]
