"""A batched UDP transport for Linux: recvmmsg/sendmmsg through ctypes.

Per datagram, an asyncio (or uvloop) datagram protocol pays for a `recvmsg`
and a `sendmsg` syscall, a bytes object and an address tuple (formatted with
sprintf), a Python callback, and parsing that address back on `sendto`. For
a DNS server answering from pre-encoded replies, that overhead is most of the
work. This transport instead registers the socket with the loop
(`add_reader`) and, when it is readable, takes up to `BATCH` datagrams with
one `recvmmsg` into fixed buffers, answers the cached ones by copying the
reply into a send slot (ID first, then the pre-encoded rest) and pointing
that slot's message header at the sender's raw `sockaddr` — never turned into
a Python object — and sends them all with one `sendmmsg`.

Misses go to the ordinary slow path (`Responder.respond`); forwarded questions
get a Python address and are answered later with `socket.sendto`. The buffers
and headers are ctypes structures set up once; the hot loop reads and writes
them through memoryviews. `available()` says whether the platform has what
this needs (Linux, 64-bit, libc with recvmmsg); the server falls back to the
datagram protocol otherwise.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from maculad.dns.fastpath import Entry, Forward, Responder

log = structlog.get_logger("maculad.dns")

#: datagrams taken per recvmmsg
BATCH = 64
#: bytes per receive / send slot; a query or reply that does not fit takes the slow way
SLOT = 4096
#: bytes per sender address (sockaddr_storage)
NAME = 128
#: recvmmsg rounds per readable event, so one busy socket cannot starve the loop
ROUNDS = 16

_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20


class _iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _msghdr), ("msg_len", ctypes.c_uint32))


_libc: Any = None


def available() -> bool:
    """True on 64-bit Linux with a libc that has recvmmsg and sendmmsg."""
    global _libc
    if _libc is not None:
        return True
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    try:
        try:  # glibc's name: no `ldconfig -p` child (find_library runs one) on the way to the first answer
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        for fn in (libc.recvmmsg, libc.sendmmsg):
            fn.restype = ctypes.c_int
        libc.recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
        libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    except (OSError, AttributeError):
        return False
    _libc = libc
    return True


def _u32_index(field_offset: int, struct_size: int) -> tuple[int, int]:
    assert field_offset % 4 == 0 and struct_size % 4 == 0
    return field_offset // 4, struct_size // 4


def sockaddr_to_python(raw: bytes, family: int) -> Any:
    """A raw sockaddr_in / sockaddr_in6 as the address tuple `socket.sendto` takes."""
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    flowinfo, = struct.unpack_from("!I", raw, 4)
    scope_id, = struct.unpack_from("=I", raw, 24)
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope_id


class BatchUDP:
    """One bound UDP socket served with recvmmsg/sendmmsg. Create with `open`."""

    def __init__(
        self,
        *,
        sock: socket.socket,
        responder: Responder,
        forward: Callable[[Forward, Callable[[bytes], None], str], None],
        bug: Callable[[str], None],
        latency: Any,
        sampled: Callable[[], None] = lambda: None,
    ) -> None:
        assert _libc is not None, "call available() first"
        self.sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        self._responder = responder
        self._exact: dict[bytes, Entry] = responder.udp.exact  # cleared in place, never replaced
        self._forward = forward
        self._bug = bug
        self._latency = latency
        self._sampled = sampled
        self.sample = False
        self._loop: asyncio.AbstractEventLoop | None = None

        self._rbuf = ctypes.create_string_buffer(BATCH * SLOT)
        self._sbuf = ctypes.create_string_buffer(BATCH * SLOT)
        self._names = ctypes.create_string_buffer(BATCH * NAME)
        self._riov = (_iovec * BATCH)()
        self._siov = (_iovec * BATCH)()
        self._rhdr = (_mmsghdr * BATCH)()
        self._shdr = (_mmsghdr * BATCH)()
        rbase, sbase = ctypes.addressof(self._rbuf), ctypes.addressof(self._sbuf)
        self._names_addr = ctypes.addressof(self._names)
        for i in range(BATCH):
            self._riov[i].iov_base, self._riov[i].iov_len = rbase + i * SLOT, SLOT
            self._siov[i].iov_base, self._siov[i].iov_len = sbase + i * SLOT, 0
            for hdrs, iovs in ((self._rhdr, self._riov), (self._shdr, self._siov)):
                h = hdrs[i].msg_hdr
                h.msg_name = self._names_addr + i * NAME
                h.msg_namelen = NAME
                h.msg_iov = ctypes.addressof(iovs[i])
                h.msg_iovlen = 1
        self._rhdr_addr = ctypes.addressof(self._rhdr)
        self._shdr_addr = ctypes.addressof(self._shdr)
        self._rmv = memoryview(self._rbuf).cast("B")
        self._smv = memoryview(self._sbuf).cast("B")
        self._names_mv = memoryview(self._names).cast("B")
        rh32 = memoryview(self._rhdr).cast("B").cast("I")
        sh32 = memoryview(self._shdr).cast("B").cast("I")
        sh64 = memoryview(self._shdr).cast("B").cast("Q")
        siov64 = memoryview(self._siov).cast("B").cast("Q")
        self._rh32, self._sh64, self._siov64 = rh32, sh64, siov64
        size = ctypes.sizeof(_mmsghdr)
        self._len_i, self._stride32 = _u32_index(_mmsghdr.msg_len.offset, size)
        self._flags_i, _ = _u32_index(_mmsghdr.msg_hdr.offset + _msghdr.msg_flags.offset, size)
        self._namelen_i, _ = _u32_index(_msghdr.msg_namelen.offset, size)
        assert _msghdr.msg_name.offset == 0 and size % 8 == 0
        self._stride64 = size // 8
        # The kernel reports every sender of a socket with the same address length (16 for
        # IPv4, 28 for IPv6), so the send headers get it once instead of per datagram.
        namelen = 16 if self._family == socket.AF_INET else 28
        for i in range(BATCH):
            sh32[i * self._stride32 + self._namelen_i] = namelen
        assert ctypes.sizeof(_iovec) == 16 and _iovec.iov_len.offset == 8

    @classmethod
    def open(cls, host: str, port: int, **kw: Any) -> BatchUDP:
        """Bind a non-blocking UDP socket on host:port (port 0: any free port)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.setblocking(False)
            return cls(sock=sock, **kw)
        except BaseException:
            sock.close()
            raise

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self.sock.close()

    def sockname(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return name[0], name[1]

    def _readable(self) -> None:
        try:
            for _ in range(ROUNDS):
                if self._round() < BATCH:
                    return
        except Exception:
            self._bug("udp_batch")

    def _round(self) -> int:
        """One recvmmsg → answers → sendmmsg; returns how many datagrams came in."""
        n = _libc.recvmmsg(self._fd, self._rhdr_addr, BATCH, _MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    log.debug("dns_udp_recv_error", error=errno.errorcode.get(err, str(err)))
            return 0
        sample = self.sample
        if sample:
            self.sample = False
            self._sampled()
            started = time.perf_counter()
        rmv, smv, rh32, sh64, siov64 = self._rmv, self._smv, self._rh32, self._sh64, self._siov64
        exact = self._exact
        stride32, stride64, len_i, flags_i = self._stride32, self._stride64, self._len_i, self._flags_i
        names_addr = self._names_addr
        j = 0
        shifted = False
        for i in range(n):
            ri = i * stride32
            length = rh32[ri + len_i]
            base = i * SLOT
            if rh32[ri + flags_i] & _MSG_TRUNC:
                self._responder.counters.malformed += 1  # bigger than any query: drop
                continue
            hit = exact.get(rmv[base + 2 : base + length].tobytes())
            if hit is not None:
                reply = hit.reply
                hit.hits += 1
                sb = j * SLOT
                smv[sb : sb + 2] = rmv[base : base + 2]
                end = sb + 2 + len(reply)
                smv[sb + 2 : end] = reply
                siov64[2 * j + 1] = end - sb
            else:
                full = self._slow(rmv[base : base + length].tobytes(), i)
                if full is None:
                    continue
                sb = j * SLOT
                smv[sb : sb + len(full)] = full
                siov64[2 * j + 1] = len(full)
            if i != j:  # an earlier datagram got no reply in this batch: point slot j at sender i
                sh64[j * stride64] = names_addr + i * NAME
                shifted = True
            j += 1
        if j:
            sent = _libc.sendmmsg(self._fd, self._shdr_addr, j, 0)
            if sent < j:
                log.debug("dns_udp_send_short", sent=sent, batch=j)
            if shifted:  # restore the identity mapping the next round assumes
                for k in range(j):
                    sh64[k * stride64] = names_addr + k * NAME
        if sample:
            self._latency.observe((time.perf_counter() - started) / n)
        return int(n)

    def _slow(self, data: bytes, i: int) -> bytes | None:
        """A miss: the reply to put in the batch, or None (dropped, forwarded, or sent directly)."""
        try:
            out = self._responder.respond(data, tcp=False)
        except Exception:
            self._bug("udp")
            return None
        if out is None:
            return None
        if isinstance(out, bytes):
            if len(out) <= SLOT:
                return out
            self._send_direct(out, self._address(i))
            return None
        addr = self._address(i)
        self._forward(out, lambda reply: self._send_direct(reply, addr), addr[0])
        return None

    def _address(self, i: int) -> Any:
        namelen = self._rh32[i * self._stride32 + self._namelen_i]
        raw = self._names_mv[i * NAME : i * NAME + min(namelen, NAME)].tobytes()
        return sockaddr_to_python(raw, self._family)

    def _send_direct(self, reply: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(reply, addr)
        except OSError as exc:
            log.debug("dns_udp_send_error", error=str(exc))
