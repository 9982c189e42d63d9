"""Pure parts of the relay: listener planning and diffing, the dead-backend page, the macOS alias
command selection, and the bind / connect error reasons."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maculad.config import ProxyConfig
from maculad.proxy import errorpage
from maculad.proxy.platform import (
    alias_add_command,
    alias_list_command,
    alias_remove_command,
    lo0_has,
    needs_alias,
)
from maculad.proxy.relay import bind_reason, bind_socket
from maculad.proxy.spec import ListenerSpec, Target, desired_listeners, plan, refusal
from maculad.proxy.stats import classify
from maculad.routes.model import PortMap, RouteSpec, ServiceHold
from maculad.core.net import Backend
from maculad.routes.table import build_table

CFG = ProxyConfig(http_port=80, https_port=443)


def _table(*specs: RouteSpec, allow: bool = False):  # type: ignore[no-untyped-def]
    table, _ = build_table(domain="macula.local", version=1, specs={"config": specs}, allocations={},
                           pool=ipaddress.IPv4Network("127.0.10.0/24"), allow_non_loopback=allow)
    return table


def _spec(name: str, ip: str, *ports: PortMap, service: str | None = None) -> RouteSpec:
    return RouteSpec(name=f"{name}.macula.local", source="config", origin=f"config:{name}", ip=ip,
                     ports=tuple(sorted(ports)), service=service)


B1, B2 = Backend("127.0.0.1", 3000), Backend("127.0.0.1", 3001)


def test_desired_listeners_kinds_and_targets() -> None:
    t = _table(_spec("grafana", "127.0.10.2", PortMap("tcp", 80, B1), PortMap("tcp", 443, B2),
                     PortMap("tcp", 5432, B1), PortMap("udp", 4433, B2), service="grafana"))
    d = desired_listeners(t, CFG)
    kinds = {s: t.kind for s, t in d.items()}
    assert kinds == {
        ListenerSpec("127.0.10.2", "tcp", 80): "http",
        ListenerSpec("127.0.10.2", "tcp", 443): "https",
        ListenerSpec("127.0.10.2", "tcp", 5432): "tcp",
        ListenerSpec("127.0.10.2", "udp", 4433): "udp",
    }
    t80 = d[ListenerSpec("127.0.10.2", "tcp", 80)]
    assert (t80.route, t80.backend, t80.service, t80.refused) == ("grafana.macula.local", B1, "grafana", None)
    assert ListenerSpec("127.0.10.2", "tcp", 80).address == "127.0.10.2:80/tcp"


@pytest.mark.parametrize(
    ("ip", "allow", "fragment"),
    [
        ("0.0.0.0", True, "wildcard"),
        ("::", True, "wildcard"),
        ("192.0.2.1", False, "not a loopback"),
        ("224.0.0.1", True, "multicast"),
        ("not-an-ip", True, "not an IP"),
    ],
)
def test_refusal(ip: str, allow: bool, fragment: str) -> None:
    reason = refusal(ip, allow_non_loopback=allow)
    assert reason is not None and fragment in reason


def test_refusal_accepts_loopback_and_allowed_lan() -> None:
    assert refusal("127.0.10.3", allow_non_loopback=False) is None
    assert refusal("::1", allow_non_loopback=False) is None
    assert refusal("192.0.2.1", allow_non_loopback=True) is None


def test_non_loopback_route_is_marked_refused() -> None:
    t = _table(_spec("lan", "192.0.2.7", PortMap("tcp", 80, B1)), allow=True)
    (target,) = desired_listeners(t, CFG).values()
    assert target.refused is not None and "192.0.2.7" in target.refused


def test_plan_removes_first_adds_and_updates_in_place() -> None:
    a80, a443, b80 = (ListenerSpec("127.0.10.1", "tcp", 80), ListenerSpec("127.0.10.1", "tcp", 443),
                      ListenerSpec("127.0.10.2", "tcp", 80))
    current = {a80: Target("a", B1, "http"), a443: Target("a", B1, "https")}
    desired = {a80: Target("a", B2, "http"), b80: Target("b", B1, "http")}
    p = plan(current, desired)
    assert p.remove == (a443,)
    assert p.add == ((b80, desired[b80]),)
    assert p.update == ((a80, desired[a80]),)
    assert plan(desired, desired).empty


def test_plan_rebinds_when_refusal_changes() -> None:
    s = ListenerSpec("192.0.2.1", "tcp", 80)
    refused = {s: Target("a", B1, "http", refused="not loopback")}
    allowed = {s: Target("a", B1, "http")}
    p = plan(refused, allowed)
    assert p.remove == (s,) and p.add == ((s, allowed[s]),) and p.update == ()


@given(
    st.dictionaries(st.sampled_from([ListenerSpec(f"127.0.10.{i}", "tcp", 80) for i in range(6)]),
                    st.sampled_from([Target("a", B1, "http"), Target("a", B2, "http")])),
    st.dictionaries(st.sampled_from([ListenerSpec(f"127.0.10.{i}", "tcp", 80) for i in range(6)]),
                    st.sampled_from([Target("a", B1, "http"), Target("b", B2, "http")])),
)
def test_plan_applied_reaches_desired(current: dict[ListenerSpec, Target],
                                      desired: dict[ListenerSpec, Target]) -> None:
    p = plan(current, desired)
    state = dict(current)
    for s in p.remove:
        del state[s]
    for s, t in p.update:
        assert s in state
        state[s] = t
    for s, t in p.add:
        assert s not in state
        state[s] = t
    assert state == desired


# --------------------------------------------------------------------------- error page


def test_error_page_502() -> None:
    page = errorpage.render(host="grafana.macula.local", backend="127.0.0.1:3000", reason="connection refused")
    head, _, body = page.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 502 Bad Gateway"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert b"grafana.macula.local" in body and b"127.0.0.1:3000" in body and b"connection refused" in body


GET = b"GET / HTTP/1.1\r\nHost: grafana.macula.local\r\n\r\n"


@pytest.mark.parametrize(("hold", "says", "retry"), [
    (ServiceHold("grafana", "stopped", "stopped with maculactl stop", "maculactl start grafana"),
     "is <strong>stopped</strong> &mdash; stopped with maculactl stop.", None),
    (ServiceHold("grafana", "backoff", "restarting: attempt 3", "maculactl start grafana", retry_at=101.6),
     "is <strong>backoff</strong> &mdash; restarting: attempt 3, next in 1.6 s.", "2"),
    (ServiceHold("grafana", "failed", "gave up after 5 starts: exited with code 1", "maculactl start grafana"),
     "&mdash; gave up after 5 starts: exited with code 1.", None),
])
def test_held_page_names_service_state_reason_and_fix(hold: ServiceHold, says: str, retry: str | None) -> None:
    page = errorpage.held(hold, host="grafana.macula.local", head=GET, now=100.0)
    head, _, body = page.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body) and headers["Connection"] == "close"
    assert headers.get("Retry-After") == retry
    text = body.decode()
    assert says in text and "<strong>grafana</strong>" in text
    assert "<code>maculactl start grafana</code>" in text


def test_held_page_head_has_no_body_and_nothing_is_echoed_raw() -> None:
    hold = ServiceHold("<svc>", "failed", "start failed: <b>port</b> & more", "maculactl start <svc>")
    get = errorpage.held(hold, host="h", head=GET, now=0.0)
    head_only = errorpage.held(hold, host="h", head=b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", now=0.0)
    assert head_only == get.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert b"<svc>" not in get and b"<b>" not in get and b"&lt;svc&gt;" in get and b"&amp; more" in get


@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: grafana.macula.local\r\n\r\n", "grafana.macula.local"),
        (b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  a.b:8080 \r\n\r\n", "a.b:8080"),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "[::1]:80"),
        (b"GET / HTTP/1.1\r\nHost: <script>\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\nHost: after-body\r\n", None),
        (b"\x16\x03\x01\x02\x00binary", None),
        (b"", None),
    ],
)
def test_host_header(head: bytes, host: str | None) -> None:
    assert errorpage.host_header(head) == host


@given(st.binary(max_size=2048))
def test_host_header_never_raises_and_is_sane(data: bytes) -> None:
    h = errorpage.host_header(data)
    assert h is None or (h.isascii() and "<" not in h and " " not in h)


def test_request_complete() -> None:
    assert not errorpage.request_complete(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert errorpage.request_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert errorpage.request_complete(b"x" * errorpage.MAX_HEAD)


# --------------------------------------------------------------------------- macOS aliases


def test_alias_commands_on_macos() -> None:
    assert alias_add_command("Darwin", "127.0.10.4") == ("ifconfig", "lo0", "alias", "127.0.10.4", "up")
    assert alias_remove_command("Darwin", "127.0.10.4") == ("ifconfig", "lo0", "-alias", "127.0.10.4")
    assert alias_list_command("Darwin") == ("ifconfig", "lo0")


@pytest.mark.parametrize("ip", ["127.0.0.1", "192.0.2.1", "::1", "nonsense"])
def test_no_alias_for_primary_non_loopback_or_v6(ip: str) -> None:
    assert not needs_alias("Darwin", ip)
    assert alias_add_command("Darwin", ip) is None
    assert alias_remove_command("Darwin", ip) is None


@pytest.mark.parametrize("system", ["Linux", "FreeBSD", ""])
def test_no_alias_elsewhere(system: str) -> None:
    assert alias_add_command(system, "127.0.10.4") is None
    assert alias_remove_command(system, "127.0.10.4") is None
    assert alias_list_command(system) is None


def test_lo0_has() -> None:
    out = ("lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384\n"
           "\toptions=1203<RXCSUM,TXCSUM,TXSTATUS,SW_TIMESTAMP>\n"
           "\tinet 127.0.0.1 netmask 0xff000000\n"
           "\tinet6 ::1 prefixlen 128\n"
           "\tinet 127.0.10.4 netmask 0xff000000\n")
    assert lo0_has(out, "127.0.10.4")
    assert lo0_has(out, "127.0.0.1")
    assert not lo0_has(out, "127.0.10.40")
    assert not lo0_has(out, "127.0.10")


# --------------------------------------------------------------------------- error reasons


def test_bind_reasons() -> None:
    assert bind_reason(OSError(errno.EADDRINUSE, "x"))[0] == "EADDRINUSE"
    assert "in use" in bind_reason(OSError(errno.EADDRINUSE, "x"))[1]
    assert "CAP_NET_BIND_SERVICE" in bind_reason(OSError(errno.EACCES, "x"))[1]
    assert bind_reason(OSError(errno.EADDRNOTAVAIL, "x"))[0] == "EADDRNOTAVAIL"


def test_bind_socket_reports_unavailable_address() -> None:
    with pytest.raises(OSError) as err:
        bind_socket(ListenerSpec("192.0.2.55", "tcp", 0))  # TEST-NET: not on this host
    assert err.value.errno == errno.EADDRNOTAVAIL


def test_connect_error_classes() -> None:
    assert classify(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == ("refused", "connection refused")
    assert classify(TimeoutError())[0] == "timeout"
    assert classify(socket.gaierror(-2, "Name or service not known"))[0] == "dns"
    assert classify(OSError(errno.EHOSTUNREACH, "No route to host"))[0] == "unreachable"
