"""How many Docker Hub pulls the mirror saved, and for whom: data first, then plots and a verdict.

A pull is a manifest GET (Docker Hub counts those; a HEAD is a free version check). Served pulls
come from the proxy's log; the pulls that still reached Docker Hub are at most the manifest GETs the
proxy did not answer from its cache (cache status other than HIT, STALE, UPDATING, REVALIDATED):
those went to a mirror, which fetched from Docker Hub only when it held nothing. Clients are the
address the proxy judged (`client=`), else the rightmost X-Forwarded-For entry outside the trusted
routers; they are shown by the name of the allow-list network they belong to (its label in the rules
file, else `allowed #1`, `denied #2`...: the ranges are private and never appear in a table) unless
raw addresses are asked for.

The mirrors' own logs make the upstream count exact only when they are the same deployment's, over
the same time: logs that do not reach back to the proxy logs' first request, or that were not taken
together with them, leave the upper bound standing, and the verdict says why.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..readable import percent, summary_table
from ..security_rules import SecurityRules
from .mirror_logs import UpstreamFetches
from .proxy_logs import LogLoad, load_proxy_logs

SERVED_BY_PROXY = ("HIT", "STALE", "UPDATING", "REVALIDATED")


@dataclass(frozen=True)
class PullSavings:
    summary: pd.DataFrame  # one row: the month (or whatever the logs cover) in numbers
    images: pd.DataFrame  # per repository: pulls served, reached upstream, bytes
    clients: pd.DataFrame  # per allow-list network (or address): requests, pulls, denied
    windows: pd.DataFrame  # per Docker Hub limit window: pulls served vs reaching upstream
    load: LogLoad
    limit: int | None  # Docker Hub pulls per window, from its headers or params
    upstream: UpstreamFetches | None = None  # the mirrors' own count of what they fetched, when given
    upper_bound_because: str = ""  # why the upstream figure is an upper bound ("" when it is exact)

    def verdict(self) -> str:
        row = self.summary.iloc[0]
        served = int(row["pulls_served"])
        if not int(row["requests"]):
            return f"No requests in these logs: nothing was served or saved. {self.load.summary()}."
        exact = self.upstream is not None
        upstream = self.upstream.manifests if self.upstream is not None else int(row["pulls_upstream_at_most"])
        saved = served - upstream
        column = "pulls_upstream" if exact and self.upstream.source == "mirror logs" else "pulls_upstream_at_most"
        over = int((self.windows["pulls_served"] > self.limit).sum()) if self.limit and len(self.windows) else 0
        over_with = int((self.windows[column] > self.limit).sum()) if self.limit and len(self.windows) else 0
        limit_text = (f" Against Docker Hub's {self.limit} pulls per window, {over} window(s) would have gone over "
                      f"without the mirror and {over_with} did with it." if self.limit else "")
        reached = (f"{upstream} reached Docker Hub (the mirrors' {self.upstream.source.split()[-1]}), so it saved "
                   f"{saved}" if self.upstream is not None else
                   f"at most {upstream} reached Docker Hub, so it saved at least {saved}")
        because = f" Upper bound: {self.upper_bound_because}." if self.upper_bound_because else ""
        ratio = saved / served if served else 0.0
        return (f"The mirror served {served} pulls; {reached} ({percent(ratio)}). It refused {int(row['denied'])} "
                f"request(s) from clients outside the allow-list and {int(row['writes_refused'])} write(s).{limit_text} "
                f"{self.load.summary()}."
                + (f" {self.upstream.summary()}." if self.upstream is not None else "") + because)

    def summary_table(self) -> pd.DataFrame:
        """The summary as an operator reads it: whole counts, sizes in human units, the ratio in percent."""
        return summary_table(self.summary.iloc[0], sizes=("bytes_served", "bytes_from_proxy_cache"),
                             ratios=("saved_ratio",))

    def write(self, folder: Path) -> list[Path]:
        """Every table as Parquet and CSV beside the executed notebook."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("summary", "images", "clients", "windows"):
            frame: pd.DataFrame = getattr(self, name)
            self.load.db.register("out", frame)  # DuckDB writes Parquet itself: no pyarrow needed
            for suffix, fmt in ((".parquet", "PARQUET"), (".csv", "CSV, HEADER")):
                path = folder / f"pull_savings_{name}{suffix}"
                self.load.db.execute(f"COPY out TO '{_quoted(path)}' (FORMAT {fmt})")
                written.append(path)
            self.load.db.unregister("out")
        return written


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def pull_savings(sources: Sequence[str | Path], *, rules: SecurityRules | None = None, limit: int | None = None,
                 window_hours: int = 6, raw_clients: bool = False,
                 upstream: UpstreamFetches | None = None) -> PullSavings:
    """The savings from the proxy's logs; with `upstream` (the mirrors' logs or counters) the pulls
    that reached Docker Hub are exact instead of an upper bound, when they cover the same time."""
    load = load_proxy_logs(sources, bucket_hours=window_hours)
    db = load.db
    because = "" if upstream is not None else ("no mirror logs or counters of the same deployment were read "
                                               "(mirror_logs, mirror_metrics)")
    mismatch = window_mismatch(load, upstream) if upstream is not None else ""
    if mismatch:
        upstream, because = None, mismatch
    db.execute(f"""
        CREATE OR REPLACE TEMP VIEW pulls AS
        SELECT *, object = 'manifests' AND method = 'GET' AND status = 200 AS is_pull,
               coalesce(cache, '-') NOT IN {SERVED_BY_PROXY} AS reached_mirror
        FROM requests
    """)
    summary = db.execute("""
        SELECT coalesce(sum(n), 0) AS requests,
               coalesce(sum(n) FILTER (WHERE is_pull), 0) AS pulls_served,
               coalesce(sum(n) FILTER (WHERE is_pull AND NOT by_digest), 0) AS pulls_by_tag,
               coalesce(sum(n) FILTER (WHERE is_pull AND by_digest), 0) AS pulls_by_digest,
               coalesce(sum(n) FILTER (WHERE is_pull AND reached_mirror), 0) AS pulls_upstream_at_most,
               coalesce(sum(n) FILTER (WHERE object = 'manifests' AND method = 'HEAD' AND status = 200), 0)
                   AS version_checks,
               coalesce(sum(n) FILTER (WHERE status = 403), 0) AS denied,
               coalesce(sum(n) FILTER (WHERE status = 405), 0) AS writes_refused,
               coalesce(sum(bytes) FILTER (WHERE status = 200), 0) AS bytes_served,
               coalesce(sum(bytes) FILTER (WHERE status = 200 AND NOT reached_mirror), 0) AS bytes_from_proxy_cache,
               coalesce(sum(n) FILTER (WHERE original), 0) AS original_format_lines
        FROM pulls
    """).df().astype("int64")
    served = int(summary.loc[0, "pulls_served"])
    summary["saved_ratio"] = (served - int(summary.loc[0, "pulls_upstream_at_most"])) / served if served else 0.0
    images = db.execute("""
        SELECT repository, coalesce(sum(n) FILTER (WHERE is_pull), 0) AS pulls_served,
               coalesce(sum(n) FILTER (WHERE is_pull AND reached_mirror), 0) AS pulls_upstream_at_most,
               coalesce(sum(bytes) FILTER (WHERE status = 200), 0) AS bytes_served
        FROM pulls WHERE repository IS NOT NULL GROUP BY repository ORDER BY pulls_served DESC, repository
    """).df()
    by_address = db.execute("""
        SELECT seen, sum(n) AS requests, coalesce(sum(n) FILTER (WHERE is_pull), 0) AS pulls,
               coalesce(sum(n) FILTER (WHERE status = 403), 0) AS denied
        FROM pulls GROUP BY seen
    """).df()
    # Few distinct addresses: name each one's network in Python, after DuckDB has aggregated.
    by_address["client"] = [_client(seen, rules, raw_clients) for seen in by_address["seen"]]
    clients = (by_address.groupby("client", as_index=False)[["requests", "pulls", "denied"]].sum()
               .sort_values(["requests", "client"], ascending=[False, True]).reset_index(drop=True))
    windows = db.execute(f"""
        SELECT time_bucket(INTERVAL '{int(window_hours)} hours', hour) AS window_start,
               coalesce(sum(n) FILTER (WHERE is_pull), 0) AS pulls_served,
               coalesce(sum(n) FILTER (WHERE is_pull AND reached_mirror), 0) AS pulls_upstream_at_most
        FROM pulls WHERE hour IS NOT NULL GROUP BY window_start ORDER BY window_start
    """).df()
    if upstream is not None:
        summary["pulls_upstream"] = upstream.manifests
        summary["blobs_upstream"] = upstream.blobs
        summary["saved_ratio"] = (served - upstream.manifests) / served if served else 0.0
        if upstream.source == "mirror logs":
            per_repo = upstream.repositories.set_index("repository")["manifests"]
            images["pulls_upstream"] = images["repository"].map(per_repo).fillna(0).astype("int64")
            exact = upstream.windows.rename(columns={"manifests": "pulls_upstream"})
            windows = windows.merge(exact, on="window_start", how="outer").fillna(0).sort_values("window_start")
            windows = windows.astype({c: "int64" for c in ("pulls_served", "pulls_upstream_at_most",
                                                             "pulls_upstream")}).reset_index(drop=True)
    return PullSavings(summary, images, clients, windows, load, limit, upstream, because)


def window_mismatch(load: LogLoad, upstream: UpstreamFetches) -> str:
    """"" when the mirrors' logs can stand for the proxy logs' time; else why not. Metrics counters
    carry no times: the operator who saved them vouches for them."""
    if upstream.source != "mirror logs" or load.first is None:
        return ""
    if upstream.first is None:
        return "the mirrors' logs carry no times, so they cannot be matched to the proxy logs"
    slack = pd.Timedelta(minutes=SLACK_MINUTES)
    if upstream.first > load.first + slack or upstream.last < load.first:
        return (f"the mirrors' logs cover {_when(upstream.first)} to {_when(upstream.last)}, the proxy logs "
                f"{_when(load.first)} to {_when(load.last)}: not the same deployment and time, so they were not "
                "counted; name the same deployment's mirror logs with mirror_logs")
    return ""


# A proxy request and the mirror's log line for it are stamped by two processes: allow for that.
SLACK_MINUTES = 1


def _when(stamp: pd.Timestamp | None) -> str:
    return "?" if stamp is None else stamp.strftime("%Y-%m-%d %H:%M UTC")


def _client(seen: str, rules: SecurityRules | None, raw: bool) -> str:
    """The judged client: `client=` as is; from X-Forwarded-For the rightmost untrusted entry."""
    entries = [e.strip() for e in str(seen).split(",") if e.strip()]
    trusted = [ipaddress.ip_network(c) for c in (rules.trusted_routers if rules else [])]
    address = None
    for entry in reversed(entries):
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            break
        address = ip
        if not any(ip.version == net.version and ip in net for net in trusted):
            break
    if address is None:
        return "unknown"
    if raw or rules is None:
        return str(address)
    names = network_names(rules)
    inside = [(n, name) for n, name in names.items() if n.version == address.version and address in n]
    return max(inside, key=lambda pair: pair[0].prefixlen)[1] if inside else "outside every range"


def network_names(rules: SecurityRules) -> dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str]:
    """Each allow/deny range -> the name a report shows: its label in the rules file, else its place
    in the list (`allowed #1`). Never the range itself: the allow-list is private."""
    names = {}
    for kind, cidrs in (("allowed", rules.allow), ("denied", rules.deny)):
        for i, cidr in enumerate(cidrs, start=1):
            names[ipaddress.ip_network(cidr)] = rules.labels.get(cidr) or f"{kind} #{i}"
    return names


def plot(savings: PullSavings):  # type: ignore[no-untyped-def]
    """Two panels: pulls per window (served vs reaching Docker Hub, with the limit) and top images."""
    # The kernel's backend draws it (inline in Jupyter and under papermill): never forced here.
    import matplotlib.pyplot as plt

    import matplotlib.dates as mdates

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    windows = savings.windows
    # The exact count when the mirrors' logs were read (and matched), else the proxy's upper bound.
    exact = "pulls_upstream" in windows
    upstream, label = (("pulls_upstream", "reached Docker Hub (mirrors' logs)") if exact else
                       ("pulls_upstream_at_most", "reached Docker Hub (at most)"))
    if len(windows):
        starts = pd.to_datetime(windows["window_start"])
        if len(windows) == 1:  # one window: two bars, not two lone dots on a one-point time axis
            where = starts.dt.strftime("%Y-%m-%d %H:%M UTC").iloc[0]
            left.bar(["pulls served", label], [windows["pulls_served"].iloc[0], windows[upstream].iloc[0]])
            left.set_xlabel(f"window from {where}")
        else:
            left.plot(starts, windows["pulls_served"], label="pulls served", marker="o")
            left.plot(starts, windows[upstream], label=label, marker="o")
            locator = mdates.AutoDateLocator()
            left.xaxis.set_major_locator(locator)
            left.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        left.yaxis.get_major_locator().set_params(integer=True)
        if savings.limit:
            left.axhline(savings.limit, color="red", linestyle="--", label="Docker Hub limit per window")
        if len(windows) > 1 or savings.limit:
            left.legend()
    left.set_title("Pulls per Docker Hub limit window")
    top = savings.images.head(10)
    right.barh(top["repository"], top["pulls_served"], label="served")
    right.barh(top["repository"], top[upstream if upstream in top else "pulls_upstream_at_most"], label=label)
    right.invert_yaxis()
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_title("Top images")
    right.legend()
    figure.tight_layout()
    return figure


def log_sources(settings: object, given: str) -> list[str]:
    """The logs to read: `given` (comma-separated files, folders, globs or s3:// URLs), or on the
    local platform its proxy's access log. On Cloud Foundry the logs live in the log store: save
    `cf logs <proxy> --recent` (or the drain's archive) and name the files."""
    from ..errors import ParameterError
    from ..parameters import resolve_project_path

    if given.strip():
        return [part.strip() for part in given.split(",") if part.strip()]
    local = getattr(settings, "local", None)
    if local is None:
        raise ParameterError("parameter 'log_sources' is empty: on Cloud Foundry name the saved proxy logs "
                             "(cf logs --recent dumps or the log drain's archive)")
    return [str(resolve_project_path(local.state_dir) / "logs" / "proxy.access.log")]
