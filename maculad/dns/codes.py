"""DNS numbers (types, classes, rcodes, header bits) and their metrics labels."""

from __future__ import annotations

QTYPE_A = 1
QTYPE_NS = 2
QTYPE_CNAME = 5
QTYPE_SOA = 6
QTYPE_HINFO = 13
QTYPE_AAAA = 28
QTYPE_OPT = 41
QTYPE_TSIG = 250
QTYPE_IXFR = 251
QTYPE_AXFR = 252
QTYPE_ANY = 255
CLASS_IN = 1
CLASS_ANY = 255

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
NOTAUTH = 9
BADVERS = 16
#: TSIG error (RFC 8945): the key is not known here. maculad has no keys.
BADKEY = 17

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010
OPCODE_MASK = 0x7800

#: The UDP payload size maculad advertises in its own OPT record (the DNS flag day 2020 value).
OUR_UDP_SIZE = 1232
#: A client's UDP size below this is treated as this (RFC 6891 §6.2.5).
MIN_UDP_SIZE = 512
#: Largest DNS message over TCP (2-byte length prefix).
MAX_TCP_SIZE = 65535

_QTYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF", 251: "IXFR",
    252: "AXFR", 255: "ANY", 257: "CAA",
}
_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
                9: "NOTAUTH", 16: "BADVERS"}


def qtype_label(qtype: int) -> str:
    """A metrics label for a question type; the set is fixed so hostile traffic cannot grow it."""
    return _QTYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return _RCODE_NAMES.get(rcode, "other")
