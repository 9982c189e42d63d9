"""What the systemd watchdog vouches for: the loop turns, DNS answers, the relay accepts.

`SdNotifier.run_watchdog` (observability/sdnotify.py) calls the daemon's check once per
interval and sends WATCHDOG=1 only when it passes, so systemd restarts a daemon that is
wedged rather than one that merely still exists. The check gathers a `Health` — how late
the watchdog's own timer fired (a stalled loop), the answer to a real DNS query sent to
the daemon's own first UDP listener (`probe_dns`: a SOA question for the domain over a
fresh socket, so it crosses the same kernel path and event loop as a client's), and the
relay's own account of its listeners — and `verdict` (pure) turns it into None or the
reason to withhold the ping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import struct
from dataclasses import dataclass
from typing import Any

from maculad.core.net import Backend, format_hostport

_SOA = 6
_IN = 1
_QR = 0x8000


@dataclass(frozen=True, slots=True)
class Health:
    """One round of the watchdog check; None means fine for `dns` and `relay`."""

    loop_lag: float  # seconds the watchdog timer fired late
    dns: str | None
    relay: str | None


def verdict(h: Health, *, max_lag: float) -> str | None:
    """None when the daemon is healthy, else why the watchdog ping is withheld.

    A loop that stalled for `max_lag` (the watchdog timeout) would have been killed by systemd
    already: that is reported too, so a stall is visible even where nobody enforces the timeout."""
    reasons = []
    if h.loop_lag >= max_lag:
        reasons.append(f"the event loop stalled for {h.loop_lag:.1f} s")
    if h.dns is not None:
        reasons.append(f"DNS: {h.dns}")
    if h.relay is not None:
        reasons.append(f"relay: {h.relay}")
    return "; ".join(reasons) or None


def probe_target(host: str, port: int) -> Backend:
    """Where to send the probe for a listener bound to `host` (a wildcard bind answers on loopback)."""
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return Backend("127.0.0.1" if ip.version == 4 else "::1", port)
    return Backend(host, port)


def soa_query(domain: str, ident: int) -> bytes:
    """A plain SOA query for `domain` (no RD, no EDNS)."""
    name = b"".join(bytes([len(lb)]) + lb.encode("ascii") for lb in domain.split(".") if lb) + b"\x00"
    return struct.pack("!HHHHHH", ident, 0, 1, 0, 0, 0) + name + struct.pack("!HH", _SOA, _IN)


def check_reply(query: bytes, reply: bytes) -> str | None:
    """Why `reply` is not a good answer to `query` (None when it is: same ID and question, NOERROR)."""
    if len(reply) < 12 or reply[:2] != query[:2]:
        return "an answer that is not ours"
    (flags,) = struct.unpack_from("!H", reply, 2)
    if not flags & _QR:
        return "an answer without QR"
    if flags & 0xF:
        return f"rcode {flags & 0xF} for the domain's SOA"
    if reply[12 : len(query)].lower() != query[12:].lower():
        return "an answer to another question"
    return None


class _Probe(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def probe_dns(target: Backend, domain: str, *, timeout: float) -> str | None:
    """Ask the daemon's own DNS listener for the domain's SOA; None when it answers in time."""
    loop = asyncio.get_running_loop()
    query = soa_query(domain, int.from_bytes(os.urandom(2), "big"))
    done: asyncio.Future[bytes] = loop.create_future()
    where = format_hostport(target.host, target.port)
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Probe(done),
                                                           remote_addr=(target.host, target.port))
    except OSError as exc:
        return f"cannot query {where}: {exc.strerror or exc}"
    try:
        transport.sendto(query)
        async with asyncio.timeout(timeout):
            reply = await done
    except TimeoutError:
        return f"no answer from {where} within {timeout:g} s"
    except OSError as exc:
        return f"{where}: {exc.strerror or exc}"
    finally:
        transport.close()
    problem = check_reply(query, reply)
    return None if problem is None else f"{where}: {problem}"
