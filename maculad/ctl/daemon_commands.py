"""The commands that ask or tell the running daemon: status, routes, services, start/stop/restart,
cluster, dns, powerdns, reload, events, open. Each fetches one typed answer and renders it."""

from __future__ import annotations

import json
import time

from maculad.control.protocol import is_error
from maculad.ctl.client import DaemonError
from maculad.ctl.context import EXIT_FAIL, EXIT_OK, Ctx, Failure
from maculad.ctl.render import (
    no_services,
    readable,
    render_event,
    render_powerdns,
    render_routes,
    render_services,
    render_tree,
)
from maculad.ctl.status_view import render_status, render_verbose


def cmd_status(ctx: Ctx) -> int:
    status = ctx.client.status()
    if ctx.json:
        ctx.emit(status, str)
    elif ctx.option("verbose"):
        ctx.emit(status, lambda s: render_verbose(s, now=time.time()))
    else:
        services = ctx.client.services()["services"] if status["docker_enabled"] else None
        ctx.emit(status, lambda s: render_status(s, services, now=time.time()))
    return EXIT_OK


def cmd_routes(ctx: Ctx) -> int:
    ctx.emit(ctx.client.routes(), render_routes)
    return EXIT_OK


def cmd_services(ctx: Ctx) -> int:
    data = ctx.client.services()
    if data["services"] or ctx.json:
        ctx.emit(data, render_services)
    else:
        docker = ctx.client.status()["components"].get("docker")
        ctx.emit(data, lambda _: no_services(docker))
    return EXIT_OK


def cmd_service_action(ctx: Ctx) -> int:
    name, action = ctx.args.service, ctx.args.command
    data = ctx.client.service_action(name, action)
    ctx.emit(data, lambda d: f"{d['action']}: {d['service']}: done")
    return EXIT_OK


def cmd_cluster(ctx: Ctx) -> int:
    if ctx.args.cluster_command == "recreate":
        ctx.emit(ctx.client.cluster_recreate(), lambda d: f"cluster {d['cluster']}: recreated")
        return EXIT_OK
    try:
        data = ctx.client.cluster()
    except DaemonError as exc:
        if exc.status != 409:
            raise
        status = ctx.client.status()
        if status["kind_manage"]:
            raise
        # a read: that maculad does not manage the cluster is the answer, not a failure
        name = status["kind_cluster"]
        ctx.emit({"managed": False, "cluster": name},
                 lambda _: f"the kind cluster {name} is not managed by maculad ([kind] manage = false)")
        return EXIT_OK
    ctx.emit(data, lambda d: render_tree(readable(d, now=time.time())))
    return EXIT_OK


def cmd_dns(ctx: Ctx) -> int:
    ctx.emit(ctx.client.dns(ctx.args.name), render_tree)
    return EXIT_OK


def cmd_powerdns(ctx: Ctx) -> int:
    data = ctx.client.powerdns()
    ctx.emit(data, lambda d: render_powerdns(d, now=time.time()))
    return EXIT_FAIL if data["last_error"] else EXIT_OK


def cmd_reload(ctx: Ctx) -> int:
    data = ctx.client.reload()
    ctx.emit(data, lambda d: "reloaded: " + (", ".join(d["changed"]) or "nothing changed"))
    return EXIT_OK


def cmd_events(ctx: Ctx) -> int:
    try:
        for event in ctx.client.events(follow=ctx.args.follow, replay=ctx.args.replay):
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

    status = ctx.client.status()
    web = status["components"].get("web")
    if web is None:
        raise Failure("the status page is off ([web] enabled = false in the config)")
    if is_error(web):
        raise Failure(f"the status page's state cannot be read: {web['error']}")
    bound = web["bound"]
    if not web["serving"] or bound is None or web["address_url"] is None:
        raise Failure(f"the status page is not serving: {web['last_error'] or 'starting'}")
    url = web["url"]
    note = None
    if not _resolves_to(status["domain"], str(bound[0])):
        url = web["address_url"]
        note = (f"{status['domain']} does not resolve to {bound[0]} here "
                "(maculactl resolver install); using the address")
    print_only = bool(ctx.args.print_only)
    opened = False if print_only else webbrowser.open(url)
    ctx.emit({"url": url, "opened": opened, "note": note},
             lambda d: "\n".join(x for x in (note and f"note: {note}", url,
                                             None if opened or print_only
                                             else "no browser found: open the address above") if x))
    return EXIT_OK
