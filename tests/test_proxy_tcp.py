"""The TCP relay end to end over real loopback sockets: HTTP with Host intact, a 20 MB body both
ways, WebSocket, TLS with SNI, half-close, a slow reader with bounded buffers, the dead-backend page.

The scenarios run on the default asyncio loop and again on uvloop (what the daemon uses)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from maculad.proxy import tcp as tcp_mod
from maculad.core.net import Backend
from maculad.routes.model import ServiceHold
from tests.support.proxy import (
    backend_of,
    TcpEcho,
    aiohttp_backend,
    dead_port,
    pattern,
    proxy_config,
    route,
    running_relay,
    self_signed,
    sha256,
    wait_for,
)

MB = 1024 * 1024


async def _whoami(request: web.Request) -> web.Response:
    return web.json_response({"host": request.host, "path": request.path_qs})


async def _upload(request: web.Request) -> web.Response:
    body = await request.read()
    reply = pattern(20 * MB, seed=11)
    return web.Response(body=reply, headers={"X-Got-Sha256": sha256(body), "X-Got-Length": str(len(body))})


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str("echo:" + msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


def _app() -> web.Application:
    app = web.Application(client_max_size=64 * MB)
    app.router.add_get("/whoami", _whoami)
    app.router.add_post("/upload", _upload)
    app.router.add_get("/ws", _ws)
    return app


# --------------------------------------------------------------------------- scenarios


async def scenario_http_host_intact(tmp_path: Path) -> None:
    async with aiohttp_backend(_app()) as be, running_relay(tmp_path, lambda c: route("grafana", c, http=be)) as h:
        ip, port = h.ip("grafana"), h.config.http_port
        async with aiohttp.ClientSession() as s:
            for path in ("/whoami", "/whoami?x=1"):
                async with s.get(f"http://{ip}:{port}{path}", headers={"Host": "grafana.macula.local"}) as r:
                    assert r.status == 200
                    assert await r.json() == {"host": "grafana.macula.local", "path": path}
        await wait_for(lambda: h.listener(ip, port)["conns"] == 0, what="connection closed")
        labels = {"route": "grafana.macula.local", "port": str(port), "proto": "tcp"}
        assert h.sample("maculad_proxy_connections_total", **labels) >= 1
        assert h.sample("maculad_proxy_active_connections", **labels) == 0
        # a TCP listener has connections, not sessions: no udp_sessions series at all
        assert h.metrics.registry.get_sample_value("maculad_proxy_udp_sessions",
                                                   {"horizon": "host", **labels}) is None
        assert h.sample("maculad_proxy_bytes_total", direction="in", **labels) > 0
        assert h.sample("maculad_proxy_bytes_total", direction="out", **labels) > 0
        assert h.sample("maculad_proxy_connect_duration_seconds_count", route="grafana.macula.local") >= 1
        # measured with perf_counter: a loopback connect is far below uvloop's millisecond clock, never 0
        assert h.sample("maculad_proxy_connect_duration_seconds_sum", route="grafana.macula.local") > 0


async def scenario_large_body(tmp_path: Path) -> None:
    body = pattern(20 * MB, seed=5)
    async with aiohttp_backend(_app()) as be, running_relay(tmp_path, lambda c: route("big", c, http=be)) as h:
        url = f"http://{h.ip('big')}:{h.config.http_port}/upload"
        async with aiohttp.ClientSession() as s, s.post(url, data=body) as r:
            got = await r.read()
            assert r.status == 200
            assert r.headers["X-Got-Length"] == str(len(body))
            assert r.headers["X-Got-Sha256"] == sha256(body)
            assert len(got) == 20 * MB
            assert sha256(got) == sha256(pattern(20 * MB, seed=11))


async def scenario_half_close(tmp_path: Path) -> None:
    received_after_eof: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(5)
        if first == b"UPLD:":  # client → EOF → backend answers after reading everything
            data = await reader.read()
            writer.write(f"{len(data)} {sha256(data)}".encode())
            await writer.drain()
            writer.close()
        else:  # backend half-closes first, then still reads what the client sends
            writer.write(b"bye from backend")
            writer.write_eof()
            rest = await reader.read()
            received_after_eof.set_result(rest)
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    be = backend_of(server)
    try:
        async with running_relay(tmp_path, lambda c: route("hc", c, tcp=[(dead_port(), be)])) as h:
            port = h.route_port()
            ip = h.ip("hc")
            payload = pattern(3 * MB, seed=9)
            r, w = await asyncio.open_connection(ip, port)
            w.write(b"UPLD:" + payload)
            w.write_eof()
            answer = await asyncio.wait_for(r.read(), 20)
            assert answer == f"{len(payload)} {sha256(payload)}".encode()
            w.close()

            r, w = await asyncio.open_connection(ip, port)
            w.write(b"HELO:")
            await w.drain()
            assert await asyncio.wait_for(r.read(), 20) == b"bye from backend"  # EOF from backend...
            w.write(b"client still talking")  # ...but our direction stays open
            w.write_eof()
            assert await asyncio.wait_for(received_after_eof, 20) == b"client still talking"
            w.close()
    finally:
        server.close()
        await server.wait_closed()


class Firehose(asyncio.Protocol):
    """Writes `total` bytes as fast as the connection takes them, honouring pause_writing."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.paused = False
        self.was_paused = asyncio.Event()
        self.transport: Any = None
        self.chunk = pattern(256 * 1024, seed=3)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.set_write_buffer_limits(high=MB)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.sent < self.total and not self.transport.is_closing():
            n = min(len(self.chunk), self.total - self.sent)
            self.sent += n
            self.transport.write(self.chunk[:n])
        if self.sent >= self.total and not self.transport.is_closing():
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused = True
        self.was_paused.set()

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self._pump)


class EchoThenFirehose(Firehose):
    """Echoes what it is sent until the line `go`, then writes like `Firehose`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.set_write_buffer_limits(high=MB)
        self.streaming = False

    def data_received(self, data: bytes) -> None:
        if self.streaming:
            return
        if data == b"go\n":
            self.streaming = True
            self._pump()
        else:
            self.transport.write(data)


async def scenario_slow_reader(tmp_path: Path) -> None:
    total = 160 * MB
    hoses: list[Firehose] = []

    def make() -> Firehose:
        hoses.append(Firehose(total))
        return hoses[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    be = backend_of(server)
    try:
        async with running_relay(tmp_path, lambda c: route("slow", c, http=be)) as h:
            ip, port = h.ip("slow"), h.config.http_port
            r, w = await asyncio.open_connection(ip, port, limit=64 * 1024)
            got = 0
            max_buffered = 0
            await wait_for(lambda: bool(hoses), what="backend connection")
            hose = hoses[0]
            # Read slowly until the backend itself is throttled (its own write buffer fills up):
            # backpressure went all the way through the relay.
            while not hose.was_paused.is_set() or got < 4 * MB:
                got += len(await asyncio.wait_for(r.read(64 * 1024), 20))
                max_buffered = max(max_buffered, h.listener(ip, port)["buffered_bytes"])
                await asyncio.sleep(0.005)
            for _ in range(50):  # keep reading slowly a while longer; the relay's buffer stays bounded
                got += len(await asyncio.wait_for(r.read(64 * 1024), 20))
                max_buffered = max(max_buffered, h.listener(ip, port)["buffered_bytes"])
                await asyncio.sleep(0.005)
            assert hose.sent < 80 * MB, f"backend pushed {hose.sent} bytes into a slow reader"
            assert max_buffered <= 2 * (tcp_mod.HIGH_WATER + MB), max_buffered
            # Then read everything at full speed: nothing lost, nothing reordered.
            while True:
                chunk = await asyncio.wait_for(r.read(MB), 20)
                if not chunk:
                    break
                got += len(chunk)
            assert got == total
            w.close()
    finally:
        server.close()
        await server.wait_closed()


async def scenario_piped_echo(tmp_path: Path) -> None:
    """A connection that outlives `PIPE_AFTER` chunks is piped (its sockets go to the relay's C pump, which
    moves and counts its bytes): every byte still arrives in order, and the counts are exact, both while
    it is open and after it closed."""
    async with TcpEcho(b"pg") as echo, running_relay(
        tmp_path, lambda c: route("pg", c, tcp=[(dead_port(), echo.backend)])
    ) as h:
        port = h.route_port()
        ip = h.ip("pg")
        labels = {"route": "pg.macula.local", "port": str(port), "proto": "tcp"}
        r, w = await asyncio.open_connection(ip, port)
        assert await asyncio.wait_for(r.readline(), 10) == b"pg\n"
        sent = 0
        for i in range(3 * tcp_mod.PIPE_AFTER):
            msg = pattern(1 + (i * 997) % 40_000, seed=i)
            w.write(msg)
            sent += len(msg)
            assert await asyncio.wait_for(r.readexactly(len(msg)), 10) == msg
        conns = h.connections()
        assert [c.piped for c in conns] == [True]
        h.relay.flush_metrics()
        assert h.sample("maculad_proxy_bytes_total", direction="in", **labels) == sent
        assert h.sample("maculad_proxy_bytes_total", direction="out", **labels) == sent + len(b"pg\n")
        big = pattern(8 * MB, seed=77)  # and a burst much larger than the buffers, through the pipe
        w.write(big)
        assert await asyncio.wait_for(r.readexactly(len(big)), 30) == big
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 10) == b""  # the echo closes when we do
        w.close()
        await wait_for(lambda: h.listener(ip, port)["conns"] == 0, what="connection closed")
        assert h.sample("maculad_proxy_bytes_total", direction="in", **labels) == sent + len(big)
        assert h.sample("maculad_proxy_bytes_total", direction="out", **labels) == sent + len(big) + len(b"pg\n")


async def scenario_piped_client_reset(tmp_path: Path) -> None:
    """A piped connection whose client resets it while the backend streams: both sides are closed, the
    counts stay, and nothing reaches the loop's error handler. (It is piped during its first round trips:
    a connection is handed to the pump at a chunk when neither transport holds unsent bytes, which a
    stream faster than its reader may never offer; such a one stays on the Python path.)"""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    hoses: list[Firehose] = []

    def make() -> Firehose:
        hoses.append(EchoThenFirehose(1024 * MB))
        return hoses[-1]

    server = await loop.create_server(make, "127.0.0.1", 0)
    be = backend_of(server)
    try:
        async with running_relay(tmp_path, lambda c: route("fh", c, tcp=[(dead_port(), be)])) as h:
            port = h.route_port()
            ip = h.ip("fh")
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, (ip, port))
            for i in range(2 * tcp_mod.PIPE_AFTER):
                msg = b"%d\n" % i
                await loop.sock_sendall(sock, msg)
                echoed = b""
                while len(echoed) < len(msg):
                    echoed += await asyncio.wait_for(loop.sock_recv(sock, 64), 10)
                assert echoed == msg
            assert [c.piped for c in h.connections()] == [True]
            await loop.sock_sendall(sock, b"go\n")
            got = 0
            while got < 48 * MB:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 256 * 1024), 20)
                assert chunk
                got += len(chunk)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST, with the backend still pushing
            await wait_for(lambda: h.listener(ip, port)["conns"] == 0, what="both sides closed")
            await wait_for(lambda: hoses[0].transport.is_closing(), what="backend connection closed")
            labels = {"route": "fh.macula.local", "port": str(port), "proto": "tcp"}
            assert h.sample("maculad_proxy_bytes_total", direction="out", **labels) >= got
        assert reports == []
    finally:
        server.close()
        for hose in hoses:
            hose.transport.abort()
        await server.wait_closed()


async def scenario_short_connection_is_counted_in_python(tmp_path: Path) -> None:
    """A connection of a few chunks never pipes: counted exactly without asking the kernel."""
    async with TcpEcho(b"pg") as echo, running_relay(
        tmp_path, lambda c: route("pg", c, tcp=[(dead_port(), echo.backend)])
    ) as h:
        port = h.route_port()
        ip = h.ip("pg")
        r, w = await asyncio.open_connection(ip, port)
        assert await asyncio.wait_for(r.readline(), 10) == b"pg\n"
        w.write(b"SELECT 1")
        assert await asyncio.wait_for(r.readexactly(8), 10) == b"SELECT 1"
        conns = h.connections()
        assert [(c.piped, c.bytes_in, c.backend.bytes_out if c.backend else None) for c in conns] == [(False, 8, 11)]
        w.close()


# --------------------------------------------------------------------------- the tests


SCENARIOS = [scenario_http_host_intact, scenario_large_body, scenario_half_close, scenario_slow_reader,
             scenario_piped_echo, scenario_piped_client_reset, scenario_short_connection_is_counted_in_python]
SCENARIO_IDS = ["http", "20mb", "half-close", "slow-reader", "piped", "piped-reset", "short"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
async def test_scenarios_on_asyncio(tmp_path: Path, scenario: Any) -> None:
    await scenario(tmp_path)


async def test_without_the_pump_a_connection_stays_counted_in_python(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the pump is not built (not Linux), a long connection is never piped: it stays on the Python
    path, counted exactly."""
    monkeypatch.setattr(tcp_mod.pump, "AVAILABLE", False)
    async with TcpEcho(b"pg") as echo, running_relay(
        tmp_path, lambda c: route("pg", c, tcp=[(dead_port(), echo.backend)])
    ) as h:
        r, w = await asyncio.open_connection(h.ip("pg"), h.route_port())
        assert await asyncio.wait_for(r.readline(), 10) == b"pg\n"
        sent = 0
        for i in range(3 * tcp_mod.PIPE_AFTER):
            msg = pattern(1 + i * 101, seed=i)
            w.write(msg)
            sent += len(msg)
            assert await asyncio.wait_for(r.readexactly(len(msg)), 10) == msg
        [conn] = h.connections()
        assert conn.piped is False and conn.budget < 0
        assert (conn.bytes_in, conn.backend.bytes_out) == (sent, sent + len(b"pg\n"))
        w.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_scenarios_on_uvloop(tmp_path: Path, scenario: Any) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(tmp_path), 60))


async def test_websocket_echo(tmp_path: Path) -> None:
    async with aiohttp_backend(_app()) as be, running_relay(tmp_path, lambda c: route("ws", c, http=be)) as h:
        url = f"http://{h.ip('ws')}:{h.config.http_port}/ws"
        async with aiohttp.ClientSession() as s, s.ws_connect(url, headers={"Host": "ws.macula.local"}) as ws:
            for i in range(20):
                await ws.send_str(f"hello {i}")
                assert (await ws.receive_str(timeout=10)) == f"echo:hello {i}"
            blob = pattern(300_000)
            await ws.send_bytes(blob)
            assert (await ws.receive_bytes(timeout=10)) == blob[::-1]


async def test_tls_passes_through_with_sni(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "console.macula.local")
    seen_sni: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen_sni.append(name)

    server_ctx.sni_callback = on_sni  # type: ignore[assignment]
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async with aiohttp_backend(_app(), ssl_context=server_ctx) as be, running_relay(
        tmp_path, lambda c: route("console", c, https=be)
    ) as h:
        ip, port = h.ip("console"), h.config.https_port
        r, w = await asyncio.open_connection(ip, port, ssl=client_ctx, server_hostname="console.macula.local")
        ssl_obj = w.get_extra_info("ssl_object")
        assert ssl_obj is not None and ssl_obj.getpeercert()["subject"] == ((("commonName", "console.macula.local"),),)
        w.write(b"GET /whoami HTTP/1.1\r\nHost: console.macula.local\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(r.read(), 10)
        w.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["host"] == "console.macula.local"
        assert seen_sni == ["console.macula.local"]


async def _get_raw(ip: str, port: int, host: str) -> tuple[int, dict[str, str], str]:
    r, w = await asyncio.open_connection(ip, port)
    w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n".encode())
    raw = await asyncio.wait_for(r.read(), 10)  # the relay closes: read to EOF (no reset)
    w.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_dead_backend_gets_502_or_503(tmp_path: Path) -> None:
    dead = Backend("127.0.0.1", dead_port())
    async with running_relay(
        tmp_path,
        lambda c: route("grafana", c, http=dead, service="grafana"),
    ) as h:
        ip, port = h.ip("grafana"), h.config.http_port
        status, headers, body = await _get_raw(ip, port, "grafana.macula.local")
        assert status == 502
        assert headers["connection"] == "close"
        assert headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) == len(body.encode())
        assert "grafana.macula.local" in body and str(dead) in body and "connection refused" in body

        # The service is not running: the route is held, the backend is not dialed, 503 says why.
        hold = ServiceHold("grafana", "backoff", "restarting: attempt 2", "maculactl start grafana",
                           retry_at=time.time() + 30)
        await h.update(replace(route("grafana", h.config, http=dead, service="grafana"), hold=hold))
        assert h.ip("grafana") == ip
        status, headers, body = await _get_raw(ip, port, "grafana.macula.local")
        assert status == 503 and headers["content-type"].startswith("text/html")
        assert "restarting: attempt 2, next in" in body and "maculactl start grafana" in body
        assert 25 <= int(headers["retry-after"]) <= 30
        assert h.sample("maculad_proxy_upstream_errors_total", route="grafana.macula.local", port=str(port),
                        proto="tcp", reason="held") == 1
        await h.update(route("grafana", h.config, http=dead, service="grafana"))

        # A hostile Host header is not echoed; the route name stands in.
        status, _, body = await _get_raw(ip, port, "<script>")
        assert "<script>" not in body and "grafana.macula.local" in body
        labels = {"route": "grafana.macula.local", "port": str(port), "proto": "tcp", "reason": "refused"}
        assert h.sample("maculad_proxy_upstream_errors_total", **labels) == 2


async def test_dead_backend_on_other_port_closes_cleanly(tmp_path: Path) -> None:
    front = dead_port()
    dead = Backend("127.0.0.1", dead_port())
    async with running_relay(tmp_path, lambda c: route("pg", c, tcp=[(front, dead)])) as h:
        r, w = await asyncio.open_connection(h.ip("pg"), front)
        w.write(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # the client speaks first, as postgres does
        assert await asyncio.wait_for(r.read(), 10) == b""  # a clean FIN, no reset
        w.close()
        assert h.sample("maculad_proxy_upstream_errors_total", route="pg.macula.local", port=str(front),
                        proto="tcp", reason="refused") == 1


async def test_connect_timeout_is_reported(tmp_path: Path) -> None:
    # A listening socket with a full backlog never completes new connects: a real timeout.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(blocker.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    be = Backend("127.0.0.1", blocker.getsockname()[1])
    try:
        from tests.support.proxy import proxy_config

        cfg = proxy_config(connect_timeout=0.3)
        async with running_relay(tmp_path, lambda c: route("slowbe", c, http=be), config=cfg) as h:
            status, _, body = await _get_raw(h.ip("slowbe"), cfg.http_port, "slowbe.macula.local")
            assert status == 502 and "timed out" in body
    finally:
        for s in fillers:
            s.close()
        blocker.close()


async def test_the_sweep_timer_runs_only_while_a_listener_has_connections(tmp_path: Path) -> None:
    front = dead_port()
    async with TcpEcho(b"pg") as pg, running_relay(tmp_path, lambda c: route("pg", c, tcp=[(front, pg.backend)]),
                                                   config=proxy_config(idle_timeout=60.0)) as h:
        entry = next(e for e in h.relay._entries.values() if e.spec.port == front)
        impl = entry.impl
        assert isinstance(impl, tcp_mod.TcpListener)
        assert impl._sweeper is None  # an idle listener has no timer at all
        r, w = await asyncio.open_connection(h.ip("pg"), front)
        assert await r.readline() == b"pg\n"
        assert impl._sweeper is not None  # armed with the first connection
        w.close()
        await wait_for(lambda: not impl.conns, what="the connection closed")
        assert impl._sweeper is None  # and gone with the last one
        assert h.relay.health() is None
        impl.stop_accepting()  # a listener that stopped accepting under a "serving" entry
        assert h.relay.health() == f"{entry.spec.address} no longer accepts"
