"""Config loading: the shipped files are valid; every kind of mistake names file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maculad.config import ConfigError, load_config
from maculad.core.restart import parse_restart
from maculad.core.net import Backend

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "maculad.toml"
    p.write_text(text)
    return p


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculad", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["maculad.toml", "maculad-user.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    cfg = load_config(ROOT / "config" / name)
    names = {r.name for r in cfg.routes}
    for svc in ("registry", "dns", "dns-admin", "prometheus", "grafana", "loki", "tempo", "s3",
                "s3-console", "postgres", "draw"):
        assert f"{svc}.macula.local" in names
    grafana = next(r for r in cfg.routes if r.name == "grafana.macula.local")
    assert grafana.http == Backend("127.0.0.2", 3000)
    postgres = next(r for r in cfg.routes if r.name == "postgres.macula.local")
    assert postgres.tcp == ((5432, Backend("127.0.0.6", 5432)),)
    proc = check_config(ROOT / "config" / name)
    if cfg.control.group is not None and not _group_exists(cfg.control.group):
        # the system config names the group the package creates; without it check-config says so
        assert proc.returncode == 2 and f"control.group: group {cfg.control.group!r} does not exist" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_user_config_uses_unprivileged_ports() -> None:
    cfg = load_config(ROOT / "config" / "maculad-user.toml")
    assert all(a.port >= 1024 for a in cfg.dns.listen)
    assert cfg.proxy.http_port >= 1024 and cfg.proxy.https_port >= 1024


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'state_dir = "state"\n[kind]\nconfig = "kind.yaml"\n'))
    assert cfg.domain == "macula.local"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.kind.config == tmp_path / "kind.yaml"
    assert cfg.dns.listen == (Backend("127.0.0.153", 53),)
    assert cfg.routes == ()


def test_sections_take_missing_keys_from_their_own_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[kind.backoff]\ninitial = 1.0\n[docker.backoff]\ninitial = 1.0\n'
                                      '[docker]\ncompose_command = "docker compose"\n'
                                      '[docker.services.grafana]\nrestart = "on-failure:3"\n'))
    assert cfg.kind.backoff.cap == 300.0 and cfg.docker.backoff.cap == 60.0
    assert cfg.docker.compose_command == ("docker", "compose")
    svc = cfg.docker.services["grafana"]
    assert (svc.restart, svc.max_retries) == ("on-failure", 3)


def test_container_horizon_follows_docker_unless_told(tmp_path: Path) -> None:
    on = load_config(write(tmp_path, '[docker]\nenabled = true\n[containers]\nforwarders = "auto"\n'))
    assert on.containers.enabled and on.containers.forwarders is None and on.containers.address == "auto"
    off = load_config(write(tmp_path, '[docker]\nenabled = true\n[containers]\nenabled = false\n'
                                      'forwarders = ["127.0.0.1:53"]\n'))
    assert not off.containers.enabled and off.containers.forwarders == (Backend("127.0.0.1", 53),)
    assert not load_config(write(tmp_path, "# defaults\n")).containers.enabled


def test_full_route(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[[route]]
name = "bootstrap.macula.local"
ip = "127.0.0.9"
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
udp = { 4433 = "127.0.0.1:4433" }
tcp = { 5432 = "[::1]:5432" }
"""))
    r = cfg.routes[0]
    assert r.name == "bootstrap.macula.local" and r.ip == "127.0.0.9"
    assert r.udp == ((4433, Backend("127.0.0.1", 4433)),)
    assert r.tcp == ((5432, Backend("::1", 5432)),)


MISTAKES = [
    ("not toml = = 1", "", "is not valid TOML"),
    ('domain = 5', "domain", "must be a string"),
    ('domain = "mácula.local"', "domain", "not a valid DNS name"),
    ('domain = "a..local"', "domain", "not a valid DNS name"),
    (f'domain = "{"x" * 64}.local"', "domain", "not a valid DNS name"),
    ('bogus = 1', "bogus", "unknown key"),
    ('[dns]\nttl = "5"', "dns.ttl", "must be an integer"),
    ('[dns]\nttl = -1', "dns.ttl", "out of range"),
    ('[dns]\nlisten = ["127.0.0.1"]', "dns.listen[0]", "a port is required"),
    ('[dns]\nlisten = ["localhost:53"]', "dns.listen[0]", "is not an IP address"),
    ('[dns]\nlisten = []', "dns.listen", "at least one address"),
    ('[dns]\nlisten = ["127.0.0.1:99999"]', "dns.listen[0]", "out of range"),
    ('[proxy]\npool = "127.0.10.0/33"', "proxy.pool", "is not an IPv4 network"),
    ('[proxy]\npool = "10.0.0.0/24"', "proxy.pool", "not inside 127.0.0.0/8"),
    ('[proxy]\nhttp_port = 443', "proxy.https_port", "equals http_port"),
    ('[proxy]\nhttp_port = true', "proxy.http_port", "must be an integer"),
    ('[[route]]\nhttp = "127.0.0.1:1"', "route[0].name", "is required"),
    ('[[route]]\nname = "a"', "route[0].name", "has no backend"),
    ('[[route]]\nname = "bad name"\nhttp = "127.0.0.1:1"', "route[0].name", "characters outside"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1"', "route[0].http", "a port is required"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "10.1.1.1"', "route[0].ip", "not a loopback"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "nope"', "route[0].ip", "not an IPv4 address"),
    ('[[route]]\nname = "a"\nudp = { x = "127.0.0.1:1" }', "route[0].udp.x", "not a port number"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\n[[route]]\nname = "a.macula.local"\nhttp = "127.0.0.1:2"',
     "route[1].name", "also the name of route[0]"),
    (('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "127.0.0.9"\n'
     '[[route]]\nname = "b"\nhttp = "127.0.0.1:2"\nip = "127.0.0.9"'),
     "route[1].ip", "also pinned by route[0] (a.macula.local)"),
    ('[proxy]\npool = "127.0.10.0/31"\n' + "".join(
        f'[[route]]\nname = "r{i}"\nhttp = "127.0.0.1:1"\n' for i in range(3)),
     "proxy.pool", "has 2 free addresses but 3 routes need one"),
    ('[docker.services.grafana]\nrestart = "sometimes"', "docker.services.grafana.restart",
     "is not a restart policy"),
    ('[docker.backoff]\ninitial = 5.0\ncap = 1.0', "docker.backoff.cap", "smaller than initial"),
    ('[kind]\ncluster = "no/slash"', "kind.cluster", "not a valid kind cluster name"),
    ('[log]\nlevel = "loud"', "log.level", "is not one of"),
    ('domain = "bad domain!"\n[[route]]\nname = "a"\nhttp = "127.0.0.1:1"', "domain",
     "not a valid DNS name: label 'bad domain!'"),
    ('domain = "-x.local"', "domain", "starts or ends with '-'"),
    ('[[route]]\nname = "a"\nhtp = "127.0.0.1:1"', "route[0].htp", "unknown key htp (did you mean http?)"),
    ('[dns]\nlisen = ["127.0.0.1:53"]', "dns.lisen", "unknown key lisen (did you mean listen?)"),
    ('[proxy]\npool = 5', "proxy.pool", "must be a network string"),
    ('[docker]\ncompose_command = ["docker", 3]', "docker.compose_command[1]", "must be a string, not an integer"),
    ('route = { name = "a" }', "route", "must be an array of tables"),
    ('[kind.backoff]\ninitial = 500.0', "kind.backoff.cap", "300.0 is smaller than initial (500.0)"),
    ('[containers]\naddress = "::1"', "containers.address", "neither \"auto\" nor an IPv4 address"),
    ('[containers]\nenabled = true', "containers.enabled", "enable [docker] or set [containers] address"),
    ('[docker]\nenabled = true\n[containers]\nforwarders = ["x:53"]', "containers.forwarders[0]",
     "is not an IP address"),
    ("", "", "is empty"),
    (" \n\t\n", "", "is empty"),
    ('[dns]\nlisten = ["127.0.0.1:5353"]\n[metrics]\nlisten = "127.0.0.1:5353"', "metrics.listen",
     "127.0.0.1:5353 is also DNS listener dns.listen[0]"),
    ('[dns]\nlisten = ["0.0.0.0:5353"]\n[metrics]\nlisten = "127.0.0.1:5353"', "metrics.listen",
     "is also DNS listener dns.listen[0] (0.0.0.0:5353"),
    ('[dns]\nlisten = ["127.0.0.153:5353"]\n[web]\nlisten = "127.0.0.153:5353"', "web.listen",
     "is also DNS listener dns.listen[0]"),
    ('[dns]\nlisten = ["127.0.0.153:53", "127.0.0.154:53"]\nforwarders = ["1.1.1.1:53", "127.0.0.154:53"]',
     "dns.forwarders[1]", "is maculad's own DNS listener dns.listen[1]; queries would be forwarded to itself"),
    ('[dns]\nlisten = ["0.0.0.0:53"]\nforwarders = ["127.0.0.1:53"]', "dns.forwarders[0]",
     "maculad's own DNS listener"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "127.0.0.153"', "route[0].ip",
     "127.0.0.153 is the DNS address (dns.listen[0])"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "127.0.0.0"', "route[0].ip",
     "127.0.0.0 is the network address of 127.0.0.0/8"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "127.255.255.255"', "route[0].ip",
     "broadcast address"),
]


@pytest.mark.parametrize(("text", "key", "reason"), MISTAKES)
def test_each_mistake_names_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert reason in err.value.reason
    assert str(path) in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize(("text", "key", "reason"), MISTAKES[:4])
def test_check_config_exits_2_with_the_error(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    proc = check_config(path)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and reason in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    proc = check_config(tmp_path / "nope.toml")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe domain")
    proc = check_config(bad)
    assert proc.returncode == 2 and "is not UTF-8" in proc.stderr


def test_restart_policy_parsing() -> None:
    assert parse_restart("always") == ("always", None)
    assert parse_restart("on-failure:3") == ("on-failure", 3)
    for bad in ("never", "always:3", "on-failure:x", ""):
        with pytest.raises(ValueError):
            parse_restart(bad)


# --- [powerdns] ---------------------------------------------------------------


def _pdns(tmp_path: Path, body: str, *, mode: int = 0o600) -> Path:
    p = write(tmp_path, "[powerdns]\n" + body)
    p.chmod(mode)
    return p


def test_powerdns_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "domain = \"macula.local\"\n"))
    p = cfg.powerdns
    assert not p.enabled and p.api == "http://127.0.0.1:8081" and p.server_id == "localhost"
    assert p.zone == "macula.local" and p.dns == Backend("127.0.0.1", 5399) and p.publish
    assert p.owner_id.startswith("maculad-")


def test_powerdns_key_from_file_is_kept_out_of_repr(tmp_path: Path) -> None:
    key = tmp_path / "pdns.key"
    key.write_text("s3cret\n")
    cfg = load_config(_pdns(tmp_path, f'enabled = true\napi_key_file = "{key}"\npublish_address = "10.0.0.1"\n'
                                      'zone = "Macula.Local."\nowner_id = "laptop-1"\n'))
    assert cfg.powerdns.api_key == "s3cret" and cfg.powerdns.zone == "macula.local"
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize(("body", "key", "reason"), [
    ('enabled = true\npublish_address = "10.0.0.1"\n', "powerdns.api_key_file", "is required"),
    ('enabled = true\napi_key_file = "nope.key"\npublish_address = "10.0.0.1"\n', "powerdns.api_key_file",
     "cannot be read"),
    ('enabled = true\napi_key = "k"\n', "powerdns.publish_address", "is required"),
    ('api = "127.0.0.1:8081"\n', "powerdns.api", "http(s)://host:port"),
    ('api = "http://127.0.0.1:8081/api/v1"\n', "powerdns.api", "added by maculad"),
    ('publish_address = "fd00::1"\n', "powerdns.publish_address", "not an IPv4"),
    ('zone = "example.org"\n', "powerdns.zone", "neither the domain"),
    ('dns = "pdns.local:53"\n', "powerdns.dns", "not an IP address"),
    ('server_id = "a/b"\n', "powerdns.server_id", "server id"),
    ('owner_id = "me, you"\n', "powerdns.owner_id", "letters, digits"),
    ('api_key = "a"\napi_key_file = "b"\n', "powerdns.api_key", "not both"),
    ('surprise = 1\n', "powerdns.surprise", "unknown key"),
])
def test_powerdns_errors(tmp_path: Path, body: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_pdns(tmp_path, body))
    assert e.value.key == key and reason in e.value.reason


def test_powerdns_publish_address_may_be_left_to_the_container_horizon(tmp_path: Path) -> None:
    p = write(tmp_path, '[containers]\nenabled = true\naddress = "172.17.0.1"\n'
                        '[powerdns]\nenabled = true\napi_key = "k"\n')
    p.chmod(0o600)
    assert load_config(p).powerdns.publish_address is None


def test_powerdns_inline_key_refused_when_others_can_read_the_file(tmp_path: Path) -> None:
    body = 'enabled = true\napi_key = "k"\npublish_address = "10.0.0.1"\n'
    with pytest.raises(ConfigError) as e:
        load_config(_pdns(tmp_path, body, mode=0o644))
    assert e.value.key == "powerdns.api_key" and "readable by others" in e.value.reason
    assert load_config(_pdns(tmp_path, body, mode=0o640)).powerdns.api_key == "k"
