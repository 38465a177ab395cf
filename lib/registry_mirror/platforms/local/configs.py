"""Every config the local stack runs with, rendered from the parameters: each mirror instance's
registry config, the security proxy's and the router stand-in's nginx.conf, the client configs.

The deploy writes these; policy checks and triage compare what runs against them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...parameters import LocalSettings, Settings
from ...registry_config import Listener, S3Location, registry_config, registry_config_yaml
from ...rendering import (
    BlobCache, ClientConfigs, ManifestCache, NginxTarget, render_client_configs, render_nginx_conf, render_router_conf,
)
from ...security_rules import SecurityRules
from .paths import StackPaths

Nginx = Literal["proxy", "router"]


@dataclass(frozen=True)
class StackConfigs:
    settings: Settings
    rules: SecurityRules
    paths: StackPaths

    @property
    def local(self) -> LocalSettings:
        assert self.settings.local is not None
        return self.settings.local

    @property
    def endpoint(self) -> str:
        """host:port of the public endpoint (the router stand-in)."""
        return f"{self.local.address}:{self.local.public_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.local.address}:{self.local.s3_port}"

    def mirror_config(self, name: str) -> dict[str, Any]:
        """The registry config of instance `name` (listening on its socket); secrets come as environment."""
        assert self.settings.storage is not None
        s3 = S3Location(bucket=self.settings.storage.bucket, region=self.settings.storage.region,
                        endpoint=self.s3_endpoint, root_directory=self.settings.storage.root_directory)
        return registry_config(self.settings, s3=s3, listener=Listener(str(self.paths.mirror_socket(name)), "unix"),
                               instance=name)

    def nginx_conf(self, name: Nginx, mirrors: Sequence[str] = ()) -> str:
        """nginx.conf of the router stand-in, or of the security proxy sending to instances `mirrors`."""
        prefix = self.paths.nginx_prefix(name)
        if name == "router":
            target = NginxTarget.local(prefix, name=name, listen=self.endpoint, logs=self.paths.logs,
                                       user=self.paths.access.user, temp_dir=self.paths.nginx_temp)
            return render_router_conf(target, listen=self.endpoint, proxy_socket=self.paths.proxy_socket)
        servers = tuple(f"unix:{self.paths.mirror_socket(n)}" for n in mirrors)
        target = NginxTarget.local(prefix, name=name, listen=f"unix:{self.paths.proxy_socket}",
                                   logs=self.paths.logs, upstream_servers=servers, user=self.paths.access.user,
                                   temp_dir=self.paths.nginx_temp, sockets_dir=self.paths.shared)
        # The router stand-in connects over a unix socket: that, and only that, is the trusted hop.
        cache = BlobCache.sized(self.settings.proxy.blob_cache_size, str(self.paths.blob_cache))
        return render_nginx_conf(self.rules, target, real_ip_from=["unix:", *self.rules.trusted_routers],
                                 public_host=self.endpoint, expose_catalog=self.settings.proxy.expose_catalog,
                                 blob_cache=cache,
                                 manifest_cache=ManifestCache.from_settings(self.settings,
                                                                            str(self.paths.manifest_cache)))

    def client_configs(self) -> ClientConfigs:
        # Locally the fallback location is the mirror too, so a failing mirror never reaches out.
        return render_client_configs(self.endpoint, insecure=True, primary=self.endpoint)

    def rendered(self, mirrors: Sequence[str]) -> dict[str, str]:
        """Every config by name, with the proxy sending to `mirrors` (secrets are in none of them)."""
        return {
            "registry config (per instance)": registry_config_yaml(self.mirror_config("mirror-N")),
            "security proxy nginx.conf": self.nginx_conf("proxy", mirrors),
            "router stand-in nginx.conf": self.nginx_conf("router"),
            **{f"client {k}": v for k, v in self.client_configs().as_dict().items()},
        }
