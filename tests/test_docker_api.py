"""`EngineAPI`: the error mapping and calls against the real engine, and against a fake engine written
here (raw HTTP on a unix socket or TLS port) what a real one does not do on demand: go away and come back
as another API version, end or break the event stream, refuse with a text body, demand a client
certificate (DOCKER_TLS_VERIFY / DOCKER_CERT_PATH)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
from pathlib import Path

import pytest

from maculad.adapters.docker.api import (
    ContainerNotFound,
    DockerAPIError,
    DockerUnavailable,
    EngineAPI,
    engine_client,
)
from tests.support.docker import DockerScope, docker_cli, wait_for
from tests.support.rawhttp import RawServer, send_chunks

SLEEP = ("sleep", "100000")


# ---------------------------------------------------------------------- the real engine


@pytest.mark.docker
async def test_real_engine_calls_and_error_mapping(docker_scope: DockerScope) -> None:
    api = EngineAPI(endpoint="unix:///var/run/docker.sock")
    try:
        ver = await api.version()
        assert isinstance(ver["ApiVersion"], str)
        cid = docker_scope.run("box", cmd=SLEEP)
        assert await api.list_ids(labels=[docker_scope.label]) == [cid]
        info = await api.inspect(cid)
        assert (info.id, info.running) == (cid, True)
        assert (await api.inspect_raw(docker_scope.name("box")))["Id"] == cid
        assert "bridge" in {n["Name"] for n in await api.networks()}

        with pytest.raises(ContainerNotFound, match="No such container"):
            await api.inspect("0" * 64)
        with pytest.raises(ContainerNotFound):
            await api.inspect_raw("no/such container")  # quoted into one path segment
        docker_cli("pause", cid)
        with pytest.raises(DockerAPIError) as err:
            await api.start(cid)  # paused: 409 Conflict
        assert (err.value.status, err.value.message) == (409, "cannot start a paused container, try unpause instead")
        await api.unpause(cid)
        with pytest.raises(DockerAPIError) as err:
            await api.unpause(cid)  # running, not paused: the engine answers 500
        assert (err.value.status, err.value.message) == (500, f"Container {cid} is not paused")

        from maculad.adapters.docker.nodes import tar_file

        await api.put_archive(cid, "/", tar_file("/tmp/maculad-note", b"written through the archive API\n"))
        assert docker_cli("exec", cid, "cat", "/tmp/maculad-note") == "written through the archive API"

        await api.stop(cid, timeout=1)
        assert (await api.inspect(cid)).running is False
        await api.start(cid)
        assert (await api.inspect(cid)).running is True
    finally:
        await api.close()


@pytest.mark.docker
async def test_real_engine_event_stream(docker_scope: DockerScope) -> None:
    api = EngineAPI(endpoint="unix:///var/run/docker.sock")
    stream = await api.events(labels=[docker_scope.label])
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for ev in stream:
            seen.append((ev.action, ev.id))

    task = asyncio.create_task(collect())
    try:
        cid = docker_scope.run("ev", cmd=SLEEP)
        await wait_for(lambda: ("start", cid) in seen, 20, "the start event")
        assert seen[0] == ("create", cid)
    finally:
        await stream.close()
        await asyncio.wait_for(task, 10)  # closing ends the iteration
        await api.close()


async def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    api = EngineAPI(endpoint=f"unix://{tmp_path}/docker.sock")
    with pytest.raises(DockerUnavailable, match=f"Docker engine at unix://{tmp_path}/docker.sock did not answer"):
        await api.version()
    with pytest.raises(DockerUnavailable, match="does not exist"):
        await api.events()
    with pytest.raises(DockerUnavailable, match="bad Docker endpoint 'ssh://host'"):
        await EngineAPI(endpoint="ssh://host").version()


# ---------------------------------------------------------------------- a fake engine


class FakeEngine:
    """Answers GET /version, /v*/containers/json, /v*/events (the lines in `events`, then `end`)."""

    def __init__(self, api_version: str = "1.47", *, end: str = "finish") -> None:
        self.api_version = api_version
        self.events: list[bytes] = []
        self.end = end  # "finish": the terminating chunk; "break": close mid-body
        self.paths: list[str] = []
        self.server = RawServer(self._handle)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        while (req := await srv.next_request(reader)) is not None:
            path = req[0].split(b" ")[1].decode()
            self.paths.append(path.split("?")[0])
            if path == "/version":
                body = json.dumps({"Version": "27.0", "ApiVersion": self.api_version}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif path.startswith(f"/v{self.api_version}/containers/json"):
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n[{"Id": "c1"}]')
            elif path.startswith(f"/v{self.api_version}/containers/boom"):
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 21\r\n\r\nthe engine fell over\n")
            elif path.startswith(f"/v{self.api_version}/events"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                await send_chunks(writer, self.events, end=self.end != "break")
                if self.end == "break":
                    return
            else:
                writer.write(b'HTTP/1.1 404 Not Found\r\nContent-Length: 30\r\n\r\n{"message": "page not found"}\n')
            await writer.drain()


def event(action: str, cid: str) -> bytes:
    return json.dumps({"Type": "container", "Action": action, "id": cid,
                       "Actor": {"ID": cid, "Attributes": {"name": "web"}}, "time": 1}).encode() + b"\n"


async def test_version_is_asked_once_and_again_after_the_engine_was_away(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    first = FakeEngine("1.45")
    await first.server.unix(sock)
    api = EngineAPI(endpoint=f"unix://{sock}")
    try:
        assert await api.list_ids() == ["c1"]
        assert await api.list_ids() == ["c1"]
        assert first.paths == ["/version", "/v1.45/containers/json", "/v1.45/containers/json"]
        await first.server.close()
        sock.unlink()
        with pytest.raises(DockerUnavailable):
            await api.list_ids()
        second = FakeEngine("1.47")  # upgraded while it was away
        await second.server.unix(sock)
        assert await api.list_ids() == ["c1"]
        assert second.paths == ["/version", "/v1.47/containers/json"]
        await second.server.close()
    finally:
        await api.close()


async def test_text_error_body_and_404_message(tmp_path: Path) -> None:
    engine = FakeEngine()
    await engine.server.unix(tmp_path / "d.sock")
    api = EngineAPI(endpoint=f"unix://{tmp_path}/d.sock")
    try:
        with pytest.raises(DockerAPIError) as err:
            await api.inspect("boom")
        assert (err.value.status, err.value.message) == (500, "the engine fell over")
        with pytest.raises(ContainerNotFound, match=r"^page not found$"):
            await api.inspect("gone")
    finally:
        await api.close()
        await engine.server.close()


@pytest.mark.parametrize("end", ["finish", "break"])
async def test_event_stream_ends_when_the_engine_closes_it(tmp_path: Path, end: str) -> None:
    engine = FakeEngine(end=end)
    engine.events = [event("start", "a" * 64), b"not json\n", b"[1]\n",
                     event("die", "b" * 64)]
    await engine.server.unix(tmp_path / "d.sock")
    api = EngineAPI(endpoint=f"unix://{tmp_path}/d.sock")
    got: list[tuple[str, str]] = []
    try:
        stream = await api.events(labels=["maculad.test=x"])
        if end == "finish":
            async for ev in stream:  # ends: the engine finished the body
                got.append((ev.action, ev.id))
        else:
            broke = rf"^the event stream from unix://{tmp_path}/d.sock broke: the server closed the connection in"
            with pytest.raises(DockerUnavailable, match=broke):
                async for ev in stream:
                    got.append((ev.action, ev.id))
        await stream.close()
        assert got == [("start", "a" * 64), ("die", "b" * 64)]
        req = next(r[0] for r in engine.server.requests if b"/events" in r[0])
        assert b"filters=" in req and b"maculad.test%3Dx" in req
    finally:
        await api.close()
        await engine.server.close()


# ---------------------------------------------------------------------- TLS as the docker CLI does it


def make_certs(d: Path) -> None:
    """ca.pem, cert.pem/key.pem (a client certificate) and server.pem/server-key.pem (IP SAN 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test docker CA")).issuer_name(name("test docker CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    for stem, keyfile, usage, sans in (
        ("server", "server-key", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("cert", "key", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("client")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, d / f"{keyfile}.pem")


async def tls_engine(d: Path, *, client_cert_required: bool) -> tuple[FakeEngine, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "server.pem", d / "server-key.pem")
    if client_cert_required:
        ctx.load_verify_locations(d / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    engine = FakeEngine()
    ep = await engine.server.tcp(ssl_context=ctx)
    return engine, ep.port


async def test_docker_tls_verify_with_client_certificate(tmp_path: Path) -> None:
    make_certs(tmp_path)
    engine, port = await tls_engine(tmp_path, client_cert_required=True)
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    api = EngineAPI(endpoint=f"tcp://127.0.0.1:{port}", env=env)
    plain = EngineAPI(endpoint=f"tcp://127.0.0.1:{port}", env={})
    try:
        assert await api.list_ids() == ["c1"]
        with pytest.raises(DockerUnavailable):
            await plain.version()  # plain HTTP to a TLS port: no answer it can read
    finally:
        await api.close()
        await plain.close()
        await engine.server.close()


async def test_docker_tls_without_verify_and_default_ports(tmp_path: Path) -> None:
    make_certs(tmp_path)
    (tmp_path / "ca.pem").unlink()  # DOCKER_TLS: encrypted, the server is not verified
    engine, port = await tls_engine(tmp_path, client_cert_required=False)
    api = EngineAPI(endpoint=f"tcp://127.0.0.1:{port}", env={"DOCKER_TLS": "1", "DOCKER_CERT_PATH": str(tmp_path)})
    try:
        assert (await api.version())["ApiVersion"] == "1.47"
    finally:
        await api.close()
        await engine.server.close()
    tls = {"DOCKER_TLS": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    assert str(engine_client("tcp://docker.lan", timeout=1, env=tls).endpoint) == "https://docker.lan:2376"
    assert str(engine_client("tcp://docker.lan", timeout=1, env={}).endpoint) == "http://docker.lan:2375"
    assert str(engine_client("unix:///x.sock", timeout=1, env=tls).endpoint) == "unix:///x.sock"
    missing = EngineAPI(endpoint="tcp://127.0.0.1:1", env={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)})
    with pytest.raises(DockerUnavailable, match=r"DOCKER_CERT_PATH.*not usable"):
        await missing.version()

