"""What every command gets (`Ctx`), the exit codes, and the one-line failure they raise."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

from maculad.ctl.client import ControlClient

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

T = TypeVar("T")


class Failure(Exception):
    """A failure to report in one line with exit code 1."""


@dataclass(frozen=True, slots=True)
class Ctx:
    args: argparse.Namespace
    json: bool
    out: TextIO
    client: ControlClient

    def emit(self, data: T, render: Callable[[T], str]) -> None:
        """`data` as JSON with --json, else as `render` puts it for a person."""
        if self.json:
            self.out.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            text = render(data)
            self.out.write(text if text.endswith("\n") else text + "\n")

    def option(self, name: str) -> Any:
        """A subcommand's option, None where the subcommand has no such option."""
        return getattr(self.args, name, None)
