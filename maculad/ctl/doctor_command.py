"""`maculactl doctor`: gather the facts (the daemon's answers, else the config file's), run the
pure checks of control/doctor.py against this machine, render the findings."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maculad.control.doctor import (
    Facts,
    Probes,
    RouteFacts,
    cluster_facts,
    maculactl_command,
    real_probes,
    run_checks,
)
from maculad.control.protocol import is_error
from maculad.ctl.client import DaemonError, DaemonUnavailable
from maculad.ctl.context import EXIT_FAIL, EXIT_OK, Ctx, Failure
from maculad.ctl.render import render_findings
from maculad.ctl.snapshot import Snapshot, from_config, from_daemon


def running_maculactl() -> str | None:
    """The resolved path of the maculactl running now (its console script, else the one beside
    this interpreter), None when there is none (run as `python -m`)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    for cand in (argv0, Path(sys.executable).parent / "maculactl"):
        if cand is not None and cand.name == "maculactl" and cand.is_file():
            return os.path.realpath(cand)
    return None


def maculactl_for_fixes() -> str:
    found = shutil.which("maculactl")
    return maculactl_command(running_maculactl(), found, os.path.realpath(found) if found else None)


def gather_facts(ctx: Ctx) -> Facts:
    error: str | None = None
    denied = False
    try:
        snap = from_daemon(ctx.client)
    except DaemonUnavailable as exc:
        error = str(exc)
        denied = exc.denied
        cfg = ctx.option("config")
        snap = from_config(cfg) if cfg else Snapshot("nothing", "macula.local", (), ())
    except DaemonError as exc:
        raise Failure(f"the daemon refused to describe itself: {exc.message}") from None
    routes = tuple(
        RouteFacts(name=r["name"], ip=r["ip"],
                   ports=tuple((p["proto"], p["port"]) for p in r["ports"] if p["proto"] in ("tcp", "udp")))
        for r in snap.routes
    )
    cluster: Any = None
    containers: Mapping[str, Any] | None = None
    limits: Mapping[str, Any] | None = None
    if error is None:
        if snap.kind_manage:
            try:
                cluster = cluster_facts(ctx.client.cluster())
            except DaemonError as exc:
                cluster = exc.message
            except DaemonUnavailable as exc:
                cluster = str(exc)
        try:
            status = ctx.client.status()
            comp = status["components"].get("containers")
            containers = comp if comp is not None and not is_error(comp) else None
            limits = status.get("limits")
        except (DaemonError, DaemonUnavailable):
            containers = None
    return Facts(
        socket=ctx.client.socket_path if error is None else "",  # the error names every socket tried
        daemon_error=error, daemon_pid=ctx.client.server_pid() if error is None else None,
        source=snap.source, domain=snap.domain, dns_listen=snap.dns_listen, routes=routes,
        docker_enabled=snap.docker_enabled, kind_manage=snap.kind_manage, cluster=cluster,
        containers=containers, limits=limits, daemon_denied=denied, maculactl=maculactl_for_fixes(),
    )


def cmd_doctor(ctx: Ctx, probes: Probes | None = None) -> int:
    facts = gather_facts(ctx)
    findings = run_checks(facts, probes or real_probes())
    failed = any(f.level == "fail" for f in findings)
    ctx.emit({"ok": not failed, "source": facts.source, "findings": [f.as_dict() for f in findings]},
             lambda _: render_findings(findings))
    return EXIT_FAIL if failed else EXIT_OK
