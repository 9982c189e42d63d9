"""The config file as a provider: `[[route]]` tables → route specs (pure)."""

from __future__ import annotations

from maculad.config import Config
from maculad.providers.base import port_maps
from maculad.routes.model import RouteSpec


def config_routes(cfg: Config) -> list[RouteSpec]:
    return [
        RouteSpec(
            name=r.name,
            source="config",
            origin=f"config:{r.name}",
            ip=r.ip,
            service=r.service,
            tls=r.tls,
            h2c=r.h2c,
            ports=port_maps(
                http_port=cfg.proxy.http_port,
                https_port=cfg.proxy.https_port,
                http=r.http,
                https=r.https,
                tcp=r.tcp,
                udp=r.udp,
            ),
        )
        for r in cfg.routes
    ]
