"""What maculad knows about a container: frozen `ContainerInfo` records (pure).

The inventory turns the engine's `GET /containers/{id}/json` answer into a
`ContainerInfo` with `parse_inspect` and an event into a `ContainerEvent` with
`parse_event`; the provider and the supervisor only ever see these records.
Parsing never raises on odd input: a missing or malformed field becomes the
empty value, so one strange container cannot break the inventory.

Published ports are the *actual* bindings while the container runs
(`NetworkSettings.Ports`) and the configured fixed bindings otherwise
(`HostConfig.PortBindings` with a host port), so a supervised container that
is restarting keeps its route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_DEPENDS_ON = "com.docker.compose.depends_on"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class HostBinding:
    host_ip: str
    host_port: int


@dataclass(frozen=True, slots=True)
class Dependency:
    """One entry of compose's `com.docker.compose.depends_on` label."""

    service: str
    condition: str = "service_started"
    restart: bool = False


@dataclass(frozen=True, slots=True, eq=True)
class ContainerInfo:
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    state: str = "created"
    """Docker's state: created, running, paused, restarting, removing, exited, dead."""
    health: str | None = None
    """starting, healthy, unhealthy; None when the container has no health check."""
    exit_code: int | None = None
    ports: tuple[tuple[str, tuple[HostBinding, ...]], ...] = ()
    """(container port "80/tcp", host bindings), sorted."""
    image: str = ""
    started_at: str = ""
    finished_at: str = ""
    oom_killed: bool = False
    network_mode: str = ""
    """HostConfig.NetworkMode: "host" means container ports are host ports on 127.0.0.1."""
    docker_restart: str = ""
    """Docker's own restart policy (HostConfig.RestartPolicy.Name), "" or "no" when none."""
    compose_project: str | None = None
    compose_service: str | None = None
    depends_on: tuple[Dependency, ...] = ()
    depends_on_error: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def ready(self) -> bool:
        """Running, and healthy when it has a health check."""
        return self.state == "running" and self.health in (None, "healthy")

    def bindings(self, port: str) -> tuple[HostBinding, ...]:
        for p, b in self.ports:
            if p == port:
                return b
        return ()


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """One container event of the engine's stream, reduced to what maculad uses."""

    id: str
    action: str
    """create, start, die, stop, kill, destroy, health_status, rename, pause, unpause, oom, ..."""
    name: str = ""
    exit_code: int | None = None
    signal: str | None = None
    health: str | None = None
    time: float = 0.0


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _d(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def parse_depends_on(text: str) -> tuple[tuple[Dependency, ...], str | None]:
    """`db:service_healthy:false,cache:service_started:true` → dependencies (and an error, if any part is bad).

    Compose v2 writes `service:condition:restart`; older versions wrote only
    `service` or `service:condition`. Bad entries are skipped and reported.
    """
    deps: list[Dependency] = []
    errors: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        svc = parts[0].strip()
        if not svc or len(parts) > 3:
            errors.append(f"{item!r} is not service:condition:restart")
            continue
        cond = parts[1].strip() if len(parts) > 1 and parts[1].strip() else "service_started"
        if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
            errors.append(f"{item!r}: unknown condition {cond!r}")
            continue
        restart = len(parts) > 2 and parts[2].strip().lower() == "true"
        deps.append(Dependency(svc, cond, restart))
    return tuple(deps), ("; ".join(errors) or None)


def _bindings(raw: Any) -> tuple[HostBinding, ...]:
    out: list[HostBinding] = []
    if not isinstance(raw, list):
        return ()
    for b in raw:
        if not isinstance(b, dict):
            continue
        port = _int(b.get("HostPort"))
        if port is None or not 0 < port < 65536:
            continue
        out.append(HostBinding(_s(b.get("HostIp")), port))
    return tuple(out)


def _ports(raw: Mapping[str, Any]) -> tuple[tuple[str, tuple[HostBinding, ...]], ...]:
    out = []
    for key, val in raw.items():
        if not isinstance(key, str):
            continue
        b = _bindings(val)
        if b:
            out.append((key, b))
    return tuple(sorted(out))


def parse_inspect(data: Mapping[str, Any]) -> ContainerInfo:
    """The engine's container inspect answer → `ContainerInfo`."""
    state = _d(data.get("State"))
    config = _d(data.get("Config"))
    host = _d(data.get("HostConfig"))
    net = _d(data.get("NetworkSettings"))
    raw_labels = _d(config.get("Labels"))
    labels = MappingProxyType({k: v for k, v in raw_labels.items() if isinstance(k, str) and isinstance(v, str)})
    status = _s(state.get("Status")) or "created"
    health_s = _s(_d(state.get("Health")).get("Status"))
    health = health_s if health_s in ("starting", "healthy", "unhealthy") else None
    if status == "running":
        ports = _ports(_d(net.get("Ports")))
    else:
        ports = _ports(_d(host.get("PortBindings")))
        health = None
    exit_code = _int(state.get("ExitCode")) if status in ("exited", "dead") else None
    deps, dep_err = parse_depends_on(labels.get(COMPOSE_DEPENDS_ON, ""))
    return ContainerInfo(
        id=_s(data.get("Id")),
        name=_s(data.get("Name")).lstrip("/"),
        labels=labels,
        state=status,
        health=health,
        exit_code=exit_code,
        ports=ports,
        image=_s(config.get("Image")),
        started_at=_s(state.get("StartedAt")),
        finished_at=_s(state.get("FinishedAt")),
        oom_killed=state.get("OOMKilled") is True,
        network_mode=_s(host.get("NetworkMode")),
        docker_restart=_s(_d(host.get("RestartPolicy")).get("Name")),
        compose_project=labels.get(COMPOSE_PROJECT),
        compose_service=labels.get(COMPOSE_SERVICE),
        depends_on=deps,
        depends_on_error=dep_err,
    )


def parse_event(data: Mapping[str, Any]) -> ContainerEvent | None:
    """One JSON object of `GET /events` → `ContainerEvent`, or None when it is not about a container."""
    if data.get("Type") != "container":
        return None
    actor = _d(data.get("Actor"))
    attrs = _d(actor.get("Attributes"))
    cid = _s(actor.get("ID")) or _s(data.get("id"))
    action_full = _s(data.get("Action")) or _s(data.get("status"))
    if not cid or not action_full:
        return None
    action, _, detail = action_full.partition(":")
    health = detail.strip() if action == "health_status" and detail.strip() else None
    t = data.get("timeNano")
    when = t / 1e9 if isinstance(t, int) else float(data["time"]) if isinstance(data.get("time"), int) else 0.0
    return ContainerEvent(
        id=cid,
        action=action.strip(),
        name=_s(attrs.get("name")),
        exit_code=_int(attrs.get("exitCode")),
        signal=_s(attrs.get("signal")) or None,
        health=health,
        time=when,
    )


def service_name(info: ContainerInfo, project: str) -> str:
    """The name a container is supervised and routed under.

    A container of the platform's compose project is its compose service
    ("grafana"); any other container is its container name.
    """
    if info.compose_service and info.compose_project == project:
        return info.compose_service
    return info.name


def parse_time(text: str) -> float | None:
    """Docker's RFC 3339 times with nanoseconds (`2024-01-01T10:00:00.123456789Z`) → epoch seconds."""
    from datetime import datetime

    s = text.strip()
    if not s or s.startswith("0001-"):
        return None
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    head, dot, rest = s.partition(".")
    if dot:
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac):]
        s = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None
