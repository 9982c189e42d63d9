"""`plan_reload` (pure): which keys need a restart, which addresses are bound first, what is reported."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from maculad.app.reload import plan_reload
from maculad.config import Config, parse_config
from maculad.core.net import Backend

BASE = '[dns]\nlisten = ["127.0.0.153:53"]\n[metrics]\nlisten = "127.0.0.1:9469"\n'


def cfg(extra: str = "") -> Config:
    """BASE with `extra`'s keys laid over it, table by table."""
    data = tomllib.loads(BASE)
    for k, v in tomllib.loads(extra).items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and k in data else v
    return parse_config(data, file="maculad.toml", base=Path("/etc/maculad"))


CASES = [
    ("", {}, []),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\n', {}, []),  # routes are judged by the table, not here
    ('domain = "other.local"\n', {"restart": ("domain",)}, []),
    ('[tls]\nmax_leaves = 5\n[control]\nsocket = "/tmp/x.sock"\n',
     {"restart": ("tls.max_leaves", "control.socket")}, []),
    ('[dns]\nttl = 30\n', {"dns": True, "dns_add": (), "containers": True, "powerdns": False}, ["dns"]),
    ('[dns]\nlisten = ["127.0.0.153:53", "127.0.0.154:53"]\n',
     {"dns": True, "dns_add": (Backend("127.0.0.154", 53),)}, ["dns"]),
    ('[metrics]\nlisten = "127.0.0.1:9470"\n', {"metrics": True, "metrics_bind": Backend("127.0.0.1", 9470)},
     ["metrics"]),
    ('[metrics]\nlisten = ""\n', {"metrics": True, "metrics_bind": None}, ["metrics"]),
    ('[web]\nmax_clients = 4\n', {"web": True, "web_bind": None}, ["web"]),  # same address: rebound in place
    ('[web]\nlisten = "127.0.0.153:8080"\n', {"web": True, "web_bind": Backend("127.0.0.153", 8080),
                                              "apex": False}, ["web"]),
    ('[web]\nenabled = false\n', {"web": True, "web_bind": None, "apex": True}, ["web"]),
    ('[proxy]\nhttp_port = 8080\n', {"proxy": True, "sources": ("docker", "kubernetes"), "web": True,
                                     "web_bind": Backend("127.0.0.153", 8080)},
     ["web", "proxy", "docker", "kubernetes"]),
    ('[proxy]\npool = "127.0.20.0/24"\n', {"pool": True, "proxy": True}, ["proxy.pool", "proxy"]),
]


@pytest.mark.parametrize(("extra", "expected", "changed"), CASES)
def test_plan(extra: str, expected: dict[str, object], changed: list[str]) -> None:
    p = plan_reload(cfg(), cfg(extra))
    for field, value in expected.items():
        assert getattr(p, field) == value, field
    if "restart" not in expected:
        assert p.restart == ()
        assert p.changed(routes=False) == changed
    assert plan_reload(cfg(extra), cfg(extra)).changed(routes=False) == []


def test_routes_are_reported_after_the_pool() -> None:
    p = plan_reload(cfg(), cfg('[proxy]\npool = "127.0.20.0/24"\n'))
    assert p.changed(routes=True) == ["proxy.pool", "routes", "proxy"]
