"""nginx on the local platform (the security proxy and the router stand-in): test a config, start
it until it answers, reload it gracefully."""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from ...processes import ProcessRecord, children_of, start_process, stop_process, wait_until
from ...unix_http import unix_request
from .daemons import daemon_env, died, require


def nginx_argv(conf: Path, prefix: Path) -> list[str]:
    # -e: the compiled-in error log (/var/log/nginx) is not ours to write.
    return [require("nginx"), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "startup.error.log")]


def nginx_test(conf: Path, prefix: Path) -> None:
    """`nginx -t`; raises with nginx's own words when the config is refused."""
    _make_temp_dirs(conf)
    result = subprocess.run([*nginx_argv(conf, prefix), "-t", "-q"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"nginx -t refused {conf.name}: {result.stderr.strip()}")


def start_nginx(name: str, *, conf: Path, prefix: Path, log: Path, ready: Path | tuple[str, int],
                register: Callable[[ProcessRecord], None] | None = None, timeout: float = 20,
                upstream_required: bool = True) -> ProcessRecord:
    """Test `conf`, start nginx with it, and return once it answers at `ready` (a socket or host, port)."""
    nginx_test(conf, prefix)
    record = start_process(name, nginx_argv(conf, prefix), log=log, env=daemon_env())
    if register is not None:
        register(record)
    try:
        wait_until(lambda: nginx_answers(ready, upstream_required=upstream_required), timeout=timeout,
                   what=f"{name} answering", abort=died(record))
    except TimeoutError:
        if register is None:
            stop_process(record)  # nobody else knows it runs
        raise
    return record


def nginx_answers(where: Path | tuple[str, int], *, upstream_required: bool = True) -> bool:
    """nginx accepted a connection and answered a request with a status of its own or its upstream's.

    A 502/504 means it runs but cannot reach what is behind it: not ready for the component before it
    (unless `upstream_required` is off).
    """
    if isinstance(where, Path):
        status = unix_request(str(where), "GET", "/v2/", timeout=5).status
    else:
        status = requests.get(f"http://{where[0]}:{where[1]}/v2/", timeout=5).status_code
    return not upstream_required or status not in (502, 503, 504)


def reload_nginx(record: ProcessRecord, *, conf: Path, prefix: Path, drain_timeout: float = 120) -> None:
    """Graceful reload: new workers take the new config, old ones finish their requests and exit.

    Returns only when every old worker is gone, so nothing still uses a server the old config named.
    """
    nginx_test(conf, prefix)
    before = children_of(record.pid)
    os.kill(record.pid, signal.SIGHUP)
    wait_until(lambda: not (children_of(record.pid) & before) and children_of(record.pid),
               timeout=drain_timeout, what=f"{record.name} reload (old workers draining)", interval=0.05)


def _make_temp_dirs(conf: Path) -> None:
    for line in conf.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0].endswith("_temp_path"):
            Path(words[1].rstrip(";")).mkdir(parents=True, exist_ok=True)
