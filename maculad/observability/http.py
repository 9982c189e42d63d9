"""`/metrics`, `/healthz` and `/readyz` on `metrics.listen` (aiohttp).

`/healthz` says the event loop answers. `/readyz` asks the daemon's readiness
callback, which lists what is not ready (still starting, or a configured
listener — DNS, relay, page — that is not serving, with the reason); 200 with
"ok" or 503 with one reason per line.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypedDict

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from maculad.observability.metrics import Metrics
from maculad.core.net import Backend, tcp_listen_socket


class MetricsEndpointStatus(TypedDict):
    """The `metrics` component: where /metrics, /healthz and /readyz are served."""

    listen: str
    bound: tuple[str, int] | None


class MetricsServer:
    name = "metrics"

    def __init__(self, *, listen: Backend, metrics: Metrics, not_ready: Callable[[], list[str]]) -> None:
        self._listen = listen
        self._metrics = metrics
        self._not_ready = not_ready
        self._runner: web.AppRunner | None = None
        self._bound: tuple[str, int] | None = None

    @property
    def bound(self) -> tuple[str, int] | None:
        return self._bound

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Serve on `listen` (or on `sock`, already bound there: a reload binds first)."""
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/readyz", self._handle_readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            if sock is None:
                sock = tcp_listen_socket(self._listen, backlog=128)
            site = web.SockSite(runner, sock, backlog=128)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"metrics: {exc.strerror}") from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            host, port = sockets[0].getsockname()[:2]
            self._bound = (host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def status(self) -> MetricsEndpointStatus:
        return {"listen": str(self._listen), "bound": self._bound}

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        reasons = self._not_ready()
        if reasons:
            return web.Response(status=503, text="".join(f"{r}\n" for r in reasons))
        return web.Response(text="ok\n")
