"""Start-up errors are one line naming the path and the reason, exit 2, no traceback; the config is read
only from a regular file of sane size and never blocks the event loop (not on SIGHUP either).

`maculad run` and `maculad check-config` as subprocesses; the full disk is a tmpfs inside a private
mount namespace (`unshare -m`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.daemon import Maculad, base_config, dig, maculactl, wait_until

ROUTE = '[[route]]\nname = "grafana"\nhttp = "127.0.0.1:3000"\n'


def maculad(command: str, path: Path, *, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wrap, sys.executable, "-m", "maculad", command, "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one stderr line that carries every needle; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    hits = [ln for ln in proc.stderr.splitlines() if all(n in ln for n in needles)]
    assert len(hits) == 1, proc.stderr
    return hits[0]


def config(tmp: Path, extra: str = ROUTE) -> Path:
    text, _ = base_config(tmp, extra="[tls]\nenabled = false\n" + extra)
    path = tmp / "maculad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_allocations_json_is_a_directory(tmp_path: Path, command: str) -> None:
    path = config(tmp_path)
    (tmp_path / "state" / "allocations.json").mkdir(parents=True)
    proc = maculad(command, path)
    assert proc.returncode == 2
    one_line(proc, f"{tmp_path / 'state' / 'allocations.json'} is a directory")


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_state_dir_under_a_regular_file(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    path = config(tmp_path)
    path.write_text(path.read_text().replace(f'state_dir = "{tmp_path / "state"}"',
                                             f'state_dir = "{tmp_path / "file" / "state"}"'))
    proc = maculad(command, path)
    assert proc.returncode == 2
    one_line(proc, "state_dir", f"{tmp_path / 'file'} (above {tmp_path / 'file' / 'state'}) is not a directory")


def test_a_full_disk_at_start(tmp_path: Path) -> None:
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    path = config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    fill = f"mount -t tmpfs -o size=8k tmpfs {state} && (cat /dev/zero > {state}/filler 2>/dev/null; true)"
    proc = maculad("run", path, wrap=("unshare", "-m", "sh", "-c", fill + ' && exec "$@"', "sh"))
    assert proc.returncode == 2
    line = one_line(proc, "startup_failed", f"{state / 'allocations.json'}: No space left on device")
    assert json.loads(line)["level"] == "error"


def test_an_unreadable_allocations_file_at_start_is_a_state_error(tmp_path: Path) -> None:
    """The daemon's own state errors (past the host checks) exit 2 too: a corrupt file in a directory
    where it cannot be moved aside (a read-only bind mount of the state directory)."""
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    path = config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "allocations.json").write_text("{ torn")
    ro = f"mount --bind {state} {state} && mount -o remount,bind,ro {state}"
    proc = maculad("run", path, wrap=("unshare", "-m", "sh", "-c", ro + ' && exec "$@"', "sh"))
    assert proc.returncode == 2
    one_line(proc, "state unusable", f"{state / 'allocations.json'}: is unreadable", "cannot be moved aside")


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_dev_zero_fifo_and_huge_files_are_refused_at_once(tmp_path: Path, command: str) -> None:
    proc = maculad(command, Path("/dev/zero"))
    assert proc.returncode == 2
    one_line(proc, "/dev/zero: is a device, not a regular file")
    fifo = tmp_path / "maculad.toml"
    os.mkfifo(fifo)
    proc = maculad(command, fifo)  # a blocking open would hang here until the timeout
    assert proc.returncode == 2
    one_line(proc, f"{fifo}: is a FIFO, not a regular file")
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    proc = maculad(command, huge)
    assert proc.returncode == 2
    one_line(proc, f"{huge}: is 5242880 bytes; a config file is at most 4194304")
    proc = maculad(command, tmp_path)
    assert proc.returncode == 2
    one_line(proc, f"{tmp_path}: is a directory, not a config file")


def test_a_fifo_on_sighup_does_not_block_the_daemon(tmp_path: Path) -> None:
    text, ports = base_config(tmp_path, extra=ROUTE)
    path = tmp_path / "maculad.toml"
    path.write_text(text)
    d = Maculad(path, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        path.unlink()
        os.mkfifo(path)
        d.signal(signal.SIGHUP)
        last = wait_until(lambda: json.loads(maculactl(tmp_path, "status", "--json")[1])["last_reload"],
                          "the SIGHUP reload to be refused")
        assert last["ok"] is False and "is a FIFO, not a regular file" in last["error"]
        assert dig(ports["dns"], "grafana.macula.local").startswith("127.0.10.")
        assert "Traceback" not in d.logs()
    finally:
        d.stop()
