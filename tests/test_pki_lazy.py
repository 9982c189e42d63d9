"""With TLS on and every certificate already good, nothing imports `cryptography`.

The manifest rule is pure (good, missing, corrupt, hash mismatch, due, other names, another root);
`open_ca` and `LeafStore` fall back to the `cryptography` checks for anything the manifest does not vouch
for (and repair it); a process that cannot import `cryptography` still serves a state it vouches for; and
the real daemon maps no `_rust.abi3.so` while TLS verifies against the local root: on a first start the
signer's child makes the CA and the route's leaf, a wildcard route's new SNI name is signed in-process
(cryptography mapped then), and a restart on that state maps it no more, also when a reload adds a name
(its leaf comes from the child: tests/test_pki_signer.py has the rest)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from maculad.pki import manifest
from maculad.pki.ca import CAError, load_or_create
from maculad.pki.leaves import LeafStore
from maculad.pki.manifest import LeafEntry, RootEntry, leaf_problem, root_problem
from maculad.pki.root import open_ca
from tests.support.daemon import Maculad, TaggedHTTP, base_config, wait_until
from tests.support.tls import maps_cryptography
from tests.support.tls import metric
from tests.support.tls import verified_get as _handshake

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
FP_A = ":".join(["AA"] * 32)
FP_B = ":".join(["BB"] * 32)
SHA = "ab" * 32
KEY_SHA = "cd" * 32
NAMES = ("grafana.macula.local",)

ROOT = RootEntry(sha256=SHA, key_sha256=KEY_SHA, domain="macula.local", fingerprint=FP_A,
                 not_after=NOW + dt.timedelta(days=3000))
LEAF = LeafEntry(sha256=SHA, names=NAMES, not_before=NOW - dt.timedelta(days=10),
                 not_after=NOW + dt.timedelta(days=300), serial=12345, fingerprint=FP_B, ca=FP_A)


def _leaf(entry: LeafEntry | None = LEAF, *, sha256: str = SHA, names: tuple[str, ...] = NAMES, ca: str = FP_A,
          now: dt.datetime = NOW) -> str | None:
    return leaf_problem(entry, sha256=sha256, names=names, ca=ca, now=now)


# -- the rule


def test_a_matching_entry_vouches_for_the_file() -> None:
    assert _leaf() is None
    assert root_problem(ROOT, sha256=SHA, key_sha256=KEY_SHA, domain="macula.local", now=NOW) is None


def test_a_missing_entry_is_checked_with_cryptography() -> None:
    assert _leaf(None) == "no entry"
    assert root_problem(None, sha256=SHA, key_sha256=KEY_SHA, domain="macula.local", now=NOW) == "no entry"


def test_other_bytes_than_recorded_are_never_trusted() -> None:
    assert _leaf(sha256="00" * 32) == "file changed"
    assert root_problem(ROOT, sha256="00" * 32, key_sha256=KEY_SHA, domain="macula.local", now=NOW) \
        == "files changed"
    assert root_problem(ROOT, sha256=SHA, key_sha256="00" * 32, domain="macula.local", now=NOW) == "files changed"


def test_a_leaf_due_for_renewal_or_not_yet_valid_is_not_vouched_for() -> None:
    assert _leaf(now=LEAF.not_after - dt.timedelta(days=31)) is None
    assert _leaf(now=LEAF.not_after - dt.timedelta(days=29)) == "due"  # RENEW_BEFORE is 30 days
    assert _leaf(now=LEAF.not_after + dt.timedelta(days=1)) == "due"
    assert _leaf(now=LEAF.not_before - dt.timedelta(seconds=1)) == "due"


def test_a_name_the_leaf_does_not_cover_is_not_vouched_for() -> None:
    assert _leaf(names=("loki.macula.local",)) == "other names"
    assert _leaf(names=(*NAMES, "loki.macula.local")) == "other names"


def test_a_leaf_from_another_root_or_a_root_for_another_domain_is_not_vouched_for() -> None:
    assert _leaf(ca=FP_B) == "other root"
    assert root_problem(ROOT, sha256=SHA, key_sha256=KEY_SHA, domain="example.test", now=NOW) == "other domain"
    assert root_problem(ROOT, sha256=SHA, key_sha256=KEY_SHA, domain="macula.local",
                        now=ROOT.not_after) == "expired"


def test_the_format_round_trips() -> None:
    assert manifest.parse_root(manifest.render_root(ROOT)) == ROOT
    assert manifest.parse_leaves(manifest.render_leaves({"grafana.macula.local.pem": LEAF})) == {
        "grafana.macula.local.pem": LEAF}


@pytest.mark.parametrize("raw", [
    b"", b"{not json", b"\xff\xfe", b"[]", b"null", b'{"version": 2, "root": {}}', b'{"version": 1}',
    b'{"version": 1, "root": []}', b"[" * 100_000, b" " * (manifest.MAX_BYTES + 1),
])
def test_an_unreadable_manifest_reads_as_empty(raw: bytes) -> None:
    assert manifest.parse_root(raw) is None
    assert manifest.parse_leaves(raw) == {}


@pytest.mark.parametrize("field,value", [
    ("sha256", "AB" * 32), ("sha256", "ab"), ("names", []), ("names", [1]), ("names", "grafana.macula.local"),
    ("serial", True), ("serial", -1), ("serial", "12"), ("not_after", "2027-01-01T00:00:00"),
    ("not_after", "tomorrow"), ("not_before", None), ("ca", "aa:bb"), ("fingerprint", 5),
])
def test_an_entry_of_the_wrong_shape_is_left_out(field: str, value: object) -> None:
    doc = json.loads(manifest.render_leaves({"bad.pem": LEAF, "good.pem": LEAF}))
    doc["leaves"]["bad.pem"][field] = value
    assert manifest.parse_leaves(json.dumps(doc).encode()) == {"good.pem": LEAF}


# -- open_ca and LeafStore over real files


def _issued(tmp: Path, names: list[tuple[str, ...]]) -> tuple[Path, list[int]]:
    """A state directory whose CA and leaves were made with cryptography (as a first start does)."""
    ca_dir = tmp / "state" / "ca"
    ca, _ = load_or_create(ca_dir, "macula.local")
    store = LeafStore(ca=ca, directory=ca_dir / "leaves")
    return ca_dir, [store.get(n).serial for n in names]


def test_open_ca_takes_a_vouched_root_without_loading_it(tmp_path: Path) -> None:
    ca_dir, _ = _issued(tmp_path, [])
    real, _ = load_or_create(ca_dir, "macula.local")
    lazy, created = open_ca(ca_dir, "macula.local")
    assert not created and not lazy.is_loaded
    assert (lazy.fingerprint, lazy.not_after, lazy.cert_path) == (real.fingerprint, real.not_after, real.cert_path)
    assert lazy.loaded().fingerprint == real.fingerprint  # the key, on demand


@pytest.mark.parametrize("damage", ["missing", "corrupt", "hash"])
def test_open_ca_checks_with_cryptography_when_the_manifest_does_not_vouch_and_repairs_it(
        tmp_path: Path, damage: str) -> None:
    ca_dir, _ = _issued(tmp_path, [])
    good = (ca_dir / manifest.FILE).read_bytes()
    if damage == "missing":
        (ca_dir / manifest.FILE).unlink()
    elif damage == "corrupt":
        (ca_dir / manifest.FILE).write_bytes(good[: len(good) // 2])
    else:
        (ca_dir / manifest.FILE).write_bytes(good.replace(manifest.sha256((ca_dir / "ca.pem").read_bytes()).encode(),
                                                          b"0" * 64))
    lazy, created = open_ca(ca_dir, "macula.local")
    assert not created and lazy.is_loaded
    assert (ca_dir / manifest.FILE).read_bytes() == good


@pytest.mark.parametrize("damage", ["other_key", "other_domain"])
def test_a_changed_root_is_the_same_error_as_without_a_manifest(tmp_path: Path, damage: str) -> None:
    from maculad.pki import ca as pki_ca

    ca_dir, _ = _issued(tmp_path, [])
    domain = "macula.local"
    if damage == "other_key":
        (ca_dir / "ca-key.pem").write_bytes(pki_ca.key_pem(pki_ca.new_key()))
    else:
        domain = "example.test"
    with pytest.raises(CAError, match=r"move|restore"):
        open_ca(ca_dir, domain)


def test_a_vouched_leaf_is_served_without_the_root_and_renewal_follows_its_not_after(tmp_path: Path) -> None:
    ca_dir, (serial,) = _issued(tmp_path, [NAMES])
    clock, issued = [dt.datetime.now(dt.UTC)], list[str]()
    lazy, _ = open_ca(ca_dir, "macula.local")
    store = LeafStore(ca=lazy, directory=ca_dir / "leaves", clock=lambda: clock[0], on_issue=issued.append)
    leaf = store.get(NAMES)
    assert leaf.serial == serial and not lazy.is_loaded and issued == []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(leaf.path))  # the file the manifest vouched for is a usable chain
    clock[0] = leaf.not_after - dt.timedelta(days=29)
    renewed = store.get(NAMES)  # from the memory cache's not_after, which came from the manifest
    assert renewed.serial != serial and issued == ["renew"] and lazy.is_loaded
    again = LeafStore(ca=open_ca(ca_dir, "macula.local")[0], directory=ca_dir / "leaves",
                      clock=lambda: clock[0], on_issue=issued.append)
    assert again.get(NAMES).serial == renewed.serial and not again.ca.is_loaded  # the manifest was updated


@pytest.mark.parametrize("damage", ["missing", "corrupt", "hash", "other_name", "other_root"])
def test_a_leaf_the_manifest_does_not_vouch_for_is_checked_as_today(tmp_path: Path, damage: str) -> None:
    ca_dir, (serial,) = _issued(tmp_path, [NAMES])
    leaves = ca_dir / "leaves"
    good = (leaves / manifest.FILE).read_bytes()
    entries = manifest.parse_leaves(good)
    file = "grafana.macula.local.pem"
    if damage == "missing":
        (leaves / manifest.FILE).unlink()
    elif damage == "corrupt":
        (leaves / manifest.FILE).write_bytes(b'{"version": 1, "leaves": {"grafana')
    elif damage == "hash":
        entries[file] = replace(entries[file], sha256="0" * 64)
    elif damage == "other_name":
        entries[file] = replace(entries[file], names=("loki.macula.local",))
    else:
        entries[file] = replace(entries[file], ca=FP_A)
    if damage in ("hash", "other_name", "other_root"):
        (leaves / manifest.FILE).write_bytes(manifest.render_leaves(entries))
    issued: list[str] = []
    lazy, _ = open_ca(ca_dir, "macula.local")
    store = LeafStore(ca=lazy, directory=leaves, on_issue=issued.append)
    assert store.get(NAMES).serial == serial  # the file itself is good: kept, not issued again
    assert lazy.is_loaded and issued == []
    assert manifest.parse_leaves((leaves / manifest.FILE).read_bytes()) == manifest.parse_leaves(good)


def test_a_leaf_from_a_replaced_root_is_issued_again(tmp_path: Path) -> None:
    ca_dir, (serial,) = _issued(tmp_path, [NAMES])
    for f in ("ca.pem", "ca-key.pem", manifest.FILE):
        (ca_dir / f).unlink()
    issued: list[str] = []
    lazy, created = open_ca(ca_dir, "macula.local")
    assert created
    leaf = LeafStore(ca=lazy, directory=ca_dir / "leaves", on_issue=issued.append).get(NAMES)
    assert leaf.serial != serial and issued == ["corrupt"]
    entry = manifest.read_leaves(ca_dir / "leaves")["grafana.macula.local.pem"]
    assert entry.ca == lazy.fingerprint and entry.serial == leaf.serial


def test_a_root_replaced_under_a_running_store_is_refused_not_used(tmp_path: Path) -> None:
    ca_dir, _ = _issued(tmp_path, [])
    lazy, _ = open_ca(ca_dir, "macula.local")
    for f in ("ca.pem", "ca-key.pem", manifest.FILE):
        (ca_dir / f).unlink()
    load_or_create(ca_dir, "macula.local")
    store = LeafStore(ca=lazy, directory=ca_dir / "leaves")
    with pytest.raises(ValueError, match="changed while maculad runs"):
        store.get(("loki.macula.local",))
    assert not (ca_dir / "leaves" / "loki.macula.local.pem").exists()


def test_an_unwritable_manifest_costs_only_the_check(tmp_path: Path) -> None:
    ca_dir, (serial,) = _issued(tmp_path, [NAMES])
    leaves = ca_dir / "leaves"
    (leaves / manifest.FILE).unlink()
    (leaves / manifest.FILE).mkdir()  # neither readable nor replaceable
    store = LeafStore(ca=open_ca(ca_dir, "macula.local")[0], directory=leaves)
    assert store.get(NAMES).serial == serial
    assert store.get(("loki.macula.local",)).names == ("loki.macula.local",)


# -- a process that cannot import cryptography

BLOCKED = """
import json, sys
from pathlib import Path

class NoCryptography:
    def find_spec(self, name, path=None, target=None):
        if name == "cryptography" or name.startswith("cryptography."):
            raise ImportError("cryptography is blocked here")
        return None

sys.meta_path.insert(0, NoCryptography())
from maculad.pki.leaves import LeafStore
from maculad.pki.root import open_ca

ca_dir = Path(sys.argv[1])
ca, created = open_ca(ca_dir, "macula.local")
store = LeafStore(ca=ca, directory=ca_dir / "leaves")
print(json.dumps({"created": created, "serials": [store.get((n,)).serial for n in sys.argv[2:]],
                  "fingerprint": ca.fingerprint}))
"""


def _blocked(ca_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKED, str(ca_dir), *names], capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_vouched_state_needs_no_cryptography_and_a_new_name_does(tmp_path: Path) -> None:
    names = ["grafana.macula.local", "macula.local", "*.macula.local"]
    ca_dir, serials = _issued(tmp_path, [(n,) for n in names])
    out = _blocked(ca_dir, *names)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["serials"] == serials and not got["created"]
    assert got["fingerprint"] == load_or_create(ca_dir, "macula.local")[0].fingerprint
    new = _blocked(ca_dir, "grafana.macula.local", "loki.macula.local")
    assert new.returncode != 0 and "cryptography is blocked" in new.stderr


# -- the real daemon


def _maps_cryptography(d: Maculad) -> bool:
    assert d.proc is not None
    return maps_cryptography(d.proc.pid)


GRAFANA_IP, APEX_IP, LOKI_IP = "127.0.10.61", "127.0.10.62", "127.0.10.63"


def test_a_restarted_daemon_serves_tls_without_cryptography_until_a_new_name_needs_a_leaf(tmp_path: Path) -> None:
    with TaggedHTTP("grafana") as grafana, TaggedHTTP("apps") as apps, TaggedHTTP("loki") as loki:
        routes = f"""
[tls]
enabled = true
[[route]]
name = "grafana"
ip = "{GRAFANA_IP}"
http = "127.0.0.1:{grafana.port}"
[[route]]
name = "*.apps"
ip = "{APEX_IP}"
http = "127.0.0.1:{apps.port}"
"""
        text, ports = base_config(tmp_path, extra=routes)
        cfg = tmp_path / "maculad.toml"
        cfg.write_text(text)
        cafile = tmp_path / "state" / "ca" / "ca.pem"

        first = Maculad(cfg, log=tmp_path / "first.log").start()
        try:
            first.wait_ready(ports["metrics"])
            assert not _maps_cryptography(first), first.logs()  # a fresh state: the child made the CA and leaves
            assert "grafana" in _handshake(GRAFANA_IP, ports["https"], "grafana.macula.local", cafile)
            assert not _maps_cryptography(first), first.logs()
            assert "apps" in _handshake(APEX_IP, ports["https"], "x.apps.macula.local", cafile)
            assert _maps_cryptography(first)  # a wildcard route's SNI name: signed in the handshake, in-process
        finally:
            assert first.stop() == 0, first.logs()

        second = Maculad(cfg, log=tmp_path / "second.log").start()
        try:
            second.wait_ready(ports["metrics"])
            assert "grafana" in _handshake(GRAFANA_IP, ports["https"], "grafana.macula.local", cafile)
            assert "apps" in _handshake(APEX_IP, ports["https"], "x.apps.macula.local", cafile)  # SNI leaf
            assert not _maps_cryptography(second), second.logs()
            assert metric(ports["metrics"], "maculad_tls_leaves_issued_total") == 0
            assert metric(ports["metrics"], "maculad_tls_ca_expiry_timestamp_seconds") > dt.datetime.now(
                dt.UTC).timestamp()

            cfg.write_text(text + f'[[route]]\nname = "loki"\nip = "{LOKI_IP}"\nhttp = "127.0.0.1:{loki.port}"\n')
            second.signal(signal.SIGHUP)

            def served() -> str:
                try:
                    return _handshake(LOKI_IP, ports["https"], "loki.macula.local", cafile)
                except OSError:
                    return ""

            wait_until(lambda: metric(ports["metrics"], "maculad_tls_signer_runs_total", result="ok") >= 1,
                       "the signer's run for the reloaded route")
            assert "loki" in wait_until(served, "the reloaded route's https answer")
            assert not _maps_cryptography(second), second.logs()  # its leaf was issued by the child
            assert metric(ports["metrics"], "maculad_tls_leaves_issued_total", reason="new") == 1
            assert "grafana" in _handshake(GRAFANA_IP, ports["https"], "grafana.macula.local", cafile)
        finally:
            assert second.stop() == 0, second.logs()

