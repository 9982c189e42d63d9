"""The open-file limit: raised at start from the soft limit to the hard one.

Every relayed TCP connection holds two descriptors, every listener one, so the
soft RLIMIT_NOFILE many desktops start services with (1024; launchd: 256) runs
out long before anything else. The soft limit may be raised up to the hard one
without privilege, so the daemon does that once at start: `nofile_target` is
the pure decision (never lower, the hard limit where it is finite, else a
platform ceiling), `raise_nofile` applies it and reports what it got. Raising
the hard limit itself is the service manager's job (`LimitNOFILE=` in the
systemd unit).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import TypedDict

#: Where a soft limit is still too low for a daemon relaying many connections (`maculactl doctor` warns).
LOW_NOFILE = 4096
#: The soft limit used when the hard one is unlimited: macOS refuses more than OPEN_MAX (10240) there.
UNLIMITED_CEILING = 10240 if sys.platform == "darwin" else 1 << 20



class LimitsStatus(TypedDict):
    """`status.limits`: the open-file limit after start."""

    nofile_soft: int
    nofile_hard: int
    nofile_soft_at_start: int
    error: str | None  # why it could not be raised

@dataclass(frozen=True, slots=True)
class NofileLimits:
    """The open-file limits after start: `before` is the soft limit the process was started with."""

    soft: int
    hard: int
    before: int
    error: str | None = None

    def as_dict(self) -> LimitsStatus:
        return {"nofile_soft": self.soft, "nofile_hard": self.hard, "nofile_soft_at_start": self.before,
                "error": self.error}


def nofile_target(soft: int, hard: int, *, infinity: int = resource.RLIM_INFINITY,
                  ceiling: int = UNLIMITED_CEILING) -> int:
    """The soft limit to set: the hard limit (or `ceiling` when it is unlimited), never lower than now."""
    if soft == infinity:
        return soft
    want = ceiling if hard == infinity else hard
    return max(soft, want)


def raise_nofile() -> NofileLimits:
    """Raise the soft RLIMIT_NOFILE as far as allowed; never raises."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = nofile_target(soft, hard)
    if target == soft:
        return NofileLimits(soft=soft, hard=hard, before=soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return NofileLimits(soft=soft, hard=hard, before=soft, error=f"cannot raise to {target}: {exc}")
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NofileLimits(soft=now, hard=hard, before=soft)
