"""Forwarding names outside the zone to the configured upstream resolvers.

`Forwarder.resolve(packet)` sends the client's query unchanged except for a
fresh random ID, from a fresh socket (random source port), to each upstream
in turn until one answers, within one overall deadline (`forward_timeout`).
A reply is accepted only if its ID, QR bit and question match what was sent;
anything else on the socket is ignored (spoofing, stray packets). A reply with
TC set is fetched again over TCP from the same upstream. Returns the reply (still
with the upstream ID; the caller puts the client's back) or None → SERVFAIL.

The number of queries in flight is capped; beyond it the answer is SERVFAIL at
once rather than an unbounded pile of sockets.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
from typing import Any

import structlog

from maculad.dns.wire import check_upstream, is_truncated
from maculad.observability.metrics import Metrics
from maculad.core.net import Backend

log = structlog.get_logger("maculad.dns.forward")


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, sent: bytes, done: asyncio.Future[bytes]) -> None:
        self._sent = sent
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._done.done() and check_upstream(self._sent, data) is None:
            self._done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("socket closed"))


class Forwarder:
    def __init__(
        self,
        *,
        upstreams: tuple[Backend, ...],
        timeout: float,
        metrics: Metrics,
        max_in_flight: int = 1024,
        counter: Any = None,
    ) -> None:
        """`counter`: the labelled Counter (label `result`) to count in; default dns_forwarded."""
        self.upstreams = upstreams
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        family = counter if counter is not None else metrics.dns_forwarded
        self._result = {r: family.labels(result=r) for r in ("ok", "timeout", "error", "overload")}

    async def resolve(self, packet: bytes) -> bytes | None:
        if not self.upstreams:
            return None
        if self.in_flight >= self.max_in_flight:
            self._result["overload"].inc()
            return None
        self.in_flight += 1
        try:
            return await self._resolve(packet)
        finally:
            self.in_flight -= 1

    async def _resolve(self, packet: bytes) -> bytes | None:
        deadline = time.monotonic() + self.timeout
        timed_out = False
        for i, up in enumerate(self.upstreams):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            share = remaining / (len(self.upstreams) - i)
            sent = struct.pack("!H", secrets.randbits(16)) + packet[2:]
            try:
                reply = await asyncio.wait_for(self._udp(up, sent), share)
                if is_truncated(reply):
                    reply = await asyncio.wait_for(self._tcp(up, sent), max(deadline - time.monotonic(), share))
            except TimeoutError:
                timed_out = True
                log.debug("forward_timeout", upstream=f"{up.host}:{up.port}")
                continue
            except (OSError, EOFError, ValueError) as exc:
                log.debug("forward_failed", upstream=f"{up.host}:{up.port}", error=str(exc) or type(exc).__name__)
                continue
            self._result["ok"].inc()
            return reply
        self._result["timeout" if timed_out else "error"].inc()
        return None

    async def _udp(self, up: Backend, sent: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(lambda: _OneShot(sent, done), remote_addr=(up.host, up.port))
        try:
            transport.sendto(sent)
            return await done
        finally:
            transport.close()

    async def _tcp(self, up: Backend, sent: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(up.host, up.port)
        try:
            writer.write(struct.pack("!H", len(sent)) + sent)
            await writer.drain()
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            reply = await reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("upstream closed the TCP connection early") from exc
        finally:
            writer.close()
        problem = check_upstream(sent, reply)
        if problem is not None:
            raise ValueError(f"bad TCP reply from upstream: {problem}")
        return reply
