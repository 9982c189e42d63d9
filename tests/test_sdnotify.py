"""sd_notify against real unix datagram sockets, as systemd would listen."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maculad.observability import sdnotify
from maculad.observability.sdnotify import SdNotifier, one_line, socket_address, watchdog_interval


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    d = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()
    os.unlink(path)
    os.rmdir(d)


def recv(s: socket.socket) -> list[str]:
    data = s.recv(4096)
    return data.decode().split("\n")


def test_states_arrive_as_datagrams(listener: tuple[str, socket.socket]) -> None:
    path, s = listener
    n = SdNotifier(env={"NOTIFY_SOCKET": path}, monotonic_usec=lambda: 123456789)
    assert n.enabled
    assert n.ready("serving 3 routes\non 1 DNS address")
    assert recv(s) == ["READY=1", "STATUS=serving 3 routes on 1 DNS address"]
    assert n.status("12 routes, dns 127.0.0.153:53")
    assert recv(s) == ["STATUS=12 routes, dns 127.0.0.153:53"]
    assert n.watchdog()
    assert recv(s) == ["WATCHDOG=1"]
    assert n.reloading()
    assert recv(s) == ["RELOADING=1", "MONOTONIC_USEC=123456789"]
    assert n.stopping()
    assert recv(s) == ["STOPPING=1"]
    n.close()


def test_reloading_uses_the_real_monotonic_clock(listener: tuple[str, socket.socket]) -> None:
    path, s = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n = SdNotifier(env={"NOTIFY_SOCKET": path})
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = recv(s)
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"maculad-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        n = SdNotifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert recv(s) == ["READY=1"]
        n.close()
    finally:
        s.close()


def test_without_notify_socket_everything_is_a_noop() -> None:
    n = SdNotifier(env={})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.stopping()
    assert n.watchdog_interval is None


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    n = SdNotifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.enabled
    assert n.ready() is False
    assert n.status("still fine") is False


def test_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == "\0abc"
    assert socket_address("@") is None
    assert socket_address("") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    ns = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert watchdog_interval({**ns, "WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({**ns, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({**ns, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({**ns, "WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval({**ns, "WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({**ns, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval(ns) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) is None  # nobody to ping


def test_status_is_one_line() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 500)) == 200


async def test_watchdog_loop_pings_only_when_the_check_passes(listener: tuple[str, socket.socket]) -> None:
    path, s = listener
    s.setblocking(False)
    n = SdNotifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})
    assert n.watchdog_interval == 0.02
    # Each round, the check first counts the pings the previous round sent (a unix datagram is in
    # the receiver's queue when sendto returns), then answers: healthy, healthy, sick ×3, healthy.
    plan = [None, None, "DNS: no answer", "DNS: no answer", "relay: gone", None, None]
    seen: list[int] = []
    lags: list[float] = []
    finished = asyncio.get_running_loop().create_future()

    async def check(lag: float) -> str | None:
        pings = 0
        while True:
            try:
                assert s.recv(4096) == b"WATCHDOG=1"
            except BlockingIOError:
                break
            pings += 1
        seen.append(pings)
        lags.append(lag)
        if len(seen) > len(plan):
            finished.set_result(None)
            await asyncio.Future()
        return plan[len(seen) - 1]

    task = asyncio.create_task(n.run_watchdog(check))
    try:
        await asyncio.wait_for(finished, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        n.close()
    # the pings each round's verdict allowed, counted at the start of the next round
    assert seen == [0, 1, 1, 0, 0, 0, 1, 1]
    assert all(lag >= 0 for lag in lags)


async def test_watchdog_loop_waits_quietly_when_off() -> None:
    n = SdNotifier(env={})
    task = asyncio.create_task(n.run_watchdog())
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_module_functions_use_the_process_environment(listener: tuple[str, socket.socket],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path, s = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setattr(sdnotify, "_default", None)
    assert sdnotify.watchdog_interval() == 5.0
    assert sdnotify.ready()
    assert recv(s) == ["READY=1"]
    assert sdnotify.status("3 routes")
    assert recv(s) == ["STATUS=3 routes"]
    assert sdnotify.watchdog() and recv(s) == ["WATCHDOG=1"]
    assert sdnotify.reloading() and recv(s)[0] == "RELOADING=1"
    assert sdnotify.stopping() and recv(s) == ["STOPPING=1"]
    sdnotify.default_notifier().close()
    monkeypatch.setattr(sdnotify, "_default", None)


def test_a_receiver_that_stops_reading_never_blocks_the_sender(listener: tuple[str, socket.socket]) -> None:
    import threading

    path, _ = listener  # bound, never read: its queue (net.unix.max_dgram_qlen) fills up
    n = SdNotifier(env={"NOTIFY_SOCKET": path})
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(n.watchdog() for _ in range(200)), daemon=True)
    sender.start()
    sender.join(30)
    assert not sender.is_alive(), "sendto blocked on a full notify socket"
    assert results[0] is True and results[-1] is False  # the full queue is reported, not waited for
    n.close()
