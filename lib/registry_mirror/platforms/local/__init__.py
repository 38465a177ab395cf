"""The local platform: the whole mirror topology on this machine's loopback, all real software.

    client -> router stand-in (nginx, TCP, public) -> security proxy (nginx, unix socket)
           -> mirror instances (registry, unix sockets) -> S3 relay -> S3 (SeaweedFS, in a private network)
                                        \\-> upstream: Docker Hub stand-in (a registry behind a token service)

Only the router has a client-reachable TCP port, besides S3 (which wants the stack's keys). By
program: seaweedfs (+ seaweedfs_security, private_network, s3_relay), hub_stand_in
(+ hub_token_service), mirrors, nginx, with what they share in daemons. By concern: state (what the
stack records, its status), paths (and who may read them), configs (every rendering), rollout (the
deploy's steps), platform (`LocalPlatform`, the `Platform` protocol). What runbooks ask of this
platform only: checks (verify_policies), exposure (+ stranger: what another local user gets through
to), evidence (triage), faults (+ slow_relay; drills), worker_access.
"""
from .platform import LocalPlatform

__all__ = ["LocalPlatform"]
