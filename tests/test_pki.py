"""The local CA and its leaves: the root's shape, no silent regeneration, leaf cache and renewal,
and name constraints enforced by a real verifier (`openssl verify`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from maculad.pki import ca as pki_ca
from maculad.pki.ca import CAError, load_or_create
from maculad.pki.leaves import LeafStore, valid_name

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def test_root_has_the_required_shape(tmp_path: Path) -> None:
    ca, created = load_or_create(tmp_path / "ca", "macula.local", now=NOW)
    assert created
    cert = ca.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3650)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.DNSName("macula.local")]
    assert set(nc.value.excluded_subtrees or []) == {
        x509.IPAddress(ipaddress.IPv4Network("0.0.0.0/0")), x509.IPAddress(ipaddress.IPv6Network("::/0"))}
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca.pem").st_mode) == 0o644
    assert "PRIVATE" not in repr(ca) and "key=" not in repr(ca)


def test_second_start_loads_the_same_root(tmp_path: Path) -> None:
    a, _ = load_or_create(tmp_path, "macula.local", now=NOW)
    b, created = load_or_create(tmp_path, "macula.local", now=NOW)
    assert not created and a.fingerprint == b.fingerprint


@pytest.mark.parametrize("damage", ["missing_key", "missing_cert", "other_key", "garbage_key", "garbage_cert",
                                    "other_domain", "unreadable"])
def test_a_broken_ca_is_an_error_never_a_new_root(tmp_path: Path, damage: str) -> None:
    load_or_create(tmp_path, "macula.local", now=NOW)
    key_path, cert_path = tmp_path / "ca-key.pem", tmp_path / "ca.pem"
    secret = key_path.read_bytes()
    domain = "macula.local"
    if damage == "missing_key":
        key_path.unlink()
    elif damage == "missing_cert":
        cert_path.unlink()
    elif damage == "other_key":
        key_path.write_bytes(pki_ca.key_pem(pki_ca.new_key()))
    elif damage == "garbage_key":
        key_path.write_bytes(secret[:60] + b"garbage" + secret[60:])
    elif damage == "garbage_cert":
        cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    elif damage == "other_domain":
        domain = "example.test"
    elif damage == "unreadable":
        key_path.unlink()
        key_path.mkdir()
    before = cert_path.read_bytes() if damage != "missing_cert" else b""
    with pytest.raises(CAError) as info:
        load_or_create(tmp_path, domain, now=NOW)
    msg = str(info.value)
    assert "move" in msg or "restore" in msg
    assert secret.decode() not in msg and "PRIVATE KEY" not in msg
    if damage != "missing_cert":
        assert cert_path.read_bytes() == before  # nothing was replaced


def test_expired_root_is_an_error(tmp_path: Path) -> None:
    load_or_create(tmp_path, "macula.local", now=NOW)
    with pytest.raises(CAError, match="expired"):
        load_or_create(tmp_path, "macula.local", now=NOW + dt.timedelta(days=3651))


def _store(tmp_path: Path, clock: list[dt.datetime], issued: list[str]) -> LeafStore:
    ca, _ = load_or_create(tmp_path / "ca", "macula.local", now=NOW)
    return LeafStore(ca=ca, directory=tmp_path / "ca" / "leaves", clock=lambda: clock[0], on_issue=issued.append)


def _cert(path: Path) -> x509.Certificate:
    raw = path.read_bytes()
    return x509.load_pem_x509_certificate(raw[raw.index(b"-----BEGIN CERTIFICATE-----"):])


def test_leaf_shape_cache_and_renewal(tmp_path: Path) -> None:
    clock, issued = [NOW], []
    store = _store(tmp_path, clock, issued)
    leaf = store.get(("grafana.macula.local",))
    cert = _cert(leaf.path)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=397)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["grafana.macula.local"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(os.stat(leaf.path).st_mode) == 0o600
    assert store.get(("grafana.macula.local",)) is leaf  # memory
    fresh = _store(tmp_path, clock, issued)  # a restart: from disk, not issued again
    assert fresh.get(("grafana.macula.local",)).serial == leaf.serial
    assert issued == ["new"]
    clock[0] = leaf.not_after - dt.timedelta(days=29)
    renewed = store.get(("grafana.macula.local",))
    assert renewed.serial != leaf.serial and issued == ["new", "renew"]
    clock[0] = leaf.not_after - dt.timedelta(days=31)
    other = _store(tmp_path, [leaf.not_after - dt.timedelta(days=29)], issued)
    assert other.get(("grafana.macula.local",)).serial == renewed.serial  # the renewed file is reused


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other_name"])
def test_corrupt_cache_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    clock, issued = [NOW], []
    store = _store(tmp_path, clock, issued)
    leaf = store.get(("grafana.macula.local",))
    raw = leaf.path.read_bytes()
    if damage == "garbage":
        leaf.path.write_bytes(b"\x00\xffnot pem")
    elif damage == "truncated":
        leaf.path.write_bytes(raw[: len(raw) // 2])
    elif damage == "foreign":  # a leaf from another root (the CA directory was replaced)
        other, _ = load_or_create(tmp_path / "other", "macula.local", now=NOW)
        key = pki_ca.new_key()
        cert = pki_ca.issue_leaf(other, ("grafana.macula.local",), key, now=NOW)
        leaf.path.write_bytes(pki_ca.key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
    elif damage == "other_name":
        other_leaf = store.get(("loki.macula.local",))
        leaf.path.write_bytes(other_leaf.path.read_bytes())
        issued.remove("new")
    again = _store(tmp_path, clock, issued).get(("grafana.macula.local",))
    assert issued == ["new", "corrupt"]
    cert = _cert(again.path)
    cert.verify_directly_issued_by(store.ca.loaded().cert)


def test_names_outside_the_domain_or_not_dns_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, [NOW], [])
    for bad in ("example.com", "macula.local.evil.com", "../../etc/passwd.macula.local", "a b.macula.local",
                "x" * 250 + ".macula.local", "", "*.*.macula.local", "GRAFANA.macula.local"):
        assert not valid_name(bad, "macula.local")
        with pytest.raises(ValueError):
            store.get((bad,))
    assert not list((tmp_path / "ca").glob("leaves/*"))
    for good in ("macula.local", "*.macula.local", "a-b.c.macula.local"):
        assert valid_name(good, "macula.local")


def _openssl_verify(
    root: Path, leaf_pem: bytes, tmp_path: Path, name: str | None = None
) -> subprocess.CompletedProcess[str]:
    lp = tmp_path / "leaf-under-test.pem"
    lp.write_bytes(leaf_pem)
    cmd = ["openssl", "verify", "-CAfile", str(root), "-purpose", "sslserver"]
    if name:
        cmd += ["-verify_hostname", name]
    return subprocess.run([*cmd, str(lp)], capture_output=True, text=True, check=False)


def test_openssl_verifies_a_leaf_and_refuses_an_out_of_domain_one_signed_by_the_root(tmp_path: Path) -> None:
    clock, issued = [dt.datetime.now(dt.UTC)], []
    ca, _ = load_or_create(tmp_path / "ca", "macula.local")
    store = LeafStore(ca=ca, directory=tmp_path / "leaves", clock=lambda: clock[0], on_issue=issued.append)
    root = tmp_path / "ca" / "ca.pem"
    good = _cert(store.get(("grafana.macula.local",)).path).public_bytes(serialization.Encoding.PEM)
    ok = _openssl_verify(root, good, tmp_path, "grafana.macula.local")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The root's own key signs a leaf for another site (what a leaked key would do): refused.
    for san in (x509.DNSName("www.example.com"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))):
        key = pki_ca.new_key()
        now = dt.datetime.now(dt.UTC)
        evil = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        bad = _openssl_verify(root, evil.public_bytes(serialization.Encoding.PEM), tmp_path)
        assert bad.returncode != 0
        assert "subtree violation" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    with pytest.raises(ValueError):
        pki_ca.issue_leaf(ca, ("www.example.com",), pki_ca.new_key(), now=dt.datetime.now(dt.UTC))


def test_memory_cache_is_bounded(tmp_path: Path) -> None:
    ca, _ = load_or_create(tmp_path / "ca", "macula.local", now=NOW)
    store = LeafStore(ca=ca, directory=tmp_path / "leaves", max_entries=3, clock=lambda: NOW)
    for i in range(6):
        store.get((f"n{i}.macula.local",))
    assert len(store) == 3
