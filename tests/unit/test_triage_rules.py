"""The triage rules on hand-made evidence: each cause named, the outermost broken layer first."""
from __future__ import annotations

import pytest

from registry_mirror.incidents.remedies import apply_remedy
from registry_mirror.incidents.triage import Facts, diagnose

OK_MIRROR = {"name": "m-0", "running": True, "status": 200, "seconds": 0.01, "exit_reason": None, "errors": []}


def healthy(**changes: object) -> Facts:
    facts = Facts(endpoint_status=200, cached_pull="ok: library/hello:latest pulled", proxy_status=200,
                  mirrors=[dict(OK_MIRROR), dict(OK_MIRROR, name="m-1")], s3_reachable=True, s3_credentials_ok=True,
                  bucket_exists=True, s3_round_trip_ok=True, upstream_reachable=True, upstream_auth_ok=True,
                  upstream_remaining=80, upstream_limit=100)
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def dead(name: str, reason: str) -> dict:
    return dict(OK_MIRROR, name=name, running=False, status=None, exit_reason=reason)


@pytest.mark.parametrize(("facts", "layer", "cause", "remedy"), [
    (healthy(), "", "", None),
    (healthy(proxy_drift_lines=6, endpoint_status=403, cached_pull="failed: 403"), "security proxy",
     "refuses allowed clients", "redeploy-proxy"),
    (healthy(endpoint_status=502, proxy_connect_errors=4), "security proxy -> mirror", "cannot reach", "redeploy-proxy"),
    (healthy(s3_reachable=False), "S3", "does not answer", "redeploy"),
    (healthy(bucket_exists=False), "S3", "bucket does not exist", "redeploy"),
    (healthy(mirrors=[dead("m-0", "panic: s3aws: SignatureDoesNotMatch"), dead("m-1", "panic: s3aws: "
                                                                            "SignatureDoesNotMatch")]),
     "mirror instances", "S3 rejects the credentials", "redeploy"),
    (healthy(upstream_reachable=False, mirrors=[dead("m-0", "panic: dial tcp: connection refused")]),
     "mirror instances", "Docker Hub is unreachable", None),
    (healthy(mirrors=[OK_MIRROR, dead("m-1", "exited")]), "mirror instance m-1", "not running", "replace-mirrors"),
    (healthy(mirrors=[OK_MIRROR, dict(OK_MIRROR, name="m-1", seconds=3.2)]), "mirror instance m-1", "answers slowly",
     "replace-mirrors"),
    (healthy(mirrors=[OK_MIRROR, dict(OK_MIRROR, name="m-1", status=None, seconds=10.0,
                                      exit_reason="does not answer: TimeoutError")]),
     "mirror instance m-1", "runs but does not answer", "replace-mirrors"),
    (healthy(upstream_reachable=False), "upstream", "does not answer", None),
    (healthy(upstream_remaining=0), "upstream", "pull limit is used up", None),
    (healthy(upstream_auth_ok=False), "upstream", "refuses the mirror's credentials", None),
    (healthy(stuck_deployments=["mirror: abc DEPLOYING for 12.0 min"]), "deployments", "stuck", "cancel-deployment"),
])
def test_each_cause_is_named_with_its_layer_and_remedy(facts: Facts, layer: str, cause: str,
                                                         remedy: str | None) -> None:
    d = diagnose(facts)
    assert d.healthy == (layer == "")
    assert d.layer == layer and cause in d.cause and d.remedy == remedy


def test_the_outermost_cause_wins_when_several_layers_fail() -> None:
    # S3 down makes the mirrors fail too: the store is the cause, not the instances.
    both = healthy(s3_reachable=False, mirrors=[dead("m-0", "panic: s3aws: RequestError")])
    assert diagnose(both).layer == "S3"
    # Docker Hub down with serving mirrors: cached images still pull, and the verdict says what fails.
    down = diagnose(healthy(upstream_reachable=False))
    assert "cached images still pull" in down.still_works and "not yet cached fail" in down.still_works


def test_a_remedy_never_runs_with_the_gate_closed_or_without_one() -> None:
    broken = diagnose(healthy(s3_reachable=False))
    closed = apply_remedy(object(), broken)  # a target it must not touch
    assert not closed.applied and "gate is closed" in closed.detail
    no_remedy = apply_remedy(object(), diagnose(healthy(upstream_remaining=0)), confirm=True)
    assert not no_remedy.applied and "wait for the window" in no_remedy.detail
    with pytest.raises(ValueError, match="parameter 'remedy' must be one of"):
        apply_remedy(object(), broken, remedy="format-disk", confirm=True)


def test_scaling_needs_a_count_and_it_is_checked_first() -> None:
    from registry_mirror.incidents.remedies import check_remedy

    with pytest.raises(ValueError, match="'scale_to' must be at least 1 for remedy scale-mirrors, got 0"):
        check_remedy("scale-mirrors", 0)
    with pytest.raises(ValueError, match="'scale_to' must not be negative"):
        check_remedy("", -2)
    check_remedy("scale-mirrors", 3)


@pytest.mark.parametrize("image", ["../../etc/passwd", "library/hello:", "Library/Hello", "hello:latest?x=1",
                                   "ghcr.io/x/y:1"])
def test_a_probe_image_that_is_not_a_docker_hub_reference_is_refused(image: str) -> None:
    from registry_mirror.incidents.runbook import start_triage
    from registry_mirror.parameters import load_params_file

    with pytest.raises(ValueError, match="parameter 'probe_image' must be a Docker Hub repository and tag"):
        start_triage(load_params_file("params/local.yaml"), probe_image=image)


def test_a_layer_whose_master_is_gone_is_degraded_although_an_orphaned_worker_answers() -> None:
    """Status says DEGRADED: not running: router; the endpoint still answers through the orphan."""
    diagnosis = diagnose(healthy(processes_down=["router"]))
    assert diagnosis.verdict().startswith("BROKEN LAYER: router. CAUSE: not running: router")
    assert diagnosis.remedy == "redeploy" and "orphaned nginx worker" in diagnosis.cause


def test_a_probe_image_the_upstream_lacks_is_a_parameter_error_with_no_remedy() -> None:
    facts = healthy(cached_pull="failed: manifest unknown (404)", probe_image="library/nope:latest",
                    probe_upstream_status=404)
    diagnosis = diagnose(facts)
    assert diagnosis.verdict().startswith("PARAMETER ERROR: probe_image: the upstream has no library/nope:latest")
    assert "BROKEN LAYER" not in diagnosis.verdict() and diagnosis.remedy is None
    result = apply_remedy(None, diagnosis, confirm=True)  # type: ignore[arg-type]  # nothing to act on
    assert not result.applied and result.remedy is None


def test_telemetry_export_failures_are_not_errors_that_mean_something() -> None:
    from registry_mirror.incidents.triage import meaningful

    otel = ('{"go.version":"go1.26.8","instance":"mirror-1-0","level":"error","msg":"traces export: Post '
            '\\"https://localhost:4318/v1/traces\\": dial tcp 127.0.0.1:4318: connect: connection refused",'
            '"service":"registry-mirror","time":"2026-12-07T04:14:30.471858855Z","version":"v3.0.0+unknown"}')
    real = '{"level":"error","msg":"s3aws: SignatureDoesNotMatch","time":"2026-12-07T04:14:30Z"}'
    assert not meaningful(otel) and meaningful(real)
