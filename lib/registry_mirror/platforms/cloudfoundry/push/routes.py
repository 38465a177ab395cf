"""After a deploy: the mirror is only on apps.internal, the proxy on its public route."""
from __future__ import annotations

from ..resources import INTERNAL_DOMAIN, Resource
from ..space import Space
from ....deploy_report import StepRecorder, Unchanged
from ....errors import DeployError


def verify_routes(space: Space, steps: StepRecorder, mirror: Resource | None, proxy: Resource | None) -> None:
    if steps.dry_run:
        return

    def check() -> str:
        problems = []
        if mirror is not None:
            urls = space.cc.route_urls(mirror)
            public = public_routes(urls)
            if public:
                problems.append(f"mirror has public route(s) {public}")
            if space.cf.mirror_route not in urls:
                problems.append(f"mirror lacks {space.cf.mirror_route}")
        if proxy is not None and space.cf.proxy_route not in space.cc.route_urls(proxy):
            problems.append(f"proxy lacks {space.cf.proxy_route}")
        if problems:
            raise DeployError("routes wrong: " + "; ".join(problems))
        return Unchanged(f"mirror only on {INTERNAL_DOMAIN}; proxy on its public route")

    steps.run("routes", "verify", check)


def public_routes(urls: list[str]) -> list[str]:
    """The routes a client outside the foundation could reach (any domain but apps.internal)."""
    return [u for u in urls if not u.split("/")[0].endswith("." + INTERNAL_DOMAIN)]
