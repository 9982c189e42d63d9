"""`maculad.adapters.http` against real servers written here with plain asyncio (raw bytes, so each test
controls the framing): Content-Length, chunked and close-delimited bodies, keep-alive reuse and the retry
after a server closed a connection, streamed lines, the size bounds, time limits, refused and missing
sockets, TLS against a local CA (maculad's own `pki`), and `Endpoint.parse`."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from maculad.adapters.http import (
    MAX_HEAD,
    Endpoint,
    HTTPClient,
    HTTPTimeout,
    HTTPTooLarge,
    HTTPUnavailable,
    Response,
)
from tests.support.rawhttp import Handler, RawServer, keepalive, send_chunks

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[RawServer, HTTPClient]]:
    """A raw server on a free port and a client for it; both closed after the block."""
    srv = RawServer(handler)
    client = HTTPClient(await srv.tcp(), timeout=5.0)
    try:
        yield srv, client
    finally:
        await client.close()
        await srv.close()


async def until(cond: Callable[[], bool]) -> None:
    """Wait (bounded) for something the server does after the client acted."""
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# ---------------------------------------------------------------------- framing


async def test_content_length_headers_query_and_request_body() -> None:
    async with serving(keepalive(
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Twice: a\r\nx-twice: b\r\n"
        b"Content-Type: text/plain\r\n\r\nhello")) as (srv, client):
        resp = await client.request("post", "/v1/things", params={"filters": '{"label": ["a b=c&d"]}', "all": "1"},
                                    headers={"X-Api-Key": "k"}, body=b'{"x": 1}')
        assert (resp.status, resp.reason, resp.body) == (201, "Created", b"hello")
        assert resp.headers["x-twice"] == "a, b"
        assert resp.headers["content-type"] == "text/plain"
        head, body = srv.requests[0]
        line, *fields = head.decode().split("\r\n")
        assert line == ("POST /v1/things?filters=%7B%22label%22%3A%20%5B%22a%20b%3Dc%26d%22%5D%7D&all=1 HTTP/1.1")
        seen = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields if f)}
        assert seen["host"] == f"127.0.0.1:{client.endpoint.port}"
        assert seen["x-api-key"] == "k"
        assert seen["content-length"] == "8"
        assert body == b'{"x": 1}'


async def test_chunked_body_in_separate_writes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await send_chunks(writer, (b'{"a":', b' [1, 2]', b"}"), pause=True)
        await srv.next_request(reader)

    async with serving(handler) as (_srv, client):
        resp = await client.request("GET", "/json")
        assert resp.json() == {"a": [1, 2]}


async def test_close_delimited_body_and_no_reuse_after_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    async with serving(handler) as (srv, client):
        assert (await client.request("GET", "/")).body == b"until the end"
        assert (await client.request("GET", "/")).body == b"until the end"
        assert srv.connections == 2


async def test_head_and_204_have_no_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        while (req := await srv.next_request(reader)) is not None:
            if req[0].startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async with serving(handler) as (srv, client):
        head = await client.request("HEAD", "/")
        assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "1000")
        assert (await client.request("DELETE", "/x")).status == 204
        assert srv.connections == 1


async def test_bad_json_is_value_error() -> None:
    async with serving(keepalive(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope")) as (_srv, client):
        resp = await client.request("GET", "/")
        with pytest.raises(ValueError):
            resp.json()
        assert Response(200, "OK", {}, b"\xff").status == 200
        with pytest.raises(ValueError):
            Response(200, "OK", {}, b"\xff\xfe").json()


# ---------------------------------------------------------------------- keep-alive


async def test_keepalive_reuses_one_connection() -> None:
    async with serving(keepalive(OK)) as (srv, client):
        for _ in range(5):
            assert (await client.request("GET", "/")).body == b"ok"
        assert srv.connections == 1
        assert client.connections_opened == 1


async def test_at_most_max_idle_connections_are_kept() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        while await srv.next_request(reader) is not None:
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    srv = RawServer(handler)
    client = HTTPClient(await srv.tcp(), max_idle=1)
    try:
        calls = [asyncio.create_task(client.request("GET", "/")) for _ in range(3)]
        await until(lambda: len(srv.requests) == 3)
        gate.set()
        assert [r.body for r in await asyncio.gather(*calls)] == [b"ok"] * 3
        assert srv.connections == 3
        await until(lambda: srv.closed_by_peer == 2)  # two were closed by the client, one kept
        await client.request("GET", "/")
        assert srv.connections == 3
    finally:
        await client.close()
        await srv.close()


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(OK)  # keep-alive by HTTP/1.1 default, but the server closes right after
        await writer.drain()

    async with serving(handler) as (srv, client):
        await client.request("GET", "/")
        await until(lambda: srv.finished == 1 and client._idle[0].reader.at_eof())
        assert (await client.request("POST", "/")).body == b"ok"  # not retried: the closed one was not used
        assert srv.connections == 2


def closes_on_second_request() -> Handler:
    """Answer the first request of a connection; read the second and close without answering — what a
    client sees when the server timed the idle connection out while the request was on its way."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(OK)
        await writer.drain()
        await srv.next_request(reader)
    return handler


async def test_idempotent_request_is_retried_once_on_a_new_connection() -> None:
    async with serving(closes_on_second_request()) as (srv, client):
        await client.request("GET", "/")
        assert (await client.request("PUT", "/again", body=b"x")).body == b"ok"
        assert srv.connections == 2
        assert [r[0].split(b" ")[0] for r in srv.requests] == [b"GET", b"PUT", b"PUT"]


async def test_post_is_not_retried() -> None:
    async with serving(closes_on_second_request()) as (srv, client):
        await client.request("GET", "/")
        with pytest.raises(HTTPUnavailable, match="closed the connection without answering"):
            await client.request("POST", "/create")
        assert srv.connections == 1


async def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)

    async with serving(handler) as (srv, client):
        with pytest.raises(HTTPUnavailable, match=r"http://127\.0\.0\.1:\d+: the server closed"):
            await client.request("GET", "/")
        assert srv.connections == 1


def test_one_client_from_two_event_loops() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    client = HTTPClient(Endpoint.parse(f"http://127.0.0.1:{holder.getsockname()[1]}"))  # built outside a loop

    async def one() -> int:
        srv = RawServer(keepalive(OK))
        await srv.on_socket(holder.dup())
        try:
            return (await client.request("GET", "/")).status
        finally:
            await srv.close()

    try:
        assert asyncio.run(one()) == 200
        assert asyncio.run(one()) == 200  # the idle connection of the first loop is dropped, not used
        assert client.connections_opened == 2
    finally:
        holder.close()


# ---------------------------------------------------------------------- streams


@pytest.mark.parametrize("keepends", [False, True])
async def test_stream_lines_across_chunk_boundaries(keepends: bool) -> None:
    first_line_seen = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        writer.write(b"6\r\none\ntw\r\n")
        await writer.drain()
        await first_line_seen.wait()
        await send_chunks(writer, (b"o\n\nthr", b"ee"), pause=True)
        await srv.next_request(reader)

    async with serving(handler) as (_srv, client):
        stream = await client.stream("GET", "/events")
        assert (stream.status, stream.headers["content-type"]) == (200, "application/json")
        lines = []
        async for line in stream.lines(keepends=keepends):
            lines.append(line)
            first_line_seen.set()
        # with keepends the last line shows that the body ended inside it
        assert lines == ([b"one\n", b"two\n", b"\n", b"three"] if keepends else [b"one", b"two", b"", b"three"])
        await stream.close()
        await stream.close()


async def test_stream_uses_its_own_connection_and_read_returns_the_rest() -> None:
    async with serving(keepalive(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello\nworld")) as (srv, client):
        await client.request("GET", "/")
        stream = await client.stream("GET", "/")
        assert await stream.read() == b"hello\nworld"
        await stream.close()
        assert srv.connections == 2


async def test_stream_broken_mid_body_is_unavailable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nok\n\n\r\n3\r\nha")
        await writer.drain()

    async with serving(handler) as (_srv, client):
        stream = await client.stream("GET", "/")
        got = []
        with pytest.raises(HTTPUnavailable, match="the stream broke"):
            async for line in stream.lines():
                got.append(line)
        assert got == [b"ok", b""]


async def test_client_close_ends_an_open_stream() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\na\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(handler) as (srv, client):
        stream = await client.stream("GET", "/")
        lines = stream.lines()
        assert await anext(lines) == b"a"
        pending = asyncio.create_task(anext(lines, None))
        await asyncio.sleep(0)
        await client.close()
        assert await pending is None
        await until(lambda: srv.finished == 1)  # the client closed the connection


# ---------------------------------------------------------------------- bounds


async def test_oversized_head_is_unavailable() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(200))
    async with serving(keepalive(big + b"\r\n")) as (_srv, client):
        assert len(big) > MAX_HEAD
        with pytest.raises(HTTPTooLarge, match=f"head .*exceeds {MAX_HEAD} bytes"):
            await client.request("GET", "/")
        with pytest.raises(HTTPTooLarge, match=f"head .*exceeds {MAX_HEAD} bytes"):
            await client.stream("GET", "/")


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_oversized_body_is_unavailable(framing: str) -> None:
    payload = b"x" * 5000
    answer = {
        "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + payload,
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"3e8\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n",
        "close": b"HTTP/1.1 200 OK\r\n\r\n" + payload,
    }[framing]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        while await srv.next_request(reader) is not None:
            writer.write(answer)
            await writer.drain()
            if framing == "close":
                return

    srv = RawServer(handler)
    client = HTTPClient(await srv.tcp(), max_body=1500)
    try:
        with pytest.raises(HTTPTooLarge, match="exceeds 1500 bytes"):
            await client.request("GET", "/")
        stream = await client.stream("GET", "/")
        with pytest.raises(HTTPTooLarge, match="exceeds 1500 bytes"):
            await stream.read()
    finally:
        await client.close()
        await srv.close()


async def test_oversized_line_is_unavailable() -> None:
    async with serving(keepalive(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1005\r\n\r\nfine\n" + b"y" * 1000)) as (_srv, client):
        stream = await client.stream("GET", "/")
        got = []
        with pytest.raises(HTTPTooLarge, match="line exceeds 100 bytes"):
            async for line in stream.lines(max_line=100):
                got.append(line)
        assert got == [b"fine"]


async def test_short_body_is_unavailable_not_truncated() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async with serving(handler) as (_srv, client):
        with pytest.raises(HTTPUnavailable, match="closed the connection in the middle of the answer"):
            await client.request("GET", "/")


async def test_malformed_answer_is_unavailable() -> None:
    async with serving(keepalive(b"SMTP ready\r\n\r\n")) as (_srv, client):
        with pytest.raises(HTTPUnavailable, match="malformed answer"):
            await client.request("GET", "/")


# ---------------------------------------------------------------------- no answer


async def test_server_that_never_answers_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        await srv.next_request(reader)
        await reader.read()

    async with serving(handler) as (_srv, client):
        with pytest.raises(HTTPTimeout, match=r"no answer to GET /slow within 0\.2 s"):
            await client.request("GET", "/slow", timeout=0.2)
        with pytest.raises(HTTPTimeout, match=r"no answer to GET /watch within 0\.2 s"):
            await client.stream("GET", "/watch", timeout=0.2)


async def test_refused_and_missing_socket(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = HTTPClient(Endpoint.parse(f"tcp://127.0.0.1:{port}"))
    with pytest.raises(HTTPUnavailable, match=rf"http://127\.0\.0\.1:{port}: connection refused") as err:
        await client.request("GET", "/")
    assert err.value.cause == "connection refused"  # for an adapter naming the server its own way
    missing = tmp_path / "no.sock"
    client = HTTPClient(Endpoint.parse(f"unix://{missing}"))
    with pytest.raises(HTTPUnavailable, match=f"unix://{missing}: the socket {missing} does not exist"):
        await client.stream("GET", "/events")


async def test_unix_socket(tmp_path: Path) -> None:
    srv = RawServer(keepalive(OK))
    ep = await srv.unix(tmp_path / "api.sock")
    client = HTTPClient(ep)
    try:
        assert (await client.request("GET", "/_ping")).body == b"ok"
        assert b"\r\nhost: localhost\r\n" in srv.requests[0][0].lower()
    finally:
        await client.close()
        await srv.close()


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    from maculad.pki import ca as pki

    d = tmp_path_factory.mktemp("ca")
    root, _ = pki.load_or_create(d, "macula.local")
    key = pki.new_key()
    from cryptography.hazmat.primitives import serialization

    leaf = pki.issue_leaf(root, ("api.macula.local",), key, now=dt.datetime.now(dt.UTC))
    (d / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.key").write_bytes(pki.key_pem(key))
    (d / "root.pem").write_bytes(root.pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "leaf.pem", d / "leaf.key")
    return server, d / "root.pem"


async def test_https_against_a_local_ca(tls_pair: tuple[ssl.SSLContext, Path]) -> None:
    server_ctx, root_pem = tls_pair
    srv = RawServer(keepalive(OK))
    ep = await srv.tcp(ssl_context=server_ctx)
    trusting = ssl.create_default_context(cafile=str(root_pem))
    good = HTTPClient(ep, ssl=trusting, server_hostname="api.macula.local")
    untrusting = HTTPClient(ep, server_hostname="api.macula.local")
    wrong_name = HTTPClient(ep, ssl=trusting, server_hostname="other.macula.local")
    try:
        assert (await good.request("GET", "/")).body == b"ok"
        assert (await good.request("GET", "/")).body == b"ok"
        assert srv.connections == 1
        with pytest.raises(HTTPUnavailable, match="TLS failure: CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request("GET", "/")
        with pytest.raises(HTTPUnavailable, match="TLS failure"):
            await wrong_name.request("GET", "/")
    finally:
        for c in (good, untrusting, wrong_name):
            await c.close()
        await srv.close()


async def test_tls_context_for_plain_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not https"):
        HTTPClient(Endpoint.parse("http://127.0.0.1:1"), ssl=ssl.create_default_context())


# ---------------------------------------------------------------------- Endpoint.parse


@pytest.mark.parametrize(("url", "want"), [
    ("unix:///var/run/docker.sock", Endpoint("unix", "", 0, "/var/run/docker.sock")),
    ("tcp://10.0.0.2:2375", Endpoint("http", "10.0.0.2", 2375, "")),
    ("http://pdns.example:8081/", Endpoint("http", "pdns.example", 8081, "")),
    ("http://localhost", Endpoint("http", "localhost", 80, "")),
    ("HTTPS://[::1]:6443", Endpoint("https", "::1", 6443, "")),
    ("https://[fe80::1%eth0]", Endpoint("https", "fe80::1%eth0", 443, "")),
])
def test_endpoint_parse(url: str, want: Endpoint) -> None:
    assert Endpoint.parse(url) == want


def test_endpoint_default_port_and_text() -> None:
    assert Endpoint.parse("tcp://docker.lan", default_port=2376).port == 2376
    assert str(Endpoint.parse("https://[::1]:6443")) == "https://[::1]:6443"
    assert str(Endpoint.parse("unix:///run/x.sock")) == "unix:///run/x.sock"
    assert Endpoint.parse("https://[::1]:443").host_header == "[::1]"
    assert Endpoint.parse("http://h:8081").host_header == "h:8081"


@pytest.mark.parametrize(("url", "why"), [
    ("/var/run/docker.sock", "not an endpoint URL"),
    ("docker.sock", "not an endpoint URL"),
    ("unix://relative.sock", "must be absolute"),
    ("unix://", "must be absolute"),
    ("ssh://me@host", "unsupported scheme 'ssh'"),
    ("ftp://h:21", "unsupported scheme"),
    ("tcp://10.0.0.2", "a port is required"),
    ("http://h:8081/api/v1", "has a path"),
    ("http://h:1?x=1", "has a query"),
    ("http://u:p@h:1", "has user info"),
    ("http://", "no valid host"),
    ("http://:80", "is not a host:port"),
    ("http://h:http", "is not a number"),
    ("http://h:70000", "out of range"),
    ("http://h:0", "out of range"),
    ("http://::1:80", "write IPv6 addresses as"),
    ("https://[not:v6]:1", "is not an IPv6 address"),
    ("http://a b:1", "no valid host"),
])
def test_endpoint_parse_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace("?", r"\?")):
        Endpoint.parse(url)
