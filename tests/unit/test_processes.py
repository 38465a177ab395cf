"""processes: reading a process's TCP connections from /proc, and ending one of them from outside."""
from __future__ import annotations

import subprocess
import sys

from registry_mirror.processes import shutdown_socket, tcp_connections, tcp_listeners

# A process that holds a connection to its own listener (as SeaweedFS's filer does to its own gRPC
# port) and blocks reading it until the connection ends.
_SELF_CONNECTED = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
accepted, _ = server.accept()
print(client.getsockname()[1], server.getsockname()[1], flush=True)
print("read", repr(client.recv(1)), flush=True)
"""


def test_a_connection_a_process_holds_to_itself_is_found_and_shut_down_from_outside() -> None:
    child = subprocess.Popen([sys.executable, "-c", _SELF_CONNECTED], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        client_port, server_port = map(int, child.stdout.readline().split())
        assert server_port in {port for _, port in tcp_listeners(child.pid)}
        connections = tcp_connections(child.pid)
        ends = {c.local for c in connections}
        own = [c for c in connections if c.local[1] == client_port]
        assert len(own) == 1 and own[0].remote[1] == server_port and own[0].remote in ends

        shutdown_socket(child.pid, own[0].fd)

        assert child.stdout.readline().strip() == "read b''"  # end of stream, as after its own shutdown()
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait(timeout=10)
