"""`maculactl`: the command-line face of the control socket.

Each subcommand is a small function: fetch (control client, or the config
file with `--config` where the daemon's data can be derived offline), then
render — a readable table by default, the raw JSON with `--json`. Exit codes:
0 ok, 1 a failure reported by the daemon or a check, 2 usage, 3 the daemon is
not running or its socket is not accessible. Every error is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from maculad.control.client import ControlClient, DaemonError, DaemonUnavailable, default_socket, path_quote
from maculad.control.doctor import (
    Facts,
    Finding,
    Probes,
    RouteFacts,
    cluster_facts,
    real_probes,
    run_checks,
)
from maculad.control.resolver import (
    RESOLVER_BACKENDS,
    ResolverBackend,
    ResolverError,
    apply_hosts_block,
    default_backend,
    hosts_block,
    install,
    remove_hosts_block,
    resolver_plan,
    uninstall,
    write_hosts,
)
from maculad.core.net import Backend, parse_hostport

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class Failure(Exception):
    """A failure to report in one line with exit code 1."""


@dataclass(frozen=True, slots=True)
class Ctx:
    args: argparse.Namespace
    json: bool
    out: TextIO
    client: ControlClient

    def emit(self, data: Any, render: Callable[[Any], str]) -> None:
        if self.json:
            self.out.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            text = render(data)
            self.out.write(text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- rendering


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return ", ".join(_cell(x) for x in v) or "-"
    if isinstance(v, dict):
        return " ".join(f"{k}={_cell(x)}" for k, x in v.items()) or "-"
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = [c.upper().replace("_", " ") for c in columns]
    body = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def pick_columns(rows: Sequence[dict[str, Any]], preferred: Sequence[str]) -> list[str]:
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
            lines.append(f"{pad}{str(k) + ':':<{width + 1}} {_cell(v)}")
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
        return "\n".join(f"{pad}- {_cell(x)}" for x in data)
    return f"{pad}{_cell(data)}"


def render_ports(ports: Any) -> str:
    if not isinstance(ports, list):
        return _cell(ports)
    parts = []
    for p in ports:
        if isinstance(p, dict):
            parts.append(f"{p.get('proto', '?')}/{p.get('port', '?')}→{p.get('backend', '?')}")
    return " ".join(parts) or "-"


def render_routes(data: Any) -> str:
    routes = data.get("routes", []) if isinstance(data, dict) else []
    rows = [{**r, "ports": render_ports(r.get("ports"))} for r in routes if isinstance(r, dict)]
    out = [table(rows, ["name", "ip", "source", "ports", "service"]) if rows else "no routes"]
    conflicts = data.get("conflicts", []) if isinstance(data, dict) else []
    if conflicts:
        out.append("")
        out.append(f"conflicts ({len(conflicts)}):")
        out.append(table(conflicts, pick_columns(conflicts, ["kind", "name", "loser", "winner", "reason"])))
    pdns = data.get("powerdns_conflicts", []) if isinstance(data, dict) else []
    if pdns:
        out.append("")
        out.append(f"PowerDNS conflicts ({len(pdns)}): names someone else owns in the zone; "
                   "maculad answers them locally and leaves PowerDNS alone")
        out.append(table(pdns, pick_columns(pdns, ["name", "route", "owner", "reason"])))
    horizons = data.get("horizons") if isinstance(data, dict) else None
    containers = horizons.get("containers") if isinstance(horizons, dict) else None
    if isinstance(containers, dict):
        out.append("")
        if containers.get("state") == "on":
            out.append(f"container horizon on {containers.get('address')}: every name answers "
                       f"{containers.get('address')}; :80 by Host header, :443 by SNI")
        else:
            out.append(f"container horizon off: {containers.get('reason')}")
        pc = containers.get("port_conflicts") or []
        if pc:
            out.append(f"ports not served on {containers.get('address')} ({len(pc)}):")
            out.append(table([{**c, "port": f"{c.get('port')}/{c.get('proto')}"} for c in pc if isinstance(c, dict)],
                             ["port", "routes", "reason"]))
    if isinstance(data, dict) and "version" in data:
        out.append(f"\ntable version {data['version']}")
    return "\n".join(out)


def _ago(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "never"
    return f"{max(0.0, time.time() - ts):.1f}s ago"


def render_powerdns(data: Any) -> str:
    if not isinstance(data, dict):
        return render_tree(data)
    lines = [
        f"api          {data.get('api')}  (server {data.get('server_id')}, zone {data.get('zone')})",
        f"connected    {'yes' if data.get('connected') else 'no'}",
        f"last sync    {_ago(data.get('last_sync'))}",
        f"owner id     {data.get('owner_id')}",
        f"publishing   {data.get('publish_address') if data.get('publish') else 'off'}",
        f"records      {data.get('records_owned', 0)} names owned, {data.get('patches_sent', 0)} PATCH sent",
        f"answers      in-zone names maculad does not own from {data.get('dns') or '(off)'}",
    ]
    if data.get("last_error"):
        retry = data.get("retry_in_seconds")
        lines.append(f"error        {data['last_error']}" + (f" (retry in {retry}s)" if retry else ""))
    conflicts = data.get("conflicts") or []
    lines.append(f"conflicts    {len(conflicts)}")
    if conflicts:
        lines.append(table(conflicts, pick_columns(conflicts, ["name", "route", "owner", "reason"])))
    return "\n".join(lines)


def render_services(data: Any) -> str:
    rows = data.get("services", []) if isinstance(data, dict) else []
    if not rows:
        return "no supervised services (is docker.enabled on?)"
    cols = pick_columns(rows, ["name", "state", "up", "health", "restarts", "backoff", "policy", "container",
                               "last_error"])
    return table(rows, cols)


def render_event(e: dict[str, Any]) -> str:
    t = e.get("time")
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, int | float) else "--:--:--"
    rest = " ".join(f"{k}={_cell(v)}" for k, v in e.items() if k not in ("time", "kind"))
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


# --------------------------------------------------------------------------- daemon data


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What hosts/resolver/doctor need, from the daemon or the config file."""

    source: str
    domain: str
    dns_listen: tuple[Backend, ...]
    routes: list[dict[str, Any]]
    docker_enabled: bool = False
    kind_manage: bool = False


def _parse_addr(text: str) -> Backend | None:
    try:
        return parse_hostport(text)
    except ValueError:
        return None


def snapshot_from_daemon(client: ControlClient) -> Snapshot:
    status = client.get("/v1/status")
    routes = client.get("/v1/routes")
    if not isinstance(status, dict) or not isinstance(routes, dict):
        raise Failure("the daemon's status or routes are not JSON objects")
    listen = tuple(b for b in (_parse_addr(str(a)) for a in status.get("dns_listen") or []) if b)
    return Snapshot(
        source="daemon",
        domain=str(status.get("domain") or routes.get("domain") or "macula.local"),
        dns_listen=listen,
        routes=[r for r in routes.get("routes", []) if isinstance(r, dict)],
        docker_enabled=status_flags(status)[0],
        kind_manage=status_flags(status)[1],
    )


def status_flags(status: dict[str, Any]) -> tuple[bool, bool]:
    """(Docker tier enabled, kind managed): the explicit `config_view` keys when the daemon sends
    them, else whether its status lists a `docker` / `kind` component."""
    comps = status.get("components")
    names = set(comps) if isinstance(comps, dict) else set()
    docker = status.get("docker_enabled")
    kind = status.get("kind_manage")
    return (bool(docker) if docker is not None else "docker" in names,
            bool(kind) if kind is not None else bool(names & {"kind", "cluster"}))


def snapshot_from_config(path: str) -> Snapshot:
    from maculad.config import ConfigError, load_config
    from maculad.control.views import table_view
    from maculad.providers.static import config_routes
    from maculad.routes.store import AllocationStore
    from maculad.routes.table import build_table

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    try:
        allocations = AllocationStore(state_dir=cfg.state_dir).load()
    except Exception:  # an unreadable state dir only means IPs may differ from the daemon's
        allocations = {}
    tbl, _ = build_table(domain=cfg.domain, version=0, specs={"config": config_routes(cfg)},
                         allocations=allocations, pool=cfg.proxy.pool,
                         allow_non_loopback=cfg.proxy.allow_non_loopback)
    return Snapshot(
        source=f"config {path}", domain=cfg.domain, dns_listen=cfg.dns.listen,
        routes=[dict(r) for r in table_view(tbl)["routes"]], docker_enabled=cfg.docker.enabled, kind_manage=cfg.kind.manage,
    )


def snapshot(ctx: Ctx) -> Snapshot:
    cfg = getattr(ctx.args, "config", None)
    if cfg:
        return snapshot_from_config(cfg)
    try:
        return snapshot_from_daemon(ctx.client)
    except DaemonUnavailable as exc:
        raise DaemonUnavailable(f"{exc} (or pass --config FILE to read the config file instead)") from None


# --------------------------------------------------------------------------- commands


def cmd_status(ctx: Ctx) -> int:
    ctx.emit(ctx.client.get("/v1/status"), render_tree)
    return EXIT_OK


def cmd_routes(ctx: Ctx) -> int:
    ctx.emit(ctx.client.get("/v1/routes"), render_routes)
    return EXIT_OK


def cmd_services(ctx: Ctx) -> int:
    ctx.emit(ctx.client.get("/v1/services"), render_services)
    return EXIT_OK


def cmd_service_action(ctx: Ctx) -> int:
    name, action = ctx.args.service, ctx.args.command
    data = ctx.client.post(f"/v1/services/{path_quote(name)}/{action}", timeout=300)
    ctx.emit(data, lambda d: render_tree(d) if d else f"{action}: {name}: done")
    return EXIT_OK


def cmd_cluster(ctx: Ctx) -> int:
    if ctx.args.cluster_command == "recreate":
        data = ctx.client.post("/v1/cluster/recreate", timeout=900)
    else:
        data = ctx.client.get("/v1/cluster")
    ctx.emit(data, render_tree)
    return EXIT_OK


def cmd_dns(ctx: Ctx) -> int:
    ctx.emit(ctx.client.get("/v1/dns", {"name": ctx.args.name}), render_tree)
    return EXIT_OK


def cmd_powerdns(ctx: Ctx) -> int:
    data = ctx.client.get("/v1/powerdns")
    ctx.emit(data, render_powerdns)
    return EXIT_OK if isinstance(data, dict) and not data.get("last_error") else EXIT_FAIL


def cmd_reload(ctx: Ctx) -> int:
    data = ctx.client.post("/v1/reload", timeout=120)
    ctx.emit(data, lambda d: render_tree(d) if d else "reloaded")
    return EXIT_OK


def cmd_events(ctx: Ctx) -> int:
    params = {"follow": "1" if ctx.args.follow else "0"}
    if ctx.args.replay is not None:
        params["replay"] = str(ctx.args.replay)
    try:
        for event in ctx.client.stream("/v1/events", params):
            ctx.out.write(json.dumps(event, default=str) if ctx.json else render_event(event))
            ctx.out.write("\n")
            ctx.out.flush()
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


def _resolves_to(name: str, ip: str, timeout: float = 2.0) -> bool:
    """Does this machine's resolver answer `name` with `ip`? (A slow resolver counts as no.)"""
    import concurrent.futures
    import socket

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, name, None, socket.AF_INET).result(timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)
    return any(info[4][0] == ip for info in infos)


def cmd_open(ctx: Ctx) -> int:
    """Open the status page: at http://<domain> when this machine resolves it, else at its address."""
    import webbrowser

    status = ctx.client.get("/v1/status")
    web = (status.get("components") or {}).get("web")
    if not web:
        raise Failure("the status page is off ([web] enabled = false in the config)")
    if not web.get("serving") or not web.get("bound"):
        raise Failure(f"the status page is not serving: {web.get('last_error') or 'starting'}")
    url = str(web["url"])
    note = None
    if not _resolves_to(str(status.get("domain", "")), str(web["bound"][0])):
        url = str(web["address_url"])
        note = (f"{status.get('domain')} does not resolve to {web['bound'][0]} here "
                "(maculactl resolver install); using the address")
    opened = False if ctx.args.print_only else webbrowser.open(url)
    ctx.emit({"url": url, "opened": opened, "note": note},
             lambda d: "\n".join(x for x in (d["note"] and f"note: {d['note']}", d["url"],
                                             None if d["opened"] or ctx.args.print_only
                                             else "no browser found: open the address above") if x))
    return EXIT_OK


def cmd_hosts(ctx: Ctx) -> int:
    path = Path(ctx.args.file)
    if ctx.args.remove:
        try:
            old = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise Failure(f"cannot read {path}: {exc.strerror or exc}") from None
        changed = write_hosts(path, remove_hosts_block(old))
        ctx.emit({"file": str(path), "changed": changed, "action": "remove"},
                 lambda d: f"{'removed the maculad block from' if changed else 'no maculad block in'} {path}")
        return EXIT_OK
    snap = snapshot(ctx)
    pairs = [(str(r["name"]), str(r["ip"])) for r in snap.routes if r.get("name") and r.get("ip")]
    block = hosts_block(pairs)
    if not ctx.args.apply:
        ctx.emit({"block": block, "routes": len(pairs), "source": snap.source}, lambda d: block)
        return EXIT_OK
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror or exc}") from None
    changed = write_hosts(path, apply_hosts_block(old, block))
    ctx.emit({"file": str(path), "changed": changed, "action": "apply", "routes": len(pairs)},
             lambda d: f"{'wrote' if changed else 'already up to date:'} {len(pairs)} names in {path}")
    return EXIT_OK


def cmd_resolver(ctx: Ctx) -> int:
    a = ctx.args
    root = Path(a.root)
    backend: ResolverBackend = a.backend or default_backend(root=root)
    snap = snapshot(ctx)
    plan = resolver_plan(backend, domain=snap.domain, listen=snap.dns_listen)
    if a.resolver_command == "install":
        actions = install(plan, root=root, dry_run=a.dry_run)
    else:
        actions = uninstall(plan, root=root, dry_run=a.dry_run)
    changed = any(x.action in ("written", "removed") for x in actions)
    reload_cmds = [" ".join(c) for c in plan.reload]
    data = {
        "backend": backend, "action": a.resolver_command, "dry_run": a.dry_run,
        "files": [{"path": str(x.path), "action": x.action} for x in actions],
        "content": {str(f.path): f.content for f in plan.files} if a.dry_run else None,
        "reload": reload_cmds, "notes": list(plan.notes),
    }
    reloaded: list[str] = []
    if a.reload and changed and not a.dry_run:
        for c in plan.reload:
            r = subprocess.run(list(c), capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise Failure(f"{' '.join(c)} failed ({r.returncode}): {r.stderr.strip()[:200]}")
            reloaded.append(" ".join(c))

    def render(_: Any) -> str:
        lines = [f"{x.action}: {x.path}" for x in actions]
        if a.dry_run:
            for f in plan.files:
                if a.resolver_command == "install":
                    lines.append(f"\n--- {f.path}\n{f.content.rstrip()}")
        lines += [f"note: {n}" for n in plan.notes]
        if reloaded:
            lines.append("ran: " + "; ".join(reloaded))
        elif changed:
            lines.append("now run: sudo " + " && sudo ".join(reload_cmds) + "   (or pass --reload)")
        return "\n".join(lines)

    ctx.emit(data, render)
    return EXIT_OK


def cmd_docker_dns(ctx: Ctx) -> int:
    """`"dns": [G]` in /etc/docker/daemon.json, for containers not started from the compose file."""
    from maculad.horizons import docker_dns

    a = ctx.args
    g = a.address
    if not g:
        try:
            status = ctx.client.get("/v1/status")
        except DaemonUnavailable as exc:
            raise Failure(f"{exc}; pass --address G (the Docker bridge gateway, e.g. 172.17.0.1)") from None
        comp = (status.get("components") or {}).get("containers") if isinstance(status, dict) else None
        g = comp.get("address") if isinstance(comp, dict) else None
        if not g:
            why = comp.get("reason") if isinstance(comp, dict) else "[containers] is not enabled"
            raise Failure(f"the daemon does not know G ({why}); pass --address G")
    try:
        change = docker_dns.plan(a.docker_dns_command, g, root=Path(a.root) if a.root != "/" else None)
        backup = None if a.dry_run else docker_dns.apply(change)
    except (docker_dns.DaemonJSONError, ValueError) as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
    data = {"action": a.docker_dns_command, "address": g, "file": str(change.path), "changed": change.changed,
            "dry_run": a.dry_run, "backup": str(backup) if backup else None,
            "content": change.after if a.dry_run else None}

    def render(_: Any) -> str:
        if not change.changed:
            return f"{change.path} already {'has' if a.docker_dns_command == 'install' else 'lacks'} \"dns\": [{g}]"
        if a.dry_run:
            return f"would write {change.path}:\n{change.after.rstrip()}"
        lines = [f"wrote {change.path}" + (f" (the old one is {backup})" if backup else "")]
        lines.append("dockerd reads it only when it starts: restart it (sudo systemctl restart docker); "
                     "running containers keep their DNS until they are recreated")
        return "\n".join(lines)

    ctx.emit(data, render)
    return EXIT_OK


def _root_cert(ctx: Ctx) -> tuple[Path, str]:
    """(the root's path, the domain): from --ca, --config (state_dir/ca/ca.pem) or the daemon."""
    a = ctx.args
    domain = getattr(a, "domain", None)
    if getattr(a, "ca", None):
        return Path(a.ca), domain or "macula.local"
    cfg = getattr(a, "config", None)
    if cfg:
        from maculad.config import ConfigError, load_config
        try:
            c = load_config(cfg)
        except ConfigError as exc:
            raise Failure(str(exc)) from None
        return c.state_dir / "ca" / "ca.pem", c.domain
    try:
        status = ctx.client.get("/v1/status")
    except DaemonUnavailable as exc:
        raise DaemonUnavailable(f"{exc} (or pass --config FILE or --ca PATH)") from None
    tls = status.get("tls") if isinstance(status, dict) else None
    if not isinstance(tls, dict) or not tls.get("ca"):
        why = tls.get("error") if isinstance(tls, dict) else "the daemon reports no TLS"
        raise Failure(f"the daemon has no CA: {why}")
    return Path(str(tls["ca"])), str(status.get("domain") or "macula.local")


def cmd_trust(ctx: Ctx) -> int:
    from maculad.pki import trust

    a = ctx.args
    path, domain = _root_cert(ctx)
    try:
        root = trust.read_root(path, domain)
    except trust.TrustError as exc:
        raise Failure(str(exc)) from None
    if a.trust_command == "export":
        ctx.out.write(root.pem.decode("ascii"))
        return EXIT_OK
    home = Path(os.environ.get("HOME") or Path.home())
    facts = trust.detect(root=Path(a.root), home=home)
    if a.trust_command == "show":
        from cryptography import x509

        cert = x509.load_der_x509_certificate(root.der)
        info: dict[str, Any] = {"path": str(root.path), "domain": domain, "fingerprint_sha256": root.fingerprint,
                "subject": cert.subject.rfc4514_string(), "expires": cert.not_valid_after_utc.isoformat(),
                "installed": trust.installed_in(facts, root)}
        ctx.emit(info, lambda d: "\n".join([
            f"root:        {d['path']}", f"subject:     {d['subject']}", f"sha256:      {d['fingerprint_sha256']}",
            f"expires:     {d['expires']}",
            "installed:   " + (", ".join(d["installed"]) if d["installed"] else "nowhere (maculactl trust install)"),
        ]))
        return EXIT_OK
    plan = trust.plan_install if a.trust_command == "install" else trust.plan_uninstall
    actions, notes = plan(facts, root)
    try:
        results = trust.execute(actions, root, dry_run=a.dry_run, facts=facts)
    except (trust.TrustError, OSError) as exc:
        raise Failure(f"trust {a.trust_command}: {exc}") from None
    data: dict[str, Any] = {
        "action": a.trust_command, "dry_run": a.dry_run, "root": str(root.path),
        "fingerprint_sha256": root.fingerprint, "family": facts.family, "notes": notes,
        "steps": [{"store": r.action.store, "what": r.action.what, "kind": r.action.kind,
                   "path": str(r.action.path) if r.action.path else None, "argv": list(r.action.argv),
                   "done": r.done, "detail": r.detail} for r in results],
    }

    def render(d: dict[str, Any]) -> str:
        lines = []
        for s in d["steps"]:
            if s["kind"] == "run" and s["detail"] == "not present":
                continue
            verb = "would " if d["dry_run"] else ""
            what = s["path"] or s["what"]
            step = {"write": "write", "remove": "remove", "run": "run"}[s["kind"]]
            lines.append(f"{verb}{step}: {what}" + (f"  ({' '.join(s['argv'])})" if s["argv"] else ""))
        lines += [f"note: {n}" for n in d["notes"]]
        if not d["steps"]:
            lines.append("nothing to do")
        return "\n".join(lines)

    ctx.emit(data, render)
    return EXIT_OK


def gather_facts(ctx: Ctx) -> Facts:
    sock = ctx.client.socket_path
    try:
        snap = snapshot_from_daemon(ctx.client)
        error: str | None = None
    except DaemonUnavailable as exc:
        error = str(exc)
        cfg = getattr(ctx.args, "config", None)
        snap = snapshot_from_config(cfg) if cfg else Snapshot("nothing", "macula.local", (), [])
    except DaemonError as exc:
        raise Failure(f"the daemon refused to describe itself: {exc.message}") from None
    routes = tuple(
        RouteFacts(
            name=str(r["name"]), ip=str(r["ip"]),
            ports=tuple((p["proto"], int(p["port"])) for p in r.get("ports", [])
                        if isinstance(p, dict) and p.get("proto") in ("tcp", "udp") and "port" in p),
        )
        for r in snap.routes if r.get("name") and r.get("ip")
    )
    cluster: Any = None
    if error is None and snap.kind_manage:
        try:
            cluster = cluster_facts(ctx.client.get("/v1/cluster"))
        except DaemonError as exc:
            cluster = exc.message
        except DaemonUnavailable as exc:
            cluster = str(exc)
    containers: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    if error is None:
        try:
            status = ctx.client.get("/v1/status")
            comp = (status.get("components") or {}).get("containers")
            containers = comp if isinstance(comp, dict) else None
            limits = status.get("limits") if isinstance(status.get("limits"), dict) else None
        except (DaemonError, DaemonUnavailable, AttributeError):
            containers = None
    return Facts(
        socket=sock, daemon_error=error, daemon_pid=ctx.client.server_pid() if error is None else None,
        source=snap.source, domain=snap.domain, dns_listen=snap.dns_listen, routes=routes,
        docker_enabled=snap.docker_enabled, kind_manage=snap.kind_manage, cluster=cluster,
        containers=containers, limits=limits,
    )


def cmd_doctor(ctx: Ctx, probes: Probes | None = None) -> int:
    facts = gather_facts(ctx)
    findings = run_checks(facts, probes or real_probes())
    failed = any(f.level == "fail" for f in findings)
    ctx.emit({"ok": not failed, "source": facts.source, "findings": [f.as_dict() for f in findings]},
             lambda _: render_findings(findings))
    return EXIT_FAIL if failed else EXIT_OK


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="control socket (default $MACULAD_SOCKET or /run/maculad/maculad.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    cfg = _Parser(add_help=False)
    cfg.add_argument("--config", default=argparse.SUPPRESS,
                     help="read routes and DNS addresses from this config file instead of the daemon")

    p = _Parser(prog="maculactl", parents=[common],
                description="Control and inspect maculad. Exit codes: 0 ok, 1 failure, 2 usage, "
                            "3 daemon not running or socket not accessible.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("status", parents=[common], help="everything at a glance")
    sub.add_parser("routes", parents=[common], help="the route table")
    sub.add_parser("services", parents=[common], help="supervised services of the Docker tier")
    for action in ("start", "stop", "restart"):
        sp = sub.add_parser(action, parents=[common], help=f"{action} a supervised service")
        sp.add_argument("service")
    cl = sub.add_parser("cluster", parents=[common], help="the kind cluster")
    cl.add_argument("cluster_command", choices=["status", "recreate"], nargs="?", default="status")
    d = sub.add_parser("dns", parents=[common], help="what maculad answers for NAME and who owns it")
    d.add_argument("name")
    ev = sub.add_parser("events", parents=[common], help="recent events; --follow to stream")
    ev.add_argument("--follow", "-f", action="store_true")
    ev.add_argument("--replay", type=int, default=None, help="how many past events to show first")
    pd = sub.add_parser("powerdns", parents=[common], help="the PowerDNS zone: connected, last sync, conflicts")
    pd.add_argument("powerdns_command", choices=["status"], nargs="?", default="status")
    sub.add_parser("reload", parents=[common], help="re-read the config and apply it")
    op = sub.add_parser("open", parents=[common], help="open the status page in a browser")
    op.add_argument("--print", dest="print_only", action="store_true", help="only print its address")
    sub.add_parser("doctor", parents=[common, cfg], help="check the installation and explain")
    h = sub.add_parser("hosts", parents=[common, cfg], help="an /etc/hosts block for the routes")
    mode = h.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="write the block into --file")
    mode.add_argument("--remove", action="store_true", help="remove the block from --file")
    h.add_argument("--file", default="/etc/hosts")
    r = sub.add_parser("resolver", parents=[common, cfg], help="send the domain's queries to maculad")
    r.add_argument("resolver_command", choices=["install", "uninstall"])
    r.add_argument("--dry-run", action="store_true", help="print what would change")
    r.add_argument("--root", default="/", help="apply under this directory (for tests and images)")
    r.add_argument("--backend", choices=RESOLVER_BACKENDS, default=None,
                   help="default: macos on macOS, else systemd-resolved (NetworkManager if only it is found)")
    r.add_argument("--reload", action="store_true", help="run the reload command after a change")
    dd = sub.add_parser("docker-dns", parents=[common],
                        help="make G (the container horizon) the DNS server of every new container")
    dd.add_argument("docker_dns_command", choices=["install", "uninstall"])
    dd.add_argument("--address", default=None, help="G (default: the running daemon's container horizon)")
    dd.add_argument("--dry-run", action="store_true", help="print what would be written")
    dd.add_argument("--root", default="/", help="edit <root>/etc/docker/daemon.json (for tests and images)")
    t = sub.add_parser("trust", parents=[common, cfg], help="install the local CA's root where browsers look")
    t.add_argument("trust_command", choices=["install", "uninstall", "show", "export"])
    t.add_argument("--dry-run", action="store_true", help="print what would change")
    t.add_argument("--root", default="/", help="apply under this directory (for tests and images)")
    t.add_argument("--ca", default=None, help="the root certificate (default: from the daemon or --config)")
    t.add_argument("--domain", default=None, help="with --ca: the domain it is for (default macula.local)")
    return p


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": cmd_status, "routes": cmd_routes, "services": cmd_services,
    "start": cmd_service_action, "stop": cmd_service_action, "restart": cmd_service_action,
    "cluster": cmd_cluster, "dns": cmd_dns, "reload": cmd_reload, "events": cmd_events,
    "doctor": cmd_doctor, "hosts": cmd_hosts, "resolver": cmd_resolver, "powerdns": cmd_powerdns,
    "docker-dns": cmd_docker_dns,
    "trust": cmd_trust,
    "open": cmd_open,
}


def run(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    sock = getattr(args, "socket", None) or default_socket()
    ctx = Ctx(args=args, json=bool(getattr(args, "json", False)), out=out, client=ControlClient(sock))
    try:
        return COMMANDS[args.command](ctx)
    except DaemonUnavailable as exc:
        err.write(f"maculactl: {exc}\n")
        return EXIT_UNAVAILABLE
    except DaemonError as exc:
        err.write(f"maculactl: {exc.message} (HTTP {exc.status})\n")
        return EXIT_FAIL
    except (Failure, ResolverError) as exc:
        err.write(f"maculactl: {exc}\n")
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run())
