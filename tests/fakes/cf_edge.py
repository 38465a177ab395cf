"""STAND-INS for the parts of Cloud Foundry's edge that sit between a client and an app's nginx,
for tests of the client-address chain: the nginx buildpack's start-time templating and the instance's
Envoy sidecar. (The load balancer and gorouter hops are nginx, templates/nginx/cf-router-stand-in.conf.j2.)
"""
from __future__ import annotations

import io
import os
import pwd
import re
import shutil
import socket
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from registry_mirror.platforms.local.nginx import start_nginx
from registry_mirror.processes import ProcessRecord, free_port, start_process, stop_process, wait_until
from registry_mirror.rendering import NginxTarget, render_cf_router_conf

CONTAINER_IP = "127.0.0.2"  # CF_INSTANCE_INTERNAL_IP of the proxy instance
NEIGHBOUR_APP = "127.0.0.3"  # another app's container IP, with a network policy to the proxy
LOAD_BALANCER = "127.0.0.4"
GOROUTER = "127.0.0.5"
MIRROR_CONTAINER = "127.0.0.20"  # where the mirror app's apps.internal name leads


def buildpack_varify(text: str, *, port: str, env: dict[str, str], nameservers: str) -> str:
    """STAND-IN for the nginx buildpack's `varify` (nginx-buildpack src/nginx/varify/cli/varify.go),
    which renders nginx.conf at container start: {{port}}, {{nameservers}}, {{env "NAME"}} (an unset
    variable renders empty, as os.Getenv does)."""
    out = text.replace("{{port}}", port).replace("{{nameservers}}", nameservers)
    return re.sub(r'\{\{env "([A-Za-z0-9_]+)"\}\}', lambda m: env.get(m.group(1), ""), out)


class EnvoyTcpProxy:
    """STAND-IN for the instance's Envoy with route integrity: a TCP proxy (no HTTP, so it adds no
    X-Forwarded-For entry) whose upstream is the container's own IP and app port, so the app sees
    the container IP as its peer (Diego executor depot/containerstore/proxy_config_handler.go).
    Plain TCP here where Envoy terminates the gorouter's TLS: the bytes that reach nginx are the same."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], source_ip: str) -> None:
        self.listen, self.upstream, self.source_ip = listen, upstream, source_ip
        self._server = socket.create_server(listen)
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()

    def __enter__(self) -> EnvoyTcpProxy:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        # shutdown() wakes the threads blocked in accept() or recv() at once; close() alone leaves them
        # blocked, and every join below would wait its whole timeout.
        for sock in (self._server, *list(self._open)):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)
        assert not any(t.is_alive() for t in self._threads), "the Envoy stand-in left a thread running"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream, timeout=10, source_address=(self.source_ip, 0))
            self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


@dataclass(frozen=True)
class Edge:
    public: int  # the load balancer's port on 127.0.0.1: the public route
    app_port: int  # nginx's port on the container IP
    proxy_log: Path

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public}"


@contextmanager
def cf_edge(proxy_conf: str | None = None, *, env: dict[str, str] | None = None, package: bytes | None = None,
            sidecars: Sequence[str] = ()) -> Iterator[Edge]:
    """STAND-IN for the road from a client to a proxy instance on CF: load balancer -> gorouter ->
    Envoy -> nginx running `proxy_conf` (as rendered for the buildpack, templated here as the
    buildpack does at start, with the instance's environment), or the nginx.conf of `package` (the
    app's bits, unpacked as the app's folder), and beside it the `sidecars`' commands."""
    app_port, envoy_port, gorouter_port, public = (free_port() for _ in range(4))
    # The app's folder: nginx's unprivileged workers (vcap on CF, nobody here) must enter it for the
    # blob cache and temp files, which a pytest temp folder (0700) would not let them.
    root = Path(tempfile.mkdtemp(prefix="cf-edge-"))
    root.chmod(0o755)
    (root / "router").mkdir()
    if package is not None:
        _unpack(package, root)
        proxy_conf = (root / "nginx.conf").read_text()
    assert proxy_conf is not None, "cf_edge needs the proxy's nginx.conf or its package"
    conf = root / "nginx.conf"
    # The environment of a buildpack app's processes: HOME is the app's folder, TMPDIR beside it.
    instance_env = {"HOME": str(root), "TMPDIR": str(root / "tmp"), "CF_INSTANCE_INTERNAL_IP": CONTAINER_IP,
                    "MIRROR_ROUTE": MIRROR_CONTAINER, **(env or {})}
    (root / "tmp").mkdir()
    conf.write_text(f"pid {root / 'proxy.pid'};\n" + buildpack_varify(
        proxy_conf, port=f"{CONTAINER_IP}:{app_port}", nameservers="127.0.0.1", env=instance_env))
    log = root / "proxy.log"
    records: list[ProcessRecord] = []
    try:
        for index, command in enumerate(sidecars):
            records.append(_start_sidecar(f"cf-sidecar-{index}", command, root, instance_env))
        records.append(start_nginx("cf-proxy", conf=conf, prefix=root, log=log, ready=(CONTAINER_IP, app_port),
                                   upstream_required=False))
        router_conf = root / "router.conf"
        router_conf.write_text(render_cf_router_conf(
            NginxTarget.local(root, name="cf-router", listen=f"127.0.0.1:{public}", logs=root),
            listen=f"127.0.0.1:{public}", load_balancer_address=LOAD_BALANCER,
            gorouter_listen=f"{GOROUTER}:{gorouter_port}", envoy=f"{CONTAINER_IP}:{envoy_port}"))
        with EnvoyTcpProxy((CONTAINER_IP, envoy_port), (CONTAINER_IP, app_port), source_ip=CONTAINER_IP):
            records.append(start_nginx("cf-router", conf=router_conf, prefix=root / "router",
                                       log=root / "router.log", ready=("127.0.0.1", public), upstream_required=False))
            yield Edge(public=public, app_port=app_port, proxy_log=log)
    finally:
        for record in reversed(records):
            stop_process(record)
        assert not any(r.alive() for r in records)
        shutil.rmtree(root, ignore_errors=True)


def _unpack(package: bytes, root: Path) -> None:
    """The bits as the app's folder, with the modes the zip gives (an executable stays one)."""
    with zipfile.ZipFile(io.BytesIO(package)) as bits:
        for entry in bits.infolist():
            target = bits.extract(entry, root)
            mode = (entry.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)


def _start_sidecar(name: str, command: str, root: Path, env: dict[str, str]) -> ProcessRecord:
    """A sidecar as CF's launcher runs it: `bash -c` in the app's folder with the instance's environment,
    as the same user as nginx's workers (on CF every process of the instance is vcap). The stand-in
    waits for the unix socket the command listens on, so a test does not race its start (CF does not)."""
    argv = ["bash", "-c", command]
    if os.geteuid() == 0:
        # nobody, as nginx's workers here, owning the app's folder as vcap does on CF.
        nobody = pwd.getpwnam("nobody")
        for folder in (root, root / "tmp"):
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    record = start_process(name, argv, log=root / f"{name}.log", env={"PATH": os.environ.get("PATH", ""), **env},
                           cwd=root)
    listens = re.search(r"-listen unix:\$HOME/(\S+)", command)
    if listens:
        wait_until(lambda: (root / listens.group(1)).exists(), timeout=10, what=f"{name}'s socket",
                   abort=lambda: None if record.alive() else f"{name} exited: {(root / f'{name}.log').read_text()[-300:]}")
    return record


__all__ = ["CONTAINER_IP", "Edge", "EnvoyTcpProxy", "GOROUTER", "LOAD_BALANCER", "MIRROR_CONTAINER",
           "NEIGHBOUR_APP", "buildpack_varify", "cf_edge"]
