"""Making a route's loopback IP bindable: nothing on Linux, lo0 aliases on macOS.

On Linux all of 127.0.0.0/8 is local, so any route IP can be bound as is. On
macOS lo0 carries only 127.0.0.1: every other loopback IP must be added with
`ifconfig lo0 alias IP up` before binding and removed with `ifconfig lo0 -alias
IP` when no listener needs it any more (and on shutdown). The platform only
removes aliases it added itself: an alias that was already present (someone
else's) is left alone, and 127.0.0.1 is never touched.

The relay asks for its routes' IPs; the daemon keeps a second `AliasPlatform` for its own
addresses (the DNS listeners, the status page's and the metrics address: `app/reload.own_addresses`)
with `keep_only`, so 127.0.0.153 is bindable before DNS starts, follows a reload and goes on
shutdown. Each platform removes only what it added.

Command selection is pure (`alias_add_command`, `alias_remove_command`, `alias_plan`,
`lo0_has`); `AliasPlatform` runs the commands through an injectable
`CommandRunner` (asyncio subprocess by default).
"""

from __future__ import annotations

import asyncio
import ipaddress
import platform as _platform
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import structlog

log = structlog.get_logger("maculad.proxy")

Argv = tuple[str, ...]
#: Runs argv; returns (exit status, combined output).
CommandRunner = Callable[[Argv], Awaitable[tuple[int, str]]]


class AliasError(OSError):
    """An interface alias could not be added (reported like a bind failure)."""


class LoopbackPlatform(Protocol):
    async def add(self, ip: str) -> None:
        """Make `ip` bindable; raise OSError (AliasError) if that fails."""

    async def remove(self, ip: str) -> None:
        """Undo `add` for `ip`, if this platform added something for it."""

    async def remove_all(self) -> None:
        """Undo every `add` (shutdown)."""

    def managed(self) -> frozenset[str]:
        """The IPs this platform added something for."""


def needs_alias(system: str, ip: str) -> bool:
    """True when binding `ip` on `system` (platform.system()) needs an lo0 alias first."""
    if system != "Darwin":
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.version == 4 and addr.is_loopback and ip != "127.0.0.1"


def alias_add_command(system: str, ip: str) -> Argv | None:
    return ("ifconfig", "lo0", "alias", ip, "up") if needs_alias(system, ip) else None


def alias_remove_command(system: str, ip: str) -> Argv | None:
    return ("ifconfig", "lo0", "-alias", ip) if needs_alias(system, ip) else None


def alias_plan(system: str, ips: Iterable[str]) -> tuple[Argv, ...]:
    """The commands that make every one of `ips` bindable on `system` (none on Linux)."""
    return tuple(cmd for ip in sorted(set(ips)) if (cmd := alias_add_command(system, ip)) is not None)


def alias_list_command(system: str) -> Argv | None:
    return ("ifconfig", "lo0") if system == "Darwin" else None


def lo0_has(ifconfig_output: str, ip: str) -> bool:
    """Whether `ifconfig lo0` output lists `ip` as an inet address."""
    return re.search(rf"(?m)^\s*inet {re.escape(ip)}(\s|$)", ifconfig_output) is not None


async def run_command(argv: Argv) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return 127, f"{argv[0]}: {exc.strerror or exc}"
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace").strip()


class AliasPlatform:
    """LoopbackPlatform for Linux (no-op) and macOS (lo0 aliases), chosen by `system`."""

    def __init__(self, *, system: str | None = None, runner: CommandRunner = run_command) -> None:
        self.system = system if system is not None else _platform.system()
        self._run = runner
        self._added: set[str] = set()
        self._lock = asyncio.Lock()

    def managed(self) -> frozenset[str]:
        return frozenset(self._added)

    async def add(self, ip: str) -> None:
        cmd = alias_add_command(self.system, ip)
        if cmd is None or ip in self._added:
            return
        async with self._lock:
            listing = alias_list_command(self.system)
            if listing is not None:
                rc, out = await self._run(listing)
                if rc == 0 and lo0_has(out, ip):
                    log.info("proxy_alias_present", ip=ip)  # someone else's: use it, never remove it
                    return
            rc, out = await self._run(cmd)
            if rc != 0:
                raise AliasError(f"{' '.join(cmd)} failed ({rc}): {out or 'no output'}")
            self._added.add(ip)
            log.info("proxy_alias_added", ip=ip)

    async def remove(self, ip: str) -> None:
        if ip not in self._added:
            return
        cmd = alias_remove_command(self.system, ip)
        self._added.discard(ip)
        if cmd is None:
            return
        async with self._lock:
            rc, out = await self._run(cmd)
        if rc != 0:
            log.warning("proxy_alias_remove_failed", ip=ip, command=" ".join(cmd), output=out)
        else:
            log.info("proxy_alias_removed", ip=ip)

    async def remove_all(self) -> None:
        for ip in sorted(self._added):
            await self.remove(ip)

    async def keep_only(self, ips: Iterable[str]) -> None:
        """Make every one of `ips` bindable (AliasError when one cannot be), and drop the aliases this
        platform added for any other IP."""
        wanted = set(ips)
        for ip in sorted(wanted):
            await self.add(ip)
        for ip in sorted(self._added - wanted):
            await self.remove(ip)


def default_platform() -> LoopbackPlatform:
    return AliasPlatform()
