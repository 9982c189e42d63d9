"""The control facade: what `maculactl` (through the control socket) and the status page may ask and do.

`ControlFacade` implements `maculad.control.api.ControlTarget` (and the page's
read-only `StatusSource`) over the daemon's parts. It only reads them and
forwards actions (service start/stop/restart, cluster recreate, reload); it
builds and stops nothing, so the daemon stays the composition root and this
module is where every answer's shape (control/protocol.py) is filled in.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeVar

from maculad import __version__
from maculad.control.api import ControlError
from maculad.control.views import config_view, conflict_view, route_view, table_view
from maculad.core.names import qualify
from maculad.horizons.plan import conflict_view as port_conflict_view
from maculad.observability import sdnotify

if TYPE_CHECKING:
    from maculad.app.daemon import Daemon
    from maculad.control.protocol import (
        ClusterRecreated,
        ClusterStatus,
        ComponentError,
        Components,
        ContainerHorizonView,
        DNSLookup,
        Event,
        PowerDNSStatus,
        ReloadAnswer,
        RoutesAnswer,
        ServiceAction,
        ServiceActionAnswer,
        ServiceView,
        Status,
    )

_T = TypeVar("_T")


class ControlFacade:
    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    def status(self) -> Status:
        d = self._d
        comps: Components = {}
        if d.metrics_server is not None:
            comps["metrics"] = _guarded(d.metrics_server.status)
        if d.dns is not None:
            comps["dns"] = _guarded(d.dns.status)
        if d.relay is not None:
            comps["proxy"] = _guarded(d.relay.status)
        if d.containers is not None:
            comps["containers"] = _guarded(d.containers.status)
        if d.docker is not None:
            comps["docker"] = _guarded(d.docker.status)
        if d.kubernetes is not None:
            comps["kubernetes"] = _guarded(d.kubernetes.status)
        if d.coredns is not None:
            comps["coredns"] = _guarded(d.coredns.status)
        if d.cluster is not None:
            comps["kind"] = _guarded(d.cluster.status)
        if d.powerdns is not None:
            comps["powerdns"] = _guarded(d.powerdns.status)
        if d.control is not None:
            comps["control"] = _guarded(d.control.status)
        if d.web is not None:
            comps["web"] = _guarded(d.web.status)
        table = d.table.current
        not_ready = d.not_ready()
        return {
            **config_view(d.config),
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - d.started_at, 1),
            "ready": d.ready and not not_ready,
            "not_ready": not_ready,
            "summary": d.summary(),
            "routes": {"count": len(table.routes), "by_source": {k: n for k, n in table.by_source().items()},
                       "conflicts": len(table.conflicts), "version": table.version},
            "components": comps,
            "tls": d.tls.status() if d.tls is not None else {"enabled": False, "error": d.tls_error},
            "tasks": d.owner.status(),
            "limits": d.limits.as_dict() if d.limits is not None else None,
            "watchdog": sdnotify.default_notifier().watchdog_status(),
            "last_reload": d.last_reload,
            "state": d.table.state_status(),
        }

    def routes(self) -> RoutesAnswer:
        d = self._d
        c = d.containers
        containers: ContainerHorizonView = (
            {"state": "off", "address": None, "reason": "[containers] enabled = false", "port_conflicts": []}
            if c is None else
            {"state": c.status()["state"], "address": c.address, "reason": c.status()["reason"],
             "port_conflicts": [port_conflict_view(p) for p in c.port_conflicts()]})
        table = table_view(d.table.current)
        view: RoutesAnswer = {
            "version": table["version"], "domain": table["domain"], "routes": table["routes"],
            "conflicts": table["conflicts"],
            "horizons": {"host": {"state": "on" if d.relay is not None else "off", "address": "per route"},
                         "containers": containers},
        }
        if d.powerdns is not None:
            view["powerdns_conflicts"] = d.powerdns.status()["conflicts"]
        return view

    def powerdns_status(self) -> PowerDNSStatus:
        if self._d.powerdns is None:
            raise ControlError(409, "PowerDNS is not enabled ([powerdns] enabled = false)")
        return self._d.powerdns.status()

    def services(self) -> list[ServiceView]:
        return self._d.docker.services() if self._d.docker is not None else []

    async def service_action(self, service: str, action: ServiceAction) -> ServiceActionAnswer:
        d = self._d
        if d.docker is None:
            raise ControlError(409, "the Docker tier is not enabled ([docker] enabled = false)")
        sup = d.docker.supervisor
        try:
            if action == "start":
                await sup.start_service(service)
            elif action == "stop":
                await sup.stop_service(service)
            else:
                await sup.restart_service(service)
        except KeyError:
            raise ControlError(404, f"no supervised service named {service!r}") from None
        except ValueError as exc:
            raise ControlError(409, str(exc)) from None
        d.events.publish("service_action", service=service, action=action)
        return {"ok": True, "service": service, "action": action}

    def cluster_status(self) -> ClusterStatus:
        if self._d.cluster is None:
            raise ControlError(409, "kind cluster management is off ([kind] manage = false)")
        return self._d.cluster.status()

    async def cluster_recreate(self) -> ClusterRecreated:
        if self._d.cluster is None:
            raise ControlError(409, "kind cluster management is off ([kind] manage = false)")
        await self._d.cluster.recreate("requested with maculactl cluster recreate")
        return {"ok": True, "cluster": self._d.config.kind.cluster}

    def dns_lookup(self, name: str) -> DNSLookup:
        d = self._d
        table = d.table.current
        n = name.strip().lower().rstrip(".")
        domain = d.config.domain
        if n != domain and not n.endswith("." + domain):
            try:
                n = qualify(n, domain)
            except ValueError as exc:
                raise ControlError(400, f"{name!r}: {exc}") from None
        route = table.lookup(n)
        if route is None:
            return {"name": n, "rcode": "NXDOMAIN", "answer": None, "route": None,
                    "conflicts": [conflict_view(c) for c in table.conflicts if c.name == n]}
        return {
            "name": n,
            "rcode": "NOERROR",
            "answer": route.ip,
            "ttl": d.config.dns.ttl,
            "route": route_view(route),
            "conflicts": [conflict_view(c) for c in table.conflicts if c.name == route.name],
        }

    async def reload(self) -> ReloadAnswer:
        return await self._d.reload()

    async def follow_events(self, *, replay: int) -> AsyncIterator[Event]:
        async for event in self._d.events.follow(replay=replay):
            yield event


def _guarded(status: Callable[[], _T]) -> _T | ComponentError:
    """A component's status, or what went wrong reading it: a status bug must not break the rest."""
    try:
        return status()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
