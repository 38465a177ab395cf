"""The rollback guard's decision: roll back only what this build changed."""
from __future__ import annotations

from registry_mirror.pipeline_rollback import Served, decide


def test_the_same_droplet_as_before_means_nothing_to_roll_back() -> None:
    decision = decide(Served("mirror", "d-1"), Served("mirror", "d-1"))
    assert not decision.roll_back and "nothing to roll back" in decision.reason


def test_a_first_deploy_has_nothing_to_go_back_to() -> None:
    decision = decide(Served("mirror", None), Served("mirror", "d-2"))
    assert not decision.roll_back and "first deploy" in decision.reason


def test_a_changed_droplet_is_rolled_back() -> None:
    decision = decide(Served("mirror", "d-1"), Served("mirror", "d-2"))
    assert decision.roll_back and "from droplet d-1 to d-2" in decision.reason
