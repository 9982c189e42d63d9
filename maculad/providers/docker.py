"""Docker labels as a provider: a thin loop around the pure `build_routes`.

It subscribes to the one Docker inventory; every update only sets a flag, and
the loop rebuilds the complete set of routes from the whole snapshot and
hands it to the table (equal snapshots are dropped there). Bursts of events
coalesce into one rebuild. While the engine is away the last routes stay (the
relay answers for them as it can); a fresh list after reconnecting replaces
them. Label errors are logged once per container and reason and kept for status.
"""

from __future__ import annotations

import asyncio

import structlog

from maculad.adapters.docker.inventory import DockerInventory, InventoryUpdate
from maculad.providers.docker_labels import LabelError, build_routes
from maculad.routes.manager import RouteTableManager

log = structlog.get_logger("maculad.providers.docker")


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
    ) -> None:
        self._inventory = inventory
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

    def rebuild(self) -> None:
        specs, errors = build_routes(
            self._inventory.snapshot.values(), domain=self._domain, http_port=self._http_port,
            https_port=self._https_port, project=self._project, allow_non_loopback=self._allow_non_loopback,
        )
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

    def status(self) -> dict[str, object]:
        return {
            "routes": self.route_count,
            "label_errors": [{"container": e.container, "error": e.reason} for e in self.errors],
        }
