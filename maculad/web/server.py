"""The status page's HTTP server (on `core.httpserver`): `/`, `/api/status`, `/api/events`.

Read-only by construction: the server depends on `StatusSource`, the read
half of the control facade, so no action, reload or config write is reachable
from here; every method but GET/HEAD is 405 and every other path 404.
`/api/status` bundles the control socket's own views (`status`, `routes`,
`services`, `cluster`) with the backend checks (`probe.py`) and two headline
figures; `/api/events` is the control socket's event stream as Server-Sent
Events, one `data:` line of the same JSON per event.

Limits, each with a metric: header sizes and counts at the parser (431/414,
the core's `Limits`), no request body at all (413), `max_connections` open
connections (more are answered 503 and closed before anything is parsed), idle
or half-sent requests closed after `KEEPALIVE` seconds, `max_clients` live
streams (more get 503), and a live stream whose client stops reading is cut
after `WRITE_TIMEOUT`. An idle stream costs one timer per `SSE_KEEPALIVE`
seconds and nothing else. Host/Origin checks are in `guard.py`; HEAD is the
core's (the GET's head, no body, no stream).
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
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import structlog

from maculad.control.api import ControlError
from maculad.core.httpserver import (
    HTTPServer,
    Limits,
    Request,
    Response,
    Router,
    StreamResponse,
    StreamWriter,
    WriteTimeout,
)
from maculad.core.net import Backend, format_hostport, tcp_listen_socket
from maculad.observability.metrics import Metrics
from maculad.web.figures import RateMeter, dns_queries, relay_connections
from maculad.web.guard import Allowed, fetch_site_ok, host_ok, origin_ok
from maculad.web.probe import BackendProbe, CheckView, parse_backend

if TYPE_CHECKING:
    from maculad.control.protocol import ClusterStatus, Event, RoutesAnswer, ServiceView, Status, WebStatus

log = structlog.get_logger("maculad.web")
R = TypeVar("R", bound=Response | StreamResponse)

KEEPALIVE = 10.0  # an idle or half-sent request's connection is closed after this
SSE_KEEPALIVE = 25.0  # a comment line on an idle stream, so proxies and browsers keep it
SSE_RETRY_MS = 1000  # EventSource reconnect delay after the daemon went away
WRITE_TIMEOUT = 5.0  # a stream whose client does not read for this long is cut
MAX_LINE = 4096  # the request line
MAX_FIELD = 4096  # one header field
MAX_HEAD = 16384  # the whole head
MAX_HEADERS = 48
BIND_RETRY_MAX = 30.0
SHUTDOWN_GRACE = 1.0
#: On every answer of the page (a handler may set its own Cache-Control and Content-Security-Policy).
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                "Cross-Origin-Resource-Policy": "same-origin"}
DEFAULT_HEADERS = {"Cache-Control": "no-store",
                   "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}


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


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, default=str).encode(), "application/json; charset=utf-8")


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, (text + "\n").encode(), headers=headers or {})


def _safe(resp: R) -> R:
    return replace(resp, headers={**DEFAULT_HEADERS, **resp.headers, **SAFE_HEADERS})


def _error(status: int, message: str) -> Response:
    """The core's own refusals (malformed, too large, 500), with the page's headers."""
    return _safe(_text(status, message))


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
        self._router = Router()
        self._router.get("/", self._index)
        self._router.get("/api/status", self._status)
        self._router.get("/api/events", self._events)
        self._http: HTTPServer | None = None
        self._server: HTTPServer | None = None  # once bound
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
        limits = Limits(max_line=MAX_LINE, max_head=MAX_HEAD, max_field=MAX_FIELD, max_headers=MAX_HEADERS, max_body=0,
                        keepalive=KEEPALIVE, write_timeout=WRITE_TIMEOUT, max_connections=self.max_connections,
                        grace=SHUTDOWN_GRACE)
        self._http = HTTPServer(name="web", handler=self._dispatch, limits=limits, error_response=_error,
                                on_refused=self._refuse, on_connections=self._metrics.web_connections.set)
        try:
            await self._bind(sock)
        except OSError as exc:
            self._last_error = exc.strerror or f"cannot listen on {self._listen}: {exc}"
            log.error("web_bind_failed", listen=str(self._listen), error=self._last_error)

    def _refuse(self) -> None:
        self._refused += 1
        self._metrics.web_connections_refused.inc()

    async def _bind(self, sock: socket.socket | None = None) -> None:
        """Serve on `sock`, or bind `listen`; an OSError's strerror says what failed, naming the address."""
        assert self._http is not None
        if sock is None:
            sock = tcp_listen_socket(self._listen, backlog=128)
        try:
            await self._http.serve(sock)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self._listen}: {exc.strerror or exc}") from None
        self._server = self._http
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
                self._last_error = exc.strerror or f"cannot listen on {self._listen}: {exc}"
                delay = min(delay * 2, BIND_RETRY_MAX)
        await self._closing.wait()  # bound: nothing more to do until stop()

    async def stop(self) -> None:
        self._closing.set()
        self._server = None
        server, self._http = self._http, None
        if server is not None:
            await server.close()
        await self.probe.close()
        self._bound = None

    @property
    def problem(self) -> str | None:
        """Why the page is not served (None while it is)."""
        return None if self._server is not None else self._last_error or f"not listening on {self._listen} yet"

    def status(self) -> WebStatus:
        conns = self._http.connections if self._http is not None else 0
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

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        self._requests += 1
        match = self._router.resolve(request.method, request.raw_path)
        endpoint = match.pattern if match.handler is not None and match.pattern is not None else "unmatched"
        resp: Response | StreamResponse
        hosts = request.headers.getall("host")
        if len(hosts) != 1 or not host_ok(hosts[0], self._allowed):
            resp = _text(421, f"this page answers only as {self.url} or at its address")
        elif request.path.startswith("/api/") and not (
                origin_ok(request.headers.get("origin"), self._allowed)
                and fetch_site_ok(request.headers.get("sec-fetch-site"))):
            resp = _text(403, "forbidden: another site may not read this page's data")
        elif request.has_body:
            resp = _text(413, "request bodies are not accepted here")
        elif match.handler is not None:
            resp = await match.handler(request)
        elif match.allowed:
            resp = _text(405, "read-only: only GET and HEAD", {"Allow": "GET, HEAD"})
        else:
            resp = _text(404, f"not found: {request.path[:200]}")
        self._metrics.web_requests.labels(endpoint=endpoint, status=str(resp.status)).inc()
        return _safe(resp)

    # ------------------------------------------------------------------ handlers

    async def _index(self, request: Request) -> Response:
        return Response(body=self._page, content_type="text/html; charset=utf-8",
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

    async def _status(self, request: Request) -> Response:
        return _json(await self.status_document())

    async def _events(self, request: Request) -> Response | StreamResponse:
        if self._streams >= self.max_clients:
            self._metrics.web_sse_dropped.labels(reason="limit").inc()
            return _text(503, f"too many live pages open (web.max_clients = {self.max_clients})",
                         {"Retry-After": "5"})
        self._streams += 1
        self._metrics.web_sse_clients.set(self._streams)
        return StreamResponse(body=self._sse, content_type="text/event-stream", headers={"X-Accel-Buffering": "no"},
                              on_close=self._stream_closed)

    def _stream_closed(self) -> None:
        self._streams -= 1
        self._metrics.web_sse_clients.set(self._streams)

    async def _sse(self, out: StreamWriter) -> None:
        """One `data:` line per event, a comment after `SSE_KEEPALIVE` quiet seconds; `close()` cancels it."""
        stream = self._source.follow_events(replay=0)
        nxt: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(stream))
        try:
            await out.write(f"retry: {SSE_RETRY_MS}\n: maculad\n\n".encode())
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=SSE_KEEPALIVE)
                if nxt in done:
                    event = nxt.result()
                    nxt = asyncio.ensure_future(anext(stream))
                    await out.write(f"data: {json.dumps(event, default=str)}\n\n".encode())
                else:
                    await out.write(b": keep-alive\n\n")
        except WriteTimeout:
            self._metrics.web_sse_dropped.labels(reason="slow").inc()
            log.info("web_stream_cut", reason=f"the client read nothing for {WRITE_TIMEOUT:g}s")
            raise
        except StopAsyncIteration:
            pass
        finally:
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await nxt
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
