"""The status page's HTTP server (aiohttp): `/`, `/api/status`, `/api/events`.

Read-only by construction: the server depends on `StatusSource`, the read
half of the control facade, so no action, reload or config write is reachable
from here; every method but GET/HEAD is 405 and every other path 404.
`/api/status` bundles the control socket's own views (`status`, `routes`,
`services`, `cluster`) with the backend checks (`probe.py`) and two headline
figures; `/api/events` is the control socket's event stream as Server-Sent
Events, one `data:` line of the same JSON per event.

Limits, each with a metric: header sizes and counts at the parser, no request
body at all (413), `max_connections` open connections (more are answered 503
and closed before a handler runs), idle or half-sent requests closed after
`KEEPALIVE` seconds, `max_clients` live streams (more get 503), and a live
stream whose client stops reading is cut after `WRITE_TIMEOUT`. An idle stream
costs one timer per `SSE_KEEPALIVE` seconds and nothing else. Host/Origin
checks are in `guard.py`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, cast

import structlog
from aiohttp import web

from maculad.control.api import ControlError
from maculad.observability.metrics import Metrics
from maculad.core.net import Backend, format_hostport
from maculad.web.figures import RateMeter, dns_queries, relay_connections
from maculad.web.guard import Allowed, fetch_site_ok, host_ok, origin_ok
from maculad.web.probe import BackendProbe, CheckView, parse_backend

if TYPE_CHECKING:
    from maculad.control.protocol import ClusterStatus, Event, RoutesAnswer, ServiceView, Status, WebStatus

log = structlog.get_logger("maculad.web")

KEEPALIVE = 10.0  # an idle or half-sent request's connection is closed after this
SSE_KEEPALIVE = 25.0  # a comment line on an idle stream, so proxies and browsers keep it
SSE_RETRY_MS = 1000  # EventSource reconnect delay after the daemon went away
WRITE_TIMEOUT = 5.0  # a stream whose client does not read for this long is cut
MAX_LINE = 4096
MAX_FIELD = 4096
MAX_HEADERS = 48
BIND_RETRY_MAX = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StatusSource(Protocol):
    """The read half of the control facade: what the page may see."""

    def status(self) -> Status: ...

    def routes(self) -> RoutesAnswer: ...

    def services(self) -> list[ServiceView]: ...

    def cluster_status(self) -> ClusterStatus: ...

    def follow_events(self, *, replay: int) -> AsyncIterator[Event]: ...


class Figures(TypedDict):
    dns_queries: int
    dns_qps: float | None
    relay_connections: int


class PageStatus(TypedDict):
    """`GET /api/status`: the control socket's views, side by side, plus what only the page needs."""

    status: Status  # as `GET /v1/status`
    routes: RoutesAnswer  # as `GET /v1/routes`
    services: list[ServiceView]  # as `GET /v1/services` → "services"
    cluster: ClusterStatus | None  # as `GET /v1/cluster`, None when kind management is off
    cluster_off: str | None  # why there is no cluster view
    backends: dict[str, CheckView]  # "host:port" → does it accept connections now
    figures: Figures
    time: float


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: only its own inline script and style may run."""
    html = resources.files("maculad.web").joinpath("page.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        m = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert m is not None, f"page.html has no <{tag}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode() + "'"

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode(), csp


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


class _Refuse(asyncio.Protocol):
    """Over `max_connections`: a short 503, then close, without parsing anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
                        b"Retry-After: 5\r\n\r\n")
        transport.close()


class WebServer:
    name = "web"

    def __init__(
        self,
        *,
        source: StatusSource,
        domain: str,
        listen: Backend,
        metrics: Metrics,
        max_clients: int = 32,
        max_connections: int = 128,
        check_interval: float = 5.0,
        probe: BackendProbe | None = None,
        via: frozenset[int] = frozenset(),
    ) -> None:
        """`via`: other ports clients reach the page on (80: G:80, relayed here by the container horizon)."""
        self._source = source
        self._via = via
        self._domain = domain
        self._listen = listen
        self._metrics = metrics
        self.max_clients = max_clients
        self.max_connections = max_connections
        self.probe = probe or BackendProbe(metrics=metrics, interval=check_interval)
        self._page, self._csp = _page()
        self._qps = RateMeter()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._bound: tuple[str, int] | None = None
        self._allowed = Allowed.build(domain=domain, listen_host=listen.host, port=listen.port, via=via)
        self._closing = asyncio.Event()
        self._streams = 0
        self._requests = 0
        self._refused = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def bound(self) -> tuple[str, int] | None:
        return self._bound

    @property
    def url(self) -> str:
        port = self._bound[1] if self._bound else self._listen.port
        return f"http://{self._domain}/" if port == 80 else f"http://{self._domain}:{port}/"

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Bind now; if the address is taken or not allowed, `bind_retry` (a long-lived task) keeps trying.
        With `sock` (bound to `listen` already: a reload binds first) serve on it."""
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, handler_cancellation=True,
                               keepalive_timeout=KEEPALIVE, shutdown_timeout=1.0, max_line_size=MAX_LINE,
                               max_field_size=MAX_FIELD, max_headers=MAX_HEADERS)
        await runner.setup()
        self._runner = runner
        try:
            await self._bind(sock)
        except OSError as exc:
            self._last_error = f"cannot listen on {self._listen}: {exc.strerror or exc}"
            log.error("web_bind_failed", listen=str(self._listen), error=self._last_error)

    async def _bind(self, sock: socket.socket | None = None) -> None:
        assert self._runner is not None
        handler_factory = self._runner.server
        assert handler_factory is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(handler_factory.connections) >= self.max_connections:
                self._refused += 1
                self._metrics.web_connections_refused.inc()
                return _Refuse()
            return handler_factory()

        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(protocol, sock=sock, backlog=128)
        else:
            self._server = await loop.create_server(protocol, self._listen.host, self._listen.port,
                                                    reuse_address=True, backlog=128)
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self._bound = (host, port)
        self._allowed = Allowed.build(domain=self._domain, listen_host=self._listen.host, port=port, via=self._via)
        self._last_error = None
        log.info("web_listening", url=self.url, address=f"http://{format_hostport(host, port)}/")

    async def bind_retry(self) -> None:
        """Until the page is bound: try again with backoff; then wait, idle, for `stop()`."""
        delay = 1.0
        while self._server is None:
            await asyncio.sleep(delay)
            try:
                await self._bind()
            except OSError as exc:
                self._last_error = f"cannot listen on {self._listen}: {exc.strerror or exc}"
                delay = min(delay * 2, BIND_RETRY_MAX)
        await self._closing.wait()  # bound: nothing more to do until stop()

    async def stop(self) -> None:
        self._closing.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.probe.close()
        self._bound = None

    @property
    def problem(self) -> str | None:
        """Why the page is not served (None while it is)."""
        return None if self._server is not None else self._last_error or f"not listening on {self._listen} yet"

    def status(self) -> WebStatus:
        conns = len(self._runner.server.connections) if self._runner and self._runner.server else 0
        return {
            "listen": str(self._listen),
            "bound": self._bound,
            "url": self.url,
            "address_url": f"http://{format_hostport(*self._bound)}/" if self._bound else None,
            "serving": self._server is not None,
            "connections": conns,
            "max_connections": self.max_connections,
            "connections_refused": self._refused,
            "live_clients": self._streams,
            "max_clients": self.max_clients,
            "requests": self._requests,
            "last_error": self._last_error,
        }

    async def invalidate_on_events(self) -> None:
        """One subscription for the whole server: an event may change what a backend check says."""
        async for event in self._source.follow_events(replay=0):
            kind = str(event.get("kind", ""))
            if kind in ("routes", "reload") or kind.startswith(("service_", "cluster_", "docker", "kubernetes")):
                self.probe.invalidate()

    # ------------------------------------------------------------------ app

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        app.on_response_prepare.append(self._headers)
        return app

    async def _headers(self, request: web.Request, resp: web.StreamResponse) -> None:
        h = resp.headers
        h.setdefault("Cache-Control", "no-store")
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Frame-Options"] = "DENY"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        h.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._requests += 1
        info = request.match_info
        endpoint = "unmatched"
        if info.http_exception is None and info.route.resource is not None:
            endpoint = info.route.resource.canonical
        resp: web.StreamResponse
        hosts = request.headers.getall("Host", [])
        if len(hosts) != 1 or not host_ok(hosts[0], self._allowed):
            resp = _text(421, f"this page answers only as {self.url} or at its address")
        elif request.path.startswith("/api/") and not (
                origin_ok(request.headers.get("Origin"), self._allowed)
                and fetch_site_ok(request.headers.get("Sec-Fetch-Site"))):
            resp = _text(403, "forbidden: another site may not read this page's data")
        elif request.body_exists:
            resp = _text(413, "request bodies are not accepted here")
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                if exc.status == 405:
                    resp = _text(405, "read-only: only GET and HEAD", {"Allow": "GET, HEAD"})
                elif exc.status == 404:
                    resp = _text(404, f"not found: {request.path[:200]}")
                else:
                    resp = _text(exc.status, exc.reason)
        self._metrics.web_requests.labels(endpoint=endpoint, status=str(resp.status)).inc()
        return resp

    # ------------------------------------------------------------------ handlers

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": self._csp})

    async def status_document(self) -> PageStatus:
        src = self._source
        status = src.status()
        routes = src.routes()
        cluster: ClusterStatus | None
        try:
            cluster, cluster_off = src.cluster_status(), None
        except ControlError as exc:
            cluster, cluster_off = None, exc.message
        backends = [parse_backend(p["backend"]) for r in routes["routes"] for p in r["ports"] if p["proto"] == "tcp"]
        checks = await self.probe.check(b for b in backends if b is not None)
        queries = dns_queries(status)
        return {
            "status": status,
            "routes": routes,
            "services": src.services(),
            "cluster": cluster,
            "cluster_off": cluster_off,
            "backends": checks,
            "figures": {"dns_queries": queries, "dns_qps": self._qps.add(time.monotonic(), queries),
                        "relay_connections": relay_connections(status)},
            "time": round(time.time(), 3),
        }

    async def _status(self, request: web.Request) -> web.Response:
        return _json(await self.status_document())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= self.max_clients:
            self._metrics.web_sse_dropped.labels(reason="limit").inc()
            return _text(503, f"too many live pages open (web.max_clients = {self.max_clients})",
                         {"Retry-After": "5"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        self._streams += 1
        self._metrics.web_sse_clients.set(self._streams)
        stream = self._source.follow_events(replay=0)
        nxt: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(stream))
        closing: asyncio.Future[Any] = asyncio.ensure_future(self._closing.wait())
        try:
            await resp.prepare(request)
            await self._write(resp, f"retry: {SSE_RETRY_MS}\n: maculad\n\n".encode())
            while not self._closing.is_set():
                waiting: set[asyncio.Future[Any]] = {nxt, closing}
                done, _ = await asyncio.wait(waiting, timeout=SSE_KEEPALIVE,
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    event = nxt.result()
                    nxt = asyncio.ensure_future(anext(stream))
                    await self._write(resp, f"data: {json.dumps(event, default=str)}\n\n".encode())
                elif not done:
                    await self._write(resp, b": keep-alive\n\n")
        except TimeoutError:
            self._metrics.web_sse_dropped.labels(reason="slow").inc()
            log.info("web_stream_cut", reason=f"the client read nothing for {WRITE_TIMEOUT:g}s")
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionError, StopAsyncIteration):
            pass
        finally:
            for fut in (nxt, closing):
                fut.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                    await fut
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            self._streams -= 1
            self._metrics.web_sse_clients.set(self._streams)
        return resp

    @staticmethod
    async def _write(resp: web.StreamResponse, chunk: bytes) -> None:
        await asyncio.wait_for(resp.write(chunk), WRITE_TIMEOUT)

