"""SeaweedFS, the local platform's S3: started as four processes, stopped in the reverse order
without cutting a write, and checked the way the registry uses it."""
from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ...processes import (
    PermanentError, ProcessRecord, free_port, port_is_free, shutdown_socket, start_process, stop_process,
    tcp_connections, tcp_listeners, wait_until,
)
from ...s3_clients import s3_client
from .daemons import any_died, daemon_env, require, write_private
from .private_network import create_argv, enter_argv, holds_network
from .seaweedfs_security import ensure_security_config

# Start order; stop goes the other way, so each part finishes its writes while what it writes to
# still runs: the relay stops taking requests, the gateway finishes its own, the filer closes its
# metadata store, the volume server flushes its needle files, the master goes last.
SEAWEEDFS_PARTS = ("s3-master", "s3-volume", "s3-filer", "s3-gateway", "s3-relay")
# Changes whenever how the parts are started changes, so a deploy restarts a SeaweedFS started the old way.
SEAWEEDFS_LAYOUT = ("four parts in a private network, S3 relayed from its socket, JWT and mutual TLS, "
                    "no bucket auto-creation")
# Files SeaweedFS writes (volumes, the filer's store) are the stack's alone.
PRIVATE_UMASK = 0o077
# Seconds each part may take to stop on SIGTERM before it is killed.
STOP_SECONDS = {"s3-gateway": 10, "s3-filer": 30, "s3-volume": 15, "s3-master": 15}
# ... and when the master or the volume server is already gone, so there is nothing left to finish.
ORPHANED_STOP_SECONDS = 3
_PERMANENT_S3_ERRORS = {"InvalidBucketName", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "BucketAlreadyExists"}


def start_seaweedfs(*, data_dir: Path, config_dir: Path, run_dir: Path, logs: Path, address: str, s3_port: int,
                    access_key: str, secret_key: str, register: Callable[[ProcessRecord], None],
                    timeout: float = 60) -> list[ProcessRecord]:
    """SeaweedFS as its four parts, each its own process, with a real S3 API that checks signatures.

    One `weed server` process cannot be stopped cleanly (on SIGTERM it stops its volume server and
    keeps the rest running), and a kill in the middle of a write is what made restarts answer
    InternalError for a while. Separate parts can be stopped in order. Each is handed to `register`
    as soon as it runs, so a failure half-way leaves nothing that `down` would not find.

    All four run in a network namespace the master creates (see `private_network`): no other local
    user can reach their HTTP or gRPC ports. The S3 API reaches `address:s3_port` through the
    stack's relay from the gateway's unix socket.
    """
    identity = config_dir / "s3-identities.json"
    write_private(identity, json.dumps({"identities": [{
        "name": "registry-mirror",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = _stable_ports(config_dir / "s3-ports.json", address, (
        "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "gateway.grpc"))
    weed = require("weed")
    # Behind the private network, still: JWTs on HTTP, mutual TLS on gRPC, and writes to master and
    # volume server only from the namespace's own loopback address.
    secured = ensure_security_config(config_dir / "seaweedfs", address)
    bind = [f"-ip={address}", f"-ip.bind={address}"]
    master = f"{address}:{ports['master']}.{ports['master.grpc']}"
    filer = f"{address}:{ports['filer']}.{ports['filer.grpc']}"
    gateway_socket = run_dir / "seaweedfs-s3.sock"
    for part in ("master", "volume", "filer"):
        (data_dir / part).mkdir(parents=True, exist_ok=True)
    argvs = {
        # -peers=none: a single master needs no Raft quorum; with kept state it would otherwise
        # wait out an election (about 14 s) before the filer may connect.
        "s3-master": [weed, "master", *bind, f"-port={ports['master']}", f"-port.grpc={ports['master.grpc']}",
                      f"-mdir={data_dir / 'master'}", "-peers=none", "-telemetry=false",
                      "-volumeSizeLimitMB=1024", f"-whiteList={address}"],
        # -preStopSeconds=0: it would keep serving 10 s after SIGTERM for a load balancer to notice.
        "s3-volume": [weed, "volume", *bind, f"-port={ports['volume']}", f"-port.grpc={ports['volume.grpc']}",
                      f"-dir={data_dir / 'volume'}", "-max=0", f"-master={master}", "-preStopSeconds=0",
                      f"-whiteList={address}"],
        # -localSocket: its default is a fixed name in /tmp shared by every stack on the machine.
        "s3-filer": [weed, "filer", *bind, f"-port={ports['filer']}", f"-port.grpc={ports['filer.grpc']}",
                     f"-master={master}", f"-defaultStoreDir={data_dir / 'filer'}",
                     f"-localSocket={run_dir / 'seaweedfs-filer.sock'}"],
        "s3-gateway": [weed, "s3", *bind, f"-filer={filer}", f"-port={s3_port}",
                       f"-port.grpc={ports['gateway.grpc']}", f"-config={identity}", "-port.iceberg=0",
                       # As S3 does: a write into a bucket that does not exist is NoSuchBucket. By
                       # default SeaweedFS creates it for an admin identity, which hides a deleted bucket.
                       "-port.lance=0", "-autoCreateBucket=false", f"-localSocket={gateway_socket}"],
    }
    for leftover in ("seaweedfs-filer.sock", "seaweedfs-s3.sock"):
        (run_dir / leftover).unlink(missing_ok=True)  # left by a killed filer or gateway
    records: list[ProcessRecord] = []
    for name in argvs:  # the four weed parts, in start order; the relay follows
        if records:  # joins the master's network, which exists once the master runs as itself
            wait_until(lambda: holds_network(records[0].pid, argvs["s3-master"]), timeout=timeout,
                       what="SeaweedFS's private network", abort=any_died(records))
            argv = enter_argv(records[0].pid, argvs[name])
        else:
            argv = create_argv(argvs[name])
        # SeaweedFS reads security.toml from its working directory.
        record = start_process(name, argv, log=logs / f"{name}.log", env=daemon_env(), cwd=secured,
                               umask=PRIVATE_UMASK)
        register(record)
        records.append(record)
    wait_until(gateway_socket.exists, timeout=timeout, what="the S3 gateway's socket", abort=any_died(records))
    relay = start_process("s3-relay", [sys.executable, "-m", "registry_mirror.platforms.local.s3_relay", address,
                                       str(s3_port), str(gateway_socket)],
                          log=logs / "s3-relay.log", env=daemon_env(), umask=PRIVATE_UMASK)
    register(relay)
    records.append(relay)
    s3 = s3_client(endpoint=f"http://{address}:{s3_port}", access_key=access_key, secret_key=secret_key)
    wait_until(lambda: s3.list_buckets() is not None, timeout=timeout, what="SeaweedFS S3 API",
               interval=0.25, abort=any_died(records))
    return records


def storage_parts_alive(processes: Mapping[str, ProcessRecord]) -> bool:
    """Whether the master and the volume server both run: what the filer's last writes go to."""
    return all(processes[p].alive() for p in ("s3-master", "s3-volume") if p in processes)


def stop_seaweedfs_part(record: ProcessRecord, *, storage_alive: bool = True) -> None:
    """SIGTERM one part and wait until it has finished its writes and exited.

    With the master or the volume server already gone (`storage_alive` false: a crash is why the
    parts restart), the filer's final writes have nowhere to go and it retries until killed
    (measured: the whole 30 s), so it gets a short window instead.

    The filer stops its gRPC server gracefully: no new calls, then it waits (15 s in 4.48) for every
    open stream to end before it drains its HTTP servers and closes its store. One stream never ends
    by itself: the filer's own metadata aggregator follows every filer of its cluster, itself
    included, over the filer's own gRPC port, and lets go only in the shutdown step that comes after
    the gRPC server's. Nothing outside holds it, so no stop order helps, and `weed filer` has no flag
    for the wait. So once the filer has closed its gRPC listener, that one loopback connection is
    shut down: the subscription only fills an in-memory buffer (it writes nothing), and the filer
    goes on with its own clean shutdown. Streams of other clients still end in their own time.
    """
    release = _end_own_subscriptions(record) if record.name == "s3-filer" else None
    timeout = STOP_SECONDS.get(record.name, 30) if storage_alive else ORPHANED_STOP_SECONDS
    stop_process(record, timeout=timeout, signalled=release)


def s3_round_trip(endpoint: str, access_key: str, secret_key: str, bucket: str, *, timeout: float = 10,
                  s3: Any = None) -> str:
    """What the registry needs of S3, done once: an authenticated write, read and delete in the bucket,
    each call given at most `timeout` seconds (or as the client `s3` given was made).

    A port that answers is not enough: SeaweedFS restarted on kept data answers InternalError until
    its volume server has registered, and the registry panics on that at start.
    """
    s3 = s3 or s3_client(endpoint=endpoint, access_key=access_key, secret_key=secret_key, probe_timeout=timeout)
    key = f"_readiness/{uuid.uuid4().hex}"
    body = os.urandom(64)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    try:
        if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != body:
            raise RuntimeError("read back different bytes than written")
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    return "write, read and delete of a scratch object succeeded"


def cached_blob_readable(s3: Any, bucket: str, root: str) -> str:
    """Read the first byte of one layer the registry cached (the first its listing names); raises when
    S3 answers an error for it. A scratch round trip alone passes on a store whose old volumes are
    gone: the filer still lists every object, and new writes land in new volumes."""
    prefix = f"{root.strip('/')}/docker/registry/v2/blobs/".lstrip("/")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
    if not listed:
        return "no layer cached yet"
    key = listed[0]["Key"]
    if listed[0].get("Size", 0) == 0:
        return "the first cached layer is empty"
    s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()
    return f"read the first byte of {key}"


def ensure_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str, *, timeout: float = 60) -> bool:
    """Create the bucket if it is missing; True when it was created. The registry needs it to exist."""
    # A gateway that accepts and never answers must not hold one attempt past the whole deadline.
    s3 = s3_client(endpoint=endpoint, access_key=access_key, secret_key=secret_key, probe_timeout=min(10, timeout))

    def exists_or_created() -> bool | str:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if bucket in existing:
                return "exists"
            s3.create_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            # Right after a start the filer may refuse (InternalError, 503); a refusal of the request
            # itself will not change by waiting.
            if exc.response.get("Error", {}).get("Code") in _PERMANENT_S3_ERRORS:
                raise PermanentError(f"S3 refused bucket {bucket}: {exc}") from None
            raise
    return wait_until(exists_or_created, timeout=timeout, what=f"bucket {bucket}", interval=0.25) is True


def internal_ports(config_dir: Path) -> dict[str, int]:
    """The ports of the master, volume server, filer and their gRPC, as the last start chose them."""
    return {k: int(v) for k, v in json.loads((config_dir / "s3-ports.json").read_text()).items()}


def _end_own_subscriptions(filer: ProcessRecord) -> Callable[[], None]:
    grpc_port = int(next(a for a in filer.argv if a.startswith("-port.grpc=")).partition("=")[2])

    def release() -> None:
        try:
            # A subscription cut before the listener closes would only reconnect.
            wait_until(lambda: not filer.alive() or grpc_port not in {p for _, p in tcp_listeners(filer.pid)},
                       timeout=10, what="the filer closing its gRPC listener")
            connections = tcp_connections(filer.pid) if filer.alive() else []
            ends = {c.local for c in connections}
            for connection in connections:
                # Its own client end: it dials its own gRPC port, and the far end is the filer too.
                if connection.remote[1] == grpc_port and connection.remote in ends:
                    shutdown_socket(filer.pid, connection.fd)
        except (OSError, TimeoutError):
            pass  # refused or gone: the filer's own timeout ends the stream, only later
    return release


def _stable_ports(path: Path, address: str, names: tuple[str, ...]) -> dict[str, int]:
    """Internal ports kept across restarts (the master's Raft state and the volume server's
    registration name them), picked anew only when one is taken by something else."""
    try:
        ports = {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        ports = {}
    if set(ports) != set(names) or not all(port_is_free(address, p) for p in ports.values()):
        ports = {}
        while len(set(ports.values())) < len(names):
            ports = {name: free_port(address) for name in names}
        path.write_text(json.dumps(ports))
    return ports
