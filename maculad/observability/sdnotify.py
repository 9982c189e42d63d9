"""sd_notify without libsystemd: one datagram per state change to `$NOTIFY_SOCKET`.

The protocol is newline-separated `KEY=VALUE` assignments in a single
datagram on an `AF_UNIX`/`SOCK_DGRAM` socket whose path comes from
`$NOTIFY_SOCKET` (a leading `@` means the Linux abstract namespace). Nothing
here raises or blocks: outside systemd (no variable) every call is a cheap no-op
that returns False, and a send error (a full queue included: the socket is
non-blocking) is logged once per state and reported as False, because a service
manager hiccup must never take the daemon down.

`SdNotifier` reads the environment once (injectable for tests); the module-level
`ready()`, `status()`, `watchdog()`, `reloading()` and `stopping()` use one
process-wide notifier built from `os.environ` on first use. The watchdog
interval is half of `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID`), and
`run_watchdog` is the loop the daemon spawns on its `TaskOwner`: each interval it
awaits the given health check (told how late its timer fired, so a stalled loop
shows) and pings only when the check passes, so a wedged daemon gets restarted.
A withheld ping is logged with the reason, and so is the recovery.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypedDict

import structlog

log = structlog.get_logger("maculad.sdnotify")


def socket_address(value: str) -> str | None:
    """`$NOTIFY_SOCKET` → an address for `sendto` (abstract `@name` → `\\0name`).

    Only unix socket paths are supported (absolute, or abstract); anything else
    (an empty value, a relative path, systemd ≥ 254's `vsock:` form) gives None.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:] if len(value) > 1 else None
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of `$WATCHDOG_USEC`), or None when off.

    `$WATCHDOG_PID`, when set, must name this process (systemd sets it so that
    children do not inherit the duty); a malformed value turns the watchdog off.
    Without a `NOTIFY_SOCKET` there is nobody to ping, so None as well.
    """
    if env is None:
        env = os.environ
    if socket_address(env.get("NOTIFY_SOCKET", "")) is None:
        return None
    usec_s = env.get("WATCHDOG_USEC", "")
    if not usec_s:
        return None
    pid_s = env.get("WATCHDOG_PID", "")
    if pid_s:
        try:
            if int(pid_s) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(usec_s)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def one_line(text: str, limit: int = 200) -> str:
    """STATUS= must be one line: collapse whitespace, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class WatchdogStatus(TypedDict):
    """`status.watchdog`: systemd's watchdog, when it wants pings."""

    interval: float  # seconds between pings
    withheld: int  # rounds whose ping was withheld (unhealthy)
    last_withheld: str | None  # why the last one was withheld


class SdNotifier:
    """Sends sd_notify states; every method returns whether a datagram was sent."""

    def __init__(self, *, env: Mapping[str, str] | None = None,
                 monotonic_usec: Callable[[], int] | None = None) -> None:
        e = os.environ if env is None else env
        self._address = socket_address(e.get("NOTIFY_SOCKET", ""))
        self._interval = watchdog_interval(e)
        self._monotonic_usec = monotonic_usec or (lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        self._sock: socket.socket | None = None
        self._failed: set[str] = set()
        #: watchdog rounds whose ping was withheld, and the latest reason (shown by `maculactl status`)
        self.withheld = 0
        self.last_withheld: str | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Half of `$WATCHDOG_USEC` in seconds, None when systemd wants no pings."""
        return self._interval if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        key = assignments[0].partition("=")[0] if assignments else ""
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # a service manager that stops reading must not stall the event loop (a full queue: EAGAIN)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if key not in self._failed:
                self._failed.add(key)
                log.warning("sd_notify_failed", state=key, socket=self._address.replace("\0", "@"),
                            error=str(exc))
            return False
        self._failed.discard(key)
        return True

    def ready(self, status: str | None = None) -> bool:
        extra = (f"STATUS={one_line(status)}",) if status else ()
        return self.notify("READY=1", *extra)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (required by Type=notify-reload); send READY=1 after."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def run_watchdog(self, check: Callable[[float], Awaitable[str | None]] | None = None) -> None:
        """Each interval, await `check(lag)` (lag: seconds the timer fired late) and ping WATCHDOG=1
        when it returns None; a reason withholds the ping. Runs until cancelled.

        With the watchdog off it just waits, so the daemon can always spawn it."""
        interval = self.watchdog_interval
        if interval is None:
            await asyncio.Future()
            return
        loop = asyncio.get_running_loop()
        due = loop.time()
        withheld = False
        while True:
            lag = max(0.0, loop.time() - due)
            reason = await check(lag) if check is not None else None
            if reason is None:
                if withheld:
                    log.info("watchdog_resumed")
                    withheld = False
                self.watchdog()
            else:
                withheld = True
                self.withheld += 1
                self.last_withheld = reason
                log.warning("watchdog_withheld", reason=reason)
            due = loop.time() + interval
            await asyncio.sleep(interval)

    def watchdog_status(self) -> WatchdogStatus | None:
        """The watchdog as `maculactl status` shows it; None when systemd wants no pings."""
        if self.watchdog_interval is None:
            return None
        return {"interval": self.watchdog_interval, "withheld": self.withheld, "last_withheld": self.last_withheld}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --------------------------------------------------------------------------- process-wide helpers

_default: SdNotifier | None = None


def default_notifier() -> SdNotifier:
    """The notifier for this process's environment, created on first use."""
    global _default
    if _default is None:
        _default = SdNotifier()
    return _default


def ready(status_text: str | None = None) -> bool:
    return default_notifier().ready(status_text)


def status(text: str) -> bool:
    return default_notifier().status(text)


def watchdog() -> bool:
    return default_notifier().watchdog()


def reloading() -> bool:
    return default_notifier().reloading()


def stopping() -> bool:
    return default_notifier().stopping()
