"""The rules with one owner (maculad.core): each source reaches the same verdict through them."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from maculad.config import ConfigError, load_config
from maculad.core.backoff import Backoff
from maculad.core.names import check_domain, qualify
from maculad.core.net import Backend, bind_problem, format_hostport, loopback_problem, parse_hostport, pin_problem
from maculad.core.restart import parse_restart
from maculad.dns.answer import ZoneSettings
from maculad.adapters.docker.model import parse_inspect
from maculad.providers.docker_labels import build_routes
from maculad.routes.model import PortMap, RouteSpec
from maculad.routes.table import build_table


@pytest.mark.parametrize("text", ["127.0.0.1:80", "[::1]:53", "localhost:0"])
def test_hostport_round_trip(text: str) -> None:
    b = parse_hostport(text)
    assert str(b) == format_hostport(b.host, b.port) == text


@pytest.mark.parametrize(("text", "fragment"), [("127.0.0.1", "a port is required"), ("::1:53", "[addr]:port"),
                                                ("[::1]53", "[IPv6]:port"), ("h:x", "not a number"),
                                                ("h:70000", "out of range")])
def test_hostport_errors_name_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_hostport(text)


@pytest.mark.parametrize("domain", ["mácula.local", "a..local", "x" * 64 + ".local", ""])
def test_check_config_refuses_exactly_the_domains_dns_refuses(tmp_path: Path, domain: str) -> None:
    with pytest.raises(ValueError) as zone_err:
        ZoneSettings.from_listen(domain=domain, ttl=5, listen_hosts=(), forwarding=False)
    f = tmp_path / "m.toml"
    f.write_text(f'domain = "{domain}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as cfg_err:
        load_config(f)
    assert cfg_err.value.key == "domain" and cfg_err.value.reason == str(zone_err.value)


def test_a_good_domain_passes_both() -> None:
    assert check_domain("Macula.Local.") == "macula.local"
    assert ZoneSettings.from_listen(domain="macula.local", ttl=5, listen_hosts=(), forwarding=False).domain \
        == "macula.local"
    assert qualify("Grafana", "macula.local") == "grafana.macula.local"


def _label_error(ip: str) -> str:
    info = parse_inspect({
        "Id": "c" * 64, "Name": "/web",
        "State": {"Status": "running", "Running": True, "ExitCode": 0, "StartedAt": "2024-01-01T00:00:00Z",
                  "FinishedAt": "0001-01-01T00:00:00Z"},
        "Config": {"Labels": {"macula.host": "web", "macula.http": "80", "macula.ip": ip}, "Image": "x"},
        "HostConfig": {"PortBindings": {}, "RestartPolicy": {"Name": "no"}},
        "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "", "HostPort": "1"}]}},
    })
    specs, errors = build_routes([info], domain="macula.local", http_port=80, https_port=443, project="p")
    assert not specs and len(errors) == 1
    return errors[0].reason


def _config_error(tmp_path: Path, ip: str) -> str:
    f = tmp_path / "m.toml"
    f.write_text(f'[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "{ip}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert err.value.key == "route[0].ip"
    return err.value.reason


def _table_reason(ip: str) -> str:
    spec = RouteSpec(name="a.macula.local", source="docker", origin="docker:a", ip=ip,
                     ports=(PortMap("tcp", 80, Backend("127.0.0.1", 1)),))
    table, _ = build_table(domain="macula.local", version=1, specs={"docker": [spec]}, allocations={},
                           pool=ipaddress.IPv4Network("127.0.10.0/24"))
    (conflict,) = table.conflicts
    return conflict.reason


@pytest.mark.parametrize("ip", ["10.0.0.1", "nope", "192.0.2.1", "::1"])
def test_a_bad_pin_gets_one_verdict_from_every_source(tmp_path: Path, ip: str) -> None:
    reason = pin_problem(ip, allow_non_loopback=False)
    assert reason is not None
    assert _config_error(tmp_path, ip) == reason
    assert _label_error(ip) == f"macula.ip: {reason}"
    assert _table_reason(ip).startswith(f"pinned IP {reason}")


def test_pins_and_binds_share_the_loopback_rule() -> None:
    for ip in ("127.0.0.9", "10.0.0.1", "192.0.2.1"):
        for allow in (False, True):
            assert pin_problem(ip, allow_non_loopback=allow) == bind_problem(ip, allow_non_loopback=allow) \
                == loopback_problem(ip, allow_non_loopback=allow)
    assert pin_problem("127.0.0.9", allow_non_loopback=False) is None
    assert bind_problem("::1", allow_non_loopback=False) is None
    # a wildcard pin passes where non-loopback is allowed; the relay then refuses to bind it
    assert pin_problem("0.0.0.0", allow_non_loopback=True) is None
    assert "wildcard" in (bind_problem("0.0.0.0", allow_non_loopback=True) or "")


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(initial=0.1, cap=0.5)
    assert [b.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next() == 0.1
    assert b.delay(100) == 0.5


def test_jittered_backoff_stays_in_the_upper_half() -> None:
    b = Backoff(initial=1.0, cap=8.0, jitter=True, rng=random.Random(7))
    for base in (1.0, 2.0, 4.0, 8.0, 8.0):
        d = b.next()
        assert base / 2 <= d <= base


def test_restart_text() -> None:
    assert parse_restart("on-failure:3") == ("on-failure", 3)
    assert parse_restart("always") == ("always", None)
    with pytest.raises(ValueError, match="only on-failure"):
        parse_restart("always:2")


def test_nofile_target_raises_to_the_hard_limit_and_never_lowers() -> None:
    from maculad.core.limits import nofile_target

    inf = -1
    assert nofile_target(1024, 524288, infinity=inf, ceiling=10240) == 524288
    assert nofile_target(256, inf, infinity=inf, ceiling=10240) == 10240  # launchd: unlimited hard
    assert nofile_target(65536, 65536, infinity=inf, ceiling=10240) == 65536
    assert nofile_target(20000, inf, infinity=inf, ceiling=10240) == 20000  # never lowered
    assert nofile_target(inf, inf, infinity=inf, ceiling=10240) == inf
