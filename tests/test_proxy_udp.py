"""The UDP relay over real loopback sockets: per-client sessions, idle expiry, the session bound
(least recently active evicted), and an unreachable backend counted."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from maculad.core.net import Backend
from tests.support.proxy import (
    UdpEcho,
    free_port,
    proxy_config,
    route,
    running_relay,
    udp_client,
    wait_for,
)


def _udp_port() -> int:
    return free_port(kind=socket.SOCK_DGRAM)


async def test_udp_echo_each_client_gets_its_own_replies(tmp_path: Path) -> None:
    front = _udp_port()
    async with UdpEcho(b"quic") as echo, running_relay(
        tmp_path, lambda c: route("boot", c, udp=[(front, echo.backend)])
    ) as h:
        ip = h.ip("boot")
        async with udp_client(ip, front) as c1, udp_client(ip, front) as c2:
            for i in range(10):
                # interleaved: each client must get exactly its own answer back
                t1 = asyncio.create_task(c1.ask(f"one-{i}".encode()))
                t2 = asyncio.create_task(c2.ask(f"two-{i}".encode()))
                assert await t1 == f"quic|one-{i}".encode()
                assert await t2 == f"quic|two-{i}".encode()
            big = bytes(range(256)) * 200  # 51 200 bytes, one datagram
            assert await c1.ask(big) == b"quic|" + big
        assert len(echo.peers) == 2  # one backend socket per client session
        status = h.listener(ip, front, "udp")
        assert status["state"] == "serving" and status["conns"] == 2
        labels = {"route": "boot.macula.local", "port": str(front), "proto": "udp"}
        assert h.sample("maculad_proxy_udp_sessions", **labels) == 2
        assert h.sample("maculad_proxy_connections_total", **labels) == 2
        # a UDP listener has sessions, not connections: no active_connections series at all
        assert h.metrics.registry.get_sample_value("maculad_proxy_active_connections",
                                                   {"horizon": "host", **labels}) is None
        h.relay.flush_metrics()
        assert h.sample("maculad_proxy_bytes_total", direction="in", **labels) > len(big)
        assert h.sample("maculad_proxy_bytes_total", direction="out", **labels) > len(big)


async def test_idle_sessions_expire(tmp_path: Path) -> None:
    front = _udp_port()
    cfg = proxy_config(udp_idle_timeout=0.2)
    async with UdpEcho() as echo, running_relay(
        tmp_path, lambda c: route("boot", c, udp=[(front, echo.backend)]), config=cfg
    ) as h:
        ip = h.ip("boot")
        async with udp_client(ip, front) as c:
            assert await c.ask(b"hi") == b"echo|hi"
            await wait_for(lambda: h.listener(ip, front, "udp")["conns"] == 0, what="idle session expired")
            assert h.sample("maculad_proxy_udp_sessions", route="boot.macula.local", port=str(front), proto="udp") == 0
            assert await c.ask(b"again") == b"echo|again"  # a new session for the same client
        assert len(echo.peers) == 2


async def test_session_bound_evicts_least_recently_active(tmp_path: Path) -> None:
    front = _udp_port()
    cfg = proxy_config(udp_max_sessions=2)
    async with UdpEcho() as echo, running_relay(
        tmp_path, lambda c: route("boot", c, udp=[(front, echo.backend)]), config=cfg
    ) as h:
        ip = h.ip("boot")
        async with udp_client(ip, front) as c1, udp_client(ip, front) as c2, udp_client(ip, front) as c3:
            assert await c1.ask(b"1") == b"echo|1"
            assert await c2.ask(b"2") == b"echo|2"
            assert await c1.ask(b"1 again") == b"echo|1 again"  # c2 is now the least recently active
            assert await c3.ask(b"3") == b"echo|3"  # at the bound: c2's session is evicted, c3 served
            assert h.listener(ip, front, "udp")["conns"] == 2
            assert len(echo.peers) == 3
            assert await c1.ask(b"1 still") == b"echo|1 still"  # c1 kept its session
            assert len(echo.peers) == 3
            assert await c2.ask(b"2 back") == b"echo|2 back"  # c2 gets a fresh session
            assert len(echo.peers) == 4
            assert h.listener(ip, front, "udp")["conns"] == 2


async def test_unreachable_udp_backend_is_counted(tmp_path: Path) -> None:
    front = _udp_port()
    dead = Backend("127.0.0.1", _udp_port())
    async with running_relay(tmp_path, lambda c: route("boot", c, udp=[(front, dead)])) as h:
        ip = h.ip("boot")
        labels = {"route": "boot.macula.local", "port": str(front), "proto": "udp", "reason": "refused"}
        async with udp_client(ip, front) as c:
            for _ in range(100):
                c.transport.sendto(b"anyone?")
                await asyncio.sleep(0.02)
                if h.sample("maculad_proxy_upstream_errors_total", **labels) >= 1:
                    break
        assert h.sample("maculad_proxy_upstream_errors_total", **labels) >= 1
        assert h.listener(ip, front, "udp")["state"] == "serving"
