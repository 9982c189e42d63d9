"""The Host-header and SNI peeks (maculad.proxy.peek) on real ClientHellos from Python's ssl module."""

from __future__ import annotations

import random
import ssl

import pytest

from maculad.proxy.peek import MAX_PEEK, Found, NeedMore, NoName, normalize_host, peek_http_host, peek_sni


def client_hello(server_hostname: str | None, *, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def refragment(record: bytes, sizes: list[int]) -> bytes:
    """The same handshake bytes split into several TLS records."""
    assert record[0] == 22
    body = record[5:]
    out = bytearray()
    pos = 0
    for n in [*sizes, len(body)]:
        frag = body[pos : pos + n]
        if not frag:
            break
        out += bytes([22, 3, 1]) + len(frag).to_bytes(2, "big") + frag
        pos += len(frag)
    return bytes(out)


# --------------------------------------------------------------------------- SNI


def test_sni_of_a_real_client_hello() -> None:
    hello = client_hello("Grafana.Macula.Local", alpn=["h2", "http/1.1"])
    assert peek_sni(hello) == Found("grafana.macula.local")


def test_every_prefix_of_a_client_hello_asks_for_more() -> None:
    hello = client_hello("console.macula.local")
    for n in range(len(hello)):
        assert peek_sni(hello[:n]) == NeedMore(), n
    assert peek_sni(hello + b"\x17\x03\x03\x00\x05hello") == Found("console.macula.local")


def test_a_client_hello_split_over_records() -> None:
    hello = client_hello("s3.macula.local")
    split = refragment(hello, [7, 50, 100])
    assert peek_sni(split) == Found("s3.macula.local")
    for n in range(len(split)):
        assert peek_sni(split[:n]) == NeedMore(), n


def test_no_sni() -> None:
    assert peek_sni(client_hello(None)) == NoName("the TLS ClientHello has no server_name (SNI)")


def test_not_tls() -> None:
    assert isinstance(peek_sni(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), NoName)
    assert isinstance(peek_sni(b"\x16\x02\x00"), NoName)
    assert isinstance(peek_sni(b"\x16\x03\x01\x00\x00"), NoName)  # an empty record


def test_a_handshake_that_is_not_a_client_hello() -> None:
    server_hello = bytes([22, 3, 3, 0, 4, 2, 0, 0, 0])
    assert isinstance(peek_sni(server_hello), NoName)


def test_a_bad_sni_is_no_name() -> None:
    hello = client_hello("abcdefgh.macula.local")
    bad = hello.replace(b"abcdefgh", b"ab/de\x00gh")
    assert peek_sni(bad) == NoName("the SNI is not a DNS name")


def test_random_and_mutated_input_never_raises() -> None:
    rng = random.Random(13)
    hello = client_hello("grafana.macula.local")
    for _ in range(3000):
        b = bytearray(hello)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cut = rng.randint(0, len(b))
        r = peek_sni(bytes(b[:cut]))
        assert isinstance(r, NeedMore | Found | NoName)
        r = peek_sni(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
        assert isinstance(r, NeedMore | Found | NoName)


def test_an_endless_handshake_gives_up_at_the_bound() -> None:
    # records of handshake bytes that never complete the ClientHello's declared length
    head = bytes([22, 3, 1, 0x40, 0x00]) + bytes([1, 0xFF, 0xFF, 0xFF]) + b"\x00" * (MAX_PEEK + 100)
    assert isinstance(peek_sni(head), NoName)


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: grafana.macula.local\r\n\r\n", Found("grafana.macula.local")),
        (b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  Grafana.Macula.Local.:80 \r\n\r\n", Found("grafana.macula.local")),
        (b"GET http://s3.macula.local:9000/bucket HTTP/1.1\r\nHost: other\r\n\r\n", Found("s3.macula.local")),
        (b"POST /x HTTP/1.0\nHost: a.macula.local\n\n", Found("a.macula.local")),
        (b"GET / HTTP/1.1\r\n\r\n", NoName("the request has no Host header")),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", NoName("the Host header is not a DNS name")),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", NoName("the Host header is not a DNS name")),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NoName("HTTP/2 with prior knowledge carries no Host header")),
        (b"\x16\x03\x01\x02\x00\x01", NoName("not an HTTP request")),
        (b"GET /\r\n\r\n", NoName("not an HTTP/1 request line")),
    ],
)
def test_http_host(head: bytes, expected: object) -> None:
    assert peek_http_host(head) == expected


def test_http_prefixes_ask_for_more() -> None:
    head = b"GET /index.html HTTP/1.1\r\nHost: grafana.macula.local\r\nAccept: */*\r\n\r\nbody"
    end = head.index(b"\r\n\r\n") + 3
    for n in range(end):
        assert peek_http_host(head[:n]) == NeedMore(), n
    assert peek_http_host(head) == Found("grafana.macula.local")


def test_an_endless_http_head_gives_up() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_PEEK
    assert peek_http_host(head) == NoName("the HTTP request head is too long")


def test_normalize_host() -> None:
    assert normalize_host(b"A.B:443") == "a.b"
    assert normalize_host(b"a..b") is None
    assert normalize_host(b"a:port") is None
    assert normalize_host(b"x" * 64 + b".b") is None
    assert normalize_host(b"") is None
