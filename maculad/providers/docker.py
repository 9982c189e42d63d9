"""Docker labels as a provider: a thin loop around the pure `build_routes`.

It subscribes to the one Docker inventory; every update only sets a flag, and
the loop rebuilds the complete set of routes from the whole snapshot and
hands it to the table (equal snapshots are dropped there). Bursts of events
coalesce into one rebuild. While the engine is away the last routes stay (the
relay answers for them as it can); a fresh list after reconnecting replaces
them. Label errors are logged once per container and reason and kept for status.

The supervisor's holds come in as data (`holds()`, and `mark_changed` when
they change); the provider remembers each running container's route so a
container that stops keeps its name, IP and ports, held, until it is removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TypedDict

import structlog

from maculad.adapters.docker.inventory import DockerInventory, InventoryUpdate
from maculad.providers.docker_labels import LabelError, build_routes, remember
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import RouteSpec, ServiceHold

log = structlog.get_logger("maculad.providers.docker")


class LabelErrorView(TypedDict):
    container: str
    error: str


class DockerProviderStatus(TypedDict):
    routes: int
    label_errors: list[LabelErrorView]


class DockerProvider:
    name = "docker"

    def __init__(
        self,
        *,
        inventory: DockerInventory,
        routes: RouteTableManager,
        domain: str,
        http_port: int,
        https_port: int,
        project: str,
        allow_non_loopback: bool = False,
        holds: Callable[[], Mapping[str, ServiceHold]] = dict,
    ) -> None:
        self._inventory = inventory
        self._holds = holds
        self._remembered: dict[str, RouteSpec] = {}
        self._routes = routes
        self._domain = domain
        self._http_port = http_port
        self._https_port = https_port
        self._project = project
        self._allow_non_loopback = allow_non_loopback
        self._changed = asyncio.Event()
        self._reported: set[LabelError] = set()
        self.errors: list[LabelError] = []
        self.route_count = 0
        inventory.subscribe(self._on_update)

    def _on_update(self, update: InventoryUpdate) -> None:
        if update.kind != "disconnected":
            self._changed.set()

    def mark_changed(self) -> None:
        """The supervisor's holds changed: rebuild soon."""
        self._changed.set()

    def rebuild(self) -> None:
        snapshot = self._inventory.snapshot
        specs, errors = build_routes(
            snapshot.values(), domain=self._domain, http_port=self._http_port,
            https_port=self._https_port, project=self._project, allow_non_loopback=self._allow_non_loopback,
            holds=self._holds(), remembered=self._remembered,
        )
        self._remembered = remember(snapshot, specs, self._remembered)
        for e in errors:
            if e not in self._reported:
                log.error("docker_label_error", container=e.container, error=e.reason)
        self._reported = set(errors)
        self.errors = errors
        self.route_count = len(specs)
        self._routes.update("docker", specs)

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            self.rebuild()

    def close(self) -> None:
        self._inventory.unsubscribe(self._on_update)

    def status(self) -> DockerProviderStatus:
        return {
            "routes": self.route_count,
            "label_errors": [{"container": e.container, "error": e.reason} for e in self.errors],
        }
