"""The local root CA: made once, loaded ever after, never regenerated silently.

`build_root` and `issue_leaf` are pure (a key, names and a clock in, a
certificate out). `load_or_create` is the only I/O: under `<state_dir>/ca/` it
writes `ca.pem` (the root, 0644) and `ca-key.pem` (0600) when neither exists,
and otherwise loads both and checks that they belong together and still fit
the configured domain. Anything else (one file without the other, a key that
does not match the certificate, an unreadable or corrupt file, a root for
another domain, an expired root) is a `CAError` that says what is wrong and
what to do; maculad never replaces a root behind the user's back, since that
would silently break every trust store it was installed in.

The root is ECDSA P-256, valid ten years, `BasicConstraints(ca, pathlen=0)`,
`KeyUsage(keyCertSign, cRLSign)` and a critical `NameConstraints` permitting
only DNS names under the domain and excluding every IPv4 and IPv6 address:
even a leaked key cannot sign a certificate a verifier accepts for any other
site. The private key is held in `CA.key` and never rendered by `__repr__`,
logs, metrics or control replies (only the root's fingerprint is).

This module is where `cryptography` is: it also mints leaves (`mint_leaf`) and
checks a leaf file (`check_leaf`), and every root or leaf it makes or checks
is recorded in the manifest (`maculad.pki.manifest`), so a later start whose
files are unchanged and still good needs none of it. The rules it shares with
that path (names, lifetimes, renewal) are in `maculad.pki.policy`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from maculad.core.fsutil import atomic_write
from maculad.pki import manifest
from maculad.pki.manifest import LeafEntry, RootEntry
from maculad.pki.policy import (
    BACKDATE,
    CERT_FILE,
    KEY_FILE,
    LEAF_DAYS,
    RENEW_BEFORE,
    ROOT_DAYS,
    CAError,
    in_domain,
    leaf_due,
)

__all__ = ["BACKDATE", "CA", "CERT_FILE", "KEY_FILE", "LEAF_DAYS", "RENEW_BEFORE", "ROOT_DAYS", "CAError",
           "build_root", "check_leaf", "check_root", "fingerprint", "in_domain", "issue_leaf", "key_pem", "load",
           "load_or_create", "mint_leaf", "new_key"]


@dataclass(frozen=True, slots=True)
class CA:
    """The root certificate and its key. `repr` never shows the key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    domain: str
    cert_path: Path | None = None

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the root's DER, as colon-separated upper-case hex (openssl's format)."""
        return fingerprint(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _serial() -> int:
    return secrets.randbits(127) | 1


def _name_constraints(domain: str) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(domain)],
        excluded_subtrees=[
            x509.IPAddress(ipaddress.IPv4Network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.IPv6Network("::/0")),
        ],
    )


def build_root(domain: str, key: ec.EllipticCurvePrivateKey, *, now: dt.datetime, host: str = "") -> x509.Certificate:
    """A self-signed root that may sign only names under `domain`."""
    label = f"maculad local CA for {domain}" + (f" ({host})" if host else "")
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "maculad"),
        x509.NameAttribute(NameOID.COMMON_NAME, label[:64]),
    ])
    pub = key.public_key()
    start = now - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_name_constraints(domain), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_leaf(
    ca: CA, names: tuple[str, ...], key: ec.EllipticCurvePrivateKey, *, now: dt.datetime
) -> x509.Certificate:
    """A server certificate for `names` (SANs), signed by the root. Raises ValueError outside the domain."""
    if not names:
        raise ValueError("a leaf needs at least one name")
    for n in names:
        if not in_domain(n, ca.domain):
            raise ValueError(f"{n!r} is not under {ca.domain}; the root cannot sign it")
    pub = key.public_key()
    start = now - BACKDATE
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(pub)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def permitted_domains(cert: x509.Certificate) -> list[str]:
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    return [str(s.value) for s in (nc.permitted_subtrees or []) if isinstance(s, x509.DNSName)]


def check_root(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, domain: str, *, now: dt.datetime,
               where: str) -> None:
    """Raise CAError unless `cert`/`key` are a usable root for `domain`."""
    if not _same_key(cert, key):
        raise CAError(f"{where}: {KEY_FILE} does not belong to {CERT_FILE} (the key changed); "
                      f"restore the original key, or move the directory away to make a new CA "
                      f"(and run `maculactl trust install` again)")
    permitted = permitted_domains(cert)
    if permitted != [domain]:
        raise CAError(f"{where}: the root is constrained to {permitted or 'no domain'}, not {domain!r} "
                      f"(the domain changed?); move the directory away to make a CA for {domain}")
    if cert.not_valid_after_utc <= now:
        raise CAError(f"{where}: the root expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                      f"move the directory away to make a new one")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CAError(f"{path}: cannot be read ({exc.strerror or exc}); fix its permissions or restore it") from None


def load(ca_dir: Path, domain: str, *, now: dt.datetime | None = None) -> CA:
    """Load the existing CA; CAError when it is missing, unreadable or unusable."""
    now = now or dt.datetime.now(dt.UTC)
    cert_path, key_path = ca_dir / CERT_FILE, ca_dir / KEY_FILE
    cert_raw, key_raw = _read(cert_path), _read(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_raw)
    except ValueError:
        raise CAError(f"{cert_path}: not a PEM certificate (corrupt?); restore it or move {ca_dir} away") from None
    try:
        key = serialization.load_pem_private_key(key_raw, password=None)
    except (ValueError, TypeError):
        # The message must not quote the file: it is the private key.
        raise CAError(f"{key_path}: not an unencrypted PEM private key (corrupt?); "
                      f"restore it or move {ca_dir} away") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_path}: not an ECDSA key")
    check_root(cert, key, domain, now=now, where=str(ca_dir))
    ca = CA(cert=cert, key=key, domain=domain, cert_path=cert_path)
    manifest.write_root(ca_dir, _root_entry(ca, cert_raw, key_raw))
    return ca


def load_or_create(ca_dir: Path, domain: str, *, now: dt.datetime | None = None) -> tuple[CA, bool]:
    """(the CA, whether it was created now). Creates it only when neither file exists."""
    now = now or dt.datetime.now(dt.UTC)
    cert_path, key_path = ca_dir / CERT_FILE, ca_dir / KEY_FILE
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert != have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise CAError(f"{present} exists but {missing} does not; maculad will not replace a CA silently: "
                      f"restore {missing.name} or move {ca_dir} away to make a new CA")
    if have_cert:
        return load(ca_dir, domain, now=now), False
    key = new_key()
    cert = build_root(domain, key, now=now, host=socket.gethostname())
    ca_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o755)
    key_raw, cert_raw = key_pem(key), cert.public_bytes(serialization.Encoding.PEM)
    atomic_write(key_path, key_raw, mode=0o600)
    atomic_write(cert_path, cert_raw, mode=0o644)
    ca = CA(cert=cert, key=key, domain=domain, cert_path=cert_path)
    manifest.write_root(ca_dir, _root_entry(ca, cert_raw, key_raw))
    return ca, True


def _root_entry(ca: CA, cert_raw: bytes, key_raw: bytes) -> RootEntry:
    return RootEntry(sha256=manifest.sha256(cert_raw), key_sha256=manifest.sha256(key_raw), domain=ca.domain,
                     fingerprint=ca.fingerprint, not_after=ca.not_after)


def _leaf_entry(ca: CA, cert: x509.Certificate, raw: bytes) -> LeafEntry:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return LeafEntry(sha256=manifest.sha256(raw), names=tuple(sans.get_values_for_type(x509.DNSName)),
                     not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                     serial=cert.serial_number, fingerprint=fingerprint(cert), ca=ca.fingerprint)


def mint_leaf(ca: CA, names: tuple[str, ...], *, now: dt.datetime) -> tuple[bytes, LeafEntry]:
    """A new leaf for `names` as its file's bytes (key, then certificate) and its manifest entry."""
    key = new_key()
    cert = issue_leaf(ca, names, key, now=now)
    raw = key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)
    return raw, _leaf_entry(ca, cert, raw)


def check_leaf(ca: CA, raw: bytes, names: tuple[str, ...], *, now: dt.datetime) -> LeafEntry | str:
    """A leaf file's manifest entry when it is still good for `names` under `ca` at `now`, else why it must be
    issued again: "corrupt" (unreadable, key and certificate apart, other names, not signed by this root) or
    "renew" (due per `leaf_due`)."""
    try:
        key = serialization.load_pem_private_key(raw, password=None)
        cert = x509.load_pem_x509_certificate(raw[raw.index(b"-----BEGIN CERTIFICATE-----"):])
    except (ValueError, TypeError):
        return "corrupt"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(cert, key):
        return "corrupt"
    if cert.issuer != ca.cert.subject:
        return "corrupt"
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return "corrupt"  # signed by another root (the CA was replaced) or tampered with
    try:
        entry = _leaf_entry(ca, cert, raw)
    except x509.ExtensionNotFound:
        return "corrupt"
    if entry.names != names:
        return "corrupt"
    if leaf_due(entry.not_before, entry.not_after, now):
        return "renew"
    return entry
