"""Addresses: `Backend`, host:port text, and the two address rules.

- `format_hostport` / `parse_hostport`: the one spelling of host:port
  (`[v6]:port` for IPv6), used by config, status, DNS and the relay.
- `loopback_problem` is the loopback rule: route IPs are loopback IPs, others
  only with `proxy.allow_non_loopback`.
- `pin_problem` is the pin rule: a pinned route IP is an IPv4 host address (not
  the network or broadcast address of 127.0.0.0/8) under the loopback rule.
  Every source (config, Docker labels) and the route table ask it, so a bad
  pin gets the same reason wherever it was written.
- `same_socket`: whether two listen addresses are one socket address.
- `bind_problem`: what the relay refuses to bind (wildcards, multicast, and the
  loopback rule).
- `tcp_listen_socket`: a bound, listening TCP socket for a component to serve
  on, so a reload can bind a new address before it closes the old one.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Literal
from dataclasses import dataclass


def format_hostport(host: str, port: int) -> str:
    """`127.0.0.1:80`, `[::1]:80`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    """Where a listener relays to (or a socket binds): a host (IP or name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


def parse_hostport(text: str, *, what: str = "address") -> Backend:
    """`host:port` or `[v6]:port` → Backend; ValueError with the reason (naming `what`)."""
    s = text.strip()
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not a valid [IPv6]:port {what}")
        port_s = rest[1:]
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not a host:port {what} (a port is required)")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses as [addr]:port")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 0..65535")
    return Backend(host, port)


def loopback_problem(ip: str, *, allow_non_loopback: bool) -> str | None:
    """The loopback rule: routes live on loopback IPs unless `proxy.allow_non_loopback`. `ip` is a valid IP."""
    if not allow_non_loopback and not ipaddress.ip_address(ip).is_loopback:
        return f"{ip} is not a loopback address (set proxy.allow_non_loopback = true to allow)"
    return None


def bind_problem(ip: str, *, allow_non_loopback: bool) -> str | None:
    """Why the relay must not bind `ip`, or None: never a wildcard or multicast address, and the loopback rule."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if addr.is_unspecified:
        return f"{ip} is a wildcard address; the relay binds only a route's own IP"
    if addr.is_multicast:
        return f"{ip} is a multicast address"
    return loopback_problem(ip, allow_non_loopback=allow_non_loopback)


def pin_problem(ip: str, *, allow_non_loopback: bool) -> str | None:
    """Why `ip` cannot be a route's pinned IP (the pin rule: an IPv4 address, and the loopback rule), or None.

    A pin that passes but cannot be bound (a wildcard with non-loopback allowed) gets its route and
    DNS answer; the relay refuses the listener with `bind_problem`'s reason, shown in status."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return f"{ip!r} is not an IPv4 address"
    if addr == _LOOPBACK.network_address:
        return f"{ip} is the network address of {_LOOPBACK}, not a host address"
    if addr == _LOOPBACK.broadcast_address:
        return f"{ip} is the broadcast address of {_LOOPBACK}, not a host address"
    return loopback_problem(ip, allow_non_loopback=allow_non_loopback)


_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def same_socket(a: Backend, b: Backend) -> bool:
    """Whether listening on `a` and `b` (same transport) would be one socket address: the same port,
    and the same host or a wildcard of the other's family. Port 0 (any free port) never clashes."""
    if a.port != b.port or a.port == 0:
        return False
    if a.host == b.host:
        return True
    try:
        ia, ib = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    except ValueError:
        return False
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


#: How the relay treats TLS on a route's https port (see maculad/proxy/spec.py `tls_mode`).
TLSMode = Literal["auto", "terminate", "passthrough", "off"]
TLS_MODES: tuple[TLSMode, ...] = ("auto", "terminate", "passthrough", "off")


def tcp_listen_socket(addr: Backend, *, backlog: int) -> socket.socket:
    """Bind and listen on `addr` (SO_REUSEADDR, non-blocking); OSError naming the address."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr.host, addr.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot listen on {addr}: {reason}") from None
    return sock
