"""pull_savings on generated log corpora: both formats, cf logs dumps, damaged lines; counts known by
construction."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from registry_mirror.analysis.proxy_logs import load_proxy_logs
from registry_mirror.analysis.pull_savings import pull_savings
from registry_mirror.security_rules import SecurityRules

RULES = SecurityRules(allow=["10.1.0.0/16", "127.0.0.10/32"], deny=["10.1.66.0/24"], trusted_routers=["10.0.0.0/24"])
DIGEST = "sha256:" + "ab" * 32


def extended(path: str, status: int, size: int, cache: str, *, method: str = "GET", client: str = "10.1.2.3",
             t: str = "2026-11-01T01:00:00+00:00") -> str:
    return (f'NginxLog "{client}, 10.0.0.7" "{method} {path} HTTP/1.1" {status} {size} client={client} rt=0.010 '
            f'urt=0.009 ua="10.255.1.2:5000" cache={cache} t={t}')


def original(path: str, status: int, size: int, *, client: str = "10.1.2.3", method: str = "GET") -> str:
    return f'NginxLog "{client}, 10.0.0.7" "{method} {path} HTTP/1.1" {status} {size}'


def cf_dump(lines: list[str]) -> list[str]:
    """As `cf logs --recent` shows them: app lines among router, API, cell and stderr lines."""
    out = []
    for i, line in enumerate(lines):
        stamp = f"2026-11-01T02:{i // 60 % 60:02d}:{i % 60:02d}.00+0000"
        out.append(f"   {stamp} [APP/PROC/WEB/0] OUT {line}")
        out.append(f'   {stamp} [RTR/1] OUT docker-registry.app.cloud.gov - [2026-11-01T02:00:00Z] "GET /v2/ HTTP/1.1" 200 0')
    out += ["   2026-11-01T02:59:00.00+0000 [API/0] OUT Updated app with guid abc",
            "   2026-11-01T02:59:01.00+0000 [CELL/0] OUT Cell abc creating container",
            "   2026-11-01T02:59:02.00+0000 [APP/PROC/WEB/0] ERR nginx: [warn] something"]
    return out


def test_both_formats_cf_dumps_and_damaged_lines_are_counted_exactly(tmp_path: Path) -> None:
    tag, by_digest = "/v2/library/app/manifests/1.0", f"/v2/library/app/manifests/{DIGEST}"
    plain = [
        extended(tag, 200, 500, "MISS"), extended(tag, 200, 500, "HIT"), extended(tag, 200, 500, "STALE"),
        extended(by_digest, 200, 500, "MISS"), extended(by_digest, 200, 500, "HIT"),
        extended(tag, 200, 0, "HIT", method="HEAD"),
        extended(f"/v2/library/app/blobs/{DIGEST}", 200, 10_000, "HIT"),
        extended("/v2/", 403, 70, "-", client="10.1.66.9"),
        extended("/v2/x/blobs/uploads/", 405, 60, "-", method="POST"),
        original(tag, 200, 500), original("/v2/library/other/manifests/2", 200, 700, client="10.9.9.9"),
        'NginxLog "10.1.2.3" "GET /v2/library/app/manifests/1.0 HTTP/1.1" 2xx 5',  # damaged status
        'NginxLog "10.1.2.3" "GET /v2/library/app/manif',  # cut off
        "",
    ]
    (tmp_path / "proxy.log").write_text("\n".join(plain) + "\n")
    dumped = cf_dump([extended(tag, 200, 500, "MISS"), original(tag, 200, 500)])
    (tmp_path / "cf-logs.txt").write_text("\n".join(dumped) + "\n")

    savings = pull_savings([tmp_path], rules=RULES, limit=3)
    s = savings.summary.iloc[0]
    # Pulls: 5 manifest GETs (extended) + 2 (original) + 2 from the dump.
    assert s["pulls_served"] == 9 and s["pulls_by_digest"] == 2 and s["pulls_by_tag"] == 7
    # Reached a mirror: 2 MISS (plain) + 1 MISS (dump) + 3 original-format lines (no cache status: counted).
    assert s["pulls_upstream_at_most"] == 6
    assert s["version_checks"] == 1 and s["denied"] == 1 and s["writes_refused"] == 1
    assert savings.load.malformed == 2 and savings.load.skipped == len(dumped) - 2 + 1  # + the empty line
    assert savings.images.set_index("repository").loc["library/app", "pulls_served"] == 8
    clients = savings.clients.set_index("client")
    assert clients.loc["allowed #1", "pulls"] == 8  # grouped by allow-list network, named by its place
    assert clients.loc["denied #1", "denied"] == 1
    assert clients.loc["outside every range", "pulls"] == 1
    assert "saved at least 3" in savings.verdict()


def test_raw_clients_and_the_forwarded_for_chain(tmp_path: Path) -> None:
    # Original format: the client is the rightmost address outside the trusted routers.
    (tmp_path / "a.log").write_text(original("/v2/library/a/manifests/1", 200, 1, client="10.1.5.5") + "\n")
    savings = pull_savings([tmp_path / "a.log"], rules=RULES, raw_clients=True)
    assert list(savings.clients["client"]) == ["10.1.5.5"]


def test_limit_windows_count_what_would_have_gone_over(tmp_path: Path) -> None:
    lines = [extended("/v2/library/a/manifests/1", 200, 1, "HIT" if i else "MISS", t=f"2026-11-01T0{h}:00:00+00:00")
             for h in (1, 7) for i in range(5)]
    (tmp_path / "a.log").write_text("\n".join(lines) + "\n")
    savings = pull_savings([tmp_path], rules=RULES, limit=4, window_hours=6)
    assert list(savings.windows["pulls_served"]) == [5, 5]
    assert list(savings.windows["pulls_upstream_at_most"]) == [1, 1]
    assert "2 window(s) would have gone over without the mirror and 0 did with it" in savings.verdict()


def test_a_large_generated_log_streams_through_duckdb(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "big.log"
    with open(path, "w") as f:
        for i in range(200_000):
            f.write(extended(f"/v2/library/img{rng.randrange(50)}/manifests/1", 200, 100,
                             rng.choice(["HIT", "MISS", "STALE"])) + "\n")
    load = load_proxy_logs([path])
    assert load.requests == 200_000 and load.malformed == 0


def test_no_logs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no log files"):
        pull_savings([tmp_path / "nothing-here"])


def mirror_line(msg: str, *, uri: str | None = None, instance: str = "i-1", t: str = "2026-11-01T01:00:00Z") -> str:
    """A registry 3.0.0 JSON log line as its logrus JSON formatter writes it."""
    import json

    fields = {"go.version": "go1.26.8", "instance.id": instance, "level": "info", "msg": msg,
              "service": "registry-mirror", "time": t, "version": "v3.0.0"}
    if uri is not None:
        fields.update({"http.request.method": "GET", "http.request.uri": uri, "http.response.status": 200})
    return json.dumps(fields)


def test_the_mirrors_logs_make_upstream_pulls_exact(tmp_path: Path) -> None:
    from registry_mirror.analysis.mirror_logs import load_mirror_logs

    manifest, index, layer = "sha256:" + "11" * 32, "sha256:" + "22" * 32, "sha256:" + "33" * 32
    scheduled = "Adding new scheduler entry for library/app@{} with ttl=167h59m59.99s"
    mirror = [
        mirror_line(scheduled.format(index)), mirror_line(scheduled.format(manifest)),
        mirror_line(scheduled.format(layer)),
        mirror_line("response completed", uri=f"/v2/library/app/blobs/{layer}"),
        mirror_line("response completed", uri="/v2/library/app/manifests/1.0"),
        # Another instance served the same layer from storage: no entry there, nothing fetched.
        mirror_line("response completed", uri=f"/v2/library/app/blobs/{layer}", instance="i-2"),
        '{"msg": "Adding new scheduler entry for library/app@sha256:', "time=2026 level=info msg=text format",
    ]
    (tmp_path / "mirror").mkdir()
    dump = [f"   2026-11-01T02:00:0{i}.00+0000 [APP/PROC/WEB/{i % 2}] ERR {line}" for i, line in enumerate(mirror)]
    (tmp_path / "mirror" / "cf-logs.txt").write_text("\n".join(dump) + "\n")
    tag = "/v2/library/app/manifests/1.0"
    (tmp_path / "proxy.log").write_text("\n".join([extended(tag, 200, 500, "MISS"), extended(tag, 200, 500, "MISS"),
                                                   extended(tag, 200, 500, "HIT")]) + "\n")

    fetched = load_mirror_logs([tmp_path / "mirror"])
    assert (fetched.manifests, fetched.blobs) == (2, 1)
    assert (fetched.lines, fetched.skipped, fetched.malformed) == (8, 1, 1)
    savings = pull_savings([tmp_path / "proxy.log"], upstream=fetched, limit=1)
    s = savings.summary.iloc[0]
    assert s["pulls_served"] == 3 and s["pulls_upstream_at_most"] == 2 and s["pulls_upstream"] == 2
    assert savings.images.set_index("repository").loc["library/app", "pulls_upstream"] == 2
    assert savings.windows["pulls_upstream"].tolist() == [2]
    assert "2 reached Docker Hub (the mirrors' logs), so it saved 1" in savings.verdict()


def test_the_mirrors_counters_are_summed_over_instances(tmp_path: Path) -> None:
    from registry_mirror.analysis.mirror_logs import load_mirror_metrics

    for i, (manifests, blobs) in enumerate(((3, 10), (4, 0))):
        (tmp_path / f"mirror-{i}.prom").write_text(
            "# HELP registry_proxy_misses_total The number of total proxy request misses\n"
            "# TYPE registry_proxy_misses_total counter\n"
            f'registry_proxy_misses_total{{type="blob"}} {blobs}\n'
            f'registry_proxy_misses_total{{type="manifest"}} {manifests}\n'
            f'registry_proxy_hits_total{{type="manifest"}} 99\n')
    fetched = load_mirror_metrics([tmp_path])
    assert (fetched.manifests, fetched.blobs, fetched.source) == (7, 10, "mirror metrics")


def test_a_quiet_day_and_a_file_that_is_no_proxy_log_are_answers_not_crashes(tmp_path: Path) -> None:
    """An empty log (a quiet day) says there were no requests; random bytes are counted as malformed."""
    (tmp_path / "empty.log").write_bytes(b"")
    quiet = pull_savings([tmp_path / "empty.log"], rules=RULES)
    assert quiet.verdict().startswith("No requests in these logs")
    assert quiet.summary.iloc[0]["requests"] == 0 and quiet.summary.dtypes.map(str).isin(["int64", "float64"]).all()
    garbage = bytes(random.Random(7).getrandbits(8) for _ in range(4000))
    (tmp_path / "garbage.log").write_bytes(garbage + b"\n" + extended("/v2/library/a/manifests/1", 200, 5, "HIT").encode()
                                          + b"\n")
    mixed = pull_savings([tmp_path / "garbage.log"], rules=RULES)
    assert mixed.load.requests == 1 and mixed.load.malformed == garbage.count(b"\n") + 1
    assert "1 requests from" in mixed.load.summary() and "malformed" in mixed.verdict()
    assert mixed.write(tmp_path / "out")


def test_client_networks_are_named_by_label_never_by_range(tmp_path: Path) -> None:
    """The allow-list is private: the clients table, its CSV and Parquet and the HTML the pipeline
    uploads name a network by its label in the rules file, else by its place in the list."""
    rules = SecurityRules(allow=["10.1.0.0/16", "127.0.0.10/32"], deny=["10.1.66.0/24"],
                          labels={"10.1.0.0/16": "office"})
    tag = "/v2/library/app/manifests/1.0"
    (tmp_path / "proxy.log").write_text("\n".join([
        extended(tag, 200, 5, "HIT"), extended(tag, 200, 5, "HIT", client="127.0.0.10"),
        extended("/v2/", 403, 5, "-", client="10.1.66.9"), extended(tag, 200, 5, "HIT", client="192.0.2.1")]) + "\n")
    savings = pull_savings([tmp_path / "proxy.log"], rules=rules)
    assert sorted(savings.clients["client"]) == ["allowed #2", "denied #1", "office", "outside every range"]
    written = savings.write(tmp_path / "out")
    texts = [savings.clients.to_html(), savings.verdict(), *(p.read_bytes().decode(errors="replace") for p in written)]
    for cidr in ("10.1.0.0", "127.0.0.10", "10.1.66.0", "/16", "/24", "/32"):
        assert not [t for t in texts if cidr in t], cidr


def test_mirror_logs_of_another_deployment_or_time_leave_the_upper_bound(tmp_path: Path) -> None:
    """Production's proxy log (a cf logs dump) with a local mirror's log of another day: not exact."""
    from registry_mirror.analysis.mirror_logs import load_mirror_logs, upstream_fetches
    from tests.support import local_test_settings

    tag = "/v2/library/app/manifests/1.0"
    (tmp_path / "proxy.log").write_text("\n".join([extended(tag, 200, 5, "MISS"), extended(tag, 200, 5, "HIT")]) + "\n")
    (tmp_path / "mirror.log").write_text(mirror_line("Adding new scheduler entry for library/app@sha256:" + "11" * 32,
                                                     t="2026-12-07T03:00:00Z") + "\n")
    other_day = load_mirror_logs([tmp_path / "mirror.log"])
    savings = pull_savings([tmp_path / "proxy.log"], upstream=other_day)
    assert savings.upstream is None and "pulls_upstream" not in savings.summary
    verdict = savings.verdict()
    assert "at most 1 reached Docker Hub" in verdict and "Upper bound: the mirrors' logs cover 2026-12-07 03:00" in verdict
    # Named proxy logs are never matched with this machine's own mirrors' logs by default.
    settings = local_test_settings(str(tmp_path / "state"))
    (tmp_path / "state" / "logs").mkdir(parents=True)
    (tmp_path / "mirror.log").rename(tmp_path / "state" / "logs" / "mirror-1-0.log")
    assert upstream_fetches(settings, "", "") is not None
    assert upstream_fetches(settings, "", "", log_sources=str(tmp_path / "proxy.log")) is None
    assert "Upper bound: no mirror logs" in pull_savings([tmp_path / "proxy.log"]).verdict()
