"""DNS and HTTP wire details of the real daemon, seen by real clients: NOTIMP and FORMERR replies
to EDNS queries carry an OPT record and the question (dig), a TSIG-signed query is answered
NOTAUTH with TSIG error BADKEY (dnspython), and HEAD to a dead backend gets the error page's
status and headers without the body (curl -I, and a raw socket to see every byte)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import pytest

from tests.conftest import require
from tests.support.daemon import Maculad, base_config, free_port

DEAD_IP = "127.0.10.241"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    tmp = tmp_path_factory.mktemp("wire")
    dead = free_port("127.0.0.1", udp_too=False)  # nothing listens there
    text, ports = base_config(tmp, extra=f'[[route]]\nname = "dead"\nip = "{DEAD_IP}"\n'
                                         f'http = "127.0.0.1:{dead}"\n')
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        yield ports
    finally:
        d.stop()


def dig(ports: dict[str, int], *args: str) -> str:
    require(shutil.which("dig") is not None, "dig (bind9-dnsutils) is not installed")
    out = subprocess.run(["dig", "@127.0.0.153", "-p", str(ports["dns"]), "+time=3", "+tries=1", *args],
                         capture_output=True, text=True, timeout=30)
    return out.stdout


def test_notimp_to_an_edns_query_has_opt_and_question(daemon: dict[str, int]) -> None:
    out = dig(daemon, "+opcode=notify", "+edns=0", "macula.local", "SOA")
    assert "status: NOTIMP" in out, out
    assert "OPT PSEUDOSECTION" in out and "EDNS: version: 0" in out, out
    assert ";macula.local.\t\t\tIN\tSOA" in out, out
    plain = dig(daemon, "+opcode=notify", "+noedns", "macula.local", "SOA")
    assert "status: NOTIMP" in plain and "OPT PSEUDOSECTION" not in plain, plain


def test_formerr_to_an_edns_query_has_opt_and_question(daemon: dict[str, int]) -> None:
    q = dns.message.make_query("grafana.macula.local", "A", use_edns=0)
    wire = bytearray(q.to_wire())
    opt = bytes(wire[-11:])
    wire[10:12] = b"\x00\x02"  # two OPT records: FORMERR (RFC 6891 §6.1.1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(bytes(wire) + opt, ("127.0.0.153", daemon["dns"]))
        reply = dns.message.from_wire(s.recv(4096))
    assert reply.rcode() == dns.rcode.FORMERR and reply.id == q.id
    assert reply.edns == 0
    assert [str(x.name) for x in reply.question] == ["grafana.macula.local."]


def test_tsig_signed_query_is_notauth_badkey(daemon: dict[str, int]) -> None:
    keyring = dns.tsigkeyring.from_text({"deploy-key.": ("hmac-sha256", "c2VjcmV0LXNlY3JldC1zZWNyZXQ=")})
    q = dns.message.make_query("grafana.macula.local", "A")
    q.use_tsig(keyring)
    with pytest.raises(dns.tsig.PeerBadKey):  # dnspython validates the reply as any TSIG client would
        dns.query.udp(q, "127.0.0.153", port=daemon["dns"], timeout=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q.to_wire(), ("127.0.0.153", daemon["dns"]))
        reply = dns.message.from_wire(s.recv(4096), keyring=False)
    assert reply.rcode() == dns.rcode.NOTAUTH and reply.id == q.id and not reply.answer
    assert reply.tsig is not None
    assert str(reply.tsig.name) == "deploy-key." and str(reply.tsig[0].algorithm) == "hmac-sha256."
    assert reply.tsig[0].error == dns.rcode.BADKEY and reply.tsig[0].mac == b""
    over_tcp = dns.query.tcp(dns.message.make_query("macula.local", "SOA"), "127.0.0.153", port=daemon["dns"],
                             timeout=5)
    assert over_tcp.rcode() == dns.rcode.NOERROR  # and the server answers unsigned queries as before


def test_head_to_a_dead_backend_gets_status_and_headers_only(daemon: dict[str, int]) -> None:
    require(shutil.which("curl") is not None, "curl is not installed")
    url = f"http://{DEAD_IP}:{daemon['http']}/"
    out = subprocess.run(["curl", "-sS", "-I", "-H", "Host: dead.macula.local", url],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("HTTP/1.1 502 Bad Gateway"), out
    assert "content-length:" in out.stdout.lower() and "connection: close" in out.stdout.lower()
    # every byte the relay sends for HEAD: the head, and nothing after it
    with socket.create_connection((DEAD_IP, daemon["http"]), timeout=10) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: dead.macula.local\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 502 ") and got.endswith(b"\r\n\r\n") and got.count(b"\r\n\r\n") == 1
    # GET still gets the page
    with socket.create_connection((DEAD_IP, daemon["http"]), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: dead.macula.local\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 502 ") and b"dead.macula.local: the backend" in got
