"""Peeking at the first bytes of a connection: the HTTP Host header and the TLS SNI. Pure.

A relay that serves many names on one address (the container horizon's G:80
and G:443) must learn the name before it can pick a backend, without
consuming anything: the bytes read are replayed to the backend untouched.
`peek_http_host(head)` and `peek_sni(head)` look at what has arrived so far and
answer with one of:

- `NeedMore()`: the name may still come; read more (callers bound the wait
  and the size, see `MAX_PEEK`);
- `Found(name)`: the name, lower-case, without a port or trailing dot;
- `NoName(reason)`: this connection will never name a host (not HTTP, not a
  TLS ClientHello, no Host header, no server_name, a malformed or oversized
  head); `reason` is a short human text.

The SNI parser walks TLS records (a ClientHello may span several) and the
ClientHello's fields to the server_name extension (RFC 8446 §4.1.2, RFC 6066
§3). It never raises: every length is checked against the bytes present.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The most bytes either parser waits for before giving up (a ClientHello fits one 16 KiB record).
MAX_PEEK = 16 * 1024 + 5


@dataclass(frozen=True, slots=True)
class NeedMore:
    pass


@dataclass(frozen=True, slots=True)
class Found:
    name: str


@dataclass(frozen=True, slots=True)
class NoName:
    reason: str


Peek = NeedMore | Found | NoName

_NEED_MORE = NeedMore()
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._")


def normalize_host(raw: bytes) -> str | None:
    """`Grafana.Macula.Local.:80` → `grafana.macula.local`; None when it is not a DNS name."""
    v = raw.strip()
    if v.startswith(b"["):  # an IPv6 literal never names a route
        return None
    host, sep, port = v.rpartition(b":")
    if sep:
        if not port.isdigit() or len(port) > 5:
            return None
        v = host
    v = v.lower().rstrip(b".")
    if not v or len(v) > 253 or not all(c in _HOST_CHARS for c in v):
        return None
    if any(not 0 < len(label) <= 63 for label in v.split(b".")):
        return None
    return v.decode("ascii")


# --------------------------------------------------------------------------- HTTP


def peek_http_host(head: bytes | bytearray) -> Peek:
    """The host an HTTP/1.x request is for: the Host header, or an absolute-form target's host."""
    data = bytes(head[:MAX_PEEK])
    if not data:
        return _NEED_MORE
    # The method must be a token: anything else (a TLS record, binary) is not HTTP at all.
    first_sp = data.find(b" ")
    method = data if first_sp == -1 else data[:first_sp]
    if not all(c in _TOKEN for c in method[:16]) or len(method) > 16 or (first_sp == -1 and len(data) > 16):
        return NoName("not an HTTP request")
    end = data.find(b"\r\n\r\n")
    lf_end = data.find(b"\n\n")
    if end == -1 and lf_end == -1:
        return NoName("the HTTP request head is too long") if len(head) >= MAX_PEEK else _NEED_MORE
    head_end = min(e for e in (end, lf_end) if e != -1)
    lines = data[:head_end].split(b"\n")
    request = lines[0].rstrip(b"\r").split(b" ")
    if len(request) != 3 or not request[2].startswith(b"HTTP/"):
        return NoName("not an HTTP/1 request line")
    if request[0] == b"PRI" and request[2] == b"HTTP/2.0":
        return NoName("HTTP/2 with prior knowledge carries no Host header")
    target = request[1]
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        authority = target.split(b"//", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0].rpartition(b"@")[2]
        name = normalize_host(authority)
        if name is not None:
            return Found(name)
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        field, sep, value = line.partition(b":")
        if sep and field.strip().lower() == b"host":
            name = normalize_host(value)
            return Found(name) if name is not None else NoName("the Host header is not a DNS name")
    return NoName("the request has no Host header")


# --------------------------------------------------------------------------- TLS

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0


class _Short(Exception):
    """The bytes end before the structure does."""


class _Bad(Exception):
    """The structure is malformed."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        b = self.take(2)
        return (b[0] << 8) | b[1]

    def vec(self, width: int) -> bytes:
        n = self.u8() if width == 1 else self.u16()
        return self.take(n)


def _handshake_bytes(data: bytes) -> tuple[bytes, bool]:
    """The handshake layer's bytes from consecutive records; True when more records may follow."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            return bytes(out), True
        ctype, major = data[pos], data[pos + 1]
        if ctype != _HANDSHAKE or major != 3:
            if pos == 0:
                raise _Bad("not a TLS handshake")
            return bytes(out), False  # another record type: the hello is over
        length = (data[pos + 3] << 8) | data[pos + 4]
        if length == 0 or length > 16384 + 2048:
            raise _Bad("a malformed TLS record")
        frag = data[pos + 5 : pos + 5 + length]
        out += frag
        if len(frag) < length:
            return bytes(out), True
        pos += 5 + length
    return bytes(out), True


def peek_sni(head: bytes | bytearray) -> Peek:
    """The server_name a TLS ClientHello asks for."""
    data = bytes(head[:MAX_PEEK])
    if not data:
        return _NEED_MORE
    if data[0] != _HANDSHAKE or (len(data) > 1 and data[1] != 3):
        return NoName("not a TLS ClientHello")
    try:
        hs, more = _handshake_bytes(data)
        return _client_hello(hs)
    except _Short:
        if more and len(head) < MAX_PEEK:
            return _NEED_MORE
        return NoName("the TLS ClientHello is incomplete or too long")
    except _Bad as exc:
        return NoName(str(exc))


def _client_hello(hs: bytes) -> Peek:
    r = _Reader(hs)
    if r.u8() != _CLIENT_HELLO:
        raise _Bad("the first TLS handshake message is not a ClientHello")
    length = int.from_bytes(r.take(3), "big")
    if length < 38:
        raise _Bad("a malformed TLS ClientHello")
    body = _Reader(r.take(length))
    try:
        body.take(2 + 32)  # legacy_version, random
        body.vec(1)  # legacy_session_id
        body.vec(2)  # cipher_suites
        body.vec(1)  # legacy_compression_methods
        if body.pos == len(body.data):
            return NoName("the TLS ClientHello has no extensions (no SNI)")
        exts = _Reader(body.vec(2))
        while exts.pos < len(exts.data):
            etype = exts.u16()
            edata = exts.vec(2)
            if etype == _EXT_SERVER_NAME:
                return _server_name(edata)
    except _Short:
        raise _Bad("a malformed TLS ClientHello") from None
    return NoName("the TLS ClientHello has no server_name (SNI)")


def _server_name(edata: bytes) -> Peek:
    r = _Reader(edata)
    names = _Reader(r.vec(2))
    while names.pos < len(names.data):
        kind = names.u8()
        value = names.vec(2)
        if kind == 0:  # host_name
            name = normalize_host(value) if b":" not in value else None
            return Found(name) if name is not None else NoName("the SNI is not a DNS name")
    return NoName("the TLS server_name extension has no host name")
