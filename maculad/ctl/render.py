"""Text for a person: tables, trees, times and the views of the daemon's answers. Pure.

Every function takes data (a protocol shape, or plain JSON for the generic
`render_tree`) and returns the text; none prints or asks anything, and a
function that shows a time takes `now` rather than reading the clock. Times
are shown as a clock and an age ("14:02:11 (5 min ago)"), durations as "3h 12m":
`readable` turns the protocol's epoch seconds and durations into those before
a tree is drawn, so no raw float reaches a person. `--json` bypasses all of this.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from maculad.control.protocol import is_error

if TYPE_CHECKING:
    from maculad.control.doctor import Finding
    from maculad.control.protocol import (
        ComponentError,
        DockerStatus,
        Event,
        PortView,
        PowerDNSStatus,
        RoutesAnswer,
        ServicesAnswer,
    )


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1e6 else f"{v:g}"
    if isinstance(v, list | tuple):
        return ", ".join(cell(x) for x in v) or "-"
    if isinstance(v, dict):
        return " ".join(f"{k}={cell(x)}" for k, x in v.items()) or "-"
    return str(v)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = [c.upper().replace("_", " ") for c in columns]
    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def pick_columns(rows: Sequence[Mapping[str, Any]], preferred: Sequence[str]) -> list[str]:
    present = {k for r in rows for k in r}
    cols = [c for c in preferred if c in present]
    if cols:
        return cols
    seen: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in seen and not isinstance(v, dict | list):
                seen.append(k)
    return seen


def _inline(v: Any) -> bool:
    """Shown on its key's line: a scalar, an empty container, or a list of scalars."""
    if isinstance(v, dict):
        return not v
    if isinstance(v, list | tuple):
        return all(not isinstance(x, dict | list | tuple) for x in v)
    return True


def render_tree(data: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(data, dict):
        lines: list[str] = []
        scalars = {k: v for k, v in data.items() if _inline(v)}
        width = max((len(str(k)) for k in scalars), default=0)
        for k, v in scalars.items():
            label = str(k).replace("_", " ")
            lines.append(f"{pad}{label + ':':<{width + 1}} {cell(v)}")
        for k, v in data.items():
            if k in scalars:
                continue
            lines.append(f"{pad}{str(k).replace('_', ' ')}:")
            lines.append(render_tree(v, indent + 1))
        return "\n".join(lines)
    if isinstance(data, list):
        if data and all(isinstance(x, dict) for x in data):
            cols = pick_columns(data, ())
            return "\n".join(pad + ln for ln in table(data, cols).splitlines())
        return "\n".join(f"{pad}- {cell(x)}" for x in data)
    return f"{pad}{cell(data)}"


def render_ports(ports: Sequence[PortView]) -> str:
    return " ".join(f"{p['proto']}/{p['port']}→{p['backend']}" for p in ports) or "-"


def render_routes(data: RoutesAnswer) -> str:
    rows = [{"name": r["name"], "ip": r["ip"], "source": r["source"], "ports": render_ports(r["ports"]),
             "service": r["service"]} for r in data["routes"]]
    out = [table(rows, ["name", "ip", "source", "ports", "service"]) if rows else "no routes"]
    conflicts = data["conflicts"]
    if conflicts:
        out.append("")
        out.append(f"conflicts ({len(conflicts)}):")
        out.append(table(conflicts, ["kind", "name", "loser", "winner", "reason"]))
    pdns = data.get("powerdns_conflicts") or []
    if pdns:
        out.append("")
        out.append(f"PowerDNS conflicts ({len(pdns)}): names someone else owns in the zone; "
                   "maculad answers them locally and leaves PowerDNS alone")
        out.append(table(pdns, ["name", "route", "owner", "reason"]))
    containers = data["horizons"]["containers"]
    out.append("")
    g = containers["address"]
    if containers["state"] == "on":
        out.append(f"container horizon on {g}: every name answers {g}; :80 by Host header, :443 by SNI")
    else:
        out.append(f"container horizon off: {containers['reason']}")
    pc = containers["port_conflicts"]
    if pc:
        out.append(f"ports not served on {g} ({len(pc)}):")
        out.append(table([{"port": f"{c['port']}/{c['proto']}", "routes": c["routes"], "reason": c["reason"]}
                          for c in pc], ["port", "routes", "reason"]))
    out.append(f"\ntable version {data['version']}")
    return "\n".join(out)


def duration(seconds: float) -> str:
    """`3h 12m`, `5m 3s`, `42s`, `2d 4h`; under ten seconds `2.5s`."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}".rstrip("0").rstrip(".") + "s"
    minutes, sec = divmod(int(s), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {sec}s"
    return f"{sec}s"


def ago(ts: float | None, *, now: float) -> str:
    """`5 min ago`, `12 s ago`, `just now`, `never`."""
    if ts is None:
        return "never"
    s = max(0.0, now - ts)
    if s < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{int(s)} s ago"


def clock(ts: float | None, *, now: float) -> str:
    """`14:02:11 (5 min ago)`; a time on another day carries its date; `never` for None."""
    if ts is None:
        return "never"
    lt = time.localtime(ts)
    same_day = time.localtime(now)[:3] == lt[:3]
    return f"{time.strftime('%H:%M:%S' if same_day else '%Y-%m-%d %H:%M:%S', lt)} ({ago(ts, now=now)})"


#: Keys whose numbers are epoch seconds, and keys whose numbers are seconds of duration.
EPOCH_KEYS = frozenset({"time", "last_sync", "last_attempt", "failing_since", "last_run"})
DURATION_KEYS = frozenset({"retry_in", "next_attempt_in"})


def _unit_dropped(key: str, value: Any) -> str:
    """`uptime_seconds` → `uptime` once its value reads `3h 12m`."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return key.removesuffix("_seconds") if numeric and key.endswith("_seconds") else key


def readable(data: Any, *, now: float, key: str = "") -> Any:
    """A protocol answer with its times as clocks, its durations as `3h 12m` (the key losing
    its `_seconds`) and a bound `[host, port]` as `host:port`: what `render_tree` shows a person."""
    if isinstance(data, dict):
        return {_unit_dropped(str(k), v): readable(v, now=now, key=str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        if key == "bound" and len(data) == 2 and isinstance(data[1], int):
            return f"{data[0]}:{data[1]}"
        return [readable(x, now=now) for x in data]
    if isinstance(data, int | float) and not isinstance(data, bool):
        if key in EPOCH_KEYS:
            return clock(data, now=now)
        if key in DURATION_KEYS or key.endswith(("_seconds", "_age")):
            return duration(data)
    return data


def render_powerdns(data: PowerDNSStatus, *, now: float) -> str:
    lines = [
        f"api          {data['api']}  (server {data['server_id']}, zone {data['zone']})",
        f"connected    {'yes' if data['connected'] else 'no'}",
        f"last sync    {clock(data['last_sync'], now=now)}",
        f"owner id     {data['owner_id']}",
        f"publishing   {data['publish_address'] if data['publish'] else 'off'}",
        f"records      {data['records_owned']} names owned, {data['patches_sent']} PATCH sent",
        f"answers      in-zone names maculad does not own from {data['dns'] or '(off)'}",
    ]
    if data["last_error"]:
        retry = data["retry_in_seconds"]
        lines.append(f"error        {data['last_error']}" + (f" (retry in {duration(retry)})" if retry else ""))
    conflicts = data["conflicts"]
    lines.append(f"conflicts    {len(conflicts)}")
    if conflicts:
        lines.append(table(conflicts, ["name", "route", "owner", "reason"]))
    return "\n".join(lines)


SERVICE_COLUMNS = ("service", "state", "up", "health", "restarts", "backoff", "policy", "last_error")


def no_services(docker: DockerStatus | ComponentError | None) -> str:
    """What `maculactl services` says when the list is empty, from the `docker` component."""
    if docker is None or is_error(docker) or not docker["enabled"]:
        if docker is not None and is_error(docker):
            return f"no services are supervised; the Docker tier's state cannot be read: {docker['error']}"
        return "the Docker tier is off ([docker] enabled = false): maculad supervises no services"
    if not docker.get("connected"):
        why = docker.get("reason") or docker.get("last_error") or "connecting"
        return f"no services are supervised: Docker is not connected ({why})"
    project = docker.get("compose", {}).get("project")
    return "no services are supervised" + (f" (compose project {project})" if project else "")


def render_services(data: ServicesAnswer) -> str:
    rows = data["services"]
    return table([{"service": s["service"], "state": s["state"], "up": s["up"], "health": s["health"],
                   "restarts": s["restarts"],
                   "backoff": duration(s["backoff_seconds"]) if s["backoff_seconds"] else None,
                   "policy": s["policy"], "last_error": s["last_error"] or s["error"]} for s in rows],
                 SERVICE_COLUMNS)


def render_event(e: Event) -> str:
    t = e.get("time")
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, int | float) else "--:--:--"
    rest = " ".join(f"{k}={cell(v)}" for k, v in e.items() if k not in ("time", "kind"))
    return f"{stamp} {e.get('kind', '?')} {rest}".rstrip()


def render_findings(findings: Sequence[Finding]) -> str:
    tags = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
    lines = []
    for f in findings:
        lines.append(f"{tags[f.level]} {f.check:<12} {f.summary}")
        if f.fix and f.level in ("warn", "fail"):
            lines.append(f"{'':20}fix: {f.fix}")
    fails = sum(f.level == "fail" for f in findings)
    warns = sum(f.level == "warn" for f in findings)
    lines.append(f"\n{fails} failed, {warns} warnings, {len(findings)} checks")
    return "\n".join(lines)
