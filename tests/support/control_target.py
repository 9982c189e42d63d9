"""A small real `ControlTarget` for the control tests.

It is built from the real pieces the daemon uses — `load_config`, the static
provider, `build_table`, the `EventBus` and the views — so the JSON the
control server and `maculactl` see has the daemon's shapes. Services are a
dict of states that `service_action` really changes; `reload` re-reads the
config file and refuses an invalid one, leaving the table unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from maculad.config import Config, ConfigError, load_config
from maculad.control.api import ControlError, ServiceAction
from maculad.control.views import config_view, table_view
from maculad.core.events import EventBus
from maculad.providers.static import config_routes
from maculad.routes.table import RouteTable, build_table


def write_config(path: Path, *, dns_port: int, routes: str, extra: str = "", socket: str = "/tmp/x.sock") -> None:
    path.write_text(
        f'domain = "macula.local"\nstate_dir = "{path.parent / "state"}"\n'
        f'[dns]\nlisten = ["127.0.0.153:{dns_port}"]\n'
        f'[proxy]\npool = "127.0.10.0/24"\nhttp_port = 8080\nhttps_port = 8443\n'
        f'[control]\nsocket = "{socket}"\n{extra}\n{routes}'
    )


class TableTarget:
    def __init__(self, *, config_path: Path, services: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.config: Config = load_config(config_path)
        self.table = self._build(self.config, version=1)
        self.bus = EventBus()
        self.services_state = dict(services or {})
        self.restarts: dict[str, int] = {n: 0 for n in self.services_state}
        self.started = time.time()
        self.cluster_state = "ready"

    @staticmethod
    def _build(cfg: Config, *, version: int) -> RouteTable:
        table, _ = build_table(domain=cfg.domain, version=version, specs={"config": config_routes(cfg)},
                               allocations={}, pool=cfg.proxy.pool)
        return table

    def status(self) -> dict[str, Any]:
        return {
            "version": "0.1.0", "pid": os.getpid(), "uptime": round(time.time() - self.started, 1),
            **config_view(self.config),
            "components": {"dns": {"listeners": len(self.config.dns.listen)},
                           "routes": {"count": len(self.table.routes), "version": self.table.version}},
        }

    def routes(self) -> dict[str, Any]:
        return table_view(self.table)

    def services(self) -> list[dict[str, Any]]:
        return [{"name": n, "state": s, "restarts": self.restarts[n], "backoff": 0.0, "last_error": None}
                for n, s in sorted(self.services_state.items())]

    async def service_action(self, service: str, action: ServiceAction) -> dict[str, Any]:
        if not self.config.docker.enabled:
            raise ControlError(409, "Docker is disabled in the config")
        if service not in self.services_state:
            raise ControlError(404, f"no service named {service!r}")
        self.services_state[service] = "stopped" if action == "stop" else "running"
        if action == "restart":
            self.restarts[service] += 1
        self.bus.publish("service_" + action, service=service)
        return {"service": service, "action": action, "state": self.services_state[service]}

    def cluster_status(self) -> dict[str, Any]:
        if not self.config.kind.manage:
            raise ControlError(409, "kind management is off (kind.manage = false)")
        return {"cluster": self.config.kind.cluster, "state": self.cluster_state,
                "ready": self.cluster_state == "ready"}

    async def cluster_recreate(self) -> dict[str, Any]:
        status = self.cluster_status()
        self.bus.publish("cluster_recreated", cluster=status["cluster"])
        return {**status, "recreated": True}

    def powerdns_status(self) -> dict[str, Any]:
        raise ControlError(409, "PowerDNS is not enabled ([powerdns] enabled = false)")

    def dns_lookup(self, name: str) -> dict[str, Any]:
        route = self.table.lookup(name)
        if route is None:
            in_zone = name == self.config.domain or name.endswith("." + self.config.domain)
            return {"name": name, "rcode": "NXDOMAIN" if in_zone else "REFUSED", "answer": None}
        return {"name": name, "rcode": "NOERROR", "answer": route.ip, "source": route.source,
                "origin": route.origin}

    async def reload(self) -> dict[str, Any]:
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            self.bus.publish("reload_failed", error=str(exc))
            raise ControlError(400, f"config refused, nothing changed: {exc}") from None
        old = {r.name for r in self.table.routes}
        self.config = cfg
        self.table = self._build(cfg, version=self.table.version + 1)
        new = {r.name for r in self.table.routes}
        result = {"reloaded": True, "added": sorted(new - old), "removed": sorted(old - new)}
        self.bus.publish("reloaded", **result)
        return result

    def follow_events(self, *, replay: int) -> AsyncIterator[dict[str, Any]]:
        return self.bus.follow(replay=replay)


def short_dir(prefix: str = "mctl") -> Path:
    """A short, world-traversable directory: unix socket paths are limited to 107 bytes, and
    tests that connect as another user need to reach the socket."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def python_for_others() -> str | None:
    """A Python interpreter another user can execute (the venv's may live under 0700 /root)."""
    import shutil
    import sys

    for cand in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not cand:
            continue
        real = Path(cand).resolve()
        if real.exists() and all(os.stat(p).st_mode & 0o001 for p in [*real.parents, real]):
            return str(real)
    return None
