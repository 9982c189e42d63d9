"""Every resource of the real daemon is bounded: open files, relay connections, silent and idle
clients, DNS over TCP. Each test runs `maculad run` as a subprocess and talks to it with real
clients (sockets, urllib, curl, dig, maculactl); waits poll for an observable result."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import pytest

from tests.conftest import require
from tests.support.daemon import Maculad, TaggedHTTP, base_config, free_port


# --------------------------------------------------------------------------- helpers


class Holder:
    """A threaded TCP backend that accepts and keeps every connection; echoes when `echo`."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.echo:
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)  # EOF for EOF, as an echo should

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@contextlib.contextmanager
def http_backend() -> Iterator[int]:
    with TaggedHTTP("served") as backend:
        yield backend.port


@contextlib.contextmanager
def running(tmp: Path, extra: str, *, nofile: tuple[int, int] | None = None
            ) -> Iterator[tuple[Maculad, dict[str, int]]]:
    text, ports = base_config(tmp, extra=extra)
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp / "maculad.log", nofile=nofile).start()
    try:
        d.wait_ready(ports["metrics"])
        yield d, ports
    finally:
        d.stop()


def maculactl(tmp: Path, *args: str) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "maculactl"
    p = subprocess.run([str(exe), "--socket", str(tmp / "maculad.sock"), *args],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout


def status(tmp: Path) -> dict[str, Any]:
    rc, out = maculactl(tmp, "status", "--json")
    assert rc == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


def metric(ports: dict[str, int], name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics (0 when the series does not exist)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


def until(cond: Callable[[], bool], what: str, timeout: float = 30.0, logs: Maculad | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{logs.logs()}" if logs else ""))
        time.sleep(0.05)


def closed_by_peer(sock: socket.socket, timeout: float = 20.0) -> bool:
    """True once the other side closed (FIN or reset); reads and discards anything before."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


@contextlib.contextmanager
def own_nofile_raised() -> Iterator[None]:
    """The test process holds thousands of sockets too: its soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- open files


def test_under_ulimit_1024_the_limit_is_raised_and_2000_idle_clients_leave_room(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require(hard >= 8192, f"the hard open-file limit ({hard}) leaves no room for 2,000 relayed connections")
    holder = Holder()
    idle_port = free_port("127.0.0.1", udp_too=False)
    with own_nofile_raised(), http_backend() as web_port:
        extra = (f'[[route]]\nname = "idle"\nip = "127.0.10.231"\ntcp = {{ {idle_port} = "127.0.0.1:{holder.port}" }}\n'
                 f'[[route]]\nname = "web"\nip = "127.0.10.232"\nhttp = "127.0.0.1:{web_port}"\n')
        with running(tmp_path, extra, nofile=(1024, hard)) as (d, ports):
            limits = status(tmp_path)["limits"]
            assert limits["nofile_soft_at_start"] == 1024
            assert limits["nofile_soft"] == limits["nofile_hard"] == hard
            assert metric(ports, "maculad_open_files_limit", limit="soft") == hard
            assert '"event": "open_files_limit"' in d.logs()
            clients = []
            try:
                for _ in range(2000):
                    clients.append(socket.create_connection(("127.0.10.231", idle_port), timeout=10))
                until(lambda: metric(ports, "maculad_proxy_active_connections", route="idle.macula.local")
                      == 2000, "2,000 relayed connections", logs=d)
                # a normal client is still served (under the old soft limit the accept failed: EMFILE)
                req = urllib.request.Request(f"http://127.0.10.232:{ports['http']}/",
                                             headers={"Host": "web.macula.local"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 200 and r.read() == b"served\n"
            finally:
                for c in clients:
                    c.close()
    holder.close()


def test_doctor_warns_when_the_hard_limit_keeps_the_daemon_low(tmp_path: Path) -> None:
    with running(tmp_path, "", nofile=(1024, 1024)) as (d, _):
        assert status(tmp_path)["limits"]["nofile_soft"] == 1024
        _, out = maculactl(tmp_path, "doctor", "--json")
        finding = next(f for f in json.loads(out)["findings"] if f["check"] == "limits")
        assert finding["level"] == "warn" and "1024" in finding["summary"]
        assert "LimitNOFILE=" in finding["fix"]
        assert "LimitNOFILE=" in d.logs()


# --------------------------------------------------------------------------- relay connections


def echo_route(tmp_path: Path, name: str, proxy_setting: str) -> tuple[Maculad, Holder, int, dict[str, int]]:
    """The daemon started with one plain TCP route `name` on 127.0.10.233 to an echo `Holder`, and one
    `[proxy]` setting line: (daemon, echo, the route's port, the config's ports)."""
    echo = Holder(echo=True)
    port = free_port("127.0.0.1", udp_too=False)
    text, ports = base_config(tmp_path)
    text = text.replace("drain_grace = 1.0\n", f"drain_grace = 1.0\n{proxy_setting}\n")
    text += f'[[route]]\nname = "{name}"\nip = "127.0.10.233"\ntcp = {{ {port} = "127.0.0.1:{echo.port}" }}\n'
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    return Maculad(cfg, log=tmp_path / "maculad.log").start(), echo, port, ports


def test_backlog_and_connection_cap(tmp_path: Path) -> None:
    d, echo, port, ports = echo_route(tmp_path, "echo", "max_connections = 3")
    try:
        d.wait_ready(ports["metrics"])
        # the listen backlog is the relay's 1024, not asyncio's default 100 (ss: Send-Q of a listener)
        if shutil.which("ss"):
            out = subprocess.run(["ss", "-Hltn", f"src 127.0.10.233:{port}"], capture_output=True, text=True,
                                 timeout=10).stdout.split()
            assert out[2] == "1024", out
        conns = [socket.create_connection(("127.0.10.233", port), timeout=10) for _ in range(3)]
        for i, c in enumerate(conns):
            c.sendall(b"hello %d" % i)
            assert c.recv(100) == b"hello %d" % i
        over = socket.create_connection(("127.0.10.233", port), timeout=10)
        assert closed_by_peer(over)  # closed at once, never relayed
        over.close()
        labels = {"route": "echo.macula.local", "port": str(port), "proto": "tcp", "reason": "limit"}
        assert metric(ports, "maculad_proxy_rejected_connections_total", **labels) == 1
        conns.pop().close()
        until(lambda: metric(ports, "maculad_proxy_active_connections", route="echo.macula.local") == 2,
              "a connection closed", logs=d)
        with socket.create_connection(("127.0.10.233", port), timeout=10) as again:
            again.sendall(b"room again")
            assert again.recv(100) == b"room again"
        for c in conns:
            c.close()
    finally:
        d.stop()
        echo.close()


def test_first_byte_and_idle_timeouts(tmp_path: Path) -> None:
    echo = Holder(echo=True)
    pg_port = free_port("127.0.0.1", udp_too=False)
    with http_backend() as web_port:
        text, ports = base_config(tmp_path)
        text = text.replace("drain_grace = 1.0\n", "drain_grace = 1.0\nfirst_byte_timeout = 0.5\n"
                                                   "idle_timeout = 5.0\n")
        text += (f'[[route]]\nname = "pg"\nip = "127.0.10.234"\ntcp = {{ {pg_port} = "127.0.0.1:{echo.port}" }}\n'
                 f'[[route]]\nname = "web"\nip = "127.0.10.235"\nhttp = "127.0.0.1:{web_port}"\n')
        cfg = tmp_path / "maculad.toml"
        cfg.write_text(text)
        d = Maculad(cfg, log=tmp_path / "maculad.log").start()
        try:
            d.wait_ready(ports["metrics"])
            # a plain TCP port: the server may speak first, so a silent client is left alone
            pg = socket.create_connection(("127.0.10.234", pg_port), timeout=10)
            # an HTTP port: a client that says nothing is closed after first_byte_timeout
            silent = socket.create_connection(("127.0.10.235", ports["http"]), timeout=10)
            assert closed_by_peer(silent)
            silent.close()
            web = {"route": "web.macula.local", "port": str(ports["http"]), "proto": "tcp"}
            assert metric(ports, "maculad_proxy_timeouts_total", reason="first_byte", **web) == 1
            # the TCP client connected before the silent one and said nothing either: still relayed
            pg.sendall(b"SELECT 1")
            assert pg.recv(100) == b"SELECT 1"
            # an HTTP client that speaks is served
            req = urllib.request.Request(f"http://127.0.10.235:{ports['http']}/", headers={"Host": "web.macula.local"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.read() == b"served\n"
            # no byte either way for idle_timeout: closed, and counted
            assert closed_by_peer(pg)
            pg.close()
            labels = {"route": "pg.macula.local", "port": str(pg_port), "proto": "tcp"}
            assert metric(ports, "maculad_proxy_timeouts_total", reason="idle", **labels) == 1
            assert metric(ports, "maculad_proxy_timeouts_total", reason="first_byte", **labels) == 0
        finally:
            d.stop()
            echo.close()


def test_a_long_lived_connection_is_counted_exactly_and_still_times_out_when_idle(tmp_path: Path) -> None:
    """Past its first chunks a relayed connection is piped (the relay's pump moves and counts its bytes):
    /metrics shows exactly what went through and that it is piped, while it is open and after, and the
    idle timeout still sees it."""
    d, echo, pg_port, ports = echo_route(tmp_path, "pg", "idle_timeout = 2.0")
    labels = {"route": "pg.macula.local", "port": str(pg_port), "proto": "tcp"}
    try:
        d.wait_ready(ports["metrics"])
        pg = socket.create_connection(("127.0.10.233", pg_port), timeout=10)
        sent = 0
        for i in range(500):  # far more round trips than the relay takes through Python
            msg = bytes([i % 251]) * (1 + (i * 7919) % 30_000)
            pg.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += pg.recv(len(msg) - len(got))
            assert got == msg
            sent += len(msg)
        assert metric(ports, "maculad_proxy_bytes_total", direction="in", **labels) == sent
        assert metric(ports, "maculad_proxy_bytes_total", direction="out", **labels) == sent
        assert metric(ports, "maculad_proxy_piped_connections", horizon="host") == 1
        assert closed_by_peer(pg)  # then nothing either way for idle_timeout: closed by the relay
        pg.close()
        assert metric(ports, "maculad_proxy_timeouts_total", reason="idle", **labels) == 1
        assert metric(ports, "maculad_proxy_piped_connections", horizon="host") == 0
        assert metric(ports, "maculad_proxy_bytes_total", direction="in", **labels) == sent
        assert metric(ports, "maculad_proxy_bytes_total", direction="out", **labels) == sent
        assert "Traceback" not in d.logs() and "Fatal error" not in d.logs()
    finally:
        d.stop()
        echo.close()


# --------------------------------------------------------------------------- DNS over TCP


def _dns_tcp_query(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack("!H", len(wire)) + wire


def test_dns_tcp_idle_and_never_reading_clients_do_not_lock_out_new_ones(tmp_path: Path) -> None:
    require(shutil.which("dig") is not None, "dig (bind9-dnsutils) is not installed")
    text, ports = base_config(tmp_path, extra='[[route]]\nname = "grafana"\nip = "127.0.10.236"\n'
                                              'http = "127.0.0.1:9"\n')
    text = text.replace("ttl = 5\n", "ttl = 5\ntcp_idle_timeout = 3.0\n")
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    idle: list[socket.socket] = []
    try:
        d.wait_ready(ports["metrics"])
        dns_addr = ("127.0.0.153", ports["dns"])
        # 300 clients that connect and say nothing: more than max_tcp_clients (256)
        idle = [socket.create_connection(dns_addr, timeout=10) for _ in range(300)]
        until(lambda: metric(ports, "maculad_dns_tcp_closed_total", reason="evicted") == 44,
              "the oldest 44 evicted", logs=d)
        # a client that pipelines queries and never reads an answer, until the daemon stops reading it
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(dns_addr)
        stuck.setblocking(False)
        q = _dns_tcp_query("grafana.macula.local") * 64
        sent = 0
        blocked = False
        deadline = time.monotonic() + 30
        while not blocked and time.monotonic() < deadline:
            try:
                sent += stuck.send(q)
            except BlockingIOError:
                blocked = True  # back-pressure: the daemon no longer reads this client
        assert blocked, f"the daemon kept reading a client that never reads ({sent} bytes sent)"
        # a new TCP client is answered
        out = subprocess.run(["dig", "+tcp", "+short", "+time=5", "+tries=1", "-p", str(ports["dns"]),
                              "@127.0.0.153", "grafana.macula.local"], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "127.0.10.236", out
        # idle clients, the stuck one included (its unread answers pile up), are closed at the idle timeout
        until(lambda: status(tmp_path)["components"]["dns"]["tcp_clients"] == 0,
              "every TCP client closed", logs=d)
        assert metric(ports, "maculad_dns_tcp_closed_total", reason="idle") >= 255
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100):  # the daemon reset it: a send fails as soon as the RST is seen
                with contextlib.suppress(BlockingIOError):
                    stuck.send(q)
                time.sleep(0.05)
        stuck.close()
    finally:
        for s in idle:
            s.close()
        d.stop()
