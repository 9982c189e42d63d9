"""`maculactl`'s parser, exit codes and entry point.

Exit codes: 0 ok, 1 a failure reported by the daemon or a check, 2 usage, 3
the daemon is not running or its socket is not accessible. Every error is one
line on stderr, never a traceback. The socket is found by `discovery` on the
first request, so commands that work offline never look for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TextIO

from maculad.control.resolver import RESOLVER_BACKENDS, ResolverError
from maculad.core.names import lookup_name
from maculad.ctl import discovery
from maculad.ctl.client import ControlClient, DaemonError, DaemonUnavailable
from maculad.ctl.context import EXIT_FAIL, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Ctx, Failure
from maculad.ctl.daemon_commands import (
    cmd_cluster,
    cmd_dns,
    cmd_events,
    cmd_open,
    cmd_powerdns,
    cmd_reload,
    cmd_routes,
    cmd_service_action,
    cmd_services,
    cmd_status,
)
from maculad.ctl.doctor_command import cmd_doctor
from maculad.ctl.service import DEFAULT_MACULAD
from maculad.ctl.setup_commands import cmd_docker_dns, cmd_hosts, cmd_resolver, cmd_service, cmd_trust


def _lookup_name(text: str) -> str:
    """argparse type for `dns NAME`: the socket's own rule, so a bad name is a usage error (exit 2)."""
    try:
        return lookup_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, metavar="PATH",
                        help="the daemon's control socket (default: --config's control.socket, else "
                             f"$MACULAD_SOCKET, else as root {discovery.SYSTEM_SOCKET}, otherwise "
                             f"{discovery.USER_SOCKET} (config/maculad-user.toml's) then {discovery.SYSTEM_SOCKET})")
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="the daemon's config file: its control.socket is the socket; hosts, resolver and "
                             "trust read routes, DNS addresses and the CA from it instead of the daemon, doctor "
                             "when the daemon does not answer")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    p = _Parser(prog="maculactl", parents=[common],
                description="Control and inspect maculad. Exit codes: 0 ok, 1 failure, 2 usage, "
                            "3 daemon not running or socket not accessible.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    st = sub.add_parser("status", parents=[common], help="the daemon on one screen (--verbose: everything)")
    st.add_argument("--verbose", "-v", action="store_true", help="every component's full status, readable")
    sub.add_parser("routes", parents=[common], help="the route table")
    sub.add_parser("services", parents=[common], help="supervised services of the Docker tier")
    for action in ("start", "stop", "restart"):
        sp = sub.add_parser(action, parents=[common], help=f"{action} a supervised service")
        sp.add_argument("service")
    cl = sub.add_parser("cluster", parents=[common], help="the kind cluster")
    cl.add_argument("cluster_command", choices=["status", "recreate"], nargs="?", default="status")
    d = sub.add_parser("dns", parents=[common], help="what maculad answers for NAME and who owns it")
    d.add_argument("name", type=_lookup_name)
    ev = sub.add_parser("events", parents=[common], help="recent events; --follow to stream")
    ev.add_argument("--follow", "-f", action="store_true")
    ev.add_argument("--replay", type=int, default=None, help="how many past events to show first")
    pd = sub.add_parser("powerdns", parents=[common], help="the PowerDNS zone: connected, last sync, conflicts")
    pd.add_argument("powerdns_command", choices=["status"], nargs="?", default="status")
    sub.add_parser("reload", parents=[common], help="re-read the config and apply it")
    op = sub.add_parser("open", parents=[common], help="open the status page in a browser")
    op.add_argument("--print", dest="print_only", action="store_true", help="only print its address")
    sub.add_parser("doctor", parents=[common], help="check the installation and explain")
    h = sub.add_parser("hosts", parents=[common], help="an /etc/hosts block for the routes")
    mode = h.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="write the block into --file")
    mode.add_argument("--remove", action="store_true", help="remove the block from --file")
    h.add_argument("--file", default="/etc/hosts")
    r = sub.add_parser("resolver", parents=[common], help="send the domain's queries to maculad")
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
    t = sub.add_parser("trust", parents=[common], help="install the local CA's root where browsers look")
    t.add_argument("trust_command", choices=["install", "uninstall", "show", "export"])
    t.add_argument("--dry-run", action="store_true", help="print what would change")
    t.add_argument("--root", default="/", help="apply under this directory (for tests and images)")
    t.add_argument("--ca", default=None, help="the root certificate (default: from the daemon or --config)")
    t.add_argument("--domain", default=None, help="with --ca: the domain it is for (default macula.local)")
    sv = sub.add_parser("service", parents=[common],
                        help="install maculad as a system service (systemd; launchd on macOS), or remove it")
    sv.add_argument("service_command", choices=["install", "uninstall"])
    sv.add_argument("--dry-run", action="store_true", help="print what would change")
    sv.add_argument("--root", default="/", help="apply under this directory (for tests and images)")
    sv.add_argument("--maculad", default=DEFAULT_MACULAD, metavar="PATH",
                    help=f"the maculad the service runs (default {DEFAULT_MACULAD})")
    sv.add_argument("--source", default=None, metavar="DIR",
                    help="the maculad checkout with systemd/ and config/ (default: this maculactl's own)")
    return p


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": cmd_status, "routes": cmd_routes, "services": cmd_services,
    "start": cmd_service_action, "stop": cmd_service_action, "restart": cmd_service_action,
    "cluster": cmd_cluster, "dns": cmd_dns, "reload": cmd_reload, "events": cmd_events,
    "doctor": cmd_doctor, "hosts": cmd_hosts, "resolver": cmd_resolver, "powerdns": cmd_powerdns,
    "docker-dns": cmd_docker_dns,
    "trust": cmd_trust,
    "service": cmd_service,
    "open": cmd_open,
}


def locator(args: argparse.Namespace, env: Mapping[str, str]) -> Callable[[], str]:
    """Find the socket (on the first request): --socket, --config, $MACULAD_SOCKET, the defaults."""
    def find() -> str:
        config = getattr(args, "config", None)
        return discovery.locate(discovery.candidates(
            socket_opt=getattr(args, "socket", None),
            config_socket=discovery.config_socket(config) if config else None, config_file=config,
            env=env, euid=os.geteuid()))
    return find


def run(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    client = ControlClient(locator(args, os.environ))
    ctx = Ctx(args=args, json=bool(getattr(args, "json", False)), out=out, client=client)
    try:
        return COMMANDS[args.command](ctx)
    except DaemonUnavailable as exc:
        err.write(f"maculactl: {exc}\n")
        return EXIT_UNAVAILABLE
    except DaemonError as exc:
        err.write(f"maculactl: {exc.message}\n")
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
