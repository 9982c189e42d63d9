"""Pure TLS decisions: which routes are terminated, passed through or off; config and label
validation; the 308 redirect answer; SNI → route matching; failure reasons."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maculad.config import ConfigError, ProxyConfig, parse_config
from maculad.proxy import errorpage
from maculad.proxy.spec import ListenerSpec, desired_listeners, tls_mode
from maculad.proxy.tls import failure_reason, serves
from maculad.routes.model import Backend, PortMap, Route, TLSMode
from maculad.routes.table import RouteTable

CFG = ProxyConfig(pool=ipaddress.IPv4Network("127.0.10.0/24"), http_port=80, https_port=443)
HTTP, HTTPS = Backend("127.0.0.1", 3000), Backend("127.0.0.1", 3443)


def route(tls: TLSMode = "auto", *, http: bool = True, https: bool = False, h2c: bool = False) -> Route:
    ports = []
    if http:
        ports.append(PortMap("tcp", 80, HTTP))
    if https:
        ports.append(PortMap("tcp", 443, HTTPS))
    return Route(name="g.macula.local", ip="127.0.10.2", source="config", origin="config:g",
                 ports=tuple(ports), tls=tls, h2c=h2c)


@pytest.mark.parametrize(("tls", "http", "https", "terminating", "want"), [
    ("auto", True, False, True, "terminate"),
    ("auto", True, True, True, "passthrough"),
    ("auto", False, True, True, "passthrough"),
    ("auto", True, False, False, "off"),          # no CA: nothing on 443
    ("terminate", True, True, True, "terminate"),  # the https backend is not used
    ("passthrough", True, True, True, "passthrough"),
    ("off", True, False, True, "off"),
    ("off", True, True, True, "passthrough"),      # off: maculad does no TLS; an https backend still relays
])
def test_tls_mode(tls: TLSMode, http: bool, https: bool, terminating: bool, want: str) -> None:
    assert tls_mode(route(tls, http=http, https=https), CFG, terminating=terminating) == want


def _table(*routes: Route) -> RouteTable:
    return RouteTable(domain="macula.local", version=1, routes=tuple(routes))


def test_listeners_for_terminated_passthrough_and_redirect() -> None:
    term = desired_listeners(_table(route(h2c=True)), CFG, terminating=True, redirect_http=True)
    t443 = term[ListenerSpec("127.0.10.2", "tcp", 443)]
    assert (t443.kind, t443.backend, t443.h2c) == ("tls", HTTP, True)
    assert term[ListenerSpec("127.0.10.2", "tcp", 80)].redirect
    passthrough = desired_listeners(_table(route(https=True)), CFG, terminating=True, redirect_http=False)
    p443 = passthrough[ListenerSpec("127.0.10.2", "tcp", 443)]
    assert (p443.kind, p443.backend) == ("https", HTTPS)
    assert not passthrough[ListenerSpec("127.0.10.2", "tcp", 80)].redirect
    off = desired_listeners(_table(route("off")), CFG, terminating=True, redirect_http=True)
    assert ListenerSpec("127.0.10.2", "tcp", 443) not in off
    assert not off[ListenerSpec("127.0.10.2", "tcp", 80)].redirect  # nothing to redirect to


def _cfg(route_extra: str) -> None:
    import tomllib
    text = f'[[route]]\nname = "g"\n{route_extra}\n'
    parse_config(tomllib.loads(text), file="m.toml", base=Path("/"))


def test_route_tls_config_is_validated() -> None:
    _cfg('http = "127.0.0.1:3000"\ntls = "terminate"\nh2c = true')
    with pytest.raises(ConfigError, match=r"route\[0\]\.tls: 'sometimes' is not one of"):
        _cfg('http = "127.0.0.1:3000"\ntls = "sometimes"')
    with pytest.raises(ConfigError, match=r"terminate.*needs an http backend"):
        _cfg('https = "127.0.0.1:3000"\ntls = "terminate"')
    with pytest.raises(ConfigError, match=r"passthrough.*needs an https backend"):
        _cfg('http = "127.0.0.1:3000"\ntls = "passthrough"')
    import tomllib
    cfg = parse_config(tomllib.loads("[tls]\nredirect_http = true\n"), file="m.toml", base=Path("/"))
    assert cfg.tls.redirect_http and cfg.tls.enabled
    with pytest.raises(ConfigError, match=r"tls.redirect: unknown key"):
        parse_config(tomllib.loads("[tls]\nredirect = true\n"), file="m.toml", base=Path("/"))


def test_docker_labels_carry_tls() -> None:
    from maculad.adapters.docker.model import ContainerInfo, HostBinding
    from maculad.providers.docker_labels import container_route

    def info(labels: dict[str, str]) -> ContainerInfo:
        return ContainerInfo(id="c1", name="grafana", labels={"macula.host": "grafana", "macula.http": "3000",
                                                              **labels},
                             state="running", ports=(("3000/tcp", (HostBinding("127.0.0.1", 43000),)),))

    spec = container_route(info({"macula.tls": "terminate", "macula.h2c": "true"}), domain="macula.local",
                           http_port=80, https_port=443, project="p")
    assert spec is not None and spec.tls == "terminate" and spec.h2c
    with pytest.raises(ValueError, match=r"macula.tls='bogus'"):
        container_route(info({"macula.tls": "bogus"}), domain="macula.local", http_port=80, https_port=443,
                        project="p")
    with pytest.raises(ValueError, match=r"passthrough needs macula.https"):
        container_route(info({"macula.tls": "passthrough"}), domain="macula.local", http_port=80,
                        https_port=443, project="p")


def test_redirect_response() -> None:
    head = b"GET /d/x?y=1 HTTP/1.1\r\nHost: grafana.macula.local:10080\r\n\r\n"
    resp, loc = errorpage.redirect_response(head, fallback_host="grafana.macula.local", https_port=10443)
    assert loc == "https://grafana.macula.local:10443/d/x?y=1"
    assert resp.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    _, loc = errorpage.redirect_response(b"GET / HTTP/1.1\r\n\r\n", fallback_host="g.macula.local", https_port=443)
    assert loc == "https://g.macula.local/"
    _, loc = errorpage.redirect_response(b"GET http://evil/\r\nx HTTP/1.1\r\nHost: a b\r\n\r\n",
                                         fallback_host="g.macula.local", https_port=443)
    assert loc == "https://g.macula.local/"


@given(st.binary(max_size=2000))
def test_redirect_never_echoes_unsafe_bytes(head: bytes) -> None:
    resp, loc = errorpage.redirect_response(head, fallback_host="g.macula.local", https_port=443)
    assert loc.startswith("https://") and "\r" not in loc and "\n" not in loc and " " not in loc
    assert resp.count(b"\r\n\r\n") >= 1


def test_serves() -> None:
    assert serves("g.macula.local", "g.macula.local")
    assert not serves("g.macula.local", "x.g.macula.local")
    assert serves("*.apps.macula.local", "a.apps.macula.local")
    assert serves("*.apps.macula.local", "a.b.apps.macula.local")
    assert not serves("*.apps.macula.local", "apps.macula.local")
    assert not serves("*.apps.macula.local", "xapps.macula.local")


def test_failure_reasons() -> None:
    e = ssl.SSLError(1, "x")
    e.reason = "HTTP_REQUEST"  # type: ignore[misc]
    assert failure_reason(e, None) == "plain_http"
    e.reason = "SOMETHING_NEW"  # type: ignore[misc]
    assert failure_reason(e, None) == "malformed"
    assert failure_reason(e, "sni_outside_domain") == "sni_outside_domain"
    assert failure_reason(ssl.SSLEOFError(), None) == "eof"


def test_with_default_certificate_touches_only_the_controller() -> None:
    from maculad.supervise.cluster_wiring import with_default_certificate

    ctrl = {"kind": "Deployment", "metadata": {"name": "c"}, "spec": {"template": {"spec": {"containers": [
        {"name": "controller", "args": ["/nginx-ingress-controller", "--default-ssl-certificate=x/old", "--v=2"]},
        {"name": "sidecar", "args": ["run"]}]}}}}
    other = {"kind": "Deployment", "metadata": {"name": "o"}, "spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "x"}]}}}}
    out = with_default_certificate([ctrl, other], "ingress-nginx/maculad-default-tls")
    args = out[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["/nginx-ingress-controller", "--v=2", "--default-ssl-certificate=ingress-nginx/maculad-default-tls"]
    assert out[0]["spec"]["template"]["spec"]["containers"][1]["args"] == ["run"]
    assert out[1] is other
    assert ctrl["spec"]["template"]["spec"]["containers"][0]["args"][1] == "--default-ssl-certificate=x/old"
