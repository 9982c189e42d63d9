"""Listeners follow the route table over real sockets: routes added and removed while connections
are open (drain grace), a changed backend for new connections only, an address already in use
(reported, retried, recovered), refused addresses, stop, and the macOS alias layer's commands."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from maculad.observability.metrics import Metrics
from maculad.proxy.platform import AliasPlatform
from maculad.proxy.relay import Relay
from maculad.core.net import Backend
from maculad.app.daemon import RELAY_TASKS
from maculad.core.tasks import TaskOwner
from tests.support.proxy import (
    FakeIfconfig,
    TcpEcho,
    dead_port,
    make_manager,
    proxy_config,
    route,
    running_relay,
    wait_for,
)

async def _open(ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    r, w = await asyncio.open_connection(ip, port)
    greeting = await asyncio.wait_for(r.readline(), 10)
    return r, w, greeting.strip()


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), 10)


async def test_routes_added_and_removed_while_connections_are_open(tmp_path: Path) -> None:
    front = dead_port()
    async with TcpEcho(b"A") as a, TcpEcho(b"B") as b, TcpEcho(b"C") as c:
        def spec_a(cfg):  # type: ignore[no-untyped-def]
            return route("a", cfg, tcp=[(front, a.backend)])

        def spec_b(cfg):  # type: ignore[no-untyped-def]
            return route("b", cfg, tcp=[(front, b.backend)])

        async with running_relay(tmp_path, spec_a, spec_b) as h:
            ip_a, ip_b = h.ip("a"), h.ip("b")
            ra, wa, ga = await _open(ip_a, front)
            rb, wb, gb = await _open(ip_b, front)
            assert (ga, gb) == (b"A", b"B")

            await h.update(spec_b(h.config))  # a removed
            assert h.listener(ip_a, front)["state"] == "draining"
            assert await _echo(ra, wa, b"still here") == b"still here"  # open connection survives
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(ip_a, front)  # but nothing new is accepted
            assert await _echo(rb, wb, b"b untouched") == b"b untouched"

            await h.update(spec_b(h.config), route("c", h.config, tcp=[(front, c.backend)]))  # c added
            _rc, wc, gc = await _open(h.ip("c"), front)
            assert gc == b"C"
            assert await _echo(rb, wb, b"b still untouched") == b"b still untouched"
            assert await _echo(ra, wa, b"a within grace") == b"a within grace"

            # a comes back: a new listener on the same address while the old one still drains
            await h.update(spec_a(h.config), spec_b(h.config), route("c", h.config, tcp=[(front, c.backend)]))
            _ra2, wa2, ga2 = await _open(ip_a, front)
            assert ga2 == b"A"
            for w in (wa, wb, wc, wa2):
                w.close()
            await wait_for(lambda: all(e["state"] != "draining" for e in h.relay.status()["listeners"]),
                           what="drained listener gone once its connection closed")
            assert h.sample("maculad_proxy_listener_errors_total", address=f"{ip_a}:{front}/tcp",
                            reason="EADDRINUSE") == 0


async def test_drain_grace_closes_leftover_connections(tmp_path: Path) -> None:
    front = dead_port()
    cfg = proxy_config(drain_grace=0.3)
    async with TcpEcho(b"A") as a, running_relay(
        tmp_path, lambda c: route("a", c, tcp=[(front, a.backend)]), config=cfg
    ) as h:
        ip = h.ip("a")
        r, w, _ = await _open(ip, front)
        await h.update()
        try:
            data = await asyncio.wait_for(r.read(), 10)  # closed by the relay after the grace
        except ConnectionResetError:
            data = b""
        assert data == b""
        await wait_for(lambda: not a.conns, what="backend side closed too")
        await wait_for(lambda: not h.relay.status()["listeners"], what="listener gone")
        w.close()


async def test_piped_connections_are_closed_by_the_drain_and_the_pump_by_the_stop(tmp_path: Path) -> None:
    """A connection the pump relays (past its first chunks) drains like any other: closed after the grace
    of its removed listener; one still open when the relay stops is closed by the stop, and so is the pump."""
    from maculad.proxy import tcp as tcp_mod

    front, other = dead_port(), dead_port()
    cfg = proxy_config(drain_grace=0.3)
    async with TcpEcho(b"A") as a, TcpEcho(b"B") as b:
        async with running_relay(
            tmp_path, lambda c: route("a", c, tcp=[(front, a.backend)]),
            lambda c: route("b", c, tcp=[(other, b.backend)]), config=cfg,
        ) as h:
            opened = []
            for name, port in (("a", front), ("b", other)):
                r, w, _ = await _open(h.ip(name), port)
                for i in range(2 * tcp_mod.PIPE_AFTER):
                    assert await _echo(r, w, b"%d" % i) == b"%d" % i
                opened.append((r, w))
            assert sorted(c.piped for c in h.connections()) == [True, True]
            pumps = h.relay._ctx.pumps
            assert len(pumps) == 2
            await h.update(route("b", h.config, tcp=[(other, b.backend)]))  # "a" goes: its listener drains
            r, w = opened[0]
            try:
                assert await asyncio.wait_for(r.read(), 10) == b""  # closed by the relay after the grace
            except ConnectionResetError:
                pass
            await wait_for(lambda: not a.conns, what="backend side closed too")
            assert len(pumps) == 1
            w.close()
        r, w = opened[1]  # the relay has stopped: its last connection and the pump with it
        try:
            assert await asyncio.wait_for(r.read(), 10) == b""
        except ConnectionResetError:
            pass
        await wait_for(lambda: not b.conns, what="the backend of the last connection closed")
        assert len(pumps) == 0 and pumps._pump is None
        w.close()


async def test_changed_backend_affects_new_connections_only(tmp_path: Path) -> None:
    front = dead_port()
    async with TcpEcho(b"one") as one, TcpEcho(b"two") as two, running_relay(
        tmp_path, lambda c: route("svc", c, tcp=[(front, one.backend)])
    ) as h:
        ip = h.ip("svc")
        r1, w1, g1 = await _open(ip, front)
        assert g1 == b"one"
        await h.update(route("svc", h.config, tcp=[(front, two.backend)]))
        entry = h.listener(ip, front)
        assert entry["state"] == "serving" and entry["backend"] == str(two.backend)
        assert await _echo(r1, w1, b"old conn") == b"old conn"
        assert len(one.conns) == 1
        _r2, w2, g2 = await _open(ip, front)
        assert g2 == b"two"
        assert await _echo(r1, w1, b"old conn again") == b"old conn again"
        w1.close()
        w2.close()
        errors = h.metrics.registry.get_sample_value
        assert errors("maculad_proxy_listener_errors_total", {"address": f"{ip}:{front}/tcp",
                                                              "reason": "EADDRINUSE"}) is None


async def test_address_in_use_is_reported_retried_and_recovers(tmp_path: Path) -> None:
    cfg = proxy_config(bind_retry_max=0.2)
    busy_ip = "127.0.10.200"
    blocker = socket.socket()
    blocker.bind((busy_ip, cfg.http_port))
    blocker.listen(1)
    try:
        async with TcpEcho(b"busy") as be1, TcpEcho(b"free") as be2, running_relay(
            tmp_path,
            lambda c: route("busy", c, ip=busy_ip, http=be1.backend),
            lambda c: route("free", c, http=be2.backend),
            config=cfg,
        ) as h:
            entry = h.listener(busy_ip, cfg.http_port)
            assert entry["state"] == "failed"
            assert f"{busy_ip}:{cfg.http_port}/tcp" in entry["last_error"]
            assert "in use" in entry["last_error"]
            address = f"{busy_ip}:{cfg.http_port}/tcp"
            await wait_for(lambda: h.sample("maculad_proxy_listener_errors_total", address=address,
                                            reason="EADDRINUSE") >= 2, what="bind retried")
            assert h.sample("maculad_proxy_listeners", state="failed") == 1
            # the other route serves meanwhile
            _, w, g = await _open(h.ip("free"), cfg.http_port)
            assert g == b"free"
            w.close()

            blocker.close()
            await wait_for(lambda: h.listener(busy_ip, cfg.http_port)["state"] == "serving",
                           what="listener recovered after the port was freed")
            _, w, g = await _open(busy_ip, cfg.http_port)
            assert g == b"busy"
            w.close()
            assert h.sample("maculad_proxy_listeners", state="serving") == 2
    finally:
        blocker.close()


async def test_wildcard_and_non_loopback_addresses_are_refused(tmp_path: Path) -> None:
    be = Backend("127.0.0.1", dead_port())
    cfg = proxy_config()
    # The table lets these through only when told to; the relay still refuses by its own config.
    table_cfg = dataclasses.replace(cfg, allow_non_loopback=True)
    metrics = Metrics()
    routes = make_manager(tmp_path, table_cfg, metrics)
    routes.update("config", [
        route("lan", cfg, ip="192.0.2.10", http=be),
        route("any", cfg, ip="0.0.0.0", http=be),
    ])
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: None)
    relay = Relay(config=cfg, routes=routes, metrics=metrics)
    await relay.start()
    owner.spawn_for(relay, RELAY_TASKS)
    try:
        await asyncio.wait_for(relay.wait_reconciled(), 10)
        by_ip = {e["ip"]: e for e in relay.status()["listeners"]}
        assert by_ip["192.0.2.10"]["state"] == "failed"
        assert "not a loopback address" in by_ip["192.0.2.10"]["last_error"]
        assert by_ip["0.0.0.0"]["state"] == "failed"
        assert "wildcard" in by_ip["0.0.0.0"]["last_error"]
        # even with non-loopback allowed, a wildcard is never bound
        relay.reconfigure(dataclasses.replace(cfg, allow_non_loopback=True))
        await asyncio.wait_for(relay.wait_reconciled(), 10)
        by_ip = {e["ip"]: e for e in relay.status()["listeners"]}
        assert "wildcard" in by_ip["0.0.0.0"]["last_error"]
        assert "not a loopback" not in (by_ip["192.0.2.10"]["last_error"] or "")
    finally:
        await owner.stop_for(RELAY_TASKS)
        await relay.stop()


async def test_stop_drains_then_closes(tmp_path: Path) -> None:
    front = dead_port()
    cfg = proxy_config(drain_grace=5.0)
    async with TcpEcho(b"A") as a, running_relay(
        tmp_path, lambda c: route("a", c, tcp=[(front, a.backend)]), config=cfg
    ) as h:
        ip = h.ip("a")
        r, w, _ = await _open(ip, front)
        stopping = asyncio.create_task(h.relay.stop())
        await wait_for(lambda: h.relay.status()["listeners"] == [] or
                       h.relay.status()["listeners"][0]["state"] == "draining", what="draining")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(ip, front)
        assert await _echo(r, w, b"finishing up") == b"finishing up"
        w.close()  # the last connection ends: stop returns well before the grace
        await asyncio.wait_for(stopping, 10)
        assert h.relay.status()["listeners"] == []
        assert h.sample("maculad_proxy_listeners", state="serving") == 0


async def test_macos_aliases_follow_listeners(tmp_path: Path) -> None:
    ifconfig = FakeIfconfig({"127.0.0.1", "127.0.10.9"})  # .9 is someone else's alias
    plat = AliasPlatform(system="Darwin", runner=ifconfig)
    front = dead_port()
    async with TcpEcho(b"x") as be, running_relay(
        tmp_path,
        lambda c: route("x", c, ip="127.0.10.5", tcp=[(front, be.backend)]),
        lambda c: route("y", c, ip="127.0.10.9", tcp=[(front, be.backend)]),
        lambda c: route("z", c, ip="127.0.0.1", tcp=[(dead_port(), be.backend)]),
        platform=plat,
    ) as h:
        assert ("ifconfig", "lo0", "alias", "127.0.10.5", "up") in ifconfig.calls
        assert not any(c[:3] == ("ifconfig", "lo0", "alias") and c[3] in ("127.0.10.9", "127.0.0.1")
                       for c in ifconfig.calls)
        assert h.relay.status()["aliases"] == ["127.0.10.5"]
        await h.update(route("y", h.config, ip="127.0.10.9", tcp=[(front, be.backend)]))
        await wait_for(lambda: ("ifconfig", "lo0", "-alias", "127.0.10.5") in ifconfig.calls,
                       what="alias removed with its last listener")
    assert ifconfig.addresses == {"127.0.0.1", "127.0.10.9"}  # someone else's alias is left alone
