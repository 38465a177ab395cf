"""LocalPlatform as a `Platform`: what it answers without a running stack, and what it refuses."""
from __future__ import annotations

from pathlib import Path

import pytest

from registry_mirror.errors import ParameterError
from registry_mirror.platforms.base import Platform
from registry_mirror.platforms.local import LocalPlatform
from tests.support import local_test_settings


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    settings = local_test_settings(str(tmp_path / "state"))
    return LocalPlatform(settings, settings.load_security_rules())


def test_it_is_a_platform_named_local_that_deploys_the_whole_stack(platform: LocalPlatform) -> None:
    assert isinstance(platform, Platform)
    assert platform.name == "local" and platform.components == ("all",)
    assert platform.public_url == f"http://{platform.endpoint}"
    with pytest.raises(ParameterError, match="whole stack"):
        platform.deploy(dry_run=True, component="proxy")


def test_a_stack_never_deployed_says_so_and_made_no_platform_api_call(platform: LocalPlatform) -> None:
    assert platform.status().condition.startswith("NOT DEPLOYED")
    assert platform.status().processes.empty
    calls = platform.api_calls()
    assert calls.empty and list(calls.columns) == ["method", "path", "status", "request_id", "sent"]


def test_rollback_and_cancel_say_in_a_skipped_step_why_there_is_nothing_to_do(platform: LocalPlatform) -> None:
    rolled = platform.rollback(component="registry")
    assert [(s.component, s.status) for s in rolled.steps] == [("registry", "skipped")]
    assert "keeps no revisions" in rolled.steps[0].detail and not rolled.changed
    cancelled = platform.cancel_deployments()
    assert [s.status for s in cancelled.steps] == ["skipped"] and "no deployments" in cancelled.steps[0].detail
    with pytest.raises(ParameterError):
        platform.rollback(component="everything")


def test_what_belongs_to_cloud_foundry_is_refused_in_one_sentence(platform: LocalPlatform) -> None:
    with pytest.raises(ParameterError, match="public_url is for Cloud Foundry"):
        platform.policy_checks(public_url="https://mirror.example")
    with pytest.raises(ParameterError, match="public_url' is for Cloud Foundry"):
        platform.triage_evidence(probe_image="library/hello:latest", recent_minutes=15, stuck_minutes=10,
                                 public_url="https://mirror.example")
    for remedy in ("cancel-deployment", "rollback"):
        with pytest.raises(ParameterError, match="has no deployments"):
            platform.remedy(remedy, dry_run=True)


def test_only_the_mirror_instances_scale(platform: LocalPlatform) -> None:
    with pytest.raises(ParameterError, match="mirror instances"):
        platform.scale(component="proxy", instances=3, dry_run=True)
    with pytest.raises(ParameterError, match="at least 1"):
        platform.scale(component="registry", instances=0, dry_run=True)


def test_a_dry_run_pulls_nothing_and_the_usage_names_the_endpoint_and_client_configs(platform: LocalPlatform) -> None:
    assert platform.verification_pull("docker.io/library/hello:latest", dry_run=True) is None
    usage = platform.usage()
    assert platform.public_url in usage and str(platform.paths.client_dir / "registries.conf") in usage


def test_the_fault_library_lists_every_fault_and_refuses_an_unknown_one(platform: LocalPlatform) -> None:
    library = platform.faults()
    assert list(library.catalogue()["name"]) == list(library.names)
    assert "s3-down" in library.names and library.active() == []
    with pytest.raises(ParameterError, match="must be one of"):
        library.inject("disk-full", dry_run=True)
