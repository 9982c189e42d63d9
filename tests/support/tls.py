"""Helpers for the TLS end-to-end tests: a real aiohttp backend (HTTP page + WebSocket echo) in its
own thread, the daemon's CA read back from its state directory, and metric scraping."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
import urllib.request
from pathlib import Path

from aiohttp import WSMsgType, web

PAGE = "<html><head><title>Grafana backend</title></head><body><h1 id='who'>hello from {name}</h1></body></html>"


class Backend:
    """An aiohttp server on 127.0.0.1:<free port> in a thread: `/` → a page naming it, `/ws` → echo."""

    def __init__(self, name: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.port = 0
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _page(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=PAGE.format(name=self.name), content_type="text/html",
                            headers={"X-Backend": self.name, "X-Seen-Host": request.host})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name} echoes {msg.data}")
        return ws

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/{tail:.*}", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self._loop.run_forever()

    def start(self) -> Backend:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
        fut = asyncio.run_coroutine_threadsafe(down(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry `labels` (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def ca_paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "ca" / "ca.pem", state_dir / "ca" / "ca-key.pem"


def verified_get(ip: str, port: int, name: str, cafile: Path) -> str:
    """A TLS handshake with SNI `name` verified against `cafile`, then one request: the backend's answer."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((ip, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def maps_cryptography(pid: int | None) -> bool:
    """Whether the process has cryptography's native library mapped (/proc/PID/maps)."""
    assert pid is not None
    return "cryptography/hazmat/bindings/_rust.abi3.so" in Path(f"/proc/{pid}/maps").read_text()
