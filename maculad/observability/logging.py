"""structlog set-up: JSON lines by default, key=value console output on a TTY."""

from __future__ import annotations

import logging
import sys

import structlog

from maculad.config import LogConfig


def configure_logging(cfg: LogConfig) -> None:
    level = getattr(logging, cfg.level.upper())
    console = cfg.format == "console" or (cfg.format == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
