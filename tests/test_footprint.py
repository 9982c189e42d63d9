"""What a laptop daemon may not carry: the heavy clients of sources that are off stay unimported."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import maculad.cli, maculad.app.daemon
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"kubernetes_asyncio", "kubernetes", "aiodocker", "aiohttp"})
print(",".join(heavy))
"""


def test_the_daemon_module_imports_no_http_docker_or_kubernetes_client() -> None:
    """They are imported where their part is built: DNS is served before them, and a part that is off
    (Kubernetes on the shipped user config) never loads its client."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_the_ingress_watch_still_finds_its_client() -> None:
    code = ("from maculad.adapters.kube.client import new_api_client; "
            "import kubernetes_asyncio.client as c; print(c.ApiClient)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "ApiClient" in out.stdout
