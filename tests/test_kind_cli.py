"""KindBinary: arguments, output parsing and error mapping, against real executables —
small scripts that print what kind prints and exit as it exits, and the stand-in kind."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from maculad.adapters.kind import (
    ClusterExists,
    ClusterNotFound,
    KindDockerUnavailable,
    KindBinary,
    KindError,
    KindNotFound,
    KindTimeout,
    classify,
    error_message,
    parse_clusters,
    validate_name,
)
from tests.support.cluster_env import cluster_containers, docker, require_docker_image
from tests.support.fake_k8s_cluster import FakeClusterAPI
from tests.support.fake_kind import install_fake_kind


def script(tmp: Path, body: str, name: str = "kind") -> Path:
    """An executable that records its argv in argv.txt beside it, then runs `body` (sh)."""
    p = tmp / name
    p.write_text("#!/bin/sh\n"
                 f"printf '%s\\n' \"$@\" > {tmp / 'argv.txt'}\n"
                 f"{body}\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


def argv(tmp: Path) -> list[str]:
    return (tmp / "argv.txt").read_text().splitlines()


# --------------------------------------------------------------------------- pure parsing


def test_parse_clusters() -> None:
    assert parse_clusters("macula-dev\nother\n") == ["macula-dev", "other"]
    assert parse_clusters("") == []
    assert parse_clusters("No kind clusters found.\n") == []
    assert parse_clusters("\x1b[32mmacula-dev\x1b[0m\n\nmacula-dev\n") == ["macula-dev"]


def test_error_message_prefers_kinds_error_line() -> None:
    stderr = 'Creating cluster "x" ...\n ✗ Preparing nodes 📦\nERROR: failed to create cluster: boom\nStack:\n  at x\n'
    assert error_message(stderr) == "failed to create cluster: boom"
    assert error_message("something odd\nlast words\n") == "last words"
    assert error_message("", "") == "no output"


@pytest.mark.parametrize(
    ("stderr", "code", "cls"),
    [
        ('ERROR: failed to create cluster: node(s) already exist for a cluster with the name "m"', 1, ClusterExists),
        ("ERROR: could not locate any control plane nodes for cluster named 'm'. Use the --name option", 1,
         ClusterNotFound),
        ("ERROR: failed to list clusters: command \"docker ps -a\" failed with error: exit status 1", 1,
         KindDockerUnavailable),
        ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", 1,
         KindDockerUnavailable),
        ("sh: kind: not found", 127, KindNotFound),
        ("permission denied", 126, KindNotFound),
        ("ERROR: failed to create cluster: could not find a log line that matches", 1, KindError),
    ],
)
def test_classify(stderr: str, code: int, cls: type[KindError]) -> None:
    err = classify("kind create cluster", code, stderr)
    assert type(err) is cls
    assert err.exit_code == code
    assert str(err).startswith("kind create cluster: ")
    assert f"(exit {code})" in str(err)


def test_validate_name() -> None:
    assert validate_name("macula-dev") == "macula-dev"
    for bad in ("", "Macula", "a b", "x;rm -rf", "../x"):
        with pytest.raises(ValueError):
            validate_name(bad)


# --------------------------------------------------------------------------- the adapter, fake executables


async def test_get_clusters_reads_stdout(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo macula-dev; echo other; echo 'No kind clusters found.' >&2")
    assert await KindBinary(binary=str(exe)).get_clusters() == ["macula-dev", "other"]
    assert argv(tmp_path) == ["get", "clusters"]


async def test_create_passes_name_config_kubeconfig(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo 'Creating cluster ...' >&2")
    cfg = tmp_path / "kind.yaml"
    cfg.write_text("kind: Cluster\n")
    kubeconfig = tmp_path / "new" / "dir" / "config"
    await KindBinary(binary=str(exe)).create_cluster("macula-dev", config=cfg, kubeconfig=kubeconfig)
    assert argv(tmp_path) == ["create", "cluster", "--name", "macula-dev", "--config", str(cfg),
                              "--kubeconfig", str(kubeconfig)]
    assert kubeconfig.parent.is_dir()  # made for kind, which does not make it


async def test_delete_and_export_arguments(tmp_path: Path) -> None:
    exe = script(tmp_path, "true")
    kind = KindBinary(binary=str(exe))
    await kind.delete_cluster("m", kubeconfig=tmp_path / "kc")
    assert argv(tmp_path) == ["delete", "cluster", "--name", "m", "--kubeconfig", str(tmp_path / "kc")]
    await kind.export_kubeconfig("m", kubeconfig=None)
    assert argv(tmp_path) == ["export", "kubeconfig", "--name", "m"]


async def test_create_with_a_missing_config_file_is_refused_before_running(tmp_path: Path) -> None:
    exe = script(tmp_path, "true")
    with pytest.raises(KindError, match="does not exist"):
        await KindBinary(binary=str(exe)).create_cluster("m", config=tmp_path / "nope.yaml", kubeconfig=None)
    assert not (tmp_path / "argv.txt").exists()


async def test_invalid_name_is_refused_before_running(tmp_path: Path) -> None:
    exe = script(tmp_path, "true")
    with pytest.raises(ValueError, match="not a valid kind cluster name"):
        await KindBinary(binary=str(exe)).delete_cluster("Bad Name", kubeconfig=None)
    assert not (tmp_path / "argv.txt").exists()


async def test_existing_cluster_error(tmp_path: Path) -> None:
    exe = script(tmp_path, 'echo \'ERROR: failed to create cluster: node(s) already exist for a cluster with the '
                           'name "m"\' >&2; exit 1')
    with pytest.raises(ClusterExists) as info:
        await KindBinary(binary=str(exe)).create_cluster("m", config=None, kubeconfig=None)
    assert info.value.exit_code == 1
    assert 'already exist for a cluster with the name "m"' in str(info.value)
    assert info.value.command == "kind create cluster"


async def test_export_of_an_unknown_cluster(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo \"ERROR: could not locate any control plane nodes for cluster named 'm'.\" >&2; "
                           "exit 1")
    with pytest.raises(ClusterNotFound):
        await KindBinary(binary=str(exe)).export_kubeconfig("m", kubeconfig=None)


async def test_docker_down_error(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo 'ERROR: failed to list clusters: command \"docker ps -a --filter "
                           "label=io.x-k8s.kind.cluster\" failed with error: exit status 1' >&2; exit 1")
    with pytest.raises(KindDockerUnavailable, match="failed to list clusters"):
        await KindBinary(binary=str(exe)).get_clusters()


async def test_unexplained_failure_keeps_the_last_line_and_code(tmp_path: Path) -> None:
    exe = script(tmp_path, "echo 'panic: runtime error' >&2; echo 'goroutine 1 [running]' >&2; exit 2")
    with pytest.raises(KindError) as info:
        await KindBinary(binary=str(exe)).get_clusters()
    assert type(info.value) is KindError
    assert info.value.exit_code == 2
    assert "goroutine 1 [running]" in str(info.value)
    assert "panic: runtime error" in info.value.stderr


async def test_killed_by_a_signal(tmp_path: Path) -> None:
    exe = script(tmp_path, "kill -9 $$")
    with pytest.raises(KindError, match="killed by signal 9"):
        await KindBinary(binary=str(exe)).get_clusters()


async def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(KindNotFound, match="not found"):
        await KindBinary(binary=str(tmp_path / "no-such-kind")).get_clusters()
    with pytest.raises(KindNotFound, match="not found"):
        await KindBinary(binary="no-such-kind-binary-anywhere").get_clusters()


async def test_binary_not_executable(tmp_path: Path) -> None:
    p = tmp_path / "kind"
    p.write_text("#!/bin/sh\necho hi\n")
    p.chmod(0o644)
    with pytest.raises(KindNotFound, match="not executable"):
        await KindBinary(binary=str(p)).get_clusters()


async def test_timeout_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    exe = script(tmp_path, f"echo $$ > {pidfile}; exec sleep 30")
    with pytest.raises(KindTimeout, match=r"did not finish within 0\.5s"):
        await KindBinary(binary=str(exe), quick_timeout=0.5).get_clusters()
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_env_is_passed(tmp_path: Path) -> None:
    exe = script(tmp_path, 'echo "$KIND_EXPERIMENTAL_PROVIDER"')
    kind = KindBinary(binary=str(exe), env={"KIND_EXPERIMENTAL_PROVIDER": "docker"})
    assert await kind.get_clusters() == ["docker"]


# --------------------------------------------------------------------------- against the stand-in kind


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeClusterAPI]:
    async with FakeClusterAPI() as api:
        yield api


@pytest.mark.docker
async def test_round_trip_with_the_stand_in_kind(tmp_path: Path, fake_api: FakeClusterAPI) -> None:
    require_docker_image()
    fk = install_fake_kind(tmp_path / "bin", api_server=fake_api.url, token=fake_api.token)
    kind = KindBinary(binary=str(fk.binary))
    name = f"mtest-cli-{uuid.uuid4().hex[:8]}"
    kubeconfig = tmp_path / "kubeconfig"
    try:
        assert name not in await kind.get_clusters()
        await kind.create_cluster(name, config=None, kubeconfig=kubeconfig)
        assert name in await kind.get_clusters()
        assert cluster_containers(name) == [f"{name}-control-plane"]
        with pytest.raises(ClusterExists):
            await kind.create_cluster(name, config=None, kubeconfig=kubeconfig)
        docker("stop", "-t", "2", f"{name}-control-plane")
        with pytest.raises(KindError, match="api server"):
            await kind.export_kubeconfig(name, kubeconfig=kubeconfig)
        docker("start", f"{name}-control-plane")
        kubeconfig.unlink()
        await kind.export_kubeconfig(name, kubeconfig=kubeconfig)
        assert f"kind-{name}" in kubeconfig.read_text()
        await kind.delete_cluster(name, kubeconfig=kubeconfig)
        assert name not in await kind.get_clusters()
        assert f"kind-{name}" not in kubeconfig.read_text()
        await kind.delete_cluster(name, kubeconfig=kubeconfig)  # nothing left: still fine
        with pytest.raises(ClusterNotFound):
            await kind.export_kubeconfig(name, kubeconfig=kubeconfig)
        calls = [c[:2] for c in fk.calls()]
        assert ["create", "cluster"] in calls and ["delete", "cluster"] in calls
        assert json.loads((fk.state / "api.json").read_text())["server"] == fake_api.url
    finally:
        left = cluster_containers(name)
        if left:
            docker("rm", "-f", *left, check=False)
