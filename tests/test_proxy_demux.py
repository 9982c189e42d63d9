"""The name-routed relay (G:80 by Host header, G:443 by SNI) on real loopback sockets.

A loopback address stands in for G here (the Docker engine tests use the real
bridge gateway); the ports are free ones instead of 80/443.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from collections.abc import Callable
from pathlib import Path

from maculad.config import ProxyConfig
from maculad.horizons.plan import horizon_listeners
from maculad.proxy.spec import ListenerSpec, Target
from maculad.core.net import Backend
from maculad.routes.table import RouteTable
from tests.support.proxy import (
    TcpEcho,
    backend_of,
    free_port,
    proxy_config,
    route,
    running_relay,
    self_signed,
    wait_for,
)

G = "127.0.0.77"


class Fronts:
    def __init__(self) -> None:
        self.dns = free_port(G)
        self.http = free_port(G)
        self.https = free_port(G)

    def planner(self) -> Callable[[RouteTable, ProxyConfig], dict[ListenerSpec, Target]]:
        def plan(table: RouteTable, cfg: ProxyConfig) -> dict[ListenerSpec, Target]:
            return horizon_listeners(table, address=G, http_port=cfg.http_port, https_port=cfg.https_port,
                                     front=(self.dns, self.http, self.https))[0]
        return plan


class HeadRecorder:
    """An HTTP backend that answers with its tag and remembers the request bytes it got."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.requests: list[bytes] = []
        self.backend = Backend("127.0.0.1", 0)
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> HeadRecorder:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            head = await r.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            body = f"backend {self.tag}\n".encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await w.drain()
            w.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.backend = Backend("127.0.0.1", self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


async def http_get(port: int, host: str, path: str = "/") -> bytes:
    r, w = await asyncio.open_connection(G, port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data


async def test_http_routed_by_host_header_untouched(tmp_path: Path) -> None:
    fronts = Fronts()
    cfg = proxy_config()
    async with HeadRecorder("grafana") as graf, HeadRecorder("s3") as s3:
        async with running_relay(tmp_path, lambda c: route("grafana", c, http=graf.backend),
                                 lambda c: route("*.s3", c, http=s3.backend), config=cfg,
                                 horizon="containers", planner=fronts.planner()) as h:
            assert (await http_get(fronts.http, "Grafana.macula.local:80")).endswith(b"backend grafana\n")
            assert (await http_get(fronts.http, "bucket.s3.macula.local")).endswith(b"backend s3\n")
            # the request reached the backend byte for byte, Host header and all
            assert graf.requests == [b"GET / HTTP/1.1\r\nHost: Grafana.macula.local:80\r\nUser-Agent: t\r\n\r\n"]
            labels = {"horizon": "containers", "route": "grafana.macula.local", "port": str(fronts.http),
                      "proto": "tcp"}
            await wait_for(lambda: h.sample("maculad_proxy_active_connections", **labels) == 0)
            assert h.sample("maculad_proxy_connections_total", **labels) == 1
            assert h.sample("maculad_proxy_bytes_total", direction="in", **labels) > 0
            # the host horizon's per-IP listeners are not this relay's business
            assert {e["ip"] for e in h.relay.status()["listeners"]} == {G}


async def test_a_held_route_answers_503_by_host_without_dialing(tmp_path: Path) -> None:
    from dataclasses import replace

    from maculad.routes.model import ServiceHold

    fronts = Fronts()
    hold = ServiceHold("grafana", "stopped", "stopped with maculactl stop", "maculactl start grafana")
    async with HeadRecorder("grafana") as graf:
        async with running_relay(tmp_path, lambda c: replace(route("grafana", c, http=graf.backend), hold=hold),
                                 horizon="containers", planner=fronts.planner()) as h:
            raw = await http_get(fronts.http, "grafana.macula.local")
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert b"<strong>grafana</strong>" in body and b"stopped with maculactl stop" in body
            assert b"<code>maculactl start grafana</code>" in body
            assert graf.requests == []  # never dialed
            assert h.sample("maculad_proxy_upstream_errors_total", horizon="containers",
                            route="grafana.macula.local", port=str(fronts.http), proto="tcp", reason="held") == 1
            await h.update(route("grafana", h.config, http=graf.backend))  # running again: relayed
            assert (await http_get(fronts.http, "grafana.macula.local")).endswith(b"backend grafana\n")


async def test_unknown_host_gets_a_404_naming_it(tmp_path: Path) -> None:
    fronts = Fronts()
    async with HeadRecorder("grafana") as graf:
        async with running_relay(tmp_path, lambda c: route("grafana", c, http=graf.backend),
                                 lambda c: route("pg", c, tcp=[(5432, graf.backend)]),
                                 horizon="containers", planner=fronts.planner()) as h:
            page = await http_get(fronts.http, "nope.macula.local")
            assert page.startswith(b"HTTP/1.1 404 Not Found\r\n")
            assert b"nope.macula.local: no route has this name" in page
            page = await http_get(fronts.http, "pg.macula.local")
            assert b"pg.macula.local: the route pg.macula.local has no HTTP backend" in page
            r, w = await asyncio.open_connection(G, fronts.http)
            w.write(b"GET / HTTP/1.0\r\n\r\n")
            page = await asyncio.wait_for(r.read(), 10)
            assert page.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"no Host header" in page
            w.close()
            assert h.sample("maculad_proxy_unrouted_connections_total", horizon="containers",
                            port=str(fronts.http), proto="tcp", reason="unknown-host") == 2
            assert graf.requests == []


async def test_tls_routed_by_sni_to_a_backend_with_its_own_certificate(tmp_path: Path) -> None:
    fronts = Fronts()
    cert, key = self_signed(tmp_path, "console.macula.local")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = await r.readline()
        w.write(b"tls-backend got " + line)
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    backend = backend_of(server)
    try:
        async with running_relay(tmp_path, lambda c: route("console", c, https=backend),
                                 lambda c: route("plain", c, http=backend),
                                 horizon="containers", planner=fronts.planner()) as h:
            client_ctx = ssl.create_default_context(cafile=str(cert))
            r, w = await asyncio.open_connection(G, fronts.https, ssl=client_ctx,
                                                 server_hostname="console.macula.local")
            peer = w.get_extra_info("peercert")
            assert ("DNS", "console.macula.local") in peer["subjectAltName"]  # the backend's own certificate
            w.write(b"hello\n")
            assert await asyncio.wait_for(r.read(), 10) == b"tls-backend got hello\n"
            w.close()
            # unknown name, or a route without a TLS backend: the connection is closed
            for name in ("other.macula.local", "plain.macula.local"):
                raw = socket.create_connection((G, fronts.https), timeout=10)
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                try:
                    with ctx.wrap_socket(raw, server_hostname=name):
                        raise AssertionError("the handshake should not succeed")
                except (ssl.SSLError, ConnectionError, OSError) as exc:
                    assert not isinstance(exc, AssertionError)
                finally:
                    raw.close()
            labels = {"horizon": "containers", "port": str(fronts.https), "proto": "tcp", "reason": "unknown-host"}
            await wait_for(lambda: h.sample("maculad_proxy_unrouted_connections_total", **labels) == 2)
    finally:
        server.close()


async def test_extra_ports_on_g_and_their_conflicts(tmp_path: Path) -> None:
    fronts = Fronts()
    pg_port = free_port(G)
    async with TcpEcho(b"pg") as pg, TcpEcho(b"other") as other:
        async with running_relay(tmp_path, lambda c: route("pg", c, tcp=[(pg_port, pg.backend)]),
                                 horizon="containers", planner=fronts.planner()) as h:
            r, w = await asyncio.open_connection(G, pg_port)
            assert await r.readline() == b"pg\n"
            w.write(b"ping\n")
            assert await r.readline() == b"ping\n"
            w.close()
            # a second route claims the same port: the listener goes (a conflict), nothing is guessed
            await h.update(route("pg", h.config, tcp=[(pg_port, pg.backend)]),
                           route("pg2", h.config, tcp=[(pg_port, other.backend)]))
            ports = {(e["proto"], e["port"]) for e in h.relay.status()["listeners"] if e["state"] != "draining"}
            assert ("tcp", pg_port) not in ports
            _, conflicts = horizon_listeners(h.routes.current, address=G, http_port=h.config.http_port,
                                             https_port=h.config.https_port,
                                             front=(fronts.dns, fronts.http, fronts.https))
            assert [(c.port, c.routes) for c in conflicts] == [(pg_port, ("pg.macula.local", "pg2.macula.local"))]


async def test_peeking_connections_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maculad.proxy import demux

    monkeypatch.setattr(demux, "MAX_PEEKING", 3)
    fronts = Fronts()
    async with HeadRecorder("grafana") as graf:
        async with running_relay(tmp_path, lambda c: route("grafana", c, http=graf.backend),
                                 horizon="containers", planner=fronts.planner()) as h:
            silent = [await asyncio.open_connection(G, fronts.http) for _ in range(3)]  # peek, say nothing
            labels = {"horizon": "containers", "port": str(fronts.http), "proto": "tcp", "reason": "overload"}
            r, w = await asyncio.open_connection(G, fronts.http)
            assert await asyncio.wait_for(r.read(), 10) == b""  # the fourth is closed at once
            w.close()
            assert h.sample("maculad_proxy_unrouted_connections_total", **labels) == 1
            for _, sw in silent:
                sw.close()
            await wait_for(lambda: not any(e["conns"] for e in h.relay.status()["listeners"]))
            assert (await http_get(fronts.http, "grafana.macula.local")).endswith(b"backend grafana\n")
