"""The Docker tier as one component: inventory + provider + supervisor + bring-up.

`DockerTier(...)` is what the daemon builds when `docker.enabled` is true. The
tier owns a single `DockerInventory` (one event stream, one list) that the
label provider, the container supervisor and compose bring-up all consume.
Their four loops (`inventory.run`, `provider.run`, `supervisor.run`,
`compose.run`) are in the daemon's task list; `stop()`, after the daemon
cancelled them, releases subscriptions and closes the engine client.
Containers are never stopped when maculad stops.

The supervisor's holds feed the provider (`holds()` and `on_holds_changed`), so
a service that is stopped, restarting or failed keeps its route, held, and
its HTTP port answers a 503 page saying why; the relay never asks the
supervisor anything.

With the engine absent the inventory keeps retrying with backoff while DNS and
static routes work, and status carries the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from maculad.config import Config
from maculad.control.protocol import DockerStatus
from maculad.adapters.docker.api import EngineAPI, DockerAPI, resolve_endpoint
from maculad.adapters.docker.compose import ComposeBringUp
from maculad.adapters.docker.inventory import DockerInventory
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.providers.docker import DockerProvider
from maculad.routes.manager import RouteTableManager
from maculad.supervise.containers import ContainerSupervisor, ServiceView

log = structlog.get_logger("maculad.adapters.docker")


class DockerTier:
    name = "docker"

    def __init__(
        self,
        *,
        config: Config,
        routes: RouteTableManager,
        metrics: Metrics,
        events: EventBus,
        api: DockerAPI | None = None,
        labels: Sequence[str] = (),
        stop_timeout: int | None = None,
    ) -> None:
        self._config = config
        self.endpoint = resolve_endpoint(config.docker.host)
        self.api: DockerAPI = api if api is not None else EngineAPI(endpoint=self.endpoint)
        self.inventory = DockerInventory(api=self.api, metrics=metrics, labels=(*config.docker.labels, *labels))
        self.supervisor = ContainerSupervisor(
            inventory=self.inventory, api=self.api, config=config.docker, metrics=metrics, events=events,
            stop_timeout=stop_timeout,
        )
        # The supervisor's state reaches the routes as data: a stopped or restarting service stays routed, held.
        self.provider = DockerProvider(
            inventory=self.inventory, routes=routes, domain=config.domain, http_port=config.proxy.http_port,
            https_port=config.proxy.https_port, project=config.docker.compose_project,
            allow_non_loopback=config.proxy.allow_non_loopback, holds=self.supervisor.holds,
        )
        self.supervisor.on_holds_changed = self.provider.mark_changed
        self.compose = ComposeBringUp(
            inventory=self.inventory, files=config.docker.compose_files, project=config.docker.compose_project,
            configured_command=config.docker.compose_command, docker_host=config.docker.host,
        )

    async def stop(self) -> None:
        """After the tier's tasks were cancelled: release what they subscribed to and the engine client."""
        await self.supervisor.close()
        self.provider.close()
        self.compose.close()
        await self.api.close()

    # ------------------------------------------------------------------ control API

    def services(self) -> list[ServiceView]:
        """`maculactl services`: every supervised container with its state and reason."""
        return self.supervisor.services()

    def is_restarting(self, service: str) -> bool:
        return self.supervisor.is_restarting(service)

    def status(self) -> DockerStatus:
        inv = self.inventory.status()
        return {
            "enabled": True,
            **inv,
            "reason": None if self.inventory.connected else (
                self.inventory.last_error or "connecting to the Docker engine"),
            "provider": self.provider.status(),
            "supervisor": self.supervisor.status(),
            "compose": self.compose.status(),
        }
