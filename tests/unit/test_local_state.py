"""The local stack's status, row by row of the README's table, from the recorded state alone."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from registry_mirror.platforms.local.state import StackState, process_table, stack_status, stop_rank
from registry_mirror.processes import ProcessRecord

STACK = ("s3-master", "s3-volume", "s3-filer", "s3-gateway", "hub-token", "hub", "mirror-3-0", "mirror-3-1",
         "proxy", "router")


def _state(*, last_deploy: dict[str, object] | None = None, names: tuple[str, ...] = STACK) -> StackState:
    processes = {n: ProcessRecord(n, 1000 + i, 1, ("prog",), f"/logs/{n}.log") for i, n in enumerate(names)}
    return StackState(generation=3, processes=processes, mirrors=[n for n in names if n.startswith("mirror-")],
                      last_deploy={"ok": True} if last_deploy is None else last_deploy)


def _status(state: StackState, *, down: Collection[str] = (), unready: Collection[str] = (),
            has_state: bool = True) -> str:
    table = process_table(state, running=lambda rec: rec.name not in down, ready=lambda name: name not in unready)
    return stack_status(state, table, has_state=has_state).condition


FAILED = {"ok": False, "failed_at": "mirror-3-1", "error": "mirror-3-1 is not ready: exited at start"}


def test_not_deployed_when_there_is_no_state() -> None:
    assert _status(StackState(), has_state=False).startswith("NOT DEPLOYED")


def test_running_when_every_process_runs_and_answers() -> None:
    status = _status(_state())
    assert status == f"RUNNING: {len(STACK)} processes, all answering"


def test_stopped_when_nothing_is_recorded_after_down() -> None:
    assert _status(_state(names=())).startswith("STOPPED: nothing runs; data and cache kept")


def test_stopped_after_a_failed_deploy_says_where_it_failed() -> None:
    status = _status(_state(names=(), last_deploy=FAILED))
    assert status.startswith("STOPPED after a failed deploy (at mirror-3-1)")


def test_degraded_names_what_died_and_what_does_not_answer() -> None:
    status = _status(_state(), down={"hub", "mirror-3-0"}, unready={"proxy"})
    assert status.startswith("DEGRADED: not running: ")
    assert "hub" in status and "mirror-3-0" in status and "not answering: proxy" in status


def test_a_process_that_does_not_run_is_not_asked_whether_it_answers() -> None:
    asked = []
    table = process_table(_state(), running=lambda rec: rec.name != "router",
                          ready=lambda name: asked.append(name) or True)
    assert "router" not in asked and not table.set_index("component").loc["router", "ready"]


def test_gone_when_every_recorded_process_is_gone() -> None:
    assert _status(_state(), down=set(STACK)).startswith("GONE: every recorded process is gone")


def test_gone_wins_over_a_failed_deploy_when_nothing_is_left() -> None:
    assert _status(_state(last_deploy=FAILED), down=set(STACK)).startswith("GONE")


def test_deploy_failed_names_the_step_and_what_it_left_running() -> None:
    status = _status(_state(last_deploy=FAILED), down={"mirror-3-1", "proxy", "router"})
    assert status.startswith("DEPLOY FAILED at mirror-3-1: mirror-3-1 is not ready")
    assert f"{len(STACK) - 3} process(es) left running" in status


def test_the_table_lists_storage_first_and_says_which_instances_serve() -> None:
    state = _state(names=(*STACK, "mirror-2-0"))
    state.mirrors = ["mirror-3-0", "mirror-3-1"]
    table = process_table(state, running=lambda rec: True, ready=lambda name: True)
    assert list(table.columns) == ["component", "pid", "running", "ready", "in_service", "log"]
    assert table["component"].iloc[0] == "s3-master" and table["component"].iloc[-1] == "router"
    serving = dict(zip(table["component"], table["in_service"]))
    assert serving["mirror-3-0"] and not serving["mirror-2-0"] and serving["proxy"]


def test_stop_order_is_clients_first_storage_last() -> None:
    order = sorted(STACK, key=stop_rank)
    assert order[:2] == ["router", "proxy"] and order[-4:] == ["s3-gateway", "s3-filer", "s3-volume", "s3-master"]


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    state = _state(last_deploy=FAILED)
    state.save(path)
    assert StackState.load(path) == state


def test_s3_that_answers_errors_is_named_as_s3() -> None:
    status = _status(_state(), unready={"s3-gateway"})
    assert status.startswith("DEGRADED: not answering: s3-gateway (S3 answers errors for stored objects)"), status


def test_degraded_when_another_local_user_gets_through() -> None:
    table = process_table(_state(), running=lambda rec: True, ready=lambda name: True)
    exposed = [f"nobody: attempt {i}: HTTP 204" for i in range(5)]
    status = stack_status(_state(), table, has_state=True, exposed=exposed).condition
    assert status.startswith("DEGRADED: open to other local users: nobody: attempt 0: HTTP 204"), status
    assert "(and 2 more)" in status and "attempt 3" not in status
