"""The one HTTP/1.1 server of the daemon's own endpoints: the control socket, /metrics, the status page.

h11 parses and frames; this module owns everything around it, in one asyncio Protocol per
connection (uvloop's transports do not subclass asyncio's, hence the casts) and one task per
connection that answers its requests in order, so pipelined requests are answered in turn:

- **keep-alive**: a connection must deliver its next request head within `Limits.keepalive`
  seconds (since it opened or since the last answer) or it is closed without an answer; that
  covers idle connections and half-sent heads alike.
- **bounded heads**: more than `max_head` bytes, a field over `max_field` bytes or more than
  `max_headers` fields is 431, a request line over `max_line` is 414, anything else h11 refuses is
  400 (501 for a transfer coding other than chunked); each is answered once with
  `Connection: close`, never with a traceback.
- **bodies** are read only when a handler asks (`Request.read`), up to `max_body` bytes (413) and
  within `keepalive` seconds (408); a body left unread closes the connection after the answer.
- **answers**: `Response` goes out with a Content-Length; `StreamResponse` is chunked (to an
  HTTP/1.0 client: ended by the close) and its writer waits for the transport to drain, cutting a
  client that reads nothing for `write_timeout` seconds (`WriteTimeout`). HEAD is answered here, once,
  as the GET would be without its body (a stream's body is never started).
- **errors**: a handler's exception is logged and answered 500 by the server's `error_response`;
  `HTTPError` raised by a handler (or by `read`) is answered with its status.
- **capacity**: at `max_connections` open connections a new one gets a fixed 503 and is closed
  before anything is parsed.
- **stop**: `close()` stops accepting, closes idle connections, cancels streams, gives running
  requests `grace` seconds and then cuts them.

`Router` is here too (literal and `{param}` segments, GET answering HEAD, 404 against 405 with the
allowed methods), so every server spells and matches its paths the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import structlog

log = structlog.get_logger("maculad.core.http")

#: Unparsed bytes a busy connection may hold (pipelined requests) before reading pauses.
READ_AHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_line: int = 4096  # the request line (414)
    max_head: int = 16384  # request line and header fields together (431)
    max_field: int = 8192  # one header field, name and value (431)
    max_headers: int = 48  # header fields (431)
    max_body: int = 64 * 1024  # what `Request.read` accepts (413)
    keepalive: float = 10.0  # for the next request's head, and for a body once asked for
    write_timeout: float = 5.0  # a client that reads nothing this long is cut
    max_connections: int = 128  # open connections; beyond, a fixed 503
    grace: float = 2.0  # `close()`: how long running requests may finish


class HTTPError(Exception):
    """Answer `status` with `message` (through the server's `error_response`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WriteTimeout(TimeoutError):
    """The client read nothing for `Limits.write_timeout` seconds; the connection is cut."""


class Headers:
    """A request's header fields in order, names lowercased; `get` gives the first, `getall` every one."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = tuple((n.lower(), v) for n, v in items)

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for n, v in self._items:
            if n == name:
                return v
        return default

    def getall(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self._items if n == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    method: str  # as sent, upper case: HEAD stays HEAD (the router and the core treat it as GET)
    target: str  # the request target as sent
    raw_path: str  # its path, still percent-encoded
    path: str  # percent-decoded
    query_string: str
    query: Mapping[str, str]  # the first value of each parameter
    headers: Headers
    http_version: str  # "1.1", "1.0"
    peer: Any  # the transport's peername: (host, port) on TCP, "" on a unix socket
    sock: socket.socket | None  # the connection's socket (SO_PEERCRED); uvloop gives a socket-like object
    params: Mapping[str, str] = field(default_factory=dict)  # `{name}` segments of the matched route
    _body: _Body | None = None

    @property
    def has_body(self) -> bool:
        """Whether the request announces a body (chunked, or a Content-Length above 0)."""
        if self.headers.get("transfer-encoding") is not None:
            return True
        length = self.headers.get("content-length")
        return length is not None and length.strip() not in ("", "0")

    async def read(self) -> bytes:
        """The whole body; HTTPError 413 beyond `max_body`, 408 when it does not arrive in time."""
        return b"" if self._body is None else await self._body.read()

    def with_params(self, params: Mapping[str, str]) -> Request:
        return replace(self, params=params)


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


class StreamWriter:
    """What a stream's body writes to: one chunk per `write`, which waits while the client lags."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def write(self, data: bytes) -> None:
        """Send `data`; ConnectionError when the client is gone, WriteTimeout when it stopped reading."""
        if data:
            self._conn.send(h11.Data(data=data))
            await self._conn.drain()


StreamBody: TypeAlias = Callable[[StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A body of unknown length: `body(writer)` runs after the head is sent (not at all for HEAD);
    `on_close` runs exactly once when the answer is over, however it ended."""

    body: StreamBody
    status: int = 200
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    on_close: Callable[[], None] | None = None


Handler: TypeAlias = Callable[[Request], Awaitable[Response | StreamResponse]]
ErrorResponder: TypeAlias = Callable[[int, str], Response]


def text_error(status: int, message: str) -> Response:
    return Response(status=status, body=f"{message}\n".encode())


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# ---------------------------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True)
class Match:
    """What `Router.resolve` found: a handler, or none with the methods the path allows (empty: 404)."""

    handler: Handler | None
    pattern: str | None  # the route's pattern when a handler matched, e.g. "/v1/services/{name}/{action}"
    params: Mapping[str, str]
    allowed: tuple[str, ...]


@dataclass(slots=True)
class _Route:
    pattern: str
    segments: tuple[str, ...]
    handlers: dict[str, Handler]


class Router:
    """Paths of literal and `{param}` segments; a param matches one non-empty segment, percent-decoded."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        assert pattern.startswith("/"), pattern
        route = next((r for r in self._routes if r.pattern == pattern), None)
        if route is None:
            route = _Route(pattern, tuple(pattern[1:].split("/")), {})
            self._routes.append(route)
        route.handlers[method.upper()] = handler
        if method.upper() == "GET":
            route.handlers.setdefault("HEAD", handler)

    def get(self, pattern: str, handler: Handler) -> None:
        self.add("GET", pattern, handler)

    def post(self, pattern: str, handler: Handler) -> None:
        self.add("POST", pattern, handler)

    def resolve(self, method: str, raw_path: str) -> Match:
        parts = raw_path[1:].split("/") if raw_path.startswith("/") else None
        allowed: list[str] = []
        if parts is not None:
            for route in self._routes:
                params = _match(route.segments, parts)
                if params is None:
                    continue
                handler = route.handlers.get(method)
                if handler is not None:
                    return Match(handler, route.pattern, params, tuple(route.handlers))
                allowed.extend(m for m in route.handlers if m not in allowed)
        return Match(None, None, {}, tuple(allowed))


def _match(segments: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(segments) != len(parts):
        return None
    params: dict[str, str] = {}
    for seg, part in zip(segments, parts, strict=True):
        value = unquote(part)
        if seg.startswith("{") and seg.endswith("}"):
            if not part:
                return None
            params[seg[1:-1]] = value
        elif seg != value:
            return None
    return params


# ---------------------------------------------------------------------------------------------- serving


class _Body:
    """The request body, read from the connection on demand, once."""

    __slots__ = ("_conn", "_data", "_declared")

    def __init__(self, conn: _Connection, declared: int | None) -> None:
        self._conn = conn
        self._declared = declared
        self._data: bytes | None = None

    async def read(self) -> bytes:
        if self._data is not None:
            return self._data
        limit = self._conn.limits.max_body
        if self._declared is not None and self._declared > limit:
            raise HTTPError(413, f"the request body is larger than {limit} bytes")
        if self._conn.waiting_for_100_continue:
            self._conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._conn.limits.keepalive):
                while True:
                    event = await self._conn.next_event()
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > limit:
                            raise HTTPError(413, f"the request body is larger than {limit} bytes")
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed: h11 raises for a body cut short, so this is not reached
                        raise ConnectionResetError("the client went away")
        except TimeoutError:
            raise HTTPError(408, "the request body did not arrive in time") from None
        except h11.RemoteProtocolError:
            raise HTTPError(400, "malformed request body") from None
        self._data = b"".join(chunks)
        return self._data


class _Refuse(asyncio.Protocol):
    """Over `max_connections`: a short 503, then close, without parsing anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
                        b"Retry-After: 5\r\n\r\n")
        transport.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self.limits = server.limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writable = True
        self._buffered = 0
        self._reading_paused = False
        self._lost = False
        self.idle = True  # waiting for a request head
        self.streaming = False

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server.opened(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._buffered += len(data)
        self._wake()
        if self._waiter is None and self._buffered > READ_AHEAD and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        self._wake()
        if self.streaming:  # nobody reads a stream after a close
            self.cancel()
        return True  # a running request may still answer on the half-closed connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server.closed(self)
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("the client went away"))
        self.cancel()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ------------------------------------------------------------------ plumbing

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def next_event(self) -> Any:
        """h11's next event, waiting for data as needed (ConnectionResetError once the socket is gone)."""
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._lost:
                raise ConnectionResetError("the client went away")
            self._buffered = 0
            if self._reading_paused and self._transport is not None:
                self._reading_paused = False
                self._transport.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def waiting_for_100_continue(self) -> bool:
        return bool(self._h11.they_are_waiting_for_100_continue)

    def send(self, event: Any) -> None:
        assert self._transport is not None
        if self._lost or self._transport.is_closing():
            raise ConnectionResetError("the client went away")
        data = self._h11.send(event)
        if data:
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark, at most `write_timeout`."""
        if self._writable:
            return
        if self._lost:
            raise ConnectionResetError("the client went away")
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._drain_waiter, self.limits.write_timeout)
        except TimeoutError:
            raise WriteTimeout(f"the client read nothing for {self.limits.write_timeout:g} s") from None
        finally:
            self._drain_waiter = None

    # ------------------------------------------------------------------ the request loop

    async def _serve(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None or not await self._answer(request):
                    break
                self._h11.start_next_cycle()
            await self.drain()
        except (ConnectionError, WriteTimeout):
            self.abort()
        except Exception:  # a bug here: never let it pass silently, never let the client see it
            log.exception("http_connection_failed", server=self._server.name)
            self.abort()
        finally:
            if self._transport is not None and not self._lost:
                self._transport.close()  # after what is buffered is sent; a client that never reads it is cut
                asyncio.get_running_loop().call_later(self.limits.write_timeout,
                                                      lambda: None if self._lost else self.abort())

    async def _next_request(self) -> Request | None:
        """The next request, or None when the connection is to be closed (after any error answer)."""
        self.idle = True
        try:
            async with asyncio.timeout(self.limits.keepalive):
                event = await self.next_event()
        except TimeoutError:
            return None  # idle, or a head that never completed: closed without an answer
        except h11.RemoteProtocolError as exc:
            await self._refuse(*self._head_error(exc))
            return None
        finally:
            self.idle = False
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed
        problem = self._head_problem(event)
        if problem is not None:
            await self._refuse(*problem)
            return None
        return self._request(event)

    def _head_error(self, exc: h11.RemoteProtocolError) -> tuple[int, str]:
        if exc.error_status_hint == 431:  # the head outgrew max_head before it was complete
            head = self._h11.trailing_data[0]
            if b"\n" not in head[: self.limits.max_line + 2]:
                return 414, f"the request line is longer than {self.limits.max_line} bytes"
            return 431, f"the request head is larger than {self.limits.max_head} bytes"
        if exc.error_status_hint == 501:
            return 501, "only the chunked transfer coding is supported"
        return 400, "malformed request"

    def _head_problem(self, event: h11.Request) -> tuple[int, str] | None:
        lim = self.limits
        if len(event.method) + len(event.target) + 10 > lim.max_line:
            return 414, f"the request line is longer than {lim.max_line} bytes"
        if len(event.headers) > lim.max_headers:
            return 431, f"more than {lim.max_headers} header fields"
        fields = [len(n) + len(v) + 2 for n, v in event.headers]
        if fields and max(fields) > lim.max_field:
            return 431, f"a header field is larger than {lim.max_field} bytes"
        if len(event.method) + len(event.target) + 12 + sum(fields) + 2 * len(fields) > lim.max_head:
            return 431, f"the request head is larger than {lim.max_head} bytes"
        return None

    def _request(self, event: h11.Request) -> Request:
        assert self._transport is not None
        target = event.target.decode("ascii")  # h11 admits only visible ASCII in the target
        if target.startswith("/"):
            raw_path, _, query_string = target.partition("?")
        elif "://" in target:  # absolute-form, `http://host/path?query`
            parts = urlsplit(target)
            raw_path, query_string = parts.path or "/", parts.query
        else:  # authority-form (CONNECT), `*`: no route matches either
            raw_path, query_string = target, ""
        query: dict[str, str] = {}
        for k, v in parse_qsl(query_string, keep_blank_values=True):
            query.setdefault(k, v)
        headers = Headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers)
        length = headers.get("content-length")
        declared = int(length) if length is not None and length.strip().isdigit() else None
        body: _Body | None = None
        if headers.get("transfer-encoding") is not None or (declared or 0) > 0:
            body = _Body(self, declared)
        else:  # nothing to read: h11 has the end of the message already
            end = self._h11.next_event()
            assert isinstance(end, h11.EndOfMessage), end
        return Request(
            method=event.method.decode("ascii"),
            target=target,
            raw_path=raw_path,
            path=unquote(raw_path),
            query_string=query_string,
            query=query,
            headers=headers,
            http_version=event.http_version.decode("ascii"),
            peer=self._transport.get_extra_info("peername"),
            sock=self._transport.get_extra_info("socket"),
            _body=body,
        )

    async def _refuse(self, status: int, message: str) -> None:
        """Answer a request that could not be read, then let the connection close."""
        resp = self._server.error_response(status, message)
        with contextlib.suppress(h11.LocalProtocolError):
            self._send_head(resp.status, resp.content_type, resp.headers, len(resp.body), close=True)
            if resp.body:
                self.send(h11.Data(data=resp.body))
            self.send(h11.EndOfMessage())

    def _send_head(self, status: int, content_type: str | None, extra: Mapping[str, str], length: int | None,
                   *, close: bool) -> None:
        headers: list[tuple[str, str]] = []
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        if length is not None:
            headers.append(("Content-Length", str(length)))
        headers.extend((k, v) for k, v in extra.items() if k.lower() not in ("content-length", "transfer-encoding"))
        if close:
            headers.append(("Connection", "close"))
        self.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))

    async def _answer(self, request: Request) -> bool:
        """Run the handler and send its answer; whether the connection may carry another request."""
        try:
            resp = await self._server.handler(request)
        except HTTPError as exc:
            resp = self._server.error_response(exc.status, exc.message)
        except Exception:
            log.exception("http_handler_failed", server=self._server.name, method=request.method,
                          path=request.path[:200])
            resp = self._server.error_response(500, "internal error")
        # a body left unread (or unreadable), or a server that is stopping: this is the last answer
        close = self._h11.their_state is not h11.DONE or self._server.closing
        head_only = request.method == "HEAD"
        if isinstance(resp, Response):
            self._send_head(resp.status, resp.content_type, resp.headers, len(resp.body), close=close)
            if resp.body and not head_only:
                self.send(h11.Data(data=resp.body))
            self.send(h11.EndOfMessage())
            await self.drain()
        else:
            try:
                self._send_head(resp.status, resp.content_type, resp.headers, None, close=close)
                if not head_only:
                    self.streaming = True
                    try:
                        await resp.body(StreamWriter(self))
                    except (ConnectionError, WriteTimeout, asyncio.CancelledError):
                        raise
                    except Exception:
                        log.exception("http_stream_failed", server=self._server.name, path=request.path[:200])
                        self.abort()
                        return False
                    finally:
                        self.streaming = False
                self.send(h11.EndOfMessage())
                await self.drain()
            finally:
                if resp.on_close is not None:
                    resp.on_close()
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE


class HTTPServer:
    """Serves `handler` on a listening socket (TCP or unix) with `limits`."""

    def __init__(self, *, name: str, handler: Handler, limits: Limits = Limits(),
                 error_response: ErrorResponder = text_error, on_refused: Callable[[], None] | None = None,
                 on_connections: Callable[[int], None] | None = None) -> None:
        """`on_refused`: a connection was refused at `max_connections`; `on_connections`: how many are open."""
        self.name = name
        self.handler = handler
        self.limits = limits
        self.error_response = error_response
        self._on_refused = on_refused
        self._on_connections = on_connections
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self.closing = False

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def serve(self, sock: socket.socket) -> None:
        """Accept on `sock` (bound and listening); the server owns it from here."""
        assert self._server is None, "serve() is called once"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=sock, backlog=128)

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._conns) >= self.limits.max_connections:
            if self._on_refused is not None:
                self._on_refused()
            return _Refuse()
        return _Connection(self)

    def opened(self, conn: _Connection) -> None:
        self._conns.add(conn)
        if self._on_connections is not None:
            self._on_connections(len(self._conns))

    def closed(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if self._on_connections is not None:
            self._on_connections(len(self._conns))

    async def close(self) -> None:
        """Stop accepting; close idle connections and streams; give the rest `grace` seconds, then cut them."""
        self.closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        conns = list(self._conns)
        for conn in conns:
            if conn.idle or conn.streaming:
                conn.cancel()
        tasks = [c.task for c in conns if c.task is not None and not c.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.limits.grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for conn in conns:
            conn.abort()
