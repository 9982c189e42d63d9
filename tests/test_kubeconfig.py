"""kubeconfig → KubeTarget: the subset kind/k3d/minikube files use, and a clear error for everything else."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from maculad.adapters.kube.kubeconfig import KubeClientError, KubeTarget, load_kubeconfig, parse_kubeconfig, ssl_context


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def doc(*, cluster: dict[str, Any] | None = None, user: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None, current: str | None = "kind-macula") -> dict[str, Any]:
    d: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kind-macula", "cluster": {"server": "https://127.0.0.1:6443", **(cluster or {})}}],
        "users": [{"name": "kind-macula", "user": user if user is not None else {"token": "t0k"}}],
        "contexts": [{"name": "kind-macula", "context": {"cluster": "kind-macula", "user": "kind-macula",
                                                         **(context or {})}}],
    }
    if current is not None:
        d["current-context"] = current
    return d


def no_files(path: Path) -> bytes:
    raise FileNotFoundError(2, "No such file or directory", str(path))


def parse(d: Any, context: str | None = None, read: Any = no_files) -> KubeTarget:
    return parse_kubeconfig(d, source="/k/config", base=Path("/k"), context=context, read=read)


def test_token_context_resolves() -> None:
    t = parse(doc(context={"namespace": "apps"}))
    assert (t.server, t.context, t.namespace, t.token, t.insecure) == (
        "https://127.0.0.1:6443", "kind-macula", "apps", "t0k", False)
    assert t.headers() == {"Authorization": "Bearer t0k"}


def test_inline_data_is_decoded_and_files_are_read_relative_to_the_kubeconfig() -> None:
    read: dict[Path, bytes] = {Path("/k/certs/ca.crt"): b"CA", Path("/k/tok"): b"file-token\n"}
    t = parse(doc(cluster={"certificate-authority": "certs/ca.crt"},
                  user={"client-certificate-data": b64(b"CERT"), "client-key-data": b64(b"KEY")}),
              read=lambda p: read[p])
    assert (t.ca_pem, t.client_cert_pem, t.client_key_pem, t.token) == (b"CA", b"CERT", b"KEY", None)
    t = parse(doc(user={"tokenFile": "tok"}), read=lambda p: read[p])
    assert t.token == "file-token" and t.headers() == {"Authorization": "Bearer file-token"}


@pytest.mark.parametrize(("d", "context", "reason"), [
    ("just text", None, "not a kubeconfig"),
    (doc(current=None), None, "no current-context"),
    (doc(), "kind-other", "no context named 'kind-other'"),
    ({**doc(), "clusters": "x"}, None, "no clusters list"),
    (doc(cluster={"server": "ftp://x"}), None, "no http(s):// server"),
    (doc(user={"exec": {"command": "aws"}}), None, "exec credential plugin"),
    (doc(user={"auth-provider": {"name": "gcp"}}), None, "auth-provider credential plugin"),
    (doc(user={"username": "u", "password": "p"}), None, "basic auth"),
    (doc(user={"client-certificate-data": b64(b"C")}), None, "without its key"),
    (doc(user={"client-certificate-data": "!!!", "client-key-data": b64(b"K")}), None, "not base64"),
    (doc(cluster={"certificate-authority": "missing.crt"}), None, "certificate-authority /k/missing.crt"),
    (doc(cluster={"insecure-skip-tls-verify": "yes"}), None, "not true or false"),
    (doc(user={"token": 5}), None, "token is not a string"),
])
def test_unusable_kubeconfigs_say_why(d: Any, context: str | None, reason: str) -> None:
    with pytest.raises(KubeClientError) as err:
        parse(d, context)
    assert reason in str(err.value) and "/k/config" in str(err.value)


def test_load_reads_the_file_and_refuses_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(KubeClientError, match="does not exist"):
        load_kubeconfig(tmp_path / "nope", None)
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeClientError, match="not YAML"):
        load_kubeconfig(bad, None)
    good = tmp_path / "config"
    (tmp_path / "ca.crt").write_bytes(b"PEM")
    good.write_text(yaml.safe_dump(doc(cluster={"certificate-authority": "ca.crt"})))
    t = load_kubeconfig(good, None)
    assert t.ca_pem == b"PEM" and t.source == str(good)


# -- ssl_context against a real TLS server that requires a client certificate (as kind's API server does)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool, usage: x509.ObjectIdentifier | None = None, san: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
         .not_valid_after(now + dt.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


async def test_ssl_context_verifies_the_server_and_presents_the_client_certificate(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("kube-ca", ca_key, None, ca=True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv = _cert("apiserver", srv_key, (ca.subject, ca_key), ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                san="localhost")
    cli = _cert("kubernetes-admin", cli_key, (ca.subject, ca_key), ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (tmp_path / "srv.pem").write_bytes(_pem(srv) + _pem(srv_key))
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "srv.pem")
    server_ctx.load_verify_locations(tmp_path / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    peers: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peercert"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        target = parse(doc(cluster={"server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64(_pem(ca)),
                                    "tls-server-name": "localhost"},
                           user={"client-certificate-data": b64(_pem(cli)), "client-key-data": b64(_pem(cli_key))}))
        ctx = ssl_context(target)
        assert ctx is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname=target.tls_server_name)
        assert await reader.read() == b"ok"
        writer.close()
        assert peers and dict(x[0] for x in peers[0]["subject"])["commonName"] == "kubernetes-admin"
        # without the CA the server is not trusted
        untrusting = ssl_context(KubeTarget(source="x", context="c", server=target.server,
                                            client_cert_pem=target.client_cert_pem,
                                            client_key_pem=target.client_key_pem))
        assert untrusting is not None
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=untrusting, server_hostname="localhost")
    finally:
        server.close()
        await server.wait_closed()
    assert list(Path(tempfile.gettempdir()).glob("maculad-kube-*")) == []  # the key file did not outlive the load


def test_ssl_context_refuses_broken_material_and_is_none_for_http() -> None:
    assert ssl_context(KubeTarget(source="x", context="c", server="http://127.0.0.1:8080")) is None
    with pytest.raises(KubeClientError, match="unusable TLS material"):
        ssl_context(KubeTarget(source="x", context="c", server="https://h", ca_pem=b"not a certificate"))
    with pytest.raises(KubeClientError, match="unusable TLS material"):
        ssl_context(KubeTarget(source="x", context="c", server="https://h", client_cert_pem=b"C", client_key_pem=b"K"))
