"""DNS wire format: exactly what a small authoritative server needs, no more.

`parse_query` reads one query defensively: every length is bounds-checked, a
name is at most 255 bytes of labels of at most 63, the question name may not
use compression (a pointer there could only point into the header, and the
question is copied verbatim into the reply), and the other sections are only
*skipped* — compression pointers are never followed, so a hostile pointer loop
costs nothing. The only record read from them is EDNS0's OPT. Failures raise
`WireError` carrying the response code to answer with, or `None` to drop; a
TSIG-signed query raises it with NOTAUTH (maculad holds no keys).

`error_reply` answers those (slow path only, nothing of it runs for a good
query): it re-reads what it can of the packet, and the reply keeps the
question when it parsed and carries an OPT record when the query had one
(RFC 6891 §7). A signed query (or UPDATE) gets NOTAUTH with an unsigned TSIG
record that echoes the key name and algorithm with error BADKEY and an empty
MAC (RFC 8945 §5.2.1, §5.3.2).

`encode` turns a `AnswerDecision` (see answer.py) into reply bytes: the question is
the query's own bytes (so the client's letter case comes back, 0x20), names
are compressed against the question, and the reply is fitted into the
client's UDP size: without the additional section if need be, else as an
empty reply with TC set so the client retries over TCP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from maculad.dns.answer import AAAA, CNAME, NS, RR, SOA, A, AnswerDecision, RData
from maculad.dns.codes import (
    AA,
    BADKEY,
    CD,
    CLASS_ANY,
    CLASS_IN,
    FORMERR,
    MIN_UDP_SIZE,
    NOTAUTH,
    NOTIMP,
    OPCODE_MASK,
    OUR_UDP_SIZE,
    QR,
    QTYPE_A,
    QTYPE_AAAA,
    QTYPE_CNAME,
    QTYPE_NS,
    QTYPE_OPT,
    QTYPE_SOA,
    QTYPE_TSIG,
    RA,
    RD,
    SERVFAIL,
    TC,
)

class WireError(Exception):
    """The packet cannot be answered normally: reply with `rcode`, or drop it when `rcode` is None."""

    def __init__(self, reason: str, rcode: int | None) -> None:
        super().__init__(reason)
        self.rcode = rcode


_HEADER = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")
_TYPE_CLASS = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class EDNS:
    udp_size: int
    version: int
    do: bool


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """One query, as far as answering it needs.

    `question` is the raw question section (name + type + class) exactly as the
    client sent it; `labels` is the name lower-cased, split into labels.
    `question_end` is the offset of the first byte after the question.
    """

    id: int
    flags: int
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int
    question: bytes
    question_end: int
    edns: EDNS | None

    @property
    def name_wire_len(self) -> int:
        return len(self.question) - 4


def _skip_name(buf: bytes, off: int) -> int:
    """Offset after the (possibly compressed) name at `off`; pointers are not followed."""
    n = len(buf)
    total = 0
    while True:
        if off >= n:
            raise WireError("name runs past the end", FORMERR)
        length = buf[off]
        if length == 0:
            return off + 1
        kind = length & 0xC0
        if kind == 0xC0:
            if off + 2 > n:
                raise WireError("pointer runs past the end", FORMERR)
            return off + 2
        if kind:
            raise WireError("unsupported label type", FORMERR)
        total += length + 1
        if total > 255:
            raise WireError("name longer than 255 bytes", FORMERR)
        off += length + 1


def parse_header(buf: bytes) -> tuple[int, int]:
    """(id, flags) of any packet of at least 12 bytes; raises WireError(None) otherwise."""
    if len(buf) < 12:
        raise WireError("shorter than a DNS header", None)
    ident, flags = struct.unpack_from("!HH", buf)
    return ident, flags


def parse_query(buf: bytes) -> ParsedQuery:
    """Parse a query or raise WireError with the rcode to answer (None → drop)."""
    if len(buf) < 12:
        raise WireError("shorter than a DNS header", None)
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(buf)
    if flags & QR:
        raise WireError("a response, not a query", None)
    if flags & OPCODE_MASK:
        raise WireError(f"opcode {(flags & OPCODE_MASK) >> 11} is not QUERY", NOTIMP)
    if qdcount != 1:
        raise WireError(f"{qdcount} questions (exactly one is supported)", FORMERR)

    # the question: plain labels only
    n = len(buf)
    off = 12
    labels: list[bytes] = []
    total = 0
    while True:
        if off >= n:
            raise WireError("question name runs past the end", FORMERR)
        length = buf[off]
        if length == 0:
            off += 1
            break
        if length & 0xC0:
            raise WireError("compressed or extended label in the question", FORMERR)
        total += length + 1
        if total > 255:
            raise WireError("question name longer than 255 bytes", FORMERR)
        end = off + 1 + length
        if end > n:
            raise WireError("question label runs past the end", FORMERR)
        labels.append(buf[off + 1 : end].lower())
        off = end
    if off + 4 > n:
        raise WireError("question type/class missing", FORMERR)
    qtype, qclass = _TYPE_CLASS.unpack_from(buf, off)
    qend = off + 4
    if qtype == QTYPE_OPT:
        raise WireError("OPT is not a question type", FORMERR)

    # answer and authority: skipped; additional: looking for OPT
    off = qend
    edns: EDNS | None = None
    for i in range(ancount + nscount + arcount):
        owner = off
        off = _skip_name(buf, off)
        if off + 10 > n:
            raise WireError("record header runs past the end", FORMERR)
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, off)
        off += 10
        if off + rdlen > n:
            raise WireError("record data runs past the end", FORMERR)
        if rtype == QTYPE_OPT:
            if i < ancount + nscount:
                raise WireError("OPT outside the additional section", FORMERR)
            if edns is not None:
                raise WireError("more than one OPT record", FORMERR)
            if buf[owner] != 0:
                raise WireError("OPT owner is not the root", FORMERR)
            _check_options(buf, off, off + rdlen)
            edns = EDNS(udp_size=rclass, version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000))
        elif rtype == QTYPE_TSIG:
            if i != ancount + nscount + arcount - 1:
                raise WireError("TSIG is not the last record", FORMERR)
            raise WireError("signed with a TSIG key maculad does not have", NOTAUTH)
        off += rdlen
    return ParsedQuery(
        id=ident,
        flags=flags,
        labels=tuple(labels),
        qtype=qtype,
        qclass=qclass,
        question=bytes(buf[12:qend]),
        question_end=qend,
        edns=edns,
    )


def _check_options(buf: bytes, off: int, end: int) -> None:
    while off < end:
        if off + 4 > end:
            raise WireError("truncated EDNS option", FORMERR)
        (olen,) = _U16.unpack_from(buf, off + 2)
        off += 4 + olen
    if off != end:
        raise WireError("EDNS option runs past its record", FORMERR)


def udp_limit(q: ParsedQuery) -> int:
    """The largest reply the client accepts over UDP."""
    if q.edns is None:
        return MIN_UDP_SIZE
    return max(MIN_UDP_SIZE, q.edns.udp_size)


# --- encoding ------------------------------------------------------------------


class _Writer:
    """Appends records to a message, compressing names against what is already written."""

    __slots__ = ("buf", "offsets")

    def __init__(self, header: bytes, q: ParsedQuery) -> None:
        self.buf = bytearray(header)
        self.buf += q.question
        self.offsets: dict[str, int] = {}
        if not any(b"." in label for label in q.labels):
            off = 12
            for i, label in enumerate(q.labels):
                self.offsets[".".join(lb.decode("latin-1") for lb in q.labels[i:])] = off
                off += len(label) + 1

    def name(self, name: str) -> None:
        labels = name.split(".") if name else []
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            ptr = self.offsets.get(suffix)
            if ptr is not None:
                self.buf += _U16.pack(0xC000 | ptr)
                return
            if len(self.buf) < 0x3FFF:
                self.offsets[suffix] = len(self.buf)
            raw = labels[i].encode("ascii")
            self.buf.append(len(raw))
            self.buf += raw
        self.buf.append(0)

    def rr(self, rr: RR) -> None:
        self.name(rr.name)
        data = rr.data
        start = len(self.buf)
        self.buf += _RR_FIXED.pack(_rtype(data), CLASS_IN, rr.ttl, 0)
        rd_start = len(self.buf)
        if isinstance(data, A):
            self.buf += ipaddress.IPv4Address(data.ip).packed
        elif isinstance(data, AAAA):
            self.buf += ipaddress.IPv6Address(data.ip).packed
        elif isinstance(data, NS | CNAME):
            self.name(data.target)
        elif isinstance(data, SOA):
            self.name(data.mname)
            self.name(data.rname)
            self.buf += struct.pack("!IIIII", data.serial, data.refresh, data.retry, data.expire, data.minimum)
        _U16.pack_into(self.buf, start + 8, len(self.buf) - rd_start)

    def opt(self, q: ParsedQuery, ext_rcode: int) -> None:
        assert q.edns is not None
        self.buf += b"\x00" + _RR_FIXED.pack(
            QTYPE_OPT, OUR_UDP_SIZE, (ext_rcode << 24) | (0x8000 if q.edns.do else 0), 0
        )


def _rtype(data: RData) -> int:
    if isinstance(data, A):
        return QTYPE_A
    if isinstance(data, AAAA):
        return QTYPE_AAAA
    if isinstance(data, NS):
        return QTYPE_NS
    if isinstance(data, CNAME):
        return QTYPE_CNAME
    return QTYPE_SOA


def reply_flags(q: ParsedQuery, *, rcode: int, aa: bool, ra: bool, tc: bool = False) -> int:
    """Header flags of a reply to `q`: QR, the query's opcode, RD and CD copied."""
    flags = QR | (q.flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    if aa:
        flags |= AA
    if ra:
        flags |= RA
    if tc:
        flags |= TC
    return flags


def encode(q: ParsedQuery, d: AnswerDecision, *, limit: int, ra: bool) -> tuple[bytes, bool]:
    """The reply to `q`, at most `limit` bytes; returns (bytes, truncated)."""
    full = _encode(q, d, ra=ra, sections=(d.answer, d.authority, d.additional))
    if len(full) <= limit:
        return full, False
    if d.additional:
        without = _encode(q, d, ra=ra, sections=(d.answer, d.authority, ()))
        if len(without) <= limit:
            return without, False
    # header + question (<= 259 bytes) + OPT always fits the 512-byte minimum
    return _encode(q, d, ra=ra, sections=((), (), ()), tc=True), True


def _encode(q: ParsedQuery, d: AnswerDecision, *, ra: bool, sections: tuple[tuple[RR, ...], ...],
            tc: bool = False) -> bytes:
    rcode = d.rcode
    ext = 0
    if rcode > 15:
        if q.edns is None:
            rcode = SERVFAIL
        else:
            ext, rcode = rcode >> 4, rcode & 0xF
    an, ns, ar = sections
    flags = reply_flags(q, rcode=rcode, aa=d.aa, ra=ra, tc=tc)
    header = _HEADER.pack(q.id, flags, 1, len(an), len(ns), len(ar) + (1 if q.edns is not None else 0))
    w = _Writer(header, q)
    for rr in an:
        w.rr(rr)
    for rr in ns:
        w.rr(rr)
    for rr in ar:
        w.rr(rr)
    if q.edns is not None:
        w.opt(q, ext)
    return bytes(w.buf)


def _read_name(buf: bytes, off: int) -> tuple[bytes, int]:
    """The name at `off`, uncompressed in wire form, and the offset after it. Pointers are followed
    only backwards, so a loop is impossible; raises WireError."""
    out = bytearray()
    end: int | None = None
    n = len(buf)
    while True:
        if off >= n:
            raise WireError("name runs past the end", FORMERR)
        length = buf[off]
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError("pointer runs past the end", FORMERR)
            target = ((length & 0x3F) << 8) | buf[off + 1]
            if end is None:
                end = off + 2
            if target >= off:
                raise WireError("forward compression pointer", FORMERR)
            off = target
            continue
        if length & 0xC0:
            raise WireError("unsupported label type", FORMERR)
        out += buf[off : off + 1 + length]
        if len(out) > 255 or off + 1 + length > n:
            raise WireError("bad name", FORMERR)
        if length == 0:
            return bytes(out), end if end is not None else off + 1
        off += 1 + length


@dataclass(frozen=True, slots=True)
class _Tsig:
    key: bytes  # the key name, wire form
    algorithm: bytes
    time_fudge: bytes  # Time Signed (48 bits) and Fudge, as sent


def _tsig_rdata(buf: bytes, start: int, end: int) -> tuple[bytes, bytes]:
    algorithm, off = _read_name(buf, start)
    if off + 10 > end:
        raise WireError("TSIG record too short", FORMERR)
    (mac_size,) = _U16.unpack_from(buf, off + 8)
    if off + 10 + mac_size + 6 > end:
        raise WireError("TSIG MAC runs past its record", FORMERR)
    return algorithm, bytes(buf[off : off + 8])


def _salvage(buf: bytes) -> tuple[bytes | None, EDNS | None, _Tsig | None]:
    """What an error reply can keep from a packet that did not parse: its one question, the OPT
    record's size and DO bit, and the TSIG record (when it is the last one). Stops at the first damage."""
    _, _, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(buf)
    question: bytes | None = None
    edns: EDNS | None = None
    tsig: _Tsig | None = None
    off = 12
    try:
        for _ in range(qdcount):
            end = _plain_name_end(buf, off)
            off = (_skip_name(buf, off) if end is None else end) + 4
            if off > len(buf):
                raise WireError("question runs past the end", FORMERR)
            if qdcount == 1 and end is not None:
                question = bytes(buf[12:off])
        total = ancount + nscount + arcount
        for i in range(total):
            owner = off
            off = _skip_name(buf, off)
            if off + 10 > len(buf):
                break
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, off)
            off += 10
            if off + rdlen > len(buf):
                break
            if rtype == QTYPE_OPT and i >= ancount + nscount and edns is None and buf[owner] == 0:
                edns = EDNS(udp_size=rclass, version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000))
            elif rtype == QTYPE_TSIG and i == total - 1 and rclass == CLASS_ANY:
                key, _ = _read_name(buf, owner)
                algorithm, time_fudge = _tsig_rdata(buf, off, off + rdlen)
                tsig = _Tsig(key=key, algorithm=algorithm, time_fudge=time_fudge)
            off += rdlen
    except WireError:
        pass
    return question, edns, tsig


def _plain_name_end(buf: bytes, off: int) -> int | None:
    """The offset after the uncompressed name at `off`; None when it is compressed or damaged."""
    n = len(buf)
    total = 0
    while off < n:
        length = buf[off]
        if length == 0:
            return off + 1
        if length & 0xC0:
            return None
        total += length + 1
        if total > 255:
            return None
        off += length + 1
    return None


def error_reply(buf: bytes, rcode: int) -> bytes | None:
    """The reply (FORMERR, NOTIMP, NOTAUTH) to a packet that could not be answered; None → drop.

    The question is kept when it parsed, an OPT record added when the query had one, and a signed
    packet gets NOTAUTH with a TSIG record saying BADKEY (unsigned: maculad holds no keys)."""
    if len(buf) < 12:
        return None
    ident, flags = struct.unpack_from("!HH", buf)
    if flags & QR:
        return None
    question, edns, tsig = _salvage(buf)
    if tsig is not None and rcode in (NOTIMP, NOTAUTH):
        rcode = NOTAUTH
    elif rcode == NOTAUTH:  # the TSIG record itself is damaged
        rcode = FORMERR
    out_flags = QR | (flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    out = bytearray(_HEADER.pack(ident, out_flags, 1 if question else 0, 0, 0,
                                 (edns is not None) + (tsig is not None and rcode == NOTAUTH)))
    if question:
        out += question
    if edns is not None:
        out += b"\x00" + _RR_FIXED.pack(QTYPE_OPT, OUR_UDP_SIZE, 0x8000 if edns.do else 0, 0)
    if tsig is not None and rcode == NOTAUTH:
        rdata = (tsig.algorithm + tsig.time_fudge + _U16.pack(0)  # MAC size 0: an unsigned error
                 + struct.pack("!HHH", ident, BADKEY, 0))  # original ID, error, no other data
        out += tsig.key + _RR_FIXED.pack(QTYPE_TSIG, CLASS_ANY, 0, len(rdata)) + rdata
    return bytes(out)


def simple_reply(q: ParsedQuery, rcode: int, *, ra: bool) -> bytes:
    """A reply with only the question (and OPT): SERVFAIL after a failed forward, REFUSED, …"""
    return _encode(q, AnswerDecision(rcode=rcode, aa=False), ra=ra, sections=((), (), ()))


def fit_forwarded(q: ParsedQuery, upstream: bytes, *, limit: int) -> tuple[bytes, bool]:
    """An upstream reply, given the client's ID and fitted into `limit` bytes.

    When it does not fit, the client gets the upstream's header flags and rcode
    with TC set, its own question and (if it sent one) an OPT record.
    """
    reply = _U16.pack(q.id) + upstream[2:]
    if len(reply) <= limit:
        return reply, False
    (uflags,) = _U16.unpack_from(upstream, 2)
    flags = (uflags & ~0xF) | TC | (uflags & 0xF)
    header = _HEADER.pack(q.id, flags, 1, 0, 0, 1 if q.edns is not None else 0)
    w = _Writer(header, q)
    if q.edns is not None:
        w.opt(q, 0)
    return bytes(w.buf), True


def check_upstream(sent: bytes, got: bytes) -> str | None:
    """Why `got` is not the reply to `sent` (None when it is): ID, QR and the question must match."""
    if len(got) < 12:
        return "shorter than a header"
    if got[:2] != sent[:2]:
        return "wrong ID"
    (flags,) = _U16.unpack_from(got, 2)
    if not flags & QR:
        return "not a response"
    qd = _U16.unpack_from(got, 4)[0]
    if qd == 0 and (flags & TC or flags & 0xF):
        return None  # some servers drop the question from TC and error replies; the ID matched
    if qd != 1:
        return f"{qd} questions"
    try:
        end = _skip_question(sent)
        gend = _skip_question(got)
    except WireError:
        return "malformed question"
    if got[12:gend].lower() != sent[12:end].lower():
        return "question does not match"
    return None


def _skip_question(buf: bytes) -> int:
    end = _skip_name(buf, 12) + 4
    if end > len(buf):
        raise WireError("question runs past the end", FORMERR)
    return end


def is_truncated(reply: bytes) -> bool:
    return len(reply) >= 4 and bool(_U16.unpack_from(reply, 2)[0] & TC)


def reply_rcode(reply: bytes) -> int:
    return _U16.unpack_from(reply, 2)[0] & 0xF if len(reply) >= 4 else SERVFAIL
