"""A failed state save loses nothing: the last saved table keeps serving, the failure is counted and shown,
and the new names are served as soon as a retry saves them — without another reload.

Against the real daemon, its `state_dir` on a 64 KiB tmpfs mounted inside a private mount namespace
(`unshare -m`); the test reaches that file system through `/proc/PID/root`. In process, the manager
with an `allocations.json` that cannot be written, for a source other than the config."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import shutil
from pathlib import Path

from maculad.core.net import Backend
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import PortMap, RouteSpec
from maculad.routes.store import AllocationStore
from tests.conftest import require
from tests.support.daemon import Maculad, base_config, dig, http_get, maculactl, wait_until

GRAFANA = '[[route]]\nname = "grafana"\nhttp = "127.0.0.1:3000"\n'
MANY = "".join(f'[[route]]\nname = "r{i}"\nhttp = "127.0.0.1:{5000 + i}"\n' for i in range(500))


def _fill(directory: Path) -> None:
    """Write zeros into `directory` until its file system is full."""
    chunk = b"\0" * 4096
    with open(directory / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_state_dir_keeps_the_old_table_and_serves_once_space_is_free(tmp_path: Path) -> None:
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    state = tmp_path / "state"
    state.mkdir()
    text, ports = base_config(tmp_path, pool="127.0.8.0/22", extra="[tls]\nenabled = false\n" + GRAFANA)
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    wrap = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs {state} && exec "$@"', "sh"]
    d = Maculad(cfg, log=tmp_path / "maculad.log", wrap=wrap).start()
    try:
        d.wait_ready(ports["metrics"])
        assert d.proc is not None
        inside = Path(f"/proc/{d.proc.pid}/root") / str(state).lstrip("/")
        assert (inside / "allocations.json").exists() and not (state / "allocations.json").exists()
        grafana = dig(ports["dns"], "grafana.macula.local")
        assert grafana.startswith("127.0.")
        _fill(inside)

        cfg.write_text(text + MANY)
        rc, out, err = maculactl(tmp_path, "reload", "--json")
        assert rc == 0, err
        reply = json.loads(out)
        assert "No space left on device" in reply["state_error"]
        assert dig(ports["dns"], "r0.macula.local") == ""
        assert dig(ports["dns"], "r499.macula.local") == ""
        assert dig(ports["dns"], "grafana.macula.local") == grafana  # the last saved table serves
        st = json.loads(maculactl(tmp_path, "status", "--json")[1])
        assert st["routes"]["count"] == 1
        assert st["state"]["save_error"] == f"{state}/allocations.json: No space left on device"
        assert st["state"]["consecutive_failures"] >= 1
        _, metrics = http_get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        failures = [ln for ln in metrics.splitlines() if ln.startswith("maculad_state_save_failures_total ")]
        assert failures and float(failures[0].split()[1]) >= 1
        # an unchanged reload meanwhile neither forgets the pending routes nor claims they are served
        rc, out, _ = maculactl(tmp_path, "reload", "--json")
        assert rc == 0 and "No space left on device" in json.loads(out)["state_error"]

        (inside / "filler").unlink()
        r0 = wait_until(lambda: dig(ports["dns"], "r0.macula.local"), "r0 to be served after space was freed")
        assert ipaddress.ip_address(r0) in ipaddress.ip_network("127.0.8.0/22")
        assert dig(ports["dns"], "r499.macula.local").startswith("127.0.")
        assert dig(ports["dns"], "grafana.macula.local") == grafana
        st = json.loads(maculactl(tmp_path, "status", "--json")[1])
        assert st["state"]["save_error"] is None and st["routes"]["count"] == 501
        saved = json.loads((inside / "allocations.json").read_text())["allocations"]
        assert saved["r499.macula.local"] == dig(ports["dns"], "r499.macula.local")
        assert "Traceback" not in d.logs()
    finally:
        d.stop()


def _spec(name: str) -> RouteSpec:
    return RouteSpec(name=name, source="docker", origin=f"container {name}",
                     ports=(PortMap("tcp", 80, Backend("127.0.0.1", 8080)),))


async def test_any_source_waits_for_its_save_and_is_published_by_the_retry(tmp_path: Path) -> None:
    metrics = Metrics()
    m = RouteTableManager(domain="macula.local", pool=ipaddress.IPv4Network("127.0.10.0/24"),
                          store=AllocationStore(state_dir=tmp_path), metrics=metrics)
    seen: list[int] = []
    m.add_listener(lambda t: seen.append(len(t.routes)))
    assert m.update("docker", [_spec("web.macula.local")])
    assert [r.name for r in m.current.routes] == ["web.macula.local"]
    (tmp_path / "allocations.json").unlink()
    (tmp_path / "allocations.json").mkdir()  # now no save can succeed
    assert m.update("docker", [_spec("web.macula.local"), _spec("api.macula.local")])
    assert [r.name for r in m.current.routes] == ["web.macula.local"]  # not published
    assert m.save_error is not None and "is a directory" in m.save_error.reason
    assert m.state_status()["retry_in"] is not None
    assert metrics.registry.get_sample_value("maculad_state_save_failures_total") == 1
    assert seen == [1]
    (tmp_path / "allocations.json").rmdir()
    for _ in range(200):
        if len(m.current.routes) == 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(r.name for r in m.current.routes) == ["api.macula.local", "web.macula.local"]
    assert m.save_error is None and seen == [1, 2]
    assert "api.macula.local" in json.loads((tmp_path / "allocations.json").read_text())["allocations"]
    m.close()
