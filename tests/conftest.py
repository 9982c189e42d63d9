"""Shared test fixtures: only what every part's tests need. Part-specific
fixtures live in tests/support/ modules owned by that part's tests."""

from __future__ import annotations

import os

import pytest

# fixtures shared by the Docker tests (docker_scope, make_tier)
pytest_plugins = ("tests.support.docker",)

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, why: str) -> None:
    """Skip locally when a real tool is missing; fail under CI=true, where the
    test command installs every tool and a skip would hide a broken install."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)
