"""The restart vocabulary shared by config, Docker labels and the supervisors.

Policy names are Docker's (`always`, `on-failure[:N]`, `unless-stopped`,
`no`); `parse_restart` is the one reader of their text form, so a label and a
config key are judged alike. `State` is what status shows for a supervised
thing; `STATES` lists them in order for metrics.
"""

from __future__ import annotations

from typing import Literal, get_args

RestartPolicyName = Literal["always", "on-failure", "unless-stopped", "no"]
RESTART_POLICIES: tuple[RestartPolicyName, ...] = get_args(RestartPolicyName)

State = Literal["starting", "running", "backoff", "failed", "stopped"]
STATES: tuple[State, ...] = ("starting", "running", "backoff", "failed", "stopped")


def parse_restart(text: str) -> tuple[RestartPolicyName, int | None]:
    """`on-failure:3` → ("on-failure", 3). Raises ValueError with the reason."""
    name, _, count = text.strip().partition(":")
    if name not in RESTART_POLICIES:
        raise ValueError(f"{text!r} is not a restart policy ({', '.join(RESTART_POLICIES)}, on-failure:N)")
    if count:
        if name != "on-failure":
            raise ValueError(f"{text!r}: only on-failure takes a retry count")
        if not count.isdigit():
            raise ValueError(f"{text!r}: the retry count must be a whole number")
        return "on-failure", int(count)
    return name, None
