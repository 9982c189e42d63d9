"""The status page's HTTP surface on the real daemon: read-only, Host/Origin checks, limits, SSE.

Raw sockets where a client library would tidy the request up (two Host
headers, an oversized header, a body on GET, a client that never reads)."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from maculad.ctl.client import ControlClient
from tests.support.daemon import Maculad, base_config

DNS_IP = "127.0.0.153"


class Daemon:
    def __init__(self, tmp: Path, ports: dict[str, Any], proc: Maculad) -> None:
        self.tmp = tmp
        self.ports = ports
        self.proc = proc

    @property
    def port(self) -> int:
        return int(self.ports["http"])

    @property
    def host(self) -> str:
        return f"macula.local:{self.port}"

    def raw(self, request: bytes, *, timeout: float = 5.0) -> bytes:
        with socket.create_connection((DNS_IP, self.port), timeout=timeout) as s:
            s.sendall(request)
            chunks = []
            while True:
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    break
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and b"event-stream" in b"".join(chunks):
                    break
            return b"".join(chunks)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(f"http://{DNS_IP}:{self.port}{path}", headers={"Host": self.host,
                                                                                     **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _code(resp: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer (parse errors too)."""
    head = resp.split(b"\r\n", 1)[0].split()
    assert len(head) >= 2 and head[0] == b"HTTP/1.1", resp[:80]
    return int(head[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    text, ports = base_config(tmp_path, dns_ip=DNS_IP, pool="127.0.32.0/24", extra="""
[web]
max_clients = 2
max_connections = 6
""")
    text += f"""
[[route]]
name = "grafana"
http = "127.0.0.1:{ports['metrics']}"
"""
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    proc = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        proc.wait_ready(ports["metrics"])
        yield Daemon(tmp_path, ports, proc)
    finally:
        proc.stop()


def test_page_and_json_are_served_with_safe_headers(daemon: Daemon) -> None:
    status, headers, body = daemon.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script>" in body and b"http://" not in body.split(b"<script>")[0].replace(b'"http://', b"")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    assert "Access-Control-Allow-Origin" not in headers
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = daemon.get("/api/status")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"status", "routes", "services", "cluster", "cluster_off", "backends", "figures", "time"}
    assert doc["backends"][f"127.0.0.1:{daemon.ports['metrics']}"]["accepts"] is True
    assert doc["status"]["components"]["web"]["url"] == f"http://macula.local:{daemon.port}/"


def test_json_has_the_control_sockets_shapes(daemon: Daemon) -> None:
    ctl = ControlClient(str(daemon.tmp / "maculad.sock"))
    _, _, body = daemon.get("/api/status")
    doc = json.loads(body)
    assert doc["routes"] == ctl.get("/v1/routes")
    assert doc["services"] == ctl.get("/v1/services")["services"]
    control_status = ctl.get("/v1/status")
    assert set(doc["status"]) == set(control_status)
    for key in ("domain", "dns_listen", "http_port", "https_port", "version", "pid", "routes"):
        assert doc["status"][key] == control_status[key]
    assert doc["cluster"] is None and "kind cluster management is off" in doc["cluster_off"]


def test_unknown_paths_are_404_and_everything_but_get_is_refused(daemon: Daemon) -> None:
    for path in ("/nope", "/api/nope", "/api/status/x", "/v1/reload", "/index.html", "/../etc/passwd"):
        assert daemon.get(path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        resp = daemon.raw(f"{method} /api/status HTTP/1.1\r\nHost: {daemon.host}\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n".encode())
        assert _code(resp) == 405, resp[:80]
    resp = daemon.raw(f"POST / HTTP/1.1\r\nHost: {daemon.host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                      "hello".encode())
    assert _code(resp) == 413, resp[:80]
    resp = daemon.raw(f"GET / HTTP/1.1\r\nHost: {daemon.host}\r\nTransfer-Encoding: chunked\r\n"
                      "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode())
    assert _code(resp) == 413, resp[:80]


def test_host_and_origin_checks(daemon: Daemon) -> None:
    assert daemon.get("/", {"Host": f"{DNS_IP}:{daemon.port}"})[0] == 200
    for host in ("evil.example", f"evil.example:{daemon.port}", "macula.local", f"grafana.macula.local:{daemon.port}",
                 f"localhost:{daemon.port}"):
        status, _, body = daemon.get("/api/status", {"Host": host})
        assert status == 421 and b"answers only as" in body, host
    two = daemon.raw(f"GET / HTTP/1.1\r\nHost: {daemon.host}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
                     .encode())
    assert _code(two) == 400, two[:80]
    none = daemon.raw(b"GET / HTTP/1.0\r\n\r\n")
    assert _code(none) == 421, none[:80]
    assert daemon.get("/api/status", {"Origin": f"http://macula.local:{daemon.port}"})[0] == 200
    for origin in ("http://evil.example", "null", f"http://grafana.macula.local:{daemon.port}"):
        assert daemon.get("/api/status", {"Origin": origin})[0] == 403, origin
        assert daemon.get("/api/events", {"Origin": origin})[0] == 403, origin
    assert daemon.get("/api/status", {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert daemon.get("/api/status", {"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_oversized_and_malformed_requests_are_refused(daemon: Daemon) -> None:
    big = "x" * 10_000
    resp = daemon.raw(f"GET / HTTP/1.1\r\nHost: {daemon.host}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n".encode())
    assert _code(resp) == 431, resp[:80]
    resp = daemon.raw(f"GET /{big} HTTP/1.1\r\nHost: {daemon.host}\r\nConnection: close\r\n\r\n".encode())
    assert _code(resp) == 414, resp[:80]
    many = "".join(f"X-H{i}: v\r\n" for i in range(200))
    resp = daemon.raw(f"GET / HTTP/1.1\r\nHost: {daemon.host}\r\n{many}Connection: close\r\n\r\n".encode())
    assert _code(resp) == 431, resp[:80]
    resp = daemon.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")  # a TLS hello on http
    assert _code(resp) == 400, resp[:80]
    resp = daemon.raw(b"GARBAGE\r\n\r\n")
    assert _code(resp) == 400 and b"X-Frame-Options: DENY" in resp, resp[:80]
    # the daemon serves on
    assert daemon.get("/")[0] == 200


def _open_stream(daemon: Daemon) -> tuple[socket.socket, bytes]:
    s = socket.create_connection((DNS_IP, daemon.port), timeout=5)
    s.sendall(f"GET /api/events HTTP/1.1\r\nHost: {daemon.host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head or (head.startswith(b"HTTP/1.1 200") and b"retry: " not in head):
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def _read_event(s: socket.socket, buf: bytes, kind: str, timeout: float = 10) -> tuple[dict[str, Any], bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("kind") == kind:
                        return event, buf
        buf += s.recv(65536)
    raise AssertionError(f"no {kind} event within {timeout}s")


def test_events_stream_is_bounded_and_carries_the_control_sockets_events(daemon: Daemon) -> None:
    a, head_a = _open_stream(daemon)
    b, head_b = _open_stream(daemon)
    try:
        for head in (head_a, head_b):
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head and b"retry: 1000" in head
        deadline = time.monotonic() + 5
        while daemon.metric("maculad_web_sse_clients") != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.metric("maculad_web_sse_clients") == 2
        status, headers, body = daemon.get("/api/events")
        assert status == 503 and headers.get("Retry-After") == "5" and b"web.max_clients" in body
        assert daemon.metric('maculad_web_sse_dropped_total{reason="limit"}') == 1
        daemon.proc.signal(signal.SIGHUP)
        event, _ = _read_event(a, head_a.split(b"\r\n\r\n", 1)[1], "reload")
        replay = list(ControlClient(str(daemon.tmp / "maculad.sock")).stream("/v1/events", {"replay": "50"}))
        assert event in replay  # the very same JSON the control socket gives
    finally:
        a.close()
        b.close()
    deadline = time.monotonic() + 5
    while daemon.metric("maculad_web_sse_clients") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.metric("maculad_web_sse_clients") == 0
    c, head_c = _open_stream(daemon)
    c.close()
    assert head_c.startswith(b"HTTP/1.1 200")


def test_connections_are_capped(daemon: Daemon) -> None:
    idle = [socket.create_connection((DNS_IP, daemon.port), timeout=5) for _ in range(6)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection((DNS_IP, daemon.port), timeout=5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        extra.close()
        assert daemon.metric("maculad_web_connections_refused_total") >= 1
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert daemon.get("/")[0] == 200


def test_apex_name_answers_the_page_address(daemon: Daemon) -> None:
    q = dns.message.make_query("macula.local", dns.rdatatype.A)
    r = dns.query.udp(q, DNS_IP, port=daemon.ports["dns"], timeout=3)
    assert [rr.address for rrset in r.answer for rr in rrset] == [DNS_IP]


def test_maculactl_open_opens_the_page(daemon: Daemon, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f"#!/bin/sh\necho \"$1\" >> {opened}\n")
    browser.chmod(0o755)
    ctl = [str(Path(sys.executable).parent / "maculactl"), "--socket", str(daemon.tmp / "maculad.sock"), "open"]
    env = {**os.environ, "BROWSER": str(browser)}
    r = subprocess.run([*ctl, "--json"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # this machine's resolver does not know macula.local, so the page's own address is used
    assert out["url"] == f"http://{DNS_IP}:{daemon.port}/" and out["opened"] is True
    assert "does not resolve" in out["note"]
    deadline = time.monotonic() + 5
    while not opened.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opened.read_text().strip() == out["url"]
    with urllib.request.urlopen(out["url"], timeout=5) as page:
        assert page.status == 200 and b"<title>maculad</title>" in page.read()
    r = subprocess.run([*ctl, "--print"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith(out["url"])
    assert len(opened.read_text().splitlines()) == 1  # --print opened nothing
