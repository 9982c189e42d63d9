"""The C pump (maculad/proxy/_pump.c) on its own, over real connected TCP sockets on loopback: bytes in
order both ways with exact counts, half-close, backpressure bounded by one buffer, errors reported,
the burst limit, ids, and bad calls refused. (tests/test_proxy_tcp.py runs the relay through it.)"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import shutil
import socket
import struct
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maculad.proxy import pump as pump_mod
from tests.conftest import IN_CI
from tests.support.proxy import pattern

pytestmark = pytest.mark.skipif(not pump_mod.AVAILABLE and not IN_CI,  # under CI=true: fail, never skip
                                reason="the pump is built on Linux only")


def test_the_pump_is_built_on_linux() -> None:
    """The install builds it (setup.py); a relay without it runs, slower: CI must not miss that."""
    assert pump_mod.AVAILABLE, "maculad.proxy._pump is missing: install with `pip install -e .` (needs gcc)"


def test_the_pump_compiles_without_warnings() -> None:
    cc = shutil.which("gcc")
    assert cc, "gcc is needed to build the pump"
    src = Path(__file__).resolve().parent.parent / "maculad" / "proxy" / "_pump.c"
    r = subprocess.run([cc, "-fsyntax-only", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-Werror", "-I", sysconfig.get_paths()["include"], str(src)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


class Rig:
    """client <-> [c | pump | b] <-> backend: the pump holds the middle two sockets."""

    def __init__(self, bufsize: int = 64 * 1024, burst: int = 16) -> None:
        self.finished: list[tuple[int, int]] = []
        self.more = 0
        self.pump = pump_mod.Pump(bufsize, burst, self.finished.extend, self._more)  # type: ignore[misc]
        self.client, c = tcp_pair()
        b, self.backend = tcp_pair()
        for s in (c, b):
            s.setblocking(False)
        self.cid = self.pump.add(os.dup(c.fileno()), os.dup(b.fileno()))
        c.close()
        b.close()

    def _more(self) -> None:
        self.more += 1

    def run(self, until: float = 0.05) -> None:
        """Run the pump whenever its epoll descriptor is readable, for `until` seconds."""
        end = time.monotonic() + until
        while (left := end - time.monotonic()) > 0:
            select.select([self.pump.fileno()], [], [], left)
            while True:  # and again while a run asks for it
                asked = self.more
                assert self.pump.run() is None
                if self.more == asked:
                    break

    def run_until(self, cond: object, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < end, "timed out"
            self.run(0.01)

    def close(self) -> None:
        self.client.close()
        self.backend.close()
        self.pump.shutdown()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def recv_exactly(sock: socket.socket, n: int, rig: Rig) -> bytes:
    sock.setblocking(False)
    out = bytearray()
    end = time.monotonic() + 20
    while len(out) < n:
        assert time.monotonic() < end
        rig.run(0.005)
        try:
            chunk = sock.recv(n - len(out))
        except BlockingIOError:
            continue
        assert chunk, "closed early"
        out += chunk
    return bytes(out)


def test_bytes_both_ways_in_order_with_exact_counts(rig: Rig) -> None:
    up = pattern(3 * 1024 * 1024 + 7, seed=1)
    down = pattern(2 * 1024 * 1024 + 3, seed=2)
    rig.client.setblocking(False)
    rig.backend.setblocking(False)
    got_up = bytearray()
    got_down = bytearray()
    sent_up = sent_down = 0
    end = time.monotonic() + 30
    while len(got_up) < len(up) or len(got_down) < len(down):
        assert time.monotonic() < end
        if sent_up < len(up):
            try:
                sent_up += rig.client.send(up[sent_up:sent_up + 200_000])
            except BlockingIOError:
                pass
        if sent_down < len(down):
            try:
                sent_down += rig.backend.send(down[sent_down:sent_down + 150_000])
            except BlockingIOError:
                pass
        rig.run(0.002)
        for sock, buf in ((rig.backend, got_up), (rig.client, got_down)):
            try:
                buf += sock.recv(1 << 20)
            except BlockingIOError:
                pass
    assert bytes(got_up) == up and bytes(got_down) == down
    assert rig.pump.counts(rig.cid) == (len(up), len(down))
    assert rig.pump.pending(rig.cid) == 0
    assert rig.finished == []


def test_half_close_then_both_ways_finish_cleanly(rig: Rig) -> None:
    rig.client.sendall(b"request")
    rig.client.shutdown(socket.SHUT_WR)
    assert recv_exactly(rig.backend, 7, rig) == b"request"
    rig.run_until(lambda: rig.backend.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")  # the EOF crossed
    rig.backend.sendall(b"the answer, after the client's EOF")  # the other way still flows
    assert recv_exactly(rig.client, 34, rig) == b"the answer, after the client's EOF"
    assert rig.finished == []
    rig.backend.shutdown(socket.SHUT_WR)
    rig.run_until(lambda: rig.finished)
    assert rig.finished == [(rig.cid, 0)]
    assert rig.client.recv(10) == b""
    assert rig.pump.close(rig.cid) == (7, 34)
    assert len(rig.pump) == 0


def test_a_reader_that_stops_costs_at_most_one_buffer(rig: Rig) -> None:
    """The backend stops reading: the pump keeps at most one read (its bufsize) and stops reading the
    client; the rest waits in the kernel's socket buffers and then in the client's."""
    rig.client.setblocking(False)
    sent = 0
    chunk = b"x" * 65536
    end = time.monotonic() + 2
    while time.monotonic() < end:
        try:
            sent += rig.client.send(chunk)
        except BlockingIOError:
            rig.run(0.01)
    rig.run(0.1)
    moved, _ = rig.pump.counts(rig.cid)
    assert 0 < rig.pump.pending(rig.cid) <= 64 * 1024
    assert moved < sent  # the client is held back
    rig.backend.setblocking(False)
    got = 0
    end = time.monotonic() + 20
    while got < sent:
        assert time.monotonic() < end
        try:
            got += len(rig.backend.recv(1 << 20))
        except BlockingIOError:
            rig.run(0.005)
    assert got == sent and rig.pump.counts(rig.cid)[0] == sent and rig.pump.pending(rig.cid) == 0


def test_a_reset_is_reported_with_its_errno(rig: Rig) -> None:
    rig.client.sendall(b"hello")
    assert recv_exactly(rig.backend, 5, rig) == b"hello"
    rig.backend.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.backend.close()
    rig.run_until(lambda: rig.finished)
    [(cid, err)] = rig.finished
    assert cid == rig.cid and err in (errno.ECONNRESET, errno.EPIPE)
    assert rig.pump.close(cid) == (5, 0)


def test_one_direction_reads_at_most_burst_buffers_per_run() -> None:
    r = Rig(bufsize=4096, burst=2)
    try:
        r.client.sendall(b"y" * 40_000)
        time.sleep(0.05)
        r.pump.run()
        assert r.more == 1 and not r.finished and r.pump.counts(r.cid)[0] == 2 * 4096
        assert recv_exactly(r.backend, 40_000, r) == b"y" * 40_000
    finally:
        r.close()


def test_ids_are_reused_only_after_close_and_bad_calls_are_refused(rig: Rig) -> None:
    p = rig.pump
    with pytest.raises(KeyError):
        p.counts(rig.cid + 1)
    with pytest.raises(KeyError):
        p.close(-1)
    with pytest.raises(ValueError):
        p.add(-1, 5)
    with pytest.raises(OSError):  # not a descriptor epoll can watch
        p.add(10_000, 10_001)
    assert len(p) == 1
    a, b = tcp_pair()
    second = p.add(os.dup(a.fileno()), os.dup(b.fileno()))
    assert second != rig.cid and len(p) == 2
    p.close(rig.cid)
    with pytest.raises(KeyError):
        p.counts(rig.cid)
    third_a, third_b = tcp_pair()
    assert p.add(os.dup(third_a.fileno()), os.dup(third_b.fileno())) == rig.cid
    p.shutdown()
    with pytest.raises(ValueError):
        p.fileno()
    with pytest.raises(ValueError):
        p.run()
    for s in (a, b, third_a, third_b):
        s.close()
    with pytest.raises(ValueError):
        pump_mod.Pump(0, 1, print, print)  # type: ignore[misc]
    with pytest.raises(TypeError):
        pump_mod.Pump(1024, 1, None, print)  # type: ignore[misc]


def test_close_closes_the_sockets(rig: Rig) -> None:
    rig.pump.close(rig.cid)
    rig.client.settimeout(5)
    assert rig.client.recv(1) == b""  # the pump's end of the client's connection is gone: FIN


async def test_pumps_runs_on_the_loop_reports_the_end_and_survives_its_shutdown() -> None:
    """The relay's side (pump.py): the loop runs the pump when a socket is ready, `ended` is called once
    with 0 when both ways reach EOF, and after `shutdown` a late close or count is a no-op, not an error."""
    loop = asyncio.get_running_loop()
    pumps = pump_mod.Pumps()
    ends: list[int] = []
    client, c = tcp_pair()
    b, backend = tcp_pair()
    for s in (c, b, client, backend):
        s.setblocking(False)
    cid = pumps.take(loop, os.dup(c.fileno()), os.dup(b.fileno()), ends.append)
    c.close()
    b.close()
    try:
        await loop.sock_sendall(client, b"ping")
        assert await asyncio.wait_for(loop.sock_recv(backend, 16), 5) == b"ping"
        await loop.sock_sendall(backend, b"pong!")
        assert await asyncio.wait_for(loop.sock_recv(client, 16), 5) == b"pong!"
        assert pumps.counts(cid) == (4, 5) and len(pumps) == 1
        client.shutdown(socket.SHUT_WR)
        backend.shutdown(socket.SHUT_WR)
        for _ in range(500):
            if ends:
                break
            await asyncio.sleep(0.01)
        assert ends == [0]
        assert pumps.close(cid) == (4, 5) and len(pumps) == 0
        assert pumps.close(cid) is None  # closed once only
        x, y = tcp_pair()  # blocking sockets: the pump makes its descriptors non-blocking
        other = pumps.take(loop, os.dup(x.fileno()), os.dup(y.fileno()), ends.append)
        assert not os.get_blocking(x.fileno())
        x.close()
        y.close()
        pumps.shutdown()
        assert pumps.counts(other) is None and pumps.pending(other) == 0 and pumps.close(other) is None
    finally:
        client.close()
        backend.close()
        pumps.shutdown()
