"""The one HTTP/1.1 client of the adapters (Docker engine, PowerDNS, Kubernetes): asyncio streams plus h11.

maculad needs a small part of an HTTP client — one origin per client, plain
requests with bounded bodies, and a few long-lived streamed bodies (Docker
events, Kubernetes watches) — so this module replaces aiohttp there at a
fraction of its import cost. h11 (sans-I/O) owns the framing: Content-Length,
chunked and read-until-close bodies, keep-alive bookkeeping and parse errors;
this module owns the sockets, the time limits, the size limits and the pool.

- `Endpoint` is where the server is (`unix:///path`, `tcp://h:p` = `http://h:p`,
  `https://h:p`); `Endpoint.parse` gives a ValueError naming what is wrong.
- `HTTPClient.request` answers a whole `Response` (body ≤ `max_body`) within one
  time limit for the whole exchange; `HTTPClient.stream` returns a `Stream` once
  the status line and headers arrived, its body read incrementally without a
  time limit, always on a connection of its own.
- Every failure to get an answer — refused, socket missing, reset, timed out,
  TLS failure, a malformed or oversized answer (head > 64 KiB, body >
  `max_body`, a streamed line > `max_line`) — is `HTTPUnavailable`, whose
  message names the endpoint and the cause (`HTTPTimeout` and `HTTPTooLarge`
  are the two kinds an adapter may want to tell apart). An answer with any status is a
  `Response`: what a status means is the adapter's business.
- Keep-alive: at most `max_idle` idle connections are kept and reused; one the
  server closed is dropped, and an idempotent request (GET/HEAD/PUT/DELETE) that
  fails on a reused connection before any byte of the answer arrived is sent
  once more on a new connection (the server closed it while it was idle).

The client is created without touching a socket or a loop; the first request
connects, so it can be built at start-up and used from whichever loop runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl as _ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlencode

import h11

from maculad.core.net import format_hostport, parse_hostport

#: The largest response head (status line + headers), and of a chunk header line.
MAX_HEAD = 64 * 1024
MiB = 1024 * 1024
#: Methods sent again on a new connection when a reused one broke before the answer began.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_READ_SIZE = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEMES = "unix:///path, tcp://host:port, http://host[:port] or https://host[:port]"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server is: a unix socket (`path`) or a TCP `host`:`port`, plain or TLS."""

    scheme: str  # "unix" | "http" | "https"
    host: str  # "" for unix
    port: int  # 0 for unix
    path: str  # the unix socket path ("" otherwise)

    @classmethod
    def parse(cls, url: str, *, default_port: int | None = None) -> Endpoint:
        """`unix:///var/run/docker.sock`, `tcp://h:p` (= http), `http://h:p`, `https://[::1]:p`.

        Without a port, `default_port` is used, else 80 for http and 443 for
        https (tcp:// needs one). A path other than `/`, a query, a fragment or
        user info is refused: an endpoint is a server, not a URL into it.
        """
        text = url.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise ValueError(f"{url!r} is not an endpoint URL: write {_SCHEMES}")
        scheme = scheme.lower()
        if scheme == "unix":
            if not rest.startswith("/") or rest == "/":
                raise ValueError(f"{url!r}: the unix socket path must be absolute (unix:///path/to/socket)")
            if "\0" in rest:
                raise ValueError(f"{url!r}: the unix socket path contains a NUL byte")
            return cls("unix", "", 0, rest)
        if scheme not in ("tcp", "http", "https"):
            raise ValueError(f"{url!r}: unsupported scheme {scheme!r}: write {_SCHEMES}")
        hostport = rest[:-1] if rest.endswith("/") else rest
        for ch, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment"), ("@", "user info")):
            if ch in hostport:
                raise ValueError(f"{url!r} has {what}: an endpoint is only {scheme}://host:port")
        if not hostport or any(c.isspace() for c in hostport):
            raise ValueError(f"{url!r}: no valid host")
        if (hostport.startswith("[") and hostport.endswith("]")) or ":" not in hostport:
            port = default_port if default_port is not None else _DEFAULT_PORTS.get(scheme)
            if port is None:
                raise ValueError(f"{url!r}: a port is required ({scheme}://host:port)")
            host = hostport[1:-1] if hostport.startswith("[") else hostport
        else:
            addr = parse_hostport(hostport, what=f"endpoint in {url!r}")
            host, port = addr.host, addr.port
        if not host:
            raise ValueError(f"{url!r}: no host")
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{url!r}: {host!r} is not an IPv6 address") from None
        if not 0 < port <= 65535:
            raise ValueError(f"{url!r}: port {port} is out of range 1..65535")
        return cls("https" if scheme == "https" else "http", host, port, "")

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://{format_hostport(self.host, self.port)}"

    @property
    def host_header(self) -> str:
        """The Host header: `localhost` for a unix socket; host[:port], the port only when not the default."""
        if self.scheme == "unix":
            return "localhost"
        if self.port == _DEFAULT_PORTS.get(self.scheme):
            return f"[{self.host}]" if ":" in self.host else self.host
        return format_hostport(self.host, self.port)


class HTTPUnavailable(Exception):
    """No (complete, well-formed, bounded) answer from the server; the message names endpoint and cause."""

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        #: the cause alone, for an adapter that names the server its own way
        self.cause = message if cause is None else cause


class HTTPTimeout(HTTPUnavailable):
    """No connection, or no (complete) answer, within the time limit."""


class HTTPTooLarge(HTTPUnavailable):
    """The answer exceeds a bound: head > 64 KiB, body > `max_body`, a streamed line > `max_line`."""


def _fail(cls: type[HTTPUnavailable], endpoint: Endpoint, cause: str) -> HTTPUnavailable:
    return cls(f"{endpoint}: {cause}", cause=cause)


def _freeze_headers(items: list[tuple[bytes, bytes]]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for name_b, value_b in items:
        name, value = name_b.decode("latin-1").lower(), value_b.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer: status, reason, headers (lower-cased names, repeated ones joined by ", "), body."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body)


class _Broken(Exception):
    """A connection failed; `answered`: whether any byte of the answer had arrived."""

    def __init__(self, cause: str, *, answered: bool, too_large: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.answered = answered
        self.too_large = too_large

    def public(self, endpoint: Endpoint, prefix: str = "") -> HTTPUnavailable:
        cls = HTTPTooLarge if self.too_large else HTTPUnavailable
        return cls(f"{endpoint}: {prefix}{self.cause}", cause=self.cause)


def _protocol_error(exc: h11.RemoteProtocolError, *, answered: bool, eof: bool) -> _Broken:
    if exc.error_status_hint == 431:  # h11's max_incomplete_event_size
        return _Broken(f"the answer's head (or a chunk header) exceeds {MAX_HEAD} bytes", answered=answered,
                       too_large=True)
    if eof:
        return _Broken(f"the server closed the connection in the middle of the answer ({exc})", answered=answered)
    return _Broken(f"malformed answer: {exc}", answered=answered)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, BrokenPipeError):
        return "the server closed the connection"
    if isinstance(exc, _ssl.SSLError):
        return f"TLS failure: {exc.reason or exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Conn:
    """One connection and its h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.loop = asyncio.get_running_loop()
        self.answered = False  # any byte of the current answer received
        self.eof = False  # the server closed its side

    def idle_ok(self) -> bool:
        """Still usable after sitting idle: same loop, not closed, nothing unsolicited sent by the server."""
        try:
            same_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False
        return (same_loop and not self.reader.at_eof() and not self.writer.is_closing()
                and self.reader.exception() is None and self.h11.our_state is h11.IDLE)

    async def send(self, *events: h11.Event) -> None:
        try:
            for ev in events:
                data = self.h11.send(ev)
                if data:
                    self.writer.write(data)
            await self.writer.drain()
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send this request: {exc}") from None
        except OSError as exc:
            raise _Broken(_describe(exc), answered=self.answered) from None

    async def next_event(self) -> Any:
        while True:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise _protocol_error(exc, answered=self.answered, eof=self.eof) from None
            if ev is h11.NEED_DATA:
                try:
                    data = await self.reader.read(_READ_SIZE)
                except OSError as exc:
                    raise _Broken(_describe(exc), answered=self.answered) from None
                if not data:
                    self.eof = True
                    if not self.answered:
                        raise _Broken("the server closed the connection without answering", answered=False)
                self.answered = True
                try:
                    self.h11.receive_data(data)
                except h11.RemoteProtocolError as exc:
                    raise _protocol_error(exc, answered=self.answered, eof=self.eof) from None
                continue
            if isinstance(ev, h11.ConnectionClosed):
                raise _Broken("the server closed the connection", answered=self.answered)
            return ev

    def reusable(self) -> bool:
        """After a complete exchange: whether the connection may carry the next one (and reset it for that)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self.answered = False
            return True
        return False

    def close(self) -> None:
        try:
            self.writer.close()
        except RuntimeError:  # its loop is closed: nothing left to close it with
            pass


class Stream:
    """An answer whose body is read incrementally (`lines`, `read`); it owns its connection until `close`."""

    def __init__(self, client: HTTPClient, conn: _Conn, response: h11.Response) -> None:
        self.status: int = response.status_code
        self.reason: str = response.reason.decode("latin-1")
        self.headers: Mapping[str, str] = _freeze_headers(list(response.headers))
        self._client = client
        self._conn = conn
        self._done = False
        self._closed = False

    async def _chunk(self) -> bytes | None:
        """The next piece of the body; None at its end (or once closed)."""
        while not self._done and not self._closed:
            try:
                ev = await self._conn.next_event()
            except _Broken as exc:
                if self._closed:
                    return None
                await self.close()
                raise exc.public(self._client.endpoint, "the stream broke: ") from None
            if isinstance(ev, h11.Data):
                if ev.data:
                    return bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self._done = True
        return None

    async def lines(self, *, max_line: int = 16 * MiB, keepends: bool = False) -> AsyncIterator[bytes]:
        """The body split at b"\\n" (without it, unless `keepends`: then a last line without one shows that the
        body ended inside it); ends with the body; HTTPUnavailable if a line exceeds `max_line`."""
        buf = bytearray()
        end = 1 if keepends else 0
        while True:
            chunk = await self._chunk()
            if chunk is None:
                if buf:
                    yield bytes(buf)
                return
            start = len(buf)
            buf += chunk
            pos = buf.find(b"\n", start)
            while pos >= 0:
                if pos > max_line:
                    break
                yield bytes(buf[:pos + end])
                del buf[:pos + 1]
                pos = buf.find(b"\n")
            if (pos if pos >= 0 else len(buf)) > max_line:
                await self.close()
                raise _fail(HTTPTooLarge, self._client.endpoint, f"a streamed line exceeds {max_line} bytes")

    async def read(self) -> bytes:
        """The rest of the body; HTTPUnavailable beyond the client's `max_body`."""
        parts: list[bytes] = []
        size = 0
        while (chunk := await self._chunk()) is not None:
            size += len(chunk)
            if size > self._client.max_body:
                await self.close()
                raise _fail(HTTPTooLarge, self._client.endpoint,
                            f"the answer exceeds {self._client.max_body} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client._streams.discard(self)
        self._conn.close()


class HTTPClient:
    """HTTP/1.1 to one `Endpoint`: a small keep-alive pool for requests, a connection per stream."""

    def __init__(self, endpoint: Endpoint, *, ssl: _ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout: float = 30.0, connect_timeout: float = 5.0,
                 max_body: int = 64 * MiB, headers: Mapping[str, str] | None = None, max_idle: int = 4) -> None:
        if ssl is not None and endpoint.scheme != "https":
            raise ValueError(f"a TLS context was given for {endpoint}, which is not https")
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_idle = max_idle
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._headers: dict[str, str] = {"host": endpoint.host_header, "user-agent": "maculad"}
        for k, v in (headers or {}).items():
            self._headers[k.lower()] = v
        self._idle: list[_Conn] = []
        self._streams: set[Stream] = set()
        #: connections opened (a test and a debugging aid: keep-alive reuse shows here)
        self.connections_opened = 0

    # ------------------------------------------------------------------ public

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None, body: bytes | None = None,
                      timeout: float | None = None) -> Response:
        """One exchange within `timeout` s (None: the client's), the whole body read."""
        method = method.upper()
        limit = self.timeout if timeout is None else timeout
        req = self._build(method, path, params, headers, body)
        try:
            async with asyncio.timeout(limit):
                return await self._request(method, req, body)
        except TimeoutError:
            raise _fail(HTTPTimeout, self.endpoint, f"no answer to {method} {path} within {limit:g} s") from None

    async def stream(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                     headers: Mapping[str, str] | None = None, body: bytes | None = None,
                     timeout: float | None = None) -> Stream:
        """Returns once status and headers arrived (within `timeout`); the body then has no time limit."""
        method = method.upper()
        limit = self.timeout if timeout is None else timeout
        req = self._build(method, path, params, headers, body)
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(limit):
                conn = await self._connect()
                response = await self._exchange(conn, req, body)
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise _fail(HTTPTimeout, self.endpoint, f"no answer to {method} {path} within {limit:g} s") from None
        except _Broken as exc:
            assert conn is not None
            conn.close()
            raise exc.public(self.endpoint) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        stream = Stream(self, conn, response)
        self._streams.add(stream)
        return stream

    async def close(self) -> None:
        """Close the idle connections and every stream still open."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for stream in list(self._streams):
            await stream.close()

    # ------------------------------------------------------------------ plumbing

    def _build(self, method: str, path: str, params: Mapping[str, str] | None,
               headers: Mapping[str, str] | None, body: bytes | None) -> h11.Request:
        if not path.startswith("/"):
            raise ValueError(f"request path {path!r} must start with '/'")
        target = path
        if params:
            target += ("&" if "?" in path else "?") + urlencode(list(params.items()), quote_via=quote)
        merged = dict(self._headers)
        for k, v in (headers or {}).items():
            merged[k.lower()] = v
        if body is not None:
            merged["content-length"] = str(len(body))
        elif method in ("POST", "PUT", "PATCH"):
            merged["content-length"] = "0"
        try:
            return h11.Request(method=method, target=target, headers=list(merged.items()))
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send {method} {path}: {exc}") from None

    async def _connect(self) -> _Conn:
        ep = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                if ep.scheme == "unix":
                    reader, writer = await asyncio.open_unix_connection(ep.path, limit=_READ_SIZE)
                elif ep.scheme == "https":
                    if self._ssl is None:  # the system's trust store, loaded once per client
                        self._ssl = _ssl.create_default_context()
                    ctx = self._ssl
                    reader, writer = await asyncio.open_connection(
                        ep.host, ep.port, ssl=ctx, server_hostname=self._server_hostname or ep.host,
                        limit=_READ_SIZE)
                else:
                    reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=_READ_SIZE)
        except TimeoutError:
            raise _fail(HTTPTimeout, ep, f"no connection within {self.connect_timeout:g} s") from None
        except FileNotFoundError:
            raise _fail(HTTPUnavailable, ep, f"the socket {ep.path} does not exist") from None
        except PermissionError:
            raise _fail(HTTPUnavailable, ep, "permission denied") from None
        except (OSError, ValueError) as exc:  # ValueError: the TLS layer refusing the server's certificate
            raise _fail(HTTPUnavailable, ep, _describe(exc)) from None
        self.connections_opened += 1
        return _Conn(reader, writer)

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_ok():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        if conn.reusable() and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    async def _exchange(self, conn: _Conn, req: h11.Request, body: bytes | None) -> h11.Response:
        events: list[h11.Event] = [req]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await conn.send(*events)
        while True:
            ev = await conn.next_event()
            if isinstance(ev, h11.Response):
                return ev
            # h11.InformationalResponse (100 Continue, 103 Early Hints): wait for the real answer

    async def _request(self, method: str, req: h11.Request, body: bytes | None) -> Response:
        conn = self._take_idle()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect()
            done = False
            try:
                response = await self._exchange(conn, req, body)
                parts: list[bytes] = []
                size = 0
                while True:
                    ev = await conn.next_event()
                    if isinstance(ev, h11.EndOfMessage):
                        break
                    if isinstance(ev, h11.Data):
                        size += len(ev.data)
                        if size > self.max_body:
                            raise _fail(HTTPTooLarge, self.endpoint, f"the answer exceeds {self.max_body} bytes")
                        parts.append(bytes(ev.data))
                done = True
            except _Broken as exc:
                if reused and not exc.answered and method in IDEMPOTENT:
                    conn.close()
                    conn, reused = None, False  # the server closed it while idle: once more, on a new one
                    continue
                raise exc.public(self.endpoint) from None
            finally:
                if conn is not None:
                    if done:
                        self._release(conn)
                    else:
                        conn.close()
            return Response(response.status_code, response.reason.decode("latin-1"),
                            _freeze_headers(list(response.headers)), b"".join(parts))
