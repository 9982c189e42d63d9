"""A small real `ControlTarget`: the stand-in for what `maculad run` cannot do here.

The CLI tests drive the real daemon (tests/test_ctl_cli.py); this target is kept for
the control server's own tests (tests/test_control_server.py: access rules, limits and
errors in one process) and for the one CLI view the daemon cannot produce on this
machine: a kind cluster under management (`[kind] manage = true` needs kind and its
node image). It is built from the real pieces the daemon uses — `load_config`, the static
provider, `build_table`, the `EventBus` and the views — and every answer is
typed with `maculad.control.protocol`, so mypy holds its JSON to the daemon's
shapes (`_is_a_target` below holds it to `ControlTarget`). Services are a
dict of states that `service_action` really changes; `reload` re-reads the
config file and refuses an invalid one, leaving the table unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from maculad import __version__
from maculad.config import Config, ConfigError, load_config
from maculad.control.api import ControlError
from maculad.control.views import config_view, conflict_view, route_view, table_view
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

    def status(self) -> Status:
        return {
            **config_view(self.config),
            "version": __version__, "pid": os.getpid(), "uptime_seconds": round(time.time() - self.started, 1),
            "ready": True, "summary": f"{len(self.table.routes)} routes",
            "routes": {"count": len(self.table.routes), "by_source": {"config": len(self.table.routes)},
                       "conflicts": len(self.table.conflicts), "version": self.table.version},
            "components": {},
            "tls": {"enabled": False, "error": "disabled (tls.enabled = false)"},
            "tasks": [],
            "last_reload": None,
            "not_ready": [],
            "state": {"path": str(self.config.state_dir / "allocations.json"), "save_error": None,
                      "consecutive_failures": 0, "failing_since": None, "retry_in": None},
        }

    def routes(self) -> RoutesAnswer:
        t = table_view(self.table)
        return {"version": t["version"], "domain": t["domain"], "routes": t["routes"], "conflicts": t["conflicts"],
                "horizons": {"host": {"state": "on", "address": "per route"},
                             "containers": {"state": "off", "address": None,
                                            "reason": "[containers] enabled = false", "port_conflicts": []}}}

    def services(self) -> list[ServiceView]:
        return [self._service(n, s) for n, s in sorted(self.services_state.items())]

    def _service(self, name: str, state: str) -> ServiceView:
        running = state == "running"
        return {
            "service": name, "tier": "docker", "container": f"macula-{name}-1", "container_id": "0123456789ab",
            "docker_state": "running" if running else "exited", "health": None, "exit_code": None if running else 1,
            "policy_source": "label", "up": running, "restarts": self.restarts[name], "waiting_on": None,
            "pending": None, "error": None, "last_error": None if running else "exited with code 1",
            "compose_project": "macula",
            "state": "running" if running else "backoff" if state == "backoff" else "stopped",
            "reason": "" if running else "exited with code 1; restarting in 2s",
            "backoff_seconds": 2.0 if state == "backoff" else 0.0, "policy": "always",
        }

    async def service_action(self, service: str, action: ServiceAction) -> ServiceActionAnswer:
        if not self.config.docker.enabled:
            raise ControlError(409, "the Docker tier is not enabled ([docker] enabled = false)")
        if service not in self.services_state:
            raise ControlError(404, f"no supervised service named {service!r}")
        self.services_state[service] = "stopped" if action == "stop" else "running"
        if action == "restart":
            self.restarts[service] += 1
        self.bus.publish("service_action", service=service, action=action)
        return {"ok": True, "service": service, "action": action}

    def cluster_status(self) -> ClusterStatus:
        if not self.config.kind.manage:
            raise ControlError(409, "kind cluster management is off ([kind] manage = false)")
        ready = self.cluster_state == "ready"
        return {
            "cluster": self.config.kind.cluster, "state": "ready" if ready else "degraded",
            "reason": "all nodes running" if ready else "a node is stopped", "dry_run": False,
            "nodes": [{"name": f"{self.config.kind.cluster}-control-plane", "role": "control-plane",
                       "state": "running", "exit_code": None}],
            "api_ready": ready, "api_error": None, "kubeconfig": "/tmp/kubeconfig", "context": "kind-macula-dev",
            "wired": ready, "wiring": {}, "last_action": None, "last_error": None, "kind_error": None,
            "recreations": 0,
            "restart": {"state": "running", "reason": "", "backoff_seconds": 0.0, "policy": "always",
                        "next_attempt_in": 0.0},
            "dry_run_plans": [],
        }

    async def cluster_recreate(self) -> ClusterRecreated:
        status = self.cluster_status()
        self.bus.publish("cluster_recreated", cluster=status["cluster"])
        return {"ok": True, "cluster": status["cluster"]}

    def powerdns_status(self) -> PowerDNSStatus:
        raise ControlError(409, "PowerDNS is not enabled ([powerdns] enabled = false)")

    def dns_lookup(self, name: str) -> DNSLookup:
        route = self.table.lookup(name)
        if route is None:
            return {"name": name, "rcode": "NXDOMAIN", "answer": None, "route": None,
                    "conflicts": [conflict_view(c) for c in self.table.conflicts if c.name == name]}
        return {"name": name, "rcode": "NOERROR", "answer": route.ip, "ttl": self.config.dns.ttl,
                "route": route_view(route),
                "conflicts": [conflict_view(c) for c in self.table.conflicts if c.name == route.name]}

    async def reload(self) -> ReloadAnswer:
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            self.bus.publish("reload", ok=False, error=str(exc))
            raise ControlError(400, f"config refused, nothing changed: {exc}") from None
        old = {r.name for r in self.table.routes}
        self.config = cfg
        self.table = self._build(cfg, version=self.table.version + 1)
        changed = ["routes"] if {r.name for r in self.table.routes} != old else []
        self.bus.publish("reload", ok=True, changed=changed)
        return {"ok": True, "changed": changed}

    def follow_events(self, *, replay: int) -> AsyncIterator[Event]:
        return self.bus.follow(replay=replay)


if TYPE_CHECKING:
    from maculad.control.protocol import (
        ClusterRecreated,
        ClusterStatus,
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
    from maculad.control.api import ControlTarget

    def _is_a_target(t: TableTarget) -> ControlTarget:
        return t  # mypy: the stand-in has the daemon's shapes


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
