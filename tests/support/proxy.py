"""Real-socket helpers for the relay tests: route tables, a running Relay, backends.

Everything binds real loopback sockets on free ports; nothing is mocked. The
relay runs in the test's own event loop (the daemon's uvloop is exercised by
the uvloop scenario tests and the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from maculad.config import ProxyConfig
from maculad.observability.metrics import Metrics
from maculad.providers.base import port_maps
from maculad.proxy.relay import Planner, Relay
from maculad.proxy.spec import desired_listeners
from maculad.proxy.tcp import TcpListener
from maculad.proxy.platform import Argv, LoopbackPlatform
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import RouteSpec
from maculad.core.net import Backend
from maculad.routes.store import AllocationStore
from maculad.app.daemon import RELAY_TASKS
from maculad.core.tasks import TaskOwner

DOMAIN = "macula.local"


def free_port(ip: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound and released)."""
    return free_port()


def backend_of(server: asyncio.AbstractServer) -> Backend:
    """The address a test's own asyncio server listens on, as a route's backend."""
    return Backend("127.0.0.1", server.sockets[0].getsockname()[1])


def proxy_config(**overrides: Any) -> ProxyConfig:
    base: dict[str, Any] = {
        "pool": ipaddress.IPv4Network("127.0.10.0/24"),
        "http_port": free_port(),
        "https_port": free_port(),
        "drain_grace": 30.0,
        "connect_timeout": 5.0,
        "bind_retry_max": 0.5,
    }
    base.update(overrides)
    return ProxyConfig(**base)


def make_manager(tmp_path: Path, config: ProxyConfig, metrics: Metrics) -> RouteTableManager:
    return RouteTableManager(
        domain=DOMAIN,
        pool=config.pool,
        store=AllocationStore(state_dir=tmp_path / "state"),
        metrics=metrics,
        allow_non_loopback=config.allow_non_loopback,
    )


def route(
    name: str,
    config: ProxyConfig,
    *,
    ip: str | None = None,
    http: Backend | None = None,
    https: Backend | None = None,
    tcp: Iterable[tuple[int, Backend]] = (),
    udp: Iterable[tuple[int, Backend]] = (),
    service: str | None = None,
) -> RouteSpec:
    fq = f"{name}.{DOMAIN}"
    return RouteSpec(
        name=fq,
        source="config",
        origin=f"config:{name}",
        ip=ip,
        service=service,
        ports=port_maps(http_port=config.http_port, https_port=config.https_port, http=http, https=https,
                        tcp=tcp, udp=udp),
    )


@dataclass
class RelayHarness:
    config: ProxyConfig
    metrics: Metrics
    routes: RouteTableManager
    relay: Relay
    owner: TaskOwner
    fatal: list[str] = field(default_factory=list)

    def ip(self, name: str) -> str:
        r = self.routes.current.lookup(f"{name}.{DOMAIN}")
        assert r is not None, f"{name} is not in the table"
        return r.ip

    async def update(self, *specs: RouteSpec) -> None:
        self.routes.update("config", list(specs))
        await asyncio.wait_for(self.relay.wait_reconciled(), 10)

    def listener(self, ip: str, port: int, proto: str = "tcp") -> dict[str, Any]:
        for entry in self.relay.status()["listeners"]:
            if entry["ip"] == ip and entry["port"] == port and entry["proto"] == proto:
                return dict(entry)
        raise AssertionError(f"no listener {ip}:{port}/{proto} in {self.relay.status()}")

    def route_port(self) -> int:
        """The first port of the first route (a plain TCP route's own port)."""
        return next(pm.port for pm in self.routes.current.routes[0].ports)

    def connections(self) -> list[Any]:
        """The relay's open TCP connections (its `ClientProtocol`s), over every listener."""
        return [c for e in self.relay._entries.values() if isinstance(e.impl, TcpListener) for c in e.impl.conns]

    def sample(self, name: str, **labels: str) -> float:
        """A sample of the relay's metrics; the relay metrics' `horizon` label is `host` unless given."""
        if name.startswith("maculad_proxy_") and "listener_errors" not in name:
            labels.setdefault("horizon", "host")
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else float(v)


@contextlib.asynccontextmanager
async def running_relay(
    tmp_path: Path,
    *specs_of: Callable[[ProxyConfig], RouteSpec],
    config: ProxyConfig | None = None,
    platform: LoopbackPlatform | None = None,
    horizon: str = "host",
    planner: Planner | None = None,
) -> AsyncIterator[RelayHarness]:
    cfg = config or proxy_config()
    metrics = Metrics()
    routes = make_manager(tmp_path, cfg, metrics)
    fatal: list[str] = []
    owner = TaskOwner(metrics=metrics, on_fatal=lambda name, exc: fatal.append(f"{name}: {exc!r}"))
    relay = Relay(config=cfg, routes=routes, metrics=metrics,
                  platform=platform, horizon=horizon, planner=planner or desired_listeners)
    if specs_of:
        routes.update("config", [f(cfg) for f in specs_of])
    await relay.start()
    owner.spawn_for(relay, RELAY_TASKS)
    await asyncio.wait_for(relay.wait_reconciled(), 10)
    h = RelayHarness(config=cfg, metrics=metrics, routes=routes, relay=relay, owner=owner, fatal=fatal)
    try:
        yield h
    finally:
        await owner.stop_for(RELAY_TASKS)
        await relay.stop()
    assert not fatal, fatal


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` until true; generous timeouts, never a timing assertion."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- backends


@contextlib.asynccontextmanager
async def aiohttp_backend(app: web.Application, *, ssl_context: ssl.SSLContext | None = None,
                          host: str = "127.0.0.1") -> AsyncIterator[Backend]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port(host)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    try:
        yield Backend(host, port)
    finally:
        await runner.cleanup()


class _Echo(asyncio.Protocol):
    def __init__(self, server: TcpEcho) -> None:
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.conns.add(self)
        transport.write(self.server.greeting)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)


class TcpEcho:
    """A raw TCP echo server that greets each connection with its tag."""

    def __init__(self, tag: bytes) -> None:
        self.greeting = tag + b"\n"
        self.conns: set[_Echo] = set()
        self.server: asyncio.AbstractServer | None = None
        self.backend = Backend("127.0.0.1", 0)

    async def __aenter__(self) -> TcpEcho:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Echo(self), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.backend = Backend("127.0.0.1", port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for c in list(self.conns):
            c.transport.abort()
        await self.server.wait_closed()


class UdpEcho(asyncio.DatagramProtocol):
    """A UDP server answering `tag|payload|peer` so tests see which session sent it."""

    def __init__(self, tag: bytes = b"echo") -> None:
        self.tag = tag
        self.transport: Any = None
        self.peers: set[tuple[Any, ...]] = set()
        self.backend = Backend("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.peers.add(addr)
        self.transport.sendto(self.tag + b"|" + data, addr)

    async def __aenter__(self) -> UdpEcho:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.backend = Backend("127.0.0.1", self.transport.get_extra_info("sockname")[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait(data)

    async def ask(self, data: bytes, timeout: float = 5.0) -> bytes:
        self.transport.sendto(data)
        return await asyncio.wait_for(self.queue.get(), timeout)


@contextlib.asynccontextmanager
async def udp_client(ip: str, port: int) -> AsyncIterator[UdpClient]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(UdpClient, remote_addr=(ip, port))
    try:
        yield proto
    finally:
        transport.close()


def self_signed(tmp_path: Path, cn: str) -> tuple[Path, Path]:
    """A self-signed certificate for `cn` (and *.cn) made by the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}"],
        check=True, capture_output=True,
    )
    return cert, key


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(n: int, seed: int = 7) -> bytes:
    """n deterministic, non-repeating-looking bytes (cheap to make, checksum-worthy)."""
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    out = bytearray()
    for i in range(reps):
        out += block[i % 251:] + block[: i % 251]
    out += block[:rest]
    return bytes(out)


class FakeIfconfig:
    """Stands in for macOS's ifconfig (which cannot run here): keeps lo0's addresses, prints like it."""

    def __init__(self, present: set[str]) -> None:
        self.addresses = set(present)
        self.calls: list[Argv] = []

    async def __call__(self, argv: Argv) -> tuple[int, str]:
        self.calls.append(argv)
        if argv == ("ifconfig", "lo0"):
            lines = ["lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384"]
            lines += [f"\tinet {ip} netmask 0xff000000" for ip in sorted(self.addresses)]
            return 0, "\n".join(lines)
        if argv[:3] == ("ifconfig", "lo0", "alias"):
            self.addresses.add(argv[3])
            return 0, ""
        if argv[:3] == ("ifconfig", "lo0", "-alias"):
            self.addresses.discard(argv[3])
            return 0, ""
        return 1, "ifconfig: bad arguments"
