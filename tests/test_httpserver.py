"""The HTTP server core on real sockets with raw bytes, on the default loop and on uvloop (what the daemon
runs): framing, keep-alive, the limits and their answers, streams and their write timeout, the connection
cap, HEAD, and stop. The router is tested without sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from maculad.core.httpserver import (
    HTTPError,
    HTTPServer,
    Limits,
    Request,
    Response,
    Router,
    StreamResponse,
    StreamWriter,
)

LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                                ids=["asyncio", "uvloop"])
FAST = Limits(keepalive=0.5, write_timeout=0.3, max_body=100, max_connections=4, grace=0.5)


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Awaitable[None]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(coro, 30))


@dataclass
class App:
    """Handlers for the scenarios, and what they saw."""

    seen: list[str] = field(default_factory=list)
    flood: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    closed: list[str] = field(default_factory=list)
    stream_ended: list[str] = field(default_factory=list)

    def router(self) -> Router:
        r = Router()
        r.get("/hello", self.hello)
        r.post("/echo", self.echo)
        r.get("/boom", self.boom)
        r.get("/teapot", self.teapot)
        r.get("/slow", self.slow)
        r.get("/stream", self.stream)
        r.post("/ignore", self.hello)
        return r

    async def dispatch(self, request: Request) -> Response | StreamResponse:
        self.seen.append(f"{request.method} {request.target}")
        m = self.router().resolve(request.method, request.raw_path)
        if m.handler is None:
            if m.allowed:
                return Response(405, b"no\n", headers={"Allow": ", ".join(m.allowed)})
            return Response(404, b"nothing here\n")
        return await m.handler(request.with_params(m.params))

    async def hello(self, request: Request) -> Response:
        return Response(body=f"hello {request.query.get('name', 'you')}\n".encode())

    async def echo(self, request: Request) -> Response:
        return Response(body=await request.read(), content_type="application/octet-stream")

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("secret internals")

    async def teapot(self, request: Request) -> Response:
        raise HTTPError(418, "short and stout")

    async def slow(self, request: Request) -> Response:
        await self.release.wait()
        return Response(body=b"finally\n")

    async def stream(self, request: Request) -> StreamResponse:
        async def body(w: StreamWriter) -> None:
            try:
                await w.write(b"first\n")
                await self.flood.wait()
                if request.query.get("end") == "1":
                    await w.write(b"last\n")
                    self.stream_ended.append("returned")
                    return
                while True:
                    await w.write(b"x" * 65536)
            except BaseException as exc:
                self.stream_ended.append(type(exc).__name__)
                raise

        return StreamResponse(body=body, content_type="text/plain",
                              on_close=lambda: self.closed.append(request.target))


@dataclass
class Running:
    server: HTTPServer
    app: App
    port: int
    refused: list[int]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@asynccontextmanager
async def serving(limits: Limits = FAST, **kw: Any) -> AsyncIterator[Running]:
    app = App()
    refused: list[int] = []
    server = HTTPServer(name="test", handler=app.dispatch, limits=limits, on_refused=lambda: refused.append(1),
                        **kw)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    await server.serve(sock)
    try:
        yield Running(server, app, sock.getsockname()[1], refused)
    finally:
        await server.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer off the wire: (status, headers with lowercased names, body), by its own framing."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return int(status), headers, body


async def exchange(r: Running, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await r.connect()
    writer.write(raw)
    try:
        return await read_response(reader)
    finally:
        writer.close()


async def eof(reader: asyncio.StreamReader) -> bytes:
    """What is left until the server closes (fails the test when it does not within 5 s)."""
    return await asyncio.wait_for(reader.read(), 5)


# ---------------------------------------------------------------------------------------------- framing


@LOOPS
def test_pipelined_requests_are_answered_in_order(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            reader, writer = await r.connect()
            writer.write(b"GET /hello?name=a HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                         b"GET /hello?name=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers = [await read_response(reader) for _ in range(3)]
            assert [(s, b) for s, _, b in answers] == [(200, b"hello a\n"), (200, b"hello"), (200, b"hello c\n")]
            assert answers[0][1]["content-length"] == "8"
            assert answers[0][1]["content-type"] == "text/plain; charset=utf-8"
            assert answers[2][1]["connection"] == "close"
            assert await eof(reader) == b""
            writer.close()
            assert r.app.seen == ["GET /hello?name=a", "POST /echo", "GET /hello?name=c"]

    run(loop_factory, main())


@LOOPS
def test_keep_alive_reuses_the_connection_then_closes_it_when_idle(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            reader, writer = await r.connect()
            for name in ("one", "two"):
                writer.write(f"GET /hello?name={name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                status, headers, body = await read_response(reader)
                assert (status, body) == (200, f"hello {name}\n".encode()) and "connection" not in headers
            assert r.server.connections == 1
            assert await eof(reader) == b""  # keepalive = 0.5 s without a request: closed, no answer
            writer.close()
            await asyncio.sleep(0.05)
            assert r.server.connections == 0

    run(loop_factory, main())


@LOOPS
def test_a_half_sent_head_is_closed_without_an_answer(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            reader, writer = await r.connect()
            writer.write(b"GET /hello HTTP/1.1\r\nHo")
            assert await eof(reader) == b""
            writer.close()

    run(loop_factory, main())


@LOOPS
def test_http_1_0_gets_an_answer_and_a_close(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            reader, writer = await r.connect()
            writer.write(b"GET /hello HTTP/1.0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 10" in head.lower()
            assert await eof(reader) == b"hello you\n"
            writer.close()

    run(loop_factory, main())


# ---------------------------------------------------------------------------------------------- limits


@LOOPS
def test_oversized_heads_and_request_lines(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving(Limits(max_line=1024, max_head=4096, max_field=2048, max_headers=10, keepalive=2)) as r:
            status, _, body = await exchange(r, f"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {'x' * 2100}\r\n\r\n"
                                             .encode())
            assert status == 431 and b"field is larger than 2048" in body
            big = "".join(f"X-Big{i}: {'x' * 1500}\r\n" for i in range(3))
            status, headers, body = await exchange(r, f"GET /hello HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode())
            assert (status, headers["connection"]) == (431, "close") and b"larger than 4096" in body
            # the same head arriving in small pieces: refused once it outgrows the limit, before it ends
            reader, writer = await r.connect()
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(10):
                writer.write(b"y" * 500)
                await writer.drain()
                await asyncio.sleep(0.01)
            status, _, _ = await read_response(reader)
            assert status == 431
            writer.close()
            status, _, body = await exchange(r, f"GET /{'a' * 2000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert status == 414 and b"longer than 1024" in body
            status, _, _ = await exchange(r, f"GET /{'a' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert status == 414  # no end of line within the head limit
            many = "".join(f"X-H{i}: v\r\n" for i in range(11))
            status, _, body = await exchange(r, f"GET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
            assert status == 431 and b"more than 10 header fields" in body
            # ten fields are fine
            many = "".join(f"X-H{i}: v\r\n" for i in range(9))
            assert (await exchange(r, f"GET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode()))[0] == 200

    run(loop_factory, main())


@LOOPS
def test_malformed_requests_get_400_and_the_server_serves_on(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",  # no Host
                        b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # a TLS hello
                        b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
                        b"GET /hello HTTP/1.1\r\nHost x\r\n\r\n"):
                status, headers, body = await exchange(r, raw)
                assert (status, headers["connection"], body) == (400, "close", b"malformed request\n"), raw
            status, _, _ = await exchange(r, b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
            assert status == 501
            assert (await exchange(r, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200

    run(loop_factory, main())


@LOOPS
def test_request_bodies(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            status, _, body = await exchange(r, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            assert (status, body) == (200, b"hello world")
            status, headers, body = await exchange(r, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
            assert (status, headers["connection"]) == (413, "close") and b"larger than 100 bytes" in body
            chunks = b"".join(b"32\r\n" + b"z" * 50 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
            status, _, _ = await exchange(r, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                             + chunks)
            assert status == 413
            status, _, _ = await exchange(r, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                             b"zz\r\nhello\r\n")
            assert status == 400
            # a client that waits for 100 Continue before it sends the body
            reader, writer = await r.connect()
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            assert (await read_response(reader))[::2] == (200, b"hello")
            writer.close()
            # a body the handler does not read: answered, then the connection closes
            reader, writer = await r.connect()
            writer.write(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (200, "close")
            assert await eof(reader) == b""
            writer.close()
            # a body that never arrives: 408 after keepalive
            status, _, _ = await exchange(r, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc")
            assert status == 408

    run(loop_factory, main())


@LOOPS
def test_handler_errors_are_answered_without_a_traceback(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            status, headers, body = await exchange(r, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, body) == (500, b"internal error\n") and headers["content-type"].startswith("text/plain")
            assert b"secret" not in body and b"Traceback" not in body
            assert (await exchange(r, b"GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n"))[::2] == (418, b"short and stout\n")

        def as_json(status: int, message: str) -> Response:
            return Response(status, json.dumps({"error": message}).encode(), "application/json")

        async with serving(error_response=as_json) as r:
            status, headers, body = await exchange(r, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, headers["content-type"], json.loads(body)) == (500, "application/json",
                                                                             {"error": "internal error"})
            status, _, body = await exchange(r, b"BAD\r\n\r\n")
            assert (status, json.loads(body)) == (400, {"error": "malformed request"})

    run(loop_factory, main())


@LOOPS
def test_connections_are_capped(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            held = [await r.connect() for _ in range(4)]
            await asyncio.sleep(0.05)
            reader, writer = await r.connect()
            assert (await eof(reader)).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            writer.close()
            assert r.refused == [1] and r.server.connections == 4
            for _, w in held:
                w.close()
            await asyncio.sleep(0.1)
            assert (await exchange(r, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200

    run(loop_factory, main())


# ---------------------------------------------------------------------------------------------- HEAD, streams


@LOOPS
def test_head_is_answered_as_get_without_the_body(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            reader, writer = await r.connect()
            writer.write(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nHEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 10\r\n" in head.lower()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
            assert (await read_response(reader))[2] == b"hello you\n"  # nothing in between
            writer.close()
            assert r.app.stream_ended == [] and r.app.closed == ["/stream"]  # the body never ran

    run(loop_factory, main())


@LOOPS
def test_a_stream_is_chunked_and_the_connection_kept(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            r.app.flood.set()
            reader, writer = await r.connect()
            writer.write(b"GET /stream?end=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = await read_response(reader)
            assert (status, headers["content-type"], body) == (200, "text/plain", b"first\nlast\n")
            assert (await read_response(reader))[2] == b"hello you\n"
            writer.close()
            # HTTP/1.0: no chunks, the end of the body is the close
            reader, writer = await r.connect()
            writer.write(b"GET /stream?end=1 HTTP/1.0\r\n\r\n")
            data = await eof(reader)
            assert b"transfer-encoding" not in data.lower() and data.endswith(b"\r\n\r\nfirst\nlast\n")
            writer.close()
            assert r.app.stream_ended == ["returned", "returned"]

    run(loop_factory, main())


@LOOPS
def test_a_stream_whose_client_stops_reading_is_cut(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            loop = asyncio.get_running_loop()
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", r.port))
            await loop.sock_sendall(s, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            while "GET /stream" not in r.app.seen:
                await asyncio.sleep(0.02)
            r.app.flood.set()  # and never read a byte
            while not r.app.stream_ended:
                await asyncio.sleep(0.02)
            assert r.app.stream_ended == ["WriteTimeout"] and r.app.closed == ["/stream"]
            while r.server.connections:
                await asyncio.sleep(0.02)
            s.close()

    run(loop_factory, main())


@LOOPS
def test_a_stream_ends_when_its_client_goes(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving() as r:
            reader, writer = await r.connect()
            writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"first\n")
            writer.close()  # the body waits for the flood, which never comes
            while not r.app.closed:
                await asyncio.sleep(0.02)
            assert r.app.stream_ended == ["CancelledError"]

    run(loop_factory, main())


@LOOPS
def test_close_ends_idle_connections_and_streams_and_lets_requests_finish(loop_factory: Any) -> None:
    async def main() -> None:
        async with serving(Limits(keepalive=30, grace=5)) as r:
            idle_r, idle_w = await r.connect()
            stream_r, stream_w = await r.connect()
            stream_w.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await stream_r.readuntil(b"first\n")
            slow_r, slow_w = await r.connect()
            slow_w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            while "GET /slow" not in r.app.seen:
                await asyncio.sleep(0.01)
            closing = asyncio.ensure_future(r.server.close())
            assert await eof(idle_r) == b""
            await eof(stream_r)
            assert r.app.stream_ended == ["CancelledError"] and not closing.done()
            r.app.release.set()
            status, _, body = await read_response(slow_r)
            assert (status, body) == (200, b"finally\n")
            await asyncio.wait_for(closing, 5)
            with pytest.raises(OSError):
                await r.connect()
            for w in (idle_w, stream_w, slow_w):
                w.close()

    run(loop_factory, main())


# ---------------------------------------------------------------------------------------------- the router


async def _nothing(request: Request) -> Response:
    return Response()


async def _other(request: Request) -> Response:
    return Response(status=204)


def test_router_matches_literals_and_params_and_tells_404_from_405() -> None:
    r = Router()
    r.get("/v1/status", _nothing)
    r.post("/v1/services/{name}/{action}", _other)
    m = r.resolve("GET", "/v1/status")
    assert (m.handler, m.pattern, m.params) == (_nothing, "/v1/status", {})
    assert r.resolve("HEAD", "/v1/status").handler is _nothing
    m = r.resolve("POST", "/v1/services/a%2Fb%20c/restart")
    assert (m.handler, m.pattern, m.params) == (_other, "/v1/services/{name}/{action}",
                                                {"name": "a/b c", "action": "restart"})
    assert r.resolve("GET", "/v1/%73tatus").handler is _nothing  # literals compare decoded
    m = r.resolve("DELETE", "/v1/status")
    assert (m.handler, m.pattern, m.allowed) == (None, None, ("GET", "HEAD"))
    assert r.resolve("GET", "/v1/services/x/start").allowed == ("POST",)
    for path in ("/v1/nothing", "/v1/status/", "/v1/services//restart", "/v1", "*", "example.com:443", ""):
        m = r.resolve("GET", path)
        assert (m.handler, m.allowed) == (None, ()), path
