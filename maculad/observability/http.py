"""`/metrics`, `/healthz` and `/readyz` on `metrics.listen` (on `core.httpserver`).

`/healthz` says the event loop answers. `/readyz` asks the daemon's readiness
callback, which lists what is not ready (still starting, or a configured
listener — DNS, relay, page — that is not serving, with the reason); 200 with
"ok" or 503 with one reason per line. Other paths are 404, other methods 405.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypedDict

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from maculad.core.httpserver import HTTPServer, Limits, Request, Response, Router, StreamResponse
from maculad.core.net import Backend, tcp_listen_socket
from maculad.observability.metrics import Metrics

#: A scraper keeps one connection; a few more for people with curl.
LIMITS = Limits(keepalive=75.0, max_body=0, max_connections=64, grace=2.0)


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
        self._http: HTTPServer | None = None
        self._bound: tuple[str, int] | None = None
        self._router = Router()
        self._router.get("/metrics", self._handle_metrics)
        self._router.get("/healthz", self._handle_healthz)
        self._router.get("/readyz", self._handle_readyz)

    @property
    def bound(self) -> tuple[str, int] | None:
        return self._bound

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Serve on `listen` (or on `sock`, already bound there: a reload binds first)."""
        try:
            if sock is None:
                sock = tcp_listen_socket(self._listen, backlog=128)
            server = HTTPServer(name="metrics", handler=self._dispatch, limits=LIMITS)
            await server.serve(sock)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise OSError(exc.errno, f"metrics: {exc.strerror}") from exc
        self._http = server
        host, port = sock.getsockname()[:2]
        self._bound = (host, port)

    async def stop(self) -> None:
        server, self._http = self._http, None
        if server is not None:
            await server.close()

    def status(self) -> MetricsEndpointStatus:
        return {"listen": str(self._listen), "bound": self._bound}

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        match = self._router.resolve(request.method, request.raw_path)
        if match.handler is not None:
            return await match.handler(request)
        if match.allowed:
            return Response(405, b"405: Method Not Allowed\n", headers={"Allow": ", ".join(match.allowed)})
        return Response(404, b"404: Not Found\n")

    async def _handle_metrics(self, request: Request) -> Response:
        return Response(body=generate_latest(self._metrics.registry), content_type=CONTENT_TYPE_LATEST)

    async def _handle_healthz(self, request: Request) -> Response:
        return Response(body=b"ok\n")

    async def _handle_readyz(self, request: Request) -> Response:
        reasons = self._not_ready()
        if reasons:
            return Response(503, "".join(f"{r}\n" for r in reasons).encode())
        return Response(body=b"ok\n")
