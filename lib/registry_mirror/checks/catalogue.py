"""What each policy check proves and what to do when it fails: one list for every platform.

Every platform reports every check, in this order; one that cannot apply says why (`n/a`).
"""
from __future__ import annotations

PROVES = {
    "allowed-api": "an allowed client reaches the registry API",
    "allowed-pull": "an allowed client pulls a docker.io image through the public endpoint, by tag and by digest",
    "denied-listed": "an explicitly denied client is refused on every path and verb",
    "denied-by-default": "a client in no range is refused (the policy ends in deny all)",
    "forged-xff": "a client cannot change its verdict with a forged X-Forwarded-For",
    "push-refused-proxy": "the proxy itself refuses every write, whatever the mirror does",
    "push-refused-mirror": "the mirror refuses pushes too (proxy mode)",
    "catalog-refused": "an allowed client cannot list what the mirror holds (/v2/_catalog)",
    "mirror-not-exposed": "the mirror is reachable only through the proxy",
    "network-policy": "only the proxy may connect to the mirror, on tcp 5000",
    "no-s3-redirect": "layer bytes always pass through the proxy (no pre-signed S3 URL lets them bypass it)",
    "image-pinned": "the registry that runs is the one the pipeline tested",
    "upstream-credentials": "the mirror pulls upstream as its own account (higher rate limit)",
    "upstream-pull-only": "the mirror's upstream credential can pull and nothing else",
    "ratelimit-headers": "Docker Hub's remaining pull allowance is known",
    "cache-not-exposed": "another local user can neither delete, write nor read the cache (no storage port, file or "
                         "socket of the stack answers it; S3 only with the stack's keys)",
    "config-matches": "what runs is what the parameters render",
}
CHECK_ORDER = tuple(PROVES)

NEXT = {
    "allowed-api": "check the proxy and mirror run (make status / cf app) and the allow-list admits this client",
    "allowed-pull": "read the observed error: a 403 is the allow-list, a 5xx the mirror or its upstream",
    "denied-listed": "the deny ranges are not enforced: compare the deployed nginx.conf geo block with the rules file",
    "denied-by-default": "the policy lets unlisted clients in: the geo block's default must be 0 (deny all)",
    "forged-xff": "set_real_ip_from trusts too much: it must list only the router hops, never a client's network",
    "push-refused-proxy": "the proxy forwards writes: restore the GET/HEAD-only map in nginx.conf",
    "push-refused-mirror": "the registry is not in proxy mode: check proxy.remoteurl in its config",
    "catalog-refused": "set proxy.expose_catalog: false and redeploy the proxy",
    "mirror-not-exposed": "a mirror is reachable around the proxy: unix sockets in a closed folder (local) / "
                          "apps.internal routes only (CF)",
    "network-policy": "allow exactly proxy -> mirror tcp 5000 (the deploy runbook repairs it) and remove the others",
    "no-s3-redirect": "set storage.redirect.disable: true in the registry config and redeploy the mirror",
    "image-pinned": "deploy the registry image the pipeline tested, pinned by digest",
    "upstream-credentials": "set the upstream password variable for every instance and redeploy",
    "upstream-pull-only": "give the mirror a pull-only credential (a read-only access token)",
    "config-matches": "redeploy from the parameters (the deploy runbook repairs drift), then find who edited by hand",
    "cache-not-exposed": "SeaweedFS runs outside the stack's private network, or the stack's files or sockets are "
                         "open to others: redeploy (it restarts SeaweedFS and closes the folders)",
}

# A sample every upstream serves: the stand-in seeds library/hello; Docker Hub has hello-world.
CHECK_IMAGE = {"local": "docker.io/library/hello:latest", "cloudfoundry": "docker.io/library/hello-world:latest"}
REFUSED_BY_PROXY = "this mirror is pull-only"  # the proxy's own 405 body; the registry's differs
DOCKER_HUB = "https://registry-1.docker.io"
WRITES = [("POST", "/v2/policy-check/blobs/uploads/"),
          ("PUT", "/v2/policy-check/manifests/latest"),
          ("PATCH", "/v2/policy-check/blobs/uploads/00000000-0000-0000-0000-000000000000"),
          ("DELETE", "/v2/policy-check/manifests/sha256:" + "0" * 64),
          ("DELETE", "/v2/policy-check/blobs/sha256:" + "0" * 64)]
