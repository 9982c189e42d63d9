"""The commands that set up this machine around the daemon: `hosts`, `resolver`, `docker-dns`, `trust`, `service`.

Each plans with a pure helper (control/resolver.py, horizons/docker_dns.py,
pki/trust.py, ctl/service.py), then writes only under `--root` (default /) unless `--dry-run`.
What they need from the daemon (routes, DNS addresses, G, the CA) comes from
the running daemon or, with `--config FILE`, from the config file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from maculad.control.resolver import (
    ResolverBackend,
    apply_hosts_block,
    default_backend,
    hosts_block,
    install,
    remove_hosts_block,
    resolver_plan,
    uninstall,
    write_hosts,
)
from maculad.control.protocol import is_error
from maculad.core.actions import ActionError, execute
from maculad.ctl import service as svc
from maculad.ctl.client import DaemonUnavailable
from maculad.ctl.context import EXIT_OK, Ctx, Failure
from maculad.ctl.snapshot import snapshot


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
    pairs = [(r["name"], r["ip"]) for r in snap.routes]
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

    would_change = any(x.action in ("would write", "would remove") for x in actions)
    sudo_reload = "sudo " + " && sudo ".join(reload_cmds)

    def render(_: Any) -> str:
        lines = [f"nothing to remove: {x.path} is absent" if x.action == "absent" else f"{x.action}: {x.path}"
                 for x in actions]
        if a.dry_run and a.resolver_command == "install":
            for f in plan.files:
                lines.append(f"\n--- {f.path}\n{f.content.rstrip()}")
        if a.resolver_command == "install":
            lines += [f"note: {n}" for n in plan.notes]
        if reloaded:
            lines.append("ran: " + "; ".join(reloaded))
        elif changed:
            lines.append(f"now run: {sudo_reload}   (or pass --reload)")
        elif would_change:
            lines.append(f"then: {sudo_reload} (with --reload, maculactl runs it)")
            lines.append("dry run: nothing was changed")
        elif a.dry_run:
            lines.append("dry run: there is nothing to change")
        return "\n".join(lines)

    ctx.emit(data, render)
    return EXIT_OK


def cmd_docker_dns(ctx: Ctx) -> int:
    """`"dns": [G]` in /etc/docker/daemon.json, for containers not started from the compose file."""
    from maculad.horizons import docker_dns

    a = ctx.args
    g: str | None = a.address
    if not g:
        try:
            status = ctx.client.status()
        except DaemonUnavailable as exc:
            raise Failure(f"{exc}; pass --address G (the Docker bridge gateway, e.g. 172.17.0.1)") from None
        comp = status["components"].get("containers")
        if comp is None:
            raise Failure("the daemon does not know G ([containers] is not enabled); pass --address G")
        if is_error(comp):
            raise Failure(f"the daemon does not know G ({comp['error']}); pass --address G")
        g = comp["address"]
        if not g:
            raise Failure(f"the daemon does not know G ({comp['reason']}); pass --address G")
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
    domain = ctx.option("domain")
    ca = ctx.option("ca")
    if ca:
        return Path(ca), domain or "macula.local"
    cfg = ctx.option("config")
    if cfg:
        from maculad.config import ConfigError, load_config
        try:
            c = load_config(cfg)
        except ConfigError as exc:
            raise Failure(str(exc)) from None
        return c.state_dir / "ca" / "ca.pem", c.domain
    try:
        status = ctx.client.status()
    except DaemonUnavailable as exc:
        raise exc.amended(" (or pass --config FILE or --ca PATH)") from None
    tls = status["tls"]
    path = tls.get("ca")
    if not path:
        raise Failure(f"the daemon has no CA: {tls['error'] or 'the daemon reports no TLS'}")
    return Path(path), status["domain"]


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
                                "subject": cert.subject.rfc4514_string(),
                                "expires": cert.not_valid_after_utc.isoformat(),
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


def cmd_service(ctx: Ctx) -> int:
    """Install maculad as a systemd service (launchd on macOS), or remove exactly what install wrote."""
    a = ctx.args
    system: svc.System = "darwin" if sys.platform == "darwin" else "linux"
    root = Path(a.root)
    source = Path(a.source) if a.source else svc.checkout()
    verb = a.service_command

    def facts() -> svc.Facts:
        return svc.detect(root=root, system=system, source=source, maculad=a.maculad)

    try:
        before = facts()
        if verb == "install":
            from maculad.ctl.doctor_command import maculactl_for_fixes

            plan = svc.plan_install(before, maculad=a.maculad, maculactl=maculactl_for_fixes())
            results = execute(plan.actions, dry_run=a.dry_run)
            if not a.dry_run:
                accounts = svc.created_accounts(before, facts())
                if accounts.groups or accounts.users:
                    final = plan.manifest.merged(accounts)
                    results += execute([svc.manifest_action(before, final)], dry_run=False)
        else:
            if root == Path("/") and not a.dry_run:
                _refuse_while_running(system, before)
            plan = svc.plan_uninstall(before)
            results = execute(plan.actions, dry_run=a.dry_run)
    except (svc.ServiceError, ActionError) as exc:
        raise Failure(f"service {verb}: {exc}") from None

    def render(d: dict[str, Any]) -> str:
        lines = []
        for s in d["steps"]:
            verb_ = "would " if d["dry_run"] else ""
            what = s["path"] or s["what"]
            if s["kind"] == "run":
                what = f"{s['what']}  ({' '.join(s['argv'])})"
            tail = f"  [{s['detail']}]" if s["detail"] not in ("", "dry run") else ""
            lines.append(f"{verb_}{s['kind']}: {what}{tail}")
        lines += [f"kept: {k} (exists; never overwritten)" for k in d["kept"] if d["action"] == "install"]
        lines += [f"note: {n}" for n in d["notes"]]
        if not d["steps"]:
            lines.append("nothing to do")
        if d["dry_run"]:
            lines.append("dry run: nothing was changed")
        elif d["next"]:
            lines.append("next:")
            lines += [f"  {n}" for n in d["next"]]
        return "\n".join(lines)

    ctx.emit(svc.describe(plan, results, action=verb, dry_run=a.dry_run), render)
    return EXIT_OK


def _refuse_while_running(system: svc.System, facts: svc.Facts) -> None:
    """Uninstall removes the user the service runs as: the service must be stopped first."""
    if system == "linux" and "systemctl" in facts.tools:
        r = subprocess.run(["systemctl", "is-active", "--quiet", "maculad"], check=False, capture_output=True)
        if r.returncode == 0:
            raise Failure("maculad is running: stop it first (sudo systemctl disable --now maculad)")
    if system == "darwin" and "launchctl" in facts.tools:
        r = subprocess.run(["launchctl", "print", f"system/{svc.LAUNCHD_LABEL}"], check=False, capture_output=True)
        if r.returncode == 0:
            raise Failure(f"maculad is loaded: stop it first (sudo launchctl bootout system/{svc.LAUNCHD_LABEL})")
