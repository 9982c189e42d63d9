"""`maculad run --config PATH` and `maculad check-config --config PATH`.

Both commands read the config the same way (a regular file of sane size,
never blocking) and run the same checks: the schema (maculad/config.py) and
the host checks (maculad/app/preflight.py); `run` then binds.

Exit codes: 0 success; 1 the daemon could not start (a port in use) or stopped
on a fatal error; 2 the configuration is invalid or the state cannot be used
(one line on stderr naming the file or path, the key and the reason), or the
command line is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable

from maculad import __version__
from maculad.config import Config, ConfigError, load_config

DEFAULT_CONFIG = os.environ.get("MACULAD_CONFIG", "/etc/maculad/maculad.toml")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency on Linux and macOS; elsewhere asyncio's loop serves
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(cfg: Config) -> int:
    from maculad.app.daemon import Daemon
    from maculad.core.fsutil import StateError
    from maculad.observability.logging import configure_logging

    configure_logging(cfg.log)

    async def main() -> int:
        try:
            daemon = Daemon(config=cfg)
        except StateError as exc:
            print(f"maculad: state unusable: {exc}", file=sys.stderr)
            return 2
        return await daemon.run()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maculad", description="Every Macula service at a clean URL.")
    parser.add_argument("--version", action="version", version=f"maculad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    check = sub.add_parser("check-config", help="validate a config file: exit 0, or 2 with the error")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)

    from maculad.app.preflight import check_host

    try:
        cfg = load_config(args.config)
        check_host(cfg)
    except ConfigError as exc:
        print(f"maculad: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(cfg.routes)} static routes, domain {cfg.domain})")
        return 0
    return _run(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
