"""The signer: the CA and leaves made by `python -m maculad.pki.sign`, so the daemon never maps `cryptography`.

The coalescing rule is pure (`SignQueue`); the child's request and answer are bounded and checked; the
child itself is run for real (a CA and leaves the daemon's `LeafStore` then finds vouched for, an unusable
CA refused with one line and exit 2); the executor runs one child at a time and queues what is wanted
meanwhile for the next one, and a child that overruns `signer_timeout` is killed. The real daemon on an
empty state directory serves verified https with no `_rust.abi3.so` mapped, also for a route a reload
adds; with a child that cannot answer in time it signs in-process and serves all the same."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maculad.observability.metrics import Metrics
from maculad.pki.leaves import LeafStore
from maculad.pki.root import open_ca, vouched
from maculad.pki.sign import MAX_NAMES, MAX_REQUEST, RequestError, parse_request
from maculad.pki.signer import SignerError, SignQueue, Signer, parse_answer
from tests.support.daemon import Maculad, TaggedHTTP, base_config, wait_until
from tests.support.tls import maps_cryptography, metric, verified_get

A, B, C = ("a.macula.local",), ("b.macula.local",), ("c.macula.local",)
DOMAIN = "macula.local"


# -- the coalescing rule


def test_an_idle_queue_starts_everything_wanted_in_one_batch() -> None:
    q = SignQueue().want([B, A])
    assert q.covers(A) and q.covers(B) and not q.covers(C)
    q, batch = q.start()
    assert batch == (A, B) and q.running == {A, B} and not q.pending
    assert q.covers(A)  # on its way: the relay does not sign it in-process


def test_names_wanted_while_a_child_runs_go_to_the_next_one() -> None:
    q, first = SignQueue().want([A]).start()
    q = q.want([A, B])  # A is in the running child already: not queued again
    assert q.pending == {B}
    assert q.start() == (q, ())  # at most one child at a time
    q = q.finish()
    assert not q.covers(A) and q.covers(B)
    q, second = q.start()
    assert (first, second) == ((A,), (B,))
    q, third = q.finish().start()
    assert third == () and q == SignQueue()


def test_a_batch_is_bounded_and_the_rest_waits() -> None:
    q, batch = SignQueue().want([A, B, C]).start(limit=2)
    assert batch == (A, B) and q.pending == {C}
    assert SignQueue().want([]) == SignQueue()


# -- the request and the answer


def _request(**over: object) -> bytes:
    doc: dict[str, object] = {"ca_dir": "/s/ca", "domain": DOMAIN, "leaves_dir": "/s/ca/leaves",
                              "names": [list(A)]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_a_request_is_parsed_and_bounded() -> None:
    req = parse_request(_request(names=[["x.macula.local", "*.x.macula.local"]], fingerprint="AA"))
    assert req.names == (("x.macula.local", "*.x.macula.local"),) and req.fingerprint == "AA"
    assert req.ca_dir == Path("/s/ca")
    with pytest.raises(RequestError, match="over 1048576 bytes"):
        parse_request(b" " * (MAX_REQUEST + 1))
    with pytest.raises(RequestError, match="over 10000 names"):
        parse_request(_request(names=[["n.macula.local"]] * (MAX_NAMES + 1)))
    for bad in (b"[1]", b"{", _request(names=[[]]), _request(names=[[1]]), _request(names="a"),
                _request(ca_dir=""), _request(domain=None), _request(fingerprint=5)):
        with pytest.raises(RequestError):
            parse_request(bad)


def test_an_answer_of_another_shape_is_a_failed_run() -> None:
    good = {"fingerprint": "AA", "created": False, "results": ["ok"], "issued": {"new": 1}}
    assert parse_answer(json.dumps(good).encode(), 1).issued == {"new": 1}
    for bad in (b"", b"nope", json.dumps(good).encode()[:-1], json.dumps({**good, "results": []}).encode(),
                json.dumps({**good, "issued": {"new": -1}}).encode(), json.dumps([good]).encode()):
        with pytest.raises(SignerError) as err:
            parse_answer(bad, 1)
        assert err.value.result == "failed"


# -- the child, for real


def _child(request: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "maculad.pki.sign"], input=request, capture_output=True,
                          timeout=60, check=False)


def test_the_child_makes_the_ca_and_leaves_the_daemons_store_finds_vouched(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    out = _child(_request(ca_dir=str(ca_dir), leaves_dir=str(ca_dir / "leaves"),
                          names=[list(A), ["x.example"], list(B)]))
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["created"] and answer["issued"] == {"new": 2}
    assert answer["results"][0] == "ok" and answer["results"][2] == "ok"
    assert "not a name under macula.local" in answer["results"][1]
    assert oct((ca_dir / "leaves" / "a.macula.local.pem").stat().st_mode & 0o777) == "0o600"
    ca, created = open_ca(ca_dir, DOMAIN)
    assert not created and not ca.is_loaded and ca.fingerprint == answer["fingerprint"]
    store = LeafStore(ca=ca, directory=ca_dir / "leaves")
    assert store.vouched(A) is not None and store.vouched(B) is not None and store.vouched(C) is None
    assert not ca.is_loaded  # nothing needed the root's key
    again = _child(_request(ca_dir=str(ca_dir), leaves_dir=str(ca_dir / "leaves"), names=[list(A)]))
    assert json.loads(again.stdout)["issued"] == {} and not json.loads(again.stdout)["created"]


def test_the_child_refuses_an_unusable_ca_or_request_with_one_line(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca.pem").write_text("not a certificate")
    for request in (_request(ca_dir=str(ca_dir), leaves_dir=str(ca_dir / "leaves")),
                    _request(ca_dir=str(ca_dir), fingerprint="AA"), b"x" * (MAX_REQUEST + 5)):
        out = _child(request)
        assert out.returncode == 2 and out.stdout == b""
        assert out.stderr.decode().startswith("maculad.pki.sign: ") and b"Traceback" not in out.stderr
        assert out.stderr.count(b"\n") == 1
    assert b"ca-key.pem does not" in _child(_request(ca_dir=str(ca_dir))).stderr


# -- the executor


async def test_prepare_makes_the_ca_in_a_child_and_run_signs_what_is_wanted_one_child_at_a_time(
        tmp_path: Path) -> None:
    ca_dir, metrics = tmp_path / "ca", Metrics()
    signer = Signer(ca_dir=ca_dir, domain=DOMAIN, metrics=metrics)
    assert await signer.prepare([A])
    assert vouched(ca_dir, DOMAIN) is not None
    ca, _ = open_ca(ca_dir, DOMAIN)
    store = LeafStore(ca=ca, directory=ca_dir / "leaves")
    signer.attach(store)
    task = asyncio.create_task(signer.run())
    try:
        signer.want([A, B])  # A is good already: only B goes to the child
        while not signer.status()["running"]:
            await asyncio.sleep(0)
        signer.want([B, C])  # B is in the running child; C waits for the next one
        assert signer.status()["pending"] == 1 and signer.covers(C)
        while signer.status()["runs"] < 3 or signer.covers(C):
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert all(store.vouched(n) is not None for n in (A, B, C)) and not ca.is_loaded
    assert signer.status()["runs"] == 3 and signer.status()["last_result"] == "ok"
    assert metrics.tls_signer_runs.labels(result="ok")._value.get() == 3
    assert metrics.tls_leaves_issued.labels(reason="new")._value.get() == 3


async def test_a_child_that_overruns_its_timeout_is_killed_and_prepare_says_so(tmp_path: Path) -> None:
    metrics = Metrics()
    signer = Signer(ca_dir=tmp_path / "ca", domain=DOMAIN, metrics=metrics, timeout=0.01)
    assert not await signer.prepare([A])
    status = signer.status()
    assert status["last_result"] == "timeout" and "signer_timeout" in (status["last_error"] or "")
    assert metrics.tls_signer_runs.labels(result="timeout")._value.get() == 1


# -- the real daemon


GRAFANA_IP, LOKI_IP = "127.0.10.71", "127.0.10.72"


def _config(tmp_path: Path, grafana: int, extra: str = "") -> tuple[Path, str, dict[str, int]]:
    text, ports = base_config(tmp_path, extra=f"""
[tls]
enabled = true
{extra}
[[route]]
name = "grafana"
ip = "{GRAFANA_IP}"
http = "127.0.0.1:{grafana}"
""")
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    return cfg, text, ports


def test_a_first_start_and_a_reloaded_route_serve_tls_with_leaves_from_the_child(tmp_path: Path) -> None:
    with TaggedHTTP("grafana") as grafana, TaggedHTTP("loki") as loki:
        cfg, text, ports = _config(tmp_path, grafana.port)
        cafile = tmp_path / "state" / "ca" / "ca.pem"
        d = Maculad(cfg, log=tmp_path / "maculad.log").start()
        try:
            d.wait_ready(ports["metrics"])
            assert d.proc is not None
            assert "grafana" in verified_get(GRAFANA_IP, ports["https"], "grafana.macula.local", cafile)
            assert not maps_cryptography(d.proc.pid), d.logs()
            assert metric(ports["metrics"], "maculad_tls_signer_runs_total", result="ok") == 1

            cfg.write_text(text + f'[[route]]\nname = "loki"\nip = "{LOKI_IP}"\nhttp = "127.0.0.1:{loki.port}"\n')
            d.signal(signal.SIGHUP)
            wait_until(lambda: metric(ports["metrics"], "maculad_tls_signer_runs_total", result="ok") >= 2,
                       "the signer's run for the reloaded route")

            def served() -> str:
                try:
                    return verified_get(LOKI_IP, ports["https"], "loki.macula.local", cafile)
                except OSError:
                    return ""

            assert "loki" in wait_until(served, "the reloaded route's https answer")
            assert not maps_cryptography(d.proc.pid), d.logs()
            assert metric(ports["metrics"], "maculad_tls_leaves_issued_total", reason="new") == 2
        finally:
            assert d.stop() == 0, d.logs()


def test_a_child_that_cannot_answer_in_time_leaves_the_daemon_signing_in_process(tmp_path: Path) -> None:
    with TaggedHTTP("grafana") as grafana:
        cfg, _, ports = _config(tmp_path, grafana.port, extra="signer_timeout = 0.01")
        d = Maculad(cfg, log=tmp_path / "maculad.log").start()
        try:
            d.wait_ready(ports["metrics"])
            assert d.proc is not None
            cafile = tmp_path / "state" / "ca" / "ca.pem"
            assert "grafana" in verified_get(GRAFANA_IP, ports["https"], "grafana.macula.local", cafile)
            assert maps_cryptography(d.proc.pid)  # the CA and the leaf were made in-process, as before
            assert metric(ports["metrics"], "maculad_tls_signer_runs_total", result="timeout") == 1
            assert "tls_signer_failed" in d.logs()
        finally:
            assert d.stop() == 0, d.logs()
