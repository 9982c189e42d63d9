"""Text for a person: tables, trees and the views of the daemon's answers. Pure.

Every function takes data (a protocol shape, or plain JSON for the generic
`render_tree`) and returns the text; none prints or asks anything. `--json`
bypasses all of this.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maculad.control.doctor import Finding
    from maculad.control.protocol import Event, PortView, PowerDNSStatus, RoutesAnswer, ServicesAnswer


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
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


def render_tree(data: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(data, dict):
        lines: list[str] = []
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list) or not v}
        width = max((len(str(k)) for k in scalars), default=0)
        for k, v in scalars.items():
            lines.append(f"{pad}{str(k) + ':':<{width + 1}} {cell(v)}")
        for k, v in data.items():
            if k in scalars:
                continue
            lines.append(f"{pad}{k}:")
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


def ago(ts: float | None, *, now: float | None = None) -> str:
    if ts is None:
        return "never"
    return f"{max(0.0, (time.time() if now is None else now) - ts):.1f}s ago"


def render_powerdns(data: PowerDNSStatus) -> str:
    lines = [
        f"api          {data['api']}  (server {data['server_id']}, zone {data['zone']})",
        f"connected    {'yes' if data['connected'] else 'no'}",
        f"last sync    {ago(data['last_sync'])}",
        f"owner id     {data['owner_id']}",
        f"publishing   {data['publish_address'] if data['publish'] else 'off'}",
        f"records      {data['records_owned']} names owned, {data['patches_sent']} PATCH sent",
        f"answers      in-zone names maculad does not own from {data['dns'] or '(off)'}",
    ]
    if data["last_error"]:
        retry = data["retry_in_seconds"]
        lines.append(f"error        {data['last_error']}" + (f" (retry in {retry}s)" if retry else ""))
    conflicts = data["conflicts"]
    lines.append(f"conflicts    {len(conflicts)}")
    if conflicts:
        lines.append(table(conflicts, ["name", "route", "owner", "reason"]))
    return "\n".join(lines)


SERVICE_COLUMNS = ("service", "state", "up", "health", "restarts", "backoff", "policy", "last_error")


def render_services(data: ServicesAnswer) -> str:
    rows = data["services"]
    if not rows:
        return "no supervised services (is docker.enabled on?)"
    return table([{"service": s["service"], "state": s["state"], "up": s["up"], "health": s["health"],
                   "restarts": s["restarts"], "backoff": f"{s['backoff_seconds']:g}s" if s["backoff_seconds"] else None,
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
