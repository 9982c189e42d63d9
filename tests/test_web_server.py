"""The status page server in-process, where the timing limits can be made short: a live client that
stops reading is cut, a half-sent request is closed, and stopping the server ends open streams."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from maculad.control.api import ControlError
from maculad.observability.metrics import Metrics
from maculad.core.net import Backend
from maculad.app.daemon import WEB_TASKS
from maculad.core.tasks import TaskOwner
from maculad.web import server as web_server
from maculad.web.server import WebServer


class Source:
    """A ControlTarget's read half that can flood its event stream."""

    def __init__(self) -> None:
        self.flood = asyncio.Event()
        self.followers = 0

    def status(self) -> dict[str, Any]:
        return {"domain": "macula.local", "components": {}}

    def routes(self) -> dict[str, Any]:
        return {"version": 1, "domain": "macula.local", "routes": [], "conflicts": []}

    def services(self) -> list[dict[str, Any]]:
        return []

    def cluster_status(self) -> dict[str, Any]:
        raise ControlError(409, "kind cluster management is off")

    async def follow_events(self, *, replay: int) -> AsyncIterator[dict[str, Any]]:
        self.followers += 1
        try:
            await self.flood.wait()
            pad = "x" * 65536
            n = 0
            while True:
                n += 1
                yield {"kind": "flood", "n": n, "pad": pad}
                await asyncio.sleep(0)
        finally:
            self.followers -= 1


async def _server(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> tuple[WebServer, Source, Metrics, TaskOwner]:
    monkeypatch.setattr(web_server, "WRITE_TIMEOUT", 0.3)
    monkeypatch.setattr(web_server, "KEEPALIVE", 0.5)
    metrics = Metrics()
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: None)
    src = Source()
    srv = WebServer(source=src, domain="macula.local", listen=Backend("127.0.0.1", 0), metrics=metrics, **kw)
    await srv.start()
    owner.spawn_for(srv, WEB_TASKS)
    return srv, src, metrics, owner


async def _wait(cond: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_live_client_that_stops_reading_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    srv, src, metrics, owner = await _server(monkeypatch)
    assert srv.bound is not None
    port = srv.bound[1]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", port))
    await loop.sock_sendall(s, f"GET /api/events HTTP/1.1\r\nHost: macula.local:{port}\r\n\r\n".encode())
    await _wait(lambda: srv.status()["live_clients"] == 1, 5, "the stream to open")
    src.flood.set()  # and never read a byte
    await _wait(lambda: metrics.web_sse_dropped.labels(reason="slow")._value.get() == 1, 10, "the cut")
    await _wait(lambda: srv.status()["live_clients"] == 0, 5, "the stream to be released")
    await _wait(lambda: src.followers == 1, 5, "its event subscription to end")  # only the probe's remains
    s.close()
    await owner.stop_for(WEB_TASKS)
    await srv.stop()
    assert src.followers == 0


async def test_a_half_sent_request_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    srv, _src, _m, owner = await _server(monkeypatch)
    assert srv.bound is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound[1])
    writer.write(b"GET / HTTP/1.1\r\nHo")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed it
    assert data == b"" or data.startswith(b"HTTP/1.")
    writer.close()
    await owner.stop_for(WEB_TASKS)
    await srv.stop()


async def test_stop_ends_open_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    srv, src, _m, owner = await _server(monkeypatch)
    assert srv.bound is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound[1])
    writer.write(f"GET /api/events HTTP/1.1\r\nHost: macula.local:{srv.bound[1]}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"200" in head.split(b"\r\n")[0]
    await owner.stop_for(WEB_TASKS)
    await asyncio.wait_for(srv.stop(), 5)
    assert src.followers == 0
    writer.close()


async def test_bind_failure_is_reported_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    metrics = Metrics()
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: None)
    monkeypatch.setattr(web_server, "BIND_RETRY_MAX", 0.2)
    srv = WebServer(source=Source(), domain="macula.local", listen=Backend("127.0.0.1", port), metrics=metrics)
    await srv.start()
    owner.spawn_for(srv, WEB_TASKS)
    st = srv.status()
    assert not st["serving"] and "cannot listen on 127.0.0.1:" in st["last_error"]
    blocker.close()
    await _wait(lambda: srv.status()["serving"], 10, "the retry to bind")
    assert srv.status()["last_error"] is None
    await owner.stop_for(WEB_TASKS)
    await srv.stop()


async def test_head_and_the_connection_gauge(monkeypatch: pytest.MonkeyPatch) -> None:
    """HEAD is the GET's head without a body, and on /api/events it opens no live stream; the
    `maculad_web_connections` gauge follows the open connections."""
    srv, src, metrics, owner = await _server(monkeypatch)
    assert srv.bound is not None
    port = srv.bound[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET / HTTP/1.1\r\nHost: macula.local:{port}\r\n\r\n".encode())
    get_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(ln.split(b":")[1] for ln in get_head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    assert metrics.web_connections._value.get() == 1 and srv.status()["connections"] == 1
    writer.write(f"HEAD / HTTP/1.1\r\nHost: macula.local:{port}\r\n\r\n"
                 f"HEAD /api/events HTTP/1.1\r\nHost: macula.local:{port}\r\n\r\n"
                 f"GET /nope HTTP/1.1\r\nHost: macula.local:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head == get_head  # the same head, and no body after it
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: text/event-stream" in head
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 404") and b"X-Frame-Options: DENY" in head
    assert srv.status()["live_clients"] == 0 and src.followers == 1  # only the probe's subscription
    writer.close()
    await _wait(lambda: metrics.web_connections._value.get() == 0, 5, "the gauge to drop")
    await owner.stop_for(WEB_TASKS)
    await srv.stop()
