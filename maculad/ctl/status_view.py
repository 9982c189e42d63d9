"""`maculactl status`: the daemon on one screen, and `--verbose`: all of it, readable. Pure.

`render_status` draws at most `MAX_LINES` lines whatever the daemon reports: one
line per part (DNS, relay, routes, each source, services, the cluster, the
horizons, TLS, the status page, the last reload), and under the relay and the
services at most `DETAILS` failing entries plus one "and N more" line — the rest
is in `--verbose` (`render_verbose`, the whole answer as a tree with its times
made readable) and `--json` (the protocol's shape, untouched). A part that is
off says so on its line; a part whose status could not be read says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from maculad.control.protocol import is_error
from maculad.ctl.render import clock, duration, readable, render_tree

if TYPE_CHECKING:
    from maculad.control.protocol import (
        ClusterStatus,
        ComponentError,
        ContainerHorizonStatus,
        CoreDNSStatus,
        DNSStatus,
        DockerStatus,
        KubernetesStatus,
        LastReload,
        PowerDNSStatus,
        RelayStatus,
        ServiceView,
        Status,
        WebStatus,
    )

MAX_LINES = 25
DETAILS = 2  # failing listeners / services / not-ready reasons shown by name, then "and N more"
_LABEL = 12

FAILING_STATES = frozenset({"backoff", "failed"})


def _more(items: Sequence[str], what: str) -> list[str]:
    shown = [f"  {x}" for x in items[:DETAILS]]
    if len(items) > DETAILS:
        shown.append(f"  and {len(items) - DETAILS} more {what} (maculactl status --verbose)")
    return shown


def _unreadable(part: ComponentError) -> str:
    return f"status unreadable: {part['error']}"


def _dns(s: Status, dns: DNSStatus | ComponentError | None) -> str:
    where = ", ".join(s["dns_listen"]) or "no address"
    if dns is None:
        return f"{where}: not running"
    if is_error(dns):
        return f"{where}: {_unreadable(dns)}"
    fwd = f", forwards other names to {', '.join(dns['forwarders'])}" if dns["forwarders"] else ""
    return f"{where} (udp, tcp), {dns['queries']} queries{fwd}"


def _relay(proxy: RelayStatus | ComponentError | None) -> tuple[str, list[str]]:
    if proxy is None:
        return "not running", []
    if is_error(proxy):
        return _unreadable(proxy), []
    parts = [f"{proxy['serving']} listeners serving", f"{proxy['failed']} failed"]
    parts += [f"{proxy[k]} {k}" for k in ("starting", "draining") if proxy[k]]
    failed = []
    for ls in proxy["listeners"]:
        if ls["state"] == "failed":
            retry = ls.get("retry_in")
            again = f" (retry in {duration(retry)})" if retry is not None else ""
            failed.append(f"failed: {ls['route']} {ls['ip']}:{ls['port']}/{ls['proto']}: "
                          f"{ls['last_error'] or 'unknown error'}{again}")
    return ", ".join(parts), _more(failed, "failed listeners")


def _routes(s: Status) -> str:
    r = s["routes"]
    by = ", ".join(f"{src} {n}" for src, n in r["by_source"].items() if n)
    conflicts = f", {r['conflicts']} conflicts (maculactl routes)" if r["conflicts"] else ", no conflicts"
    return f"{r['count']}" + (f" ({by})" if by else "") + conflicts


def _docker(s: Status, d: DockerStatus | ComponentError | None) -> str:
    if not s["docker_enabled"] or d is None:
        return "off ([docker] enabled = false)"
    if is_error(d):
        return _unreadable(d)
    if not d.get("connected"):
        return f"not connected: {d.get('reason') or d.get('last_error') or 'connecting'}"
    line = f"connected (engine {d.get('engine_version') or '?'}), {d.get('containers', 0)} containers"
    label_errors = d.get("provider", {}).get("label_errors", [])
    if label_errors:
        line += f", {len(label_errors)} with bad labels: {label_errors[0]['container']}: {label_errors[0]['error']}"
    compose = d.get("compose")
    if compose is not None and compose["last_error"]:
        line += f"; compose: {compose['last_error']}"
    return line


def _services(services: Sequence[ServiceView]) -> tuple[str, list[str]]:
    running = sum(1 for v in services if v["state"] == "running")
    failing = [v for v in services if v["state"] in FAILING_STATES]
    line = f"{running} of {len(services)} running"
    if failing:
        line += f", {len(failing)} failing"
    details = []
    for v in failing:
        why = v["last_error"] or v["error"] or v["reason"] or v["state"]
        retry = f", retry in {duration(v['backoff_seconds'])}" if v["state"] == "backoff" else ""
        details.append(f"failing: {v['service']} ({v['state']}{retry}): {why}")
    return line, _more(details, "failing services")


def _kubernetes(k: KubernetesStatus | ComponentError | None, core: CoreDNSStatus | ComponentError | None) -> str:
    if k is None:
        return "off ([kubernetes] enabled = false)"
    if is_error(k):
        return _unreadable(k)
    ctx = f" ({k['context']})" if k["context"] else ""
    if not k["connected"]:
        line = f"not connected{ctx}: {k['last_error'] or 'connecting'}"
    else:
        line = (f"connected{ctx}, {'synced' if k['synced'] else 'syncing'}, {k['ingresses']} Ingresses → "
                f"{k['routes']} routes" + (f", {k['skipped']} skipped" if k["skipped"] else ""))
        if k["last_error"]:
            line += f"; last error: {k['last_error']}"
    if core is not None:
        line += "; CoreDNS block " + (_unreadable(core) if is_error(core) else
                                      core["state"] + (f" ({core['last_error']})" if core["last_error"] else ""))
    return line


def _cluster(s: Status, c: ClusterStatus | ComponentError | None) -> str:
    if not s["kind_manage"] or c is None:
        return f"{s['kind_cluster']}: not managed by maculad ([kind] manage = false)"
    if is_error(c):
        return _unreadable(c)
    line = f"{c['cluster']} {c['state']}" + (f": {c['reason']}" if c["reason"] else "")
    err = c["last_error"] or c["kind_error"] or c["api_error"]
    if err and c["state"] != "ready":
        line += f" (last error: {err})"
    return line


def _containers(h: ContainerHorizonStatus | ComponentError | None) -> str:
    if h is None:
        return "off ([containers] enabled = false)"
    if is_error(h):
        return _unreadable(h)
    if h["state"] == "on":
        line = f"on at {h['address']} (DNS :53, HTTP :80, TLS :443)"
        return line + (f", {len(h['port_conflicts'])} ports not served" if h["port_conflicts"] else "")
    return f"{h['state']}: {h['reason']}"


def _powerdns(p: PowerDNSStatus | ComponentError, now: float) -> str:
    if is_error(p):
        return _unreadable(p)
    line = f"zone {p['zone']} at {p['api']}: {'connected' if p['connected'] else 'not connected'}, "
    line += f"last sync {clock(p['last_sync'], now=now)}, {p['records_owned']} names owned"
    if p["conflicts"]:
        line += f", {len(p['conflicts'])} conflicts"
    if p["last_error"]:
        retry = p["retry_in_seconds"]
        line += f"; error: {p['last_error']}" + (f" (retry in {duration(retry)})" if retry else "")
    return line


def _tls(s: Status) -> str:
    t = s["tls"]
    if not t["enabled"] or t["error"]:
        return f"off: {t['error'] or 'tls.enabled = false'}"
    expires = t.get("expires", "")[:10]
    return f"local CA {t.get('ca') or '?'}" + (f", expires {expires}" if expires else "") + \
        " (maculactl trust install)"


def _web(w: WebStatus | ComponentError | None) -> str:
    if w is None:
        return "off ([web] enabled = false)"
    if is_error(w):
        return _unreadable(w)
    if not w["serving"]:
        return f"not serving: {w['last_error'] or 'starting'}"
    return f"{w['url']}" + (f" (or {w['address_url']})" if w["address_url"] else "")


def _reload(last: LastReload | None, now: float) -> str:
    if last is None:
        return "never (since start)"
    when = clock(last["time"], now=now)
    if not last["ok"]:
        return f"{when} refused: {last['error']}"
    changed = ", ".join(last["changed"]) or "nothing changed"
    line = f"{when} ok ({changed})"
    if last.get("state_error"):
        line += f"; state not saved yet: {last.get('state_error')}"
    return line


def render_status(s: Status, services: Sequence[ServiceView] | None, *, now: float) -> str:
    """The summary; `services` is `GET /v1/services` (None when the Docker tier is off)."""
    comps = s["components"]
    head = f"maculad {s['version']} (pid {s['pid']}, config {s['config_path']}): up {duration(s['uptime_seconds'])}, "
    head += "ready" if s["ready"] else "NOT READY"
    lines = [head]
    lines += _more([f"not ready: {why}" for why in s["not_ready"]], "reasons")
    rows: list[tuple[str, str]] = [("DNS", _dns(s, comps.get("dns")))]
    relay, relay_details = _relay(comps.get("proxy"))
    rows.append(("relay", relay))
    rows += [("", d) for d in relay_details]
    rows.append(("routes", _routes(s)))
    rows.append(("docker", _docker(s, comps.get("docker"))))
    if services is not None:
        svc, svc_details = _services(services)
        rows.append(("services", svc))
        rows += [("", d) for d in svc_details]
    rows.append(("kubernetes", _kubernetes(comps.get("kubernetes"), comps.get("coredns"))))
    rows.append(("cluster", _cluster(s, comps.get("kind"))))
    rows.append(("containers", _containers(comps.get("containers"))))
    pdns = comps.get("powerdns")
    if pdns is not None:
        rows.append(("PowerDNS", _powerdns(pdns, now)))
    rows.append(("TLS", _tls(s)))
    rows.append(("status page", _web(comps.get("web"))))
    metrics = comps.get("metrics")
    if metrics is not None:
        rows.append(("metrics", _unreadable(metrics) if is_error(metrics) else f"http://{metrics['listen']}/metrics"))
    st = s["state"]
    if st["save_error"]:
        since = clock(st["failing_since"], now=now)
        rows.append(("state", f"saving {st['path']} fails since {since}: {st['save_error']}"))
    broken = [t for t in s["tasks"] if t["last_error"]]
    if broken:
        rows.append(("tasks", "; ".join(f"{t['name']} restarted {t['restarts']}x: {t['last_error']}"
                                        for t in broken[:DETAILS])
                     + (f"; and {len(broken) - DETAILS} more" if len(broken) > DETAILS else "")))
    rows.append(("last reload", _reload(s["last_reload"], now)))
    lines += [f"{label:<{_LABEL}}{text}".rstrip() for label, text in rows]
    return "\n".join(lines)


def render_verbose(s: Status, *, now: float) -> str:
    """Everything the daemon reports, as a tree, with times and durations a person reads."""
    return render_tree(readable(s, now=now))
