"""What a laptop daemon may not carry: the heavy clients of sources that are off stay unimported,
and `cryptography` stays out of a daemon that does not terminate TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import Maculad, base_config

PROBE = """
import sys
import maculad.cli, maculad.app.daemon
heavy = sorted({m.split(".")[0] for m in sys.modules}
               & {"kubernetes_asyncio", "kubernetes", "aiodocker", "aiohttp", "h11", "cryptography"})
print(",".join(heavy))
"""


def test_the_daemon_module_imports_no_http_docker_kubernetes_or_tls_library() -> None:
    """They are imported where their part is built: DNS is served before them, and a part that is off
    (Kubernetes on the shipped user config, TLS when `tls.enabled = false`) never loads its library."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_the_daemons_http_servers_import_no_aiohttp() -> None:
    """The control socket, /metrics and the page run on maculad.core.httpserver (h11), not aiohttp.web."""
    code = ("import sys, maculad.control.server, maculad.observability.http, maculad.web.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


KUBE_PROBE = """
import sys
import maculad.adapters.kube.ingresses, maculad.adapters.kube.apply, maculad.publishers.coredns
import maculad.providers.kubernetes, maculad.supervise.cluster
print(",".join(sorted({m.split(".")[0] for m in sys.modules} & {"kubernetes_asyncio", "kubernetes", "aiohttp"})))
"""


def test_the_kubernetes_parts_need_no_kubernetes_or_http_library() -> None:
    """The Ingress watch, the applier, the CoreDNS block and the cluster supervisor speak HTTP to the API
    server through the adapters' own client: nothing of kubernetes-asyncio (~60 MB) or aiohttp is loaded."""
    out = subprocess.run([sys.executable, "-c", KUBE_PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("tls", [False, True])
def test_the_running_daemon_maps_no_cryptography_with_or_without_tls(tmp_path: Path, tls: bool) -> None:
    """`maculad run` itself on a fresh state directory: its memory map holds no cryptography's native
    library, TLS on or off (with TLS on, the signer's child makes the CA: tests/test_pki_signer.py). A
    restart on a state whose certificates are all good maps it no more: tests/test_pki_lazy.py."""
    text, ports = base_config(tmp_path, extra=f"[tls]\nenabled = {str(tls).lower()}\n")
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        assert d.proc is not None
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
    finally:
        d.stop()
    assert "cryptography/hazmat/bindings/_rust" not in maps, d.logs()
    if tls:  # the CA is there all the same
        assert (tmp_path / "state" / "ca" / "ca.pem").exists() and d.logs().count("tls_signer_ran") == 1
