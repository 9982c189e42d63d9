"""Run the real `maculad` as a subprocess on free ports, for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1", *, udp_too: bool = True) -> int:
    """A port free on `host` for TCP (and UDP) right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {host}")


def base_config(tmp: Path, *, dns_ip: str = "127.0.0.153", pool: str = "127.0.10.0/24",
                extra: str = "", containers: bool = False, log_level: str = "debug") -> tuple[str, dict[str, Any]]:
    """A config text for a daemon on free ports under `tmp`, and the ports chosen.

    The container horizon binds the fixed ports 53/80/443 on the Docker gateway, so it is
    off unless `containers` is true (then `extra` has the `[containers]` table and the
    caller holds `tests.support.horizon.g_lock`)."""
    ports = {
        "dns": free_port(dns_ip),
        "metrics": free_port("127.0.0.1", udp_too=False),
        "http": free_port("127.0.0.1", udp_too=False),
        "https": free_port("127.0.0.1", udp_too=False),
    }
    text = f"""
domain = "macula.local"
state_dir = "{tmp / 'state'}"
[dns]
listen = ["{dns_ip}:{ports['dns']}"]
ttl = 5
[proxy]
pool = "{pool}"
http_port = {ports['http']}
https_port = {ports['https']}
drain_grace = 1.0
[metrics]
listen = "127.0.0.1:{ports['metrics']}"
[control]
socket = "{tmp / 'maculad.sock'}"
[log]
level = "{log_level}"
format = "json"
{"" if containers else "[containers]" + chr(10) + "enabled = false"}
{extra}
"""
    return text, ports


class Maculad:
    """A `maculad run` child process with its log in a file."""

    def __init__(self, config: Path, *, log: Path, env: dict[str, str] | None = None,
                 wrap: Sequence[str] = (), nofile: tuple[int, int] | None = None) -> None:
        """`wrap`: a command line the daemon's runs under (its arguments appended; it must exec them,
        e.g. `unshare -m sh -c '... && exec "$@"' sh`), so the daemon keeps the child's pid.
        `nofile`: start the daemon under this (soft, hard) RLIMIT_NOFILE, like `ulimit -n`."""
        self.config = config
        self.log_path = log
        self.env = env
        self.wrap = list(wrap)
        self.nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Maculad:
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.update(self.env or {})
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "maculad", "run", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            preexec_fn=limit if nofile is not None else None,
        )
        return self

    def wait_ready(self, metrics_port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"maculad exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"maculad not ready after {timeout}s:\n{self.logs()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


def dig(port: int, name: str, *args: str, server: str = "127.0.0.153") -> str:
    """`dig +short` against maculad (empty when there is no answer)."""
    from tests.conftest import require  # pytest only here: benchmarks import this module too

    require(shutil.which("dig") is not None, "dig (bind9-dnsutils) is not installed")
    out = subprocess.run(["dig", f"@{server}", "-p", str(port), "+short", "+time=2", "+tries=2", name, *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout.strip()


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `maculactl` of this venv against the daemon's control socket."""
    exe = Path(sys.executable).parent / "maculactl"
    return subprocess.run([str(exe), "--socket", str(socket_path), *args], capture_output=True, text=True,
                          timeout=60)


def maculactl(tmp: Path, *args: str) -> tuple[int, str, str]:
    """`ctl` against the daemon whose socket is `tmp/maculad.sock`: (exit code, stdout, stderr)."""
    p = ctl(tmp / "maculad.sock", *args)
    return p.returncode, p.stdout, p.stderr


def wait_until(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `pred` until it returns something truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class TaggedHTTP:
    """A threaded HTTP/1.1 backend on 127.0.0.1 that answers every request with `<tag>\\n`."""

    def __init__(self, tag: str) -> None:
        import http.server
        import threading

        body = f"{tag}\n".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TaggedHTTP:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
