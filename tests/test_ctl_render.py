"""The pure text of `maculactl`: times and durations for a person, the status summary's bound of
one screen whatever the daemon reports, and how doctor's fix lines name maculactl."""

from __future__ import annotations

import re
import time
from typing import Any

from maculad.control.doctor import maculactl_command
from maculad.ctl.render import ago, clock, duration, no_services, readable, render_tree
from maculad.ctl.status_view import MAX_LINES, render_status, render_verbose

NOW = time.mktime((2031, 5, 14, 14, 7, 11, 0, 0, -1))


def test_durations_and_ages() -> None:
    assert [duration(s) for s in (0, 2.5, 42, 303, 11520, 3 * 86400 + 7200)] == [
        "0s", "2.5s", "42s", "5m 3s", "3h 12m", "3d 2h"]
    assert [ago(NOW - s, now=NOW) for s in (0.2, 12, 300, 7200, 200000)] == [
        "just now", "12 s ago", "5 min ago", "2 h ago", "2 d ago"]
    assert ago(None, now=NOW) == "never"
    assert clock(NOW - 300, now=NOW) == "14:02:11 (5 min ago)"
    assert clock(NOW - 86400, now=NOW) == "2031-05-13 14:07:11 (1 d ago)"


def test_readable_turns_epochs_durations_and_bound_addresses_into_text() -> None:
    got = readable({"time": NOW - 300, "uptime_seconds": 11520.4, "retry_in": 2.0, "bound": ["127.0.0.1", 9469],
                    "port": 9469, "nested": [{"last_sync": NOW - 12}]}, now=NOW)
    assert got == {"time": "14:02:11 (5 min ago)", "uptime": "3h 12m", "retry_in": "2s", "bound": "127.0.0.1:9469",
                   "port": 9469, "nested": [{"last_sync": "14:06:59 (12 s ago)"}]}
    assert render_tree({"listen": ["udp://a", "tcp://a"], "x_y": 1}) == "listen: udp://a, tcp://a\nx y:    1"


def _listener(i: int, state: str) -> dict[str, Any]:
    return {"route": f"r{i}.macula.local", "ip": f"127.0.10.{i}", "proto": "tcp", "port": 80, "kind": "http",
            "backend": "127.0.0.1:1", "service": None, "state": state, "last_error": "address in use" if
            state == "failed" else None, "conns": 0, "buffered_bytes": 0, "retry_in": 4.0}


def _service(i: int, state: str) -> dict[str, Any]:
    return {"service": f"s{i}", "tier": "docker", "container": f"c{i}", "container_id": "0", "docker_state": "exited",
            "health": None, "exit_code": 1, "policy_source": "label", "up": state == "running", "restarts": 3,
            "waiting_on": None, "pending": None, "error": None, "last_error": "exited with code 1",
            "compose_project": "macula", "state": state, "reason": "", "backoff_seconds": 8.0, "policy": "always"}


def worst_status() -> dict[str, Any]:
    """Everything on and much of it failing."""
    return {
        "config_path": "/etc/maculad/maculad.toml", "domain": "macula.local", "dns_listen": ["127.0.0.153:53"],
        "metrics_listen": "127.0.0.1:9469", "control_socket": "/run/maculad/maculad.sock", "http_port": 80,
        "https_port": 443, "docker_enabled": True, "kind_manage": True, "kind_cluster": "macula-dev",
        "version": "0.1.0", "pid": 42, "uptime_seconds": 11520.0, "ready": False,
        "not_ready": [f"DNS 127.0.0.15{i}:53 is not serving" for i in range(5)], "summary": "",
        "routes": {"count": 9, "by_source": {"config": 5, "docker": 4, "kubernetes": 0}, "conflicts": 2, "version": 7},
        "components": {
            "metrics": {"listen": "127.0.0.1:9469", "bound": ["127.0.0.1", 9469]},
            "dns": {"listen": ["udp://127.0.0.153:53"], "horizon": "host", "answer_address": None,
                    "udp_transport": "recvmmsg", "domain": "macula.local", "ttl": 5, "forwarders": ["1.1.1.1:53"],
                    "powerdns": None, "table_version": 7, "queries": 12, "fastpath_hits": 0, "malformed": 0,
                    "truncated": 0, "cache_entries": {"udp": 0, "tcp": 0}, "tcp_clients": 0,
                    "forwards_in_flight": 0, "internal_errors": 0},
            "proxy": {"table_version": 7, "reconciled": True, "starting": 1, "serving": 3, "failed": 6, "draining": 0,
                      "aliases": [], "listeners": [_listener(i, "failed") for i in range(6)]
                      + [_listener(9, "serving")]},
            "containers": {"state": "off", "address": None, "reason": "permission denied binding 172.17.0.1:53",
                           "subnets": [], "upstreams": [], "port_conflicts": []},
            "docker": {"enabled": True, "connected": False, "reason": "engine gone", "last_error": "engine gone"},
            "kubernetes": {"connected": False, "synced": False, "kubeconfig": "~/.kube/config", "context": "kind-x",
                           "resource_version": None, "ingresses": 0, "routes": 0, "skipped": 0,
                           "last_event_age": None, "relists": 0, "reconnects": 3, "last_error": "refused",
                           "rebuilds": 0, "last_build_seconds": None, "last_rebuild_seconds": None},
            "coredns": {"error": "boom"},
            "kind": {"cluster": "macula-dev", "state": "degraded", "reason": "a node is stopped", "last_error": "x",
                     "kind_error": None, "api_error": None},
            "powerdns": {"api": "http://127.0.0.1:8081", "zone": "macula.local.", "connected": False,
                         "last_sync": NOW - 3600, "records_owned": 3, "conflicts": [], "last_error": "401",
                         "retry_in_seconds": 30.0},
            "web": {"serving": False, "last_error": "address in use", "url": "http://macula.local/",
                    "address_url": None},
        },
        "tls": {"enabled": False, "error": "the CA cannot be read"},
        "tasks": [{"name": f"t{i}", "stage": "sources", "running": True, "restarts": 2, "last_error": "died"}
                  for i in range(4)],
        "last_reload": {"time": NOW - 300, "ok": False, "error": "config refused, nothing changed: bad",
                        "changed": []},
        "state": {"path": "/var/lib/maculad/allocations.json", "save_error": "disk full",
                  "consecutive_failures": 3, "failing_since": NOW - 60, "retry_in": 4.0},
    }


def test_the_summary_fits_a_screen_whatever_fails() -> None:
    out = render_status(worst_status(), [_service(i, "backoff") for i in range(7)]  # type: ignore[arg-type]
                        + [_service(9, "running")], now=NOW)  # type: ignore[list-item]
    lines = [ln.strip() for ln in out.splitlines()]
    assert len(lines) <= MAX_LINES, out
    assert lines[0] == "maculad 0.1.0 (pid 42, config /etc/maculad/maculad.toml): up 3h 12m, NOT READY"
    assert "and 3 more reasons (maculactl status --verbose)" in lines
    assert "failed: r0.macula.local 127.0.10.0:80/tcp: address in use (retry in 4s)" in lines
    assert "and 4 more failed listeners (maculactl status --verbose)" in lines
    assert "services    1 of 8 running, 7 failing" in lines
    assert "failing: s0 (backoff, retry in 8s): exited with code 1" in lines
    assert "docker      not connected: engine gone" in lines
    assert "kubernetes  not connected (kind-x): refused; CoreDNS block status unreadable: boom" in lines
    assert "cluster     macula-dev degraded: a node is stopped (last error: x)" in lines
    assert "last reload 14:02:11 (5 min ago) refused: config refused, nothing changed: bad" in lines
    assert "state       saving /var/lib/maculad/allocations.json fails since 14:06:11 (1 min ago): disk full" in lines
    assert not re.search(r"\d\.\d+e\+\d+|\b1[6-9]\d{8}\b", out)


def test_verbose_has_no_raw_times() -> None:
    out = render_verbose(worst_status(), now=NOW)  # type: ignore[arg-type]
    assert re.search(r"^  time: +14:02:11 \(5 min ago\)$", out, re.M)
    assert re.search(r"^  failing since: +14:06:11 \(1 min ago\)$", out, re.M)
    assert re.search(r"^    last sync: +13:07:11 \(1 h ago\)$", out, re.M)
    assert not re.search(r"\d\.\d+e\+\d+|\b1[6-9]\d{8}\b", out)


def test_an_empty_service_list_says_why() -> None:
    assert no_services(None).startswith("the Docker tier is off")
    assert no_services({"enabled": False}) .startswith("the Docker tier is off")
    assert no_services({"enabled": True, "connected": False, "reason": "no socket"}) == \
        "no services are supervised: Docker is not connected (no socket)"
    assert no_services({"error": "boom"}) == "no services are supervised; the Docker tier's state cannot be read: boom"


def test_fix_lines_name_maculactl_so_that_sudo_finds_it() -> None:
    venv = "/home/ada/maculad/.venv/bin/maculactl"
    assert maculactl_command(venv, None, None) == venv  # not on PATH
    assert maculactl_command(venv, "/home/ada/.local/bin/maculactl", venv) == venv  # on PATH, not sudo's
    assert maculactl_command(venv, "/usr/local/bin/maculactl", venv) == "maculactl"  # a link sudo finds
    assert maculactl_command("/usr/bin/maculactl", "/usr/bin/maculactl", "/usr/bin/maculactl") == "maculactl"
    assert maculactl_command(venv, "/usr/bin/maculactl", "/usr/bin/maculactl") == venv  # another one
    assert maculactl_command(None, None, None) == "maculactl"
