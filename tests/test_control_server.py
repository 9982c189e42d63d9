"""The control server in-process on a real unix socket: permissions, endpoints, errors, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from maculad.config import ControlConfig
from maculad.control.protocol import DNSLookup
from maculad.control.server import ControlServer, ControlSocketError
from maculad.observability.metrics import Metrics
from tests.conftest import require
from tests.support.control_target import TableTarget, python_for_others, short_dir, write_config

ROUTES = """
[[route]]
name = "grafana"
ip = "127.0.0.2"
http = "127.0.0.1:3000"
service = "grafana"

[[route]]
name = "postgres"
tcp = { 5432 = "127.0.0.6:5432" }
"""


@dataclass
class Running:
    server: ControlServer
    target: TableTarget
    metrics: Metrics
    socket: Path

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))


async def start(d: Path, *, group: str | None = None, target_cls: type[TableTarget] = TableTarget,
                extra: str = "") -> Running:
    cfg_path = d / "maculad.toml"
    write_config(cfg_path, dns_port=5353, routes=ROUTES, extra=extra)
    target = target_cls(config_path=cfg_path, services={"grafana": "running", "loki": "running"})
    metrics = Metrics()
    sock = d / "run" / "maculad.sock"
    server = ControlServer(config=ControlConfig(socket=sock, group=group), target=target, metrics=metrics)
    await server.start()
    return Running(server, target, metrics, sock)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    d = short_dir()
    r = await start(d, group="daemon")
    yield r
    await r.server.stop()
    shutil.rmtree(d)


async def get(r: Running, path: str, method: str = "GET") -> tuple[int, Any]:
    async with r.session() as s, s.request(method, f"http://maculad{path}") as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_socket_is_0660_with_the_configured_group(running: Running) -> None:
    st = os.stat(running.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == 1  # Debian's "daemon" group
    assert running.server.status()["serving"] is True
    assert not [p for p in running.socket.parent.iterdir() if p.name.endswith(".tmp")]


async def test_read_endpoints(running: Running) -> None:
    status, data = await get(running, "/v1/status")
    assert status == 200
    assert data["domain"] == "macula.local" and data["dns_listen"] == ["127.0.0.153:5353"]
    status, data = await get(running, "/v1/routes")
    assert status == 200
    by_name = {r["name"]: r for r in data["routes"]}
    assert by_name["grafana.macula.local"]["ip"] == "127.0.0.2"
    assert by_name["grafana.macula.local"]["ports"] == [{"proto": "tcp", "port": 8080, "backend": "127.0.0.1:3000"}]
    status, data = await get(running, "/v1/services")
    assert [s["service"] for s in data["services"]] == ["grafana", "loki"]
    status, data = await get(running, "/v1/dns?name=GRAFANA.macula.local.")
    assert (status, data["answer"], data["route"]["source"]) == (200, "127.0.0.2", "config")
    status, data = await get(running, "/v1/ping")
    assert data["pid"] == os.getpid()


async def test_actions(running: Running) -> None:
    status, data = await get(running, "/v1/services/grafana/restart", "POST")
    assert status == 409  # docker disabled in this config: the target's own error, passed through
    assert "Docker tier is not enabled" in data["error"]


async def test_errors_are_json(running: Running) -> None:
    cases = [
        ("GET", "/v1/nothing", 404, "no such endpoint"),
        ("DELETE", "/v1/status", 405, "not allowed"),
        ("GET", "/v1/dns", 400, "'name' is required"),
        ("GET", "/v1/dns?name=bad%20name", 400, "not a valid DNS name"),
        ("POST", "/v1/services/grafana/explode", 400, "unknown action"),
        ("GET", "/v1/cluster", 409, "kind cluster management is off"),
        ("GET", "/v1/events?replay=-1", 400, "replay must be"),
        ("GET", "/v1/events?replay=x", 400, "not a number"),
        ("GET", "/v1/events?follow=maybe", 400, "use 1 or 0"),
    ]
    for method, path, code, text in cases:
        status, data = await get(running, path, method)
        assert (status, text in data["error"]) == (code, True), (path, data)


async def test_malformed_requests_are_answered_in_json_too(running: Running) -> None:
    """What the HTTP core refuses before any handler runs still gets the `ErrorAnswer` shape."""
    for raw, code in ((b"GARBAGE\r\n\r\n", 400),
                      (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n", 431),
                      (b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501)):
        reader, writer = await asyncio.open_unix_connection(str(running.socket))
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code} ".encode()), data[:80]
        assert b"Content-Type: application/json" in head and "error" in json.loads(body)
    reader, writer = await asyncio.open_unix_connection(str(running.socket))
    writer.write(b"HEAD /v1/ping HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # no body in between
    assert second.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_requests_are_counted_by_route_pattern(running: Running) -> None:
    await get(running, "/v1/status")
    await get(running, "/v1/status")
    await get(running, "/v1/services/a/explode", "POST")
    await get(running, "/v1/zzz")
    c = running.metrics.control_requests
    assert c.labels(endpoint="/v1/status", status="200")._value.get() == 2
    assert c.labels(endpoint="/v1/services/{name}/{action}", status="400")._value.get() == 1
    assert c.labels(endpoint="unmatched", status="404")._value.get() == 1


async def test_internal_errors_become_500_json() -> None:
    class Broken(TableTarget):
        def dns_lookup(self, name: str) -> DNSLookup:
            raise RuntimeError("table exploded")

    d = short_dir()
    r = await start(d, target_cls=Broken)
    try:
        status, data = await get(r, "/v1/dns?name=x.macula.local")
        assert status == 500 and "RuntimeError: table exploded" in data["error"]
    finally:
        await r.server.stop()
        shutil.rmtree(d)


async def test_events_replay_and_follow(running: Running) -> None:
    running.target.bus.publish("route_added", name="a.macula.local")
    running.target.bus.publish("route_added", name="b.macula.local")
    async with running.session() as s, s.get("http://m/v1/events?replay=10") as resp:
        assert resp.status == 200
        lines = [json.loads(x) for x in (await resp.text()).splitlines()]
    assert [e["name"] for e in lines] == ["a.macula.local", "b.macula.local"]

    async with running.session() as s, s.get("http://m/v1/events?follow=1&replay=1") as resp:
        first = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
        assert first["name"] == "b.macula.local"
        running.target.bus.publish("reloaded", added=["c.macula.local"])
        nxt = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
        assert nxt["kind"] == "reloaded" and nxt["added"] == ["c.macula.local"]


async def test_stale_socket_is_replaced_and_a_live_one_refused() -> None:
    d = short_dir()
    sock_path = d / "run" / "maculad.sock"
    sock_path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens: what a kill -9 leaves behind
    r = await start(d)
    try:
        status, _ = await get(r, "/v1/status")
        assert status == 200
        second = ControlServer(config=ControlConfig(socket=sock_path), target=r.target, metrics=Metrics())
        with pytest.raises(ControlSocketError, match="another maculad is answering"):
            await second.start()
        await second.stop()  # safe after a failed start, and must not remove the live socket
        assert sock_path.exists()
    finally:
        await r.server.stop()
    assert not sock_path.exists()
    shutil.rmtree(d)


async def test_refuses_to_remove_a_regular_file_and_unknown_groups() -> None:
    d = short_dir()
    path = d / "run" / "maculad.sock"
    path.parent.mkdir()
    path.write_text("not a socket")
    cfg = d / "maculad.toml"
    write_config(cfg, dns_port=5353, routes=ROUTES)
    target = TableTarget(config_path=cfg)
    server = ControlServer(config=ControlConfig(socket=path), target=target, metrics=Metrics())
    with pytest.raises(ControlSocketError, match="is not a socket"):
        await server.start()
    assert path.read_text() == "not a socket"
    path.unlink()
    server = ControlServer(config=ControlConfig(socket=path, group="no-such-group-xyz"), target=target,
                           metrics=Metrics())
    with pytest.raises(ControlSocketError, match="no-such-group-xyz"):
        await server.start()
    long = ControlServer(config=ControlConfig(socket=d / ("x" * 120)), target=target, metrics=Metrics())
    with pytest.raises(ControlSocketError, match="longer than"):
        await long.start()
    shutil.rmtree(d)


def _as_nobody(sock: Path, method: str, path: str, groups: list[int]) -> tuple[int, dict[str, Any]]:
    """One HTTP request over the socket from a process running as uid 65534 with `groups`."""
    code = (
        "import http.client, json, socket, sys\n"
        "c = http.client.HTTPConnection('x')\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); c.sock = s\n"
        "c.request(sys.argv[2], sys.argv[3]); r = c.getresponse()\n"
        "print(json.dumps([r.status, json.loads(r.read())]))\n"
    )
    python = python_for_others()
    assert python is not None
    out = subprocess.run([python, "-c", code, str(sock), method, path], user=65534, group=65534,
                         extra_groups=groups, capture_output=True, text=True, timeout=30, check=True)
    status, body = json.loads(out.stdout)
    return int(status), body


async def test_peer_credentials_decide_who_may_act() -> None:
    require(os.geteuid() == 0, "needs root to run a client as another user")
    require(python_for_others() is not None, "needs a python3 that uid 65534 can execute")
    d = short_dir()
    # no control.group: the socket keeps the daemon's group (root, gid 0); a member of that group
    # may connect and read, but acting needs root, the daemon's uid or the control group
    r = await start(d)
    try:
        status, body = await asyncio.to_thread(_as_nobody, r.socket, "GET", "/v1/status", [0])
        assert status == 200 and body["domain"] == "macula.local"
        status, body = await asyncio.to_thread(_as_nobody, r.socket, "POST", "/v1/reload", [0])
        assert status == 403
        assert "acting needs root, the daemon's user (uid 0); no control.group is configured" in body["error"]
        assert r.server.status()["denied"] == 1
    finally:
        await r.server.stop()
    # with control.group = daemon, its members may act
    r = await start(d, group="daemon")
    try:
        status, body = await asyncio.to_thread(_as_nobody, r.socket, "POST", "/v1/reload", [1])
        assert status == 200 and body["ok"] is True
    finally:
        await r.server.stop()
    shutil.rmtree(d)
