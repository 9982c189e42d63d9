"""Who may read the page: pure checks on Host, Origin and Sec-Fetch-Site.

The page is served on a loopback address, but any web site open in the same
browser can make it send requests there. Two defences, both decided here
without I/O:

- **Host** must name the domain apex or the listen address (with the bound
  port, or none when that is 80). A DNS-rebinding attacker's page is loaded
  from its own name, so its requests carry that name and are refused.
- **Origin** and **Sec-Fetch-Site** on the JSON endpoints: a request another
  site's script makes (cross-site or same-site, e.g. from an app under the
  domain) is refused even before the browser's same-origin rule would hide the
  answer. No CORS header is ever sent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Allowed:
    """The names the page answers to and the ports it is reached on: its own, and 80 when the
    container horizon relays G:80 to it (`via`)."""

    names: frozenset[str]
    port: int
    via: frozenset[int] = frozenset()

    def port_ok(self, port: int | None) -> bool:
        p = port if port is not None else 80
        return p == self.port or p in self.via

    @classmethod
    def build(cls, *, domain: str, listen_host: str, port: int, via: frozenset[int] = frozenset()) -> Allowed:
        names = {domain.lower().rstrip(".")}
        try:
            ip = ipaddress.ip_address(listen_host)
        except ValueError:
            names.add(listen_host.lower())
        else:
            if not ip.is_unspecified:
                names.add(str(ip))
        return cls(names=frozenset(names), port=port, via=via)


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name`, `name:port`, `[v6]:port` → (host, port); None when it is not a host."""
    v = value.strip().lower()
    if not v or len(v) > 300 or any(c.isspace() or c in "/@?#\\" for c in v):
        return None
    port_s: str | None = None
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_s = rest[1:] if rest else None
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    else:
        host, sep, p = v.partition(":")
        if sep:
            port_s = p
        host = host.rstrip(".")
        if not host or ":" in p:
            return None
    if port_s is None:
        return host, None
    if not port_s.isdigit() or not 0 < int(port_s) <= 65535:
        return None
    return host, int(port_s)


def host_ok(header: str | None, allowed: Allowed) -> bool:
    if header is None:
        return False
    parsed = split_host(header)
    if parsed is None:
        return False
    host, port = parsed
    return host in allowed.names and allowed.port_ok(port)


def origin_ok(origin: str | None, allowed: Allowed) -> bool:
    """No Origin (a same-origin GET) is fine; otherwise it must be this page's own origin."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "http" or parts.path not in ("", "/") or parts.hostname is None:
        return False
    host = parts.hostname.rstrip(".")
    if ":" in host:
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            return False
    return host in allowed.names and allowed.port_ok(port)


def fetch_site_ok(value: str | None) -> bool:
    """`Sec-Fetch-Site` of a request for JSON: only the page itself (or the address bar) may ask."""
    return value is None or value.strip().lower() in ("same-origin", "none")
