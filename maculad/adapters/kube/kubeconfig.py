"""A kubeconfig file → the one `KubeTarget` maculad talks to (server, trust, credentials).

The subset of the kubeconfig format (the `kubectl config` v1 `Config` object) a
local cluster's file uses, read the way kubectl reads it: the named context
(None → `current-context`), its cluster (`server`, `certificate-authority` or
`-data`, `insecure-skip-tls-verify`, `tls-server-name`) and its user
(`client-certificate`/`client-key` or their `-data`, `token` or `tokenFile`).
Relative file names are relative to the kubeconfig's directory, as kubectl
does. Credential plugins (`exec`, `auth-provider`) and basic auth are not
supported: such a file gets a `KubeClientError` saying so (kind, k3d and
minikube write certificates; a token works too).

`parse_kubeconfig` is pure (the files a kubeconfig names are read through the
`read` callable it is given); `load_kubeconfig` reads from disk; `ssl_context`
turns a target into the `ssl.SSLContext` for its server (the stdlib loads a
certificate chain only from files, so the client certificate and key are
written to a private temporary directory for the call and removed at once).
Every way it can fail is a `KubeClientError` naming the file and the reason.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A kubeconfig larger than this is refused (a real one is a few KiB).
MAX_BYTES = 4 * 1024 * 1024


class KubeClientError(Exception):
    """The kubeconfig cannot give a usable client (reason in the message)."""


@dataclass(frozen=True)
class KubeTarget:
    """One context of a kubeconfig, resolved: where the API server is and how to prove who we are."""

    source: str  # the kubeconfig's path, for messages
    context: str
    server: str  # https://127.0.0.1:6443
    namespace: str = "default"
    ca_pem: bytes | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    token: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None

    def headers(self) -> dict[str, str]:
        """The headers every request carries (the bearer token, when there is one)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _named(doc: Mapping[str, Any], section: str, name: str, source: str) -> Mapping[str, Any]:
    entries = doc.get(section)
    if not isinstance(entries, list):
        raise KubeClientError(f"kubeconfig {source}: no {section} list")
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            body = entry.get(section[:-1])  # clusters → cluster, users → user, contexts → context
            if not isinstance(body, Mapping):
                raise KubeClientError(f"kubeconfig {source}: {section[:-1]} {name!r} has no {section[:-1]} map")
            return body
    raise KubeClientError(f"kubeconfig {source}: no {section[:-1]} named {name!r}")


def _data(entry: Mapping[str, Any], key: str, *, source: str, base: Path,
          read: Callable[[Path], bytes]) -> bytes | None:
    """`key-data` (base64) or `key` (a file name) of an entry; None when neither is set."""
    inline = entry.get(f"{key}-data")
    if inline is not None:
        if not isinstance(inline, str):
            raise KubeClientError(f"kubeconfig {source}: {key}-data is not a string")
        try:
            return base64.b64decode(inline, validate=True)
        except (binascii.Error, ValueError):
            raise KubeClientError(f"kubeconfig {source}: {key}-data is not base64") from None
    name = entry.get(key)
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise KubeClientError(f"kubeconfig {source}: {key} is not a file name")
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        return read(path)
    except OSError as exc:
        raise KubeClientError(f"kubeconfig {source}: {key} {path}: {exc.strerror or exc}") from None


def parse_kubeconfig(doc: Any, *, source: str, base: Path, context: str | None,
                     read: Callable[[Path], bytes]) -> KubeTarget:
    """The target for `context` (None: the file's current-context) of a parsed kubeconfig document."""
    if not isinstance(doc, Mapping):
        raise KubeClientError(f"kubeconfig {source}: not a kubeconfig (the document is not a map)")
    name = context if context is not None else doc.get("current-context")
    if not isinstance(name, str) or not name:
        raise KubeClientError(f"kubeconfig {source}: no context given and no current-context set")
    ctx = _named(doc, "contexts", name, source)
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise KubeClientError(f"kubeconfig {source}: context {name!r} names no cluster")
    cluster = _named(doc, "clusters", cluster_name, source)
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeClientError(f"kubeconfig {source}: cluster {cluster_name!r} has no http(s):// server")
    user: Mapping[str, Any] = {}
    if isinstance(user_name, str) and user_name:
        user = _named(doc, "users", user_name, source)
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported) is not None:
            raise KubeClientError(f"kubeconfig {source}: user {user_name!r} uses an {unsupported} credential "
                                  "plugin, which maculad does not run; use a kubeconfig with a client "
                                  "certificate or a token (as kind, k3d and minikube write)")
    if user.get("username") is not None or user.get("password") is not None:
        raise KubeClientError(f"kubeconfig {source}: user {user_name!r} uses basic auth, which Kubernetes "
                              "removed; use a client certificate or a token")
    cert = _data(user, "client-certificate", source=source, base=base, read=read)
    key = _data(user, "client-key", source=source, base=base, read=read)
    if (cert is None) != (key is None):
        raise KubeClientError(f"kubeconfig {source}: user {user_name!r} has a client certificate without its "
                              "key (or a key without its certificate)")
    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise KubeClientError(f"kubeconfig {source}: user {user_name!r}: token is not a string")
    if not token and user.get("tokenFile") is not None:
        raw = _data({"tokenFile": user.get("tokenFile")}, "tokenFile", source=source, base=base, read=read)
        token = (raw or b"").decode("utf-8", "replace").strip()
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeClientError(f"kubeconfig {source}: insecure-skip-tls-verify is not true or false")
    sni = cluster.get("tls-server-name")
    if sni is not None and (not isinstance(sni, str) or not sni):
        raise KubeClientError(f"kubeconfig {source}: tls-server-name is not a name")
    namespace = ctx.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise KubeClientError(f"kubeconfig {source}: context {name!r}: namespace is not a string")
    return KubeTarget(
        source=source, context=name, server=server.rstrip("/"), namespace=namespace,
        ca_pem=_data(cluster, "certificate-authority", source=source, base=base, read=read),
        client_cert_pem=cert, client_key_pem=key, token=token or None, insecure=insecure, tls_server_name=sni,
    )


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise OSError(f"larger than {MAX_BYTES} bytes")
    return data


def load_kubeconfig(path: Path, context: str | None) -> KubeTarget:
    """Read and resolve `context` of the kubeconfig at `path` (a fresh read each call: a recreated
    cluster comes back with a new port and new certificates in the same file)."""
    import yaml

    path = Path(path).expanduser()
    source = str(path)
    if not path.is_file():
        raise KubeClientError(f"kubeconfig {path} does not exist")
    try:
        raw = _read_bounded(path)
    except OSError as exc:
        raise KubeClientError(f"kubeconfig {path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise KubeClientError(f"kubeconfig {path}: not YAML: {exc}") from None
    return parse_kubeconfig(doc, source=source, base=path.parent, context=context, read=_read_bounded)


def ssl_context(target: KubeTarget) -> ssl.SSLContext | None:
    """The TLS context for the target's server (None for http://)."""
    if not target.server.startswith("https://"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if target.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif target.ca_pem is not None:
            ctx.load_verify_locations(cadata=target.ca_pem.decode("ascii", "replace"))
        if target.client_cert_pem is not None and target.client_key_pem is not None:
            with tempfile.TemporaryDirectory(prefix="maculad-kube-") as tmp:  # mode 0700
                cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
                for file, data in ((cert, target.client_cert_pem), (key, target.client_key_pem)):
                    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise KubeClientError(f"kubeconfig {target.source}: context {target.context!r}: unusable TLS material: "
                              f"{exc}") from None
    return ctx
