"""What another local user can do to the stack, tried as that user (`nobody`, and the workers of every
other stack on the machine): delete or write the cache, read SeaweedFS's metadata, read the stack's
files, connect to its sockets. `cache-not-exposed` (verify_policies) makes every attempt and the
stack's own controls; `status` makes the attempts as `nobody` only, to stay fast."""
from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

from ...checks.report import PolicyCheck, judged
from .private_network import run_inside
from .seaweedfs import internal_ports
from .state import StackState
from .stranger import Attempt, Outcome, child_argv, outcomes, run_as, run_here
from .worker_access import WORKER_USER_PREFIX

if TYPE_CHECKING:
    from .platform import LocalPlatform

STRANGER = "nobody"  # stands for every other local account
_PROBE_COLLECTION = "cache-not-exposed-probe"  # no such collection: a delete that reaches the master harms nothing


def exposed_to_others(stack: LocalPlatform, attempts: list[tuple[Attempt, str]] | None = None) -> list[str]:
    """What another local user gets through to (empty: nothing); the fast part of `cache_not_exposed`."""
    attempts = stranger_attempts(stack) if attempts is None else attempts
    if os.geteuid() != 0:
        network = [(a, want) for a, want in attempts if a.kind in ("http", "tcp")]
        return judge(network, run_here([a for a, _ in network]), "the invoking user") + stack.paths.exposed()
    return judge(attempts, run_as(STRANGER, [a for a, _ in attempts]), STRANGER) + stack.paths.exposed()


def cache_not_exposed(stack: LocalPlatform) -> PolicyCheck:
    """As another local user: no port of SeaweedFS answers (delete, write, metadata, gRPC), the S3 API
    refuses what is not signed with the stack's keys, no file of the stack opens, and no socket of the
    stack lets in anyone but its own workers (nor another stack's); the stack itself still reaches
    its master and its workers their socket."""
    attempts = stranger_attempts(stack)
    problems = exposed_to_others(stack, attempts)
    if os.geteuid() != 0:
        # An ordinary user cannot act as another one: its network attempts, and its files' modes.
        return judged("cache-not-exposed", "delete, write and metadata attempts on SeaweedFS's ports as the "
                      "invoking user; modes of the stack's own folders", "refused (403 from S3 without keys); 0700",
                      "; ".join(problems) or "all refused; the stack's folders are its own", not problems)
    sockets = [(a, want) for a, want in attempts if a.kind == "unix"]
    others = other_stacks_workers(stack.paths.access.user)
    for user in others:
        problems += judge(sockets, run_as(user, [a for a, _ in sockets]), f"{user} (another stack's workers)")
    problems += _stack_controls(stack, sockets)
    return judged("cache-not-exposed", f"as {STRANGER}: {len(attempts)} attempts to delete, write, read "
                  f"metadata, read the stack's files and connect to its sockets; as {len(others)} other stacks' "
                  "workers: its sockets; the same as the stack", "refused (403 from S3 without keys); the stack "
                  "gets through", "; ".join(problems) or "all refused; the stack's own attempts succeed",
                  not problems)


def stranger_attempts(stack: LocalPlatform) -> list[tuple[Attempt, str]]:
    """What another local user tries, each with what must happen: "refused" or an HTTP status."""
    assert stack.settings.storage is not None
    ports = internal_ports(stack.paths.secrets)
    address, bucket, paths = stack.local.address, stack.settings.storage.bucket, stack.paths
    probe_key = f"/{bucket}/{_PROBE_COLLECTION}"
    http = [("delete the collection at the master", "master", "GET", f"/col/delete?collection={_PROBE_COLLECTION}"),
            ("get a write assigned by the master", "master", "GET", f"/dir/assign?collection={bucket}"),
            ("master topology /", "master", "GET", "/"), ("master /dir/status", "master", "GET", "/dir/status"),
            ("master /vol/status", "master", "GET", "/vol/status"),
            ("write a needle at the volume server", "volume", "POST", "/1,01637037d6"),
            ("volume server /status", "volume", "GET", "/status"),
            ("list the bucket at the filer", "filer", "GET", f"/buckets/{bucket}/"),
            ("delete at the filer", "filer", "DELETE", f"/buckets/{bucket}/{_PROBE_COLLECTION}")]
    attempts = [(Attempt(label, "http", (address, ports[port], method, path)), "refused")
                for label, port, method, path in http]
    attempts += [(Attempt(f"{name} port", "tcp", (address, ports[name])), "refused")
                 for name in sorted(ports) if name.endswith(".grpc")]
    s3 = stack.local.s3_port
    attempts += [(Attempt("unsigned S3 delete", "http", (address, s3, "DELETE", probe_key)), "HTTP 403"),
                 (Attempt("unsigned S3 write", "http", (address, s3, "PUT", probe_key)), "HTTP 403"),
                 (Attempt("unsigned S3 listing", "http", (address, s3, "GET", f"/{bucket}?list-type=2")), "HTTP 403")]
    volumes = sorted((paths.data / "s3" / "volume").glob("*.dat"))[:1]
    files = [paths.config / "proxy.conf", paths.logs / "proxy.access.log", paths.secrets_file, paths.state_file,
             *volumes, paths.data, paths.logs, paths.config, paths.root]
    attempts += [(Attempt(f"read {f.relative_to(paths.root) if f != paths.root else 'the stack folder'}", "read",
                          (str(f),)), "refused") for f in files if f.exists()]
    state = StackState.load(paths.state_file)
    # blob-fanout's socket and the proxy's way to the mirrors for it trust the caller as the proxy's own.
    sockets = [paths.proxy_socket, *(paths.mirror_socket(n) for n in state.mirrors), paths.fanout_socket,
               paths.mirror_pass_socket, *paths.run.glob("*.sock")]
    attempts += [(Attempt(f"connect to {s.name}", "unix", (str(s),)), "refused") for s in sockets if s.exists()]
    return attempts


def other_stacks_workers(own: str | None) -> list[str]:
    """The nginx workers' users of every other root-run stack on this machine (and the one user all
    stacks shared before each had its own)."""
    return sorted(e.pw_name for e in pwd.getpwall()
                  if e.pw_name != own and (e.pw_name.startswith(WORKER_USER_PREFIX) or e.pw_name == "registry-mirror"))


def judge(attempts: list[tuple[Attempt, str]], outcomes: dict[str, Outcome], who: str) -> list[str]:
    wrong = []
    for a, want in attempts:
        got = outcomes[a.label]
        if (want == "refused" and got.reached) or (want != "refused" and got.detail != want):
            wrong.append(f"{who}: {a.label}: {got.detail}")
    return wrong


def _stack_controls(stack: LocalPlatform, sockets: list[tuple[Attempt, str]]) -> list[str]:
    """The same ways in, taken by the stack: without them a refusal could be a dead port or socket."""
    wrong = []
    state = StackState.load(stack.paths.state_file)
    master = state.processes.get("s3-master")
    if master is None or not master.alive():
        wrong.append("the stack's own master does not run")
    else:
        port = internal_ports(stack.paths.secrets)["master"]
        status = Attempt("master", "http", (stack.local.address, port, "GET", "/dir/status"))
        inside = run_inside(master.pid, child_argv([status]))
        got = outcomes(inside.stdout)["master"].detail if inside.returncode == 0 else inside.stderr.strip()[-200:]
        if got != "HTTP 200":
            wrong.append(f"the stack cannot reach its own master: {got}")
    user = stack.paths.access.user
    proxy = [a for a, _ in sockets if a.target == (str(stack.paths.proxy_socket),)]
    if user is not None and proxy and not run_as(user, proxy)[proxy[0].label].reached:
        wrong.append(f"the stack's own workers ({user}) cannot connect to proxy.sock")
    return wrong
