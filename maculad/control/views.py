"""The JSON shapes `maculactl` reads, built from the daemon's own values.

The daemon implements `ControlTarget`; these pure helpers give it the
documented shapes so `maculactl`'s tables, `hosts`, `resolver` and `doctor`
find what they need without knowing the daemon's internals:

- `table_view(table)` for `routes()`: `{"version", "domain", "routes": [...],
  "conflicts": [...]}`; each route `{"name", "ip", "source", "origin",
  "service", "ports": [{"proto", "port", "backend"}]}`.
- `config_view(config)` merged into `status()`: `domain`, `dns_listen`,
  `metrics_listen`, `control_socket`, `http_port`, `https_port`,
  `docker_enabled`, `kind_manage`, `kind_cluster`, `config_path`.
"""

from __future__ import annotations

from typing import Any

from maculad.config import Config
from maculad.routes.model import Conflict, Route
from maculad.routes.table import RouteTable


def route_view(route: Route) -> dict[str, Any]:
    return {
        "name": route.name,
        "ip": route.ip,
        "source": route.source,
        "origin": route.origin,
        "service": route.service,
        "ports": [{"proto": pm.proto, "port": pm.port, "backend": str(pm.backend)} for pm in route.ports],
    }


def conflict_view(c: Conflict) -> dict[str, Any]:
    return {"kind": c.kind, "name": c.name, "loser": c.loser, "winner": c.winner, "reason": c.reason,
            "same_backends": c.same_backends}


def table_view(table: RouteTable) -> dict[str, Any]:
    return {
        "version": table.version,
        "domain": table.domain,
        "routes": [route_view(r) for r in sorted(table.routes, key=lambda r: r.name)],
        "conflicts": [conflict_view(c) for c in table.conflicts],
    }


def config_view(config: Config) -> dict[str, Any]:
    return {
        "config_path": str(config.path),
        "domain": config.domain,
        "dns_listen": [str(b) for b in config.dns.listen],
        "metrics_listen": str(config.metrics.listen) if config.metrics.listen else None,
        "control_socket": str(config.control.socket),
        "http_port": config.proxy.http_port,
        "https_port": config.proxy.https_port,
        "docker_enabled": config.docker.enabled,
        "kind_manage": config.kind.manage,
        "kind_cluster": config.kind.cluster,
    }
