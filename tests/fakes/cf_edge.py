"""STAND-INS for the parts of Cloud Foundry's edge that sit between a client and an app's nginx,
for tests of the client-address chain: the nginx buildpack's start-time templating and the instance's
Envoy sidecar. (The load balancer and gorouter hops are nginx, templates/nginx/cf-router-stand-in.conf.j2.)
"""
from __future__ import annotations

import re
import socket
import threading


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
        self._server.close()
        for conn in list(self._open):
            _close(conn)
        for thread in self._threads:
            thread.join(timeout=5)

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


__all__ = ["EnvoyTcpProxy", "buildpack_varify"]
