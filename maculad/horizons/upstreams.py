"""The host's upstream resolvers, for names outside the domain asked on G.

A container that uses G as its only DNS server still needs every other name,
so G forwards them to the resolvers the host itself uses: the `nameserver`
lines of /etc/resolv.conf, or — when that only points at systemd-resolved's
stub (127.0.0.53/127.0.0.54) — the real upstreams systemd-resolved lists in
/run/systemd/resolve/resolv.conf. `parse_resolv_conf` is pure; `host_upstreams`
reads the files. The stub itself is kept as a last resort (the host process
can reach it; a container could not).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from maculad.core.net import Backend

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")
_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})


def parse_resolv_conf(text: str) -> tuple[Backend, ...]:
    """The `nameserver` addresses of a resolv.conf, in order, each on port 53."""
    out: list[Backend] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host = fields[1].split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        b = Backend(str(ip), 53)
        if b not in out:
            out.append(b)
    return tuple(out)


def host_upstreams(read: Callable[[Path], str] | None = None) -> tuple[Backend, ...]:
    """The host's resolvers (see the module docstring); () when none can be read."""
    def _read(p: Path) -> str:
        try:
            return (read or (lambda q: q.read_text(errors="replace")))(p)
        except OSError:
            return ""

    main = parse_resolv_conf(_read(RESOLV_CONF))
    if main and all(b.host in _STUBS for b in main):
        real = parse_resolv_conf(_read(RESOLVED_UPSTREAMS))
        if real:
            return real
    return main
