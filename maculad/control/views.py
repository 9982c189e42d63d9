"""The route table and the config as the control socket shows them (shapes in protocol.py).

Pure helpers over the daemon's own values, so `maculactl`'s tables, `hosts`,
`resolver` and `doctor` find what they need without knowing the daemon's
internals: `table_view(table)` is `TableView` (the base of `GET /v1/routes`),
`config_view(config)` is `ConfigView` (merged into `GET /v1/status`).
"""

from __future__ import annotations

from maculad.config import Config
from maculad.control.protocol import ConfigView, ConflictView, RouteView, TableView
from maculad.routes.model import Conflict, Route
from maculad.routes.table import RouteTable


def route_view(route: Route) -> RouteView:
    return {
        "name": route.name,
        "ip": route.ip,
        "source": route.source,
        "origin": route.origin,
        "service": route.service,
        "ports": [{"proto": pm.proto, "port": pm.port, "backend": str(pm.backend)} for pm in route.ports],
    }


def conflict_view(c: Conflict) -> ConflictView:
    return {"kind": c.kind, "name": c.name, "loser": c.loser, "winner": c.winner, "reason": c.reason,
            "same_backends": c.same_backends}


def table_view(table: RouteTable) -> TableView:
    return {
        "version": table.version,
        "domain": table.domain,
        "routes": [route_view(r) for r in sorted(table.routes, key=lambda r: r.name)],
        "conflicts": [conflict_view(c) for c in table.conflicts],
    }


def config_view(config: Config) -> ConfigView:
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
