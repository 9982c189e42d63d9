"""What `hosts`, `resolver` and `doctor` need to know — from the daemon, or offline from a config file.

`--config FILE` on those commands reads the file (and the allocations under its
`state_dir`) instead of asking the daemon, so they work before the daemon runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from maculad.control.protocol import RouteView
from maculad.core.net import Backend, parse_hostport
from maculad.ctl.client import ControlClient, DaemonUnavailable
from maculad.ctl.context import Ctx, Failure


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The daemon's domain, DNS addresses and routes, from the daemon or the config file."""

    source: str
    domain: str
    dns_listen: tuple[Backend, ...]
    routes: tuple[RouteView, ...]
    docker_enabled: bool = False
    kind_manage: bool = False


def _parse_addr(text: str) -> Backend | None:
    try:
        return parse_hostport(text)
    except ValueError:
        return None


def from_daemon(client: ControlClient) -> Snapshot:
    status = client.status()
    routes = client.routes()
    return Snapshot(
        source="daemon",
        domain=status["domain"],
        dns_listen=tuple(b for b in (_parse_addr(a) for a in status["dns_listen"]) if b),
        routes=tuple(routes["routes"]),
        docker_enabled=status["docker_enabled"],
        kind_manage=status["kind_manage"],
    )


def from_config(path: str) -> Snapshot:
    from maculad.config import ConfigError, load_config
    from maculad.control.views import table_view
    from maculad.providers.static import config_routes
    from maculad.routes.store import AllocationStore
    from maculad.routes.table import build_table

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    try:
        allocations = AllocationStore(state_dir=cfg.state_dir).load()
    except Exception:  # an unreadable state dir only means IPs may differ from the daemon's
        allocations = {}
    tbl, _ = build_table(domain=cfg.domain, version=0, specs={"config": config_routes(cfg)},
                         allocations=allocations, pool=cfg.proxy.pool,
                         allow_non_loopback=cfg.proxy.allow_non_loopback)
    return Snapshot(
        source=f"config {path}", domain=cfg.domain, dns_listen=cfg.dns.listen,
        routes=tuple(table_view(tbl)["routes"]), docker_enabled=cfg.docker.enabled, kind_manage=cfg.kind.manage,
    )


def snapshot(ctx: Ctx) -> Snapshot:
    """From `--config FILE` when given, else from the daemon."""
    cfg = ctx.option("config")
    if cfg:
        return from_config(cfg)
    try:
        return from_daemon(ctx.client)
    except DaemonUnavailable as exc:
        raise exc.amended(" (or pass --config FILE to read the config file instead)") from None
