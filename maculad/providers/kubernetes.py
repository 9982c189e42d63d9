"""Kubernetes Ingresses as a provider: the Ingress watch's changes → complete route snapshots.

The list/watch loop is the adapter's (`adapters.kube.ingresses.IngressWatch`);
this module only builds. The pure per-object builder (`ingress_routes`) runs
for the object an event carries (its result is kept beside the object), so a
rebuild at 1,000 Ingresses is a concatenation, not 1,000 host validations.
After every change the complete spec list goes to `routes.update("kubernetes",
specs)`, which drops equal snapshots. Events already buffered on the stream
are applied together and published once (the publish is scheduled with
`call_soon`, and reading a buffered line does not yield to the loop), so a
burst of N changes costs one table build per read of the stream that holds
them (a few, not N), while a lone event is published on the next loop
iteration. A relist replaces everything at once. While the API
server is away nothing is published: the table keeps the last Ingress routes.
Skipped hosts are logged once per (Ingress, host, reason) while they persist.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypedDict

import structlog

from maculad.adapters.kube.ingresses import IngressKey, IngressUpdate, IngressWatch
from maculad.config import BackoffConfig, Config
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.providers.base import port_maps
from maculad.providers.ingress import IngressRoutes, Skip, combine, ingress_routes
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import Source

log = structlog.get_logger("maculad.providers.kubernetes")


class KubernetesStatus(TypedDict):
    """The `kubernetes` component in `GET /v1/status`: the Ingress watch and what it built."""

    connected: bool
    synced: bool
    kubeconfig: str
    context: str | None
    resource_version: str | None
    ingresses: int
    routes: int
    skipped: int
    last_event_age: float | None
    relists: int
    reconnects: int
    last_error: str | None
    rebuilds: int
    last_build_seconds: float | None
    last_rebuild_seconds: float | None


class KubernetesProvider:
    """Ingress watch → route table (a `Provider`, name "kubernetes")."""

    name: Source = "kubernetes"

    def __init__(
        self,
        *,
        config: Config,
        routes: RouteTableManager,
        metrics: Metrics,
        events: EventBus,
        backoff: BackoffConfig | None = None,
        page_size: int = 500,
    ) -> None:
        self._cfg = config.kubernetes
        self._domain = config.domain
        self._routes = routes
        self._ports = port_maps(
            http_port=config.proxy.http_port,
            https_port=config.proxy.https_port,
            http=self._cfg.ingress_http,
            https=self._cfg.ingress_https,
            udp=self._cfg.ingress_udp,
        )
        self.watch = IngressWatch(config=self._cfg, metrics=metrics, events=events, on_update=self._on_update,
                                  keeping=lambda: self._route_count, backoff=backoff, page_size=page_size)
        self._built: dict[IngressKey, IngressRoutes] = {}
        self._publish_handle: asyncio.Handle | None = None
        self._synced = False
        self._last_rebuild: float | None = None
        self._last_build: float | None = None
        self._rebuilds = 0
        self._route_count = 0
        self._skips: set[tuple[str, str, str]] = set()
        self._skipped = 0

    # ------------------------------------------------------------------ provider

    async def run(self) -> None:
        """The watch loop, forever; only cancellation ends it."""
        await self.watch.run()

    def close(self) -> None:
        """After `run` was cancelled: what was applied is published, the watch is marked down."""
        if self._publish_handle is not None:
            self._publish_handle.cancel()
            self._publish_handle = None
            self._publish()
        self.watch.close()

    def status(self) -> KubernetesStatus:
        w = self.watch.status()
        return {
            "connected": w["connected"],
            "synced": self._synced,
            "kubeconfig": w["kubeconfig"],
            "context": w["context"],
            "resource_version": w["resource_version"],
            "ingresses": w["ingresses"],
            "routes": self._route_count,
            "skipped": self._skipped,
            "last_event_age": w["last_event_age"],
            "relists": w["relists"],
            "reconnects": w["reconnects"],
            "last_error": w["last_error"],
            "rebuilds": self._rebuilds,
            "last_build_seconds": self._last_build,
            "last_rebuild_seconds": self._last_rebuild,
        }

    @property
    def synced(self) -> bool:
        """True once a first list has been published."""
        return self._synced

    # ------------------------------------------------------------------ building

    def _on_update(self, update: IngressUpdate) -> None:
        if update.kind == "relist":
            self._built = {key: self._build(obj) for key, obj in update.objects.items()}
            if self._publish_handle is not None:
                self._publish_handle.cancel()
                self._publish_handle = None
            self._publish()
            self._synced = True
            return
        assert update.key is not None
        if update.obj is None:
            self._built.pop(update.key, None)
        else:
            self._built[update.key] = self._build(update.obj)
        if self._publish_handle is None:
            self._publish_handle = asyncio.get_running_loop().call_soon(self._deferred_publish)

    def _build(self, obj: dict[str, Any]) -> IngressRoutes:
        return ingress_routes(obj, domain=self._domain, ports=self._ports, ingress_class=self._cfg.ingress_class)

    def _deferred_publish(self) -> None:
        self._publish_handle = None
        try:
            self._publish()
        except Exception:
            log.exception("kubernetes_publish_failed")

    def _publish(self) -> None:
        """The complete snapshot from every known Ingress → the route table."""
        t0 = time.perf_counter()
        built = combine(self._built.values())
        self._log_skips(built.skipped)
        self._route_count = len(built.specs)
        t1 = time.perf_counter()
        self._routes.update("kubernetes", built.specs)
        self._last_build = t1 - t0
        self._last_rebuild = time.perf_counter() - t0
        self._rebuilds += 1

    def _log_skips(self, skipped: tuple[Skip, ...]) -> None:
        self._skipped = len(skipped)
        current = {(s.origin, s.host, s.reason) for s in skipped}
        for s in skipped:
            key = (s.origin, s.host, s.reason)
            if key in self._skips:
                continue
            level = log.warning if s.kind in ("malformed", "invalid-host") else (
                log.info if s.kind == "outside-domain" else log.debug)
            level("kubernetes_ingress_host_skipped", ingress=s.origin.removeprefix("kubernetes:"), host=s.host,
                  kind=s.kind, reason=s.reason)
        self._skips = current
