"""Starting, finding and stopping the local platform's daemons by PID, and waiting on conditions.

A process is identified by PID *and* its kernel start time, so a PID the kernel reused for something
else is never signalled. Daemons run in their own session: they outlive the notebook kernel that
started them, and a Ctrl-C in the kernel does not reach them.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Children we started in this Python process, so that stopping one also reaps it (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessRecord:
        return cls(name=str(data["name"]), pid=int(data["pid"]),  # type: ignore[call-overload]
                   start_ticks=int(data["start_ticks"]),  # type: ignore[call-overload]
                   argv=tuple(data["argv"]), log=str(data["log"]))  # type: ignore[arg-type]


def start_process(name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str],
                  cwd: Path | None = None, umask: int = -1) -> ProcessRecord:
    """Start a daemon with its output appended to `log` (and `umask` for the files it creates)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # 0600: logs name clients and what they pulled.
    with open(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(env), cwd=cwd, start_new_session=True, close_fds=True,
                                umask=umask)
    _CHILDREN[proc.pid] = proc
    ticks = wait_until(lambda: _start_ticks(proc.pid), timeout=5, what=f"{name} to appear in /proc")
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks, argv=tuple(argv), log=str(log))


def stop_process(record: ProcessRecord, *, timeout: float = 30.0,
                 signalled: Callable[[], None] | None = None) -> None:
    """SIGTERM, wait for exit, SIGKILL after `timeout`; a process that is already gone is fine.

    `signalled` runs once the SIGTERM is sent, to release what the process waits on while it stops.
    Whatever is left of its session afterwards (nginx workers whose master was SIGKILLed still hold
    the listening socket) is killed too, so a restart can bind again and nothing is orphaned.
    """
    if record.alive():
        request_stop(record)
        if signalled is not None:
            signalled()
        if not _wait_gone(record, timeout):
            try:
                os.kill(record.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(record, 10)
    proc = _CHILDREN.pop(record.pid, None)
    if proc is not None:
        proc.wait(timeout=10)
    if record.alive():
        raise RuntimeError(f"{record.name} (pid {record.pid}) did not stop")
    reap_session(record)


def request_stop(record: ProcessRecord) -> None:
    """SIGTERM without waiting, to let several processes wind down at once before `stop_process` waits
    on each (its own SIGTERM then finds a program already stopping, which the registry ignores)."""
    try:
        os.kill(record.pid, signal.SIGTERM)
        # A stopped (SIGSTOP) process would sit on the SIGTERM until the deadline.
        os.kill(record.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def session_members(record: ProcessRecord) -> set[int]:
    """Live processes of the session `record` leads (daemons start in a session of their own).

    A member must have started no earlier than the leader, so a session id the kernel handed to an
    unrelated process after the leader died and its PID was reused is not taken for ours.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        stat = _read_stat(int(entry.name))
        if (stat is not None and stat[0] not in ("Z", "X") and int(stat[3]) == record.pid
                and int(stat[19]) >= record.start_ticks):
            found.add(int(entry.name))
    return found


def reap_session(record: ProcessRecord, *, timeout: float = 10.0) -> int:
    """SIGKILL what is left of a daemon's session after its leader is gone; returns how many."""
    members = session_members(record)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while session_members(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_members(record)
    if left:
        raise RuntimeError(f"{record.name}: processes {sorted(left)} of its session did not stop")
    return len(members)


def gone(record: ProcessRecord) -> bool:
    """Neither the process nor anything of its session runs any more."""
    return not record.alive() and not session_members(record)


def exit_status(record: ProcessRecord) -> int | None:
    """Exit code of a child that died, None while it runs or when it was not started here."""
    proc = _CHILDREN.get(record.pid)
    return None if proc is None else proc.poll()


class PermanentError(Exception):
    """Raised by a readiness probe for an answer that waiting will not change (a refused request)."""


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05,
               abort: Callable[[], str | None] | None = None) -> T:
    """Poll `predicate` until it returns something truthy; TimeoutError naming `what` otherwise.

    `abort` may return a reason to give up early (a process that died while we waited for it).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except PermanentError:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe that raises simply is not ready yet
            last_error = exc
        if abort is not None:
            reason = abort()
            if reason:
                raise TimeoutError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s{detail}")
        time.sleep(interval)


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (nginx workers of a master)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None and int(stat[1]) == pid and stat[0] != "Z":
                found.add(int(entry.name))
    return found


def port_is_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """TCP (v4 and v6) sockets in LISTEN state held by `pid`: how we prove a mirror has no TCP port."""
    return [(s.local_address, s.local_port) for s in _tcp_sockets(pid) if s.state == _LISTEN]


@dataclass(frozen=True)
class TcpConnection:
    """An established TCP connection a process holds: its two ends (addresses as /proc spells them,
    in hex) and the process's file descriptor for it."""
    local: tuple[str, int]
    remote: tuple[str, int]
    fd: int


def tcp_connections(pid: int) -> list[TcpConnection]:
    """Established TCP (v4 and v6) connections held by `pid`."""
    return [TcpConnection((s.local_address, s.local_port), (s.remote_address, s.remote_port), s.fd)
            for s in _tcp_sockets(pid) if s.state == _ESTABLISHED]


def shutdown_socket(pid: int, fd: int) -> None:
    """Shut down both directions of a socket `pid` holds, as its own shutdown(2) would: the peer reads
    end-of-stream, the process sees the connection end; nothing else of it is touched.

    pidfd_getfd(2) lends us the socket; it needs the right to trace `pid` (same user, or root).
    OSError when that is refused or the kernel is older than 5.6.
    """
    pidfd = os.pidfd_open(pid)
    try:
        borrowed = _LIBC.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if borrowed < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"pidfd_getfd of fd {fd} of pid {pid}: {os.strerror(errno)}")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=borrowed) as sock:
        sock.shutdown(socket.SHUT_RDWR)


_LIBC = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (added in Linux 5.6)
_LISTEN, _ESTABLISHED = "0A", "01"


@dataclass(frozen=True)
class _TcpSocket:
    state: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    fd: int


def _tcp_sockets(pid: int) -> Iterator[_TcpSocket]:
    """TCP sockets `pid` holds, read from /proc: the inodes of its fds matched in the tcp tables."""
    fds = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            fds[target[8:-1]] = int(entry.name)
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in fds:
                local_address, local_port = fields[1].split(":")
                remote_address, remote_port = fields[2].split(":")
                yield _TcpSocket(fields[3], local_address, int(local_port, 16), remote_address,
                                 int(remote_port, 16), fds[fields[9]])


def _start_ticks(pid: int) -> int | None:
    stat = _read_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return int(stat[19])


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; field 19 is starttime."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    proc = _CHILDREN.get(record.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap, so the zombie does not look alive
        if not record.alive():
            return True
        time.sleep(0.05)
    return not record.alive()
