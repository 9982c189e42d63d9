"""A real PowerDNS Authoritative server (Debian pdns-server + gsqlite3) on loopback free ports.

`PowerDNS(tmp).start()` creates the SQLite database from the packaged schema, writes a
pdns.conf (api=yes, webserver and DNS on 127.0.0.1, free ports; caches at PowerDNS's
defaults — its API purges them for a zone it changes) and runs `pdns_server
--daemon=no --guardian=no` as a child process. `stop()` and `start()` again keep the
database, so a test can take PowerDNS away and bring it back. The `api()` helper talks
to its HTTP API with the stdlib, independent of maculad's own adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.daemon import free_port

SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


def pdns_binary() -> str | None:
    return shutil.which("pdns_server") or (("/usr/sbin/pdns_server") if Path("/usr/sbin/pdns_server").exists()
                                           else None)


def missing() -> str | None:
    """Why a real PowerDNS cannot run here (None when it can)."""
    if pdns_binary() is None:
        return "pdns_server is not installed (Debian pdns-server)"
    if not SCHEMA.exists():
        return f"{SCHEMA} is missing (Debian pdns-backend-sqlite3)"
    return None


class PowerDNS:
    def __init__(self, root: Path, *, api_key: str = "test-key-123") -> None:
        self.root = root
        self.api_key = api_key
        self.api_port = free_port("127.0.0.1", udp_too=False)
        self.dns_port = free_port("127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.db = root / "pdns.sqlite3"
        self.log_path = root / "pdns.log"
        root.mkdir(parents=True, exist_ok=True)
        if not self.db.exists():
            con = sqlite3.connect(self.db)
            con.executescript(SCHEMA.read_text())
            con.commit()
            con.close()
        (root / "pdns.conf").write_text(
            "launch=gsqlite3\n"
            f"gsqlite3-database={self.db}\n"
            "api=yes\n"
            f"api-key={api_key}\n"
            "webserver=yes\n"
            "webserver-address=127.0.0.1\n"
            f"webserver-port={self.api_port}\n"
            "webserver-allow-from=127.0.0.0/8\n"
            "local-address=127.0.0.1\n"
            f"local-port={self.dns_port}\n"
            "loglevel=4\n"
            f"socket-dir={root}\n"
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dns(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def start(self, timeout: float = 20.0) -> PowerDNS:
        binary = pdns_binary()
        assert binary is not None, missing()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "--daemon=no", "--guardian=no", f"--config-dir={self.root}", "--disable-syslog"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pdns_server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                self.api("GET", "/api/v1/servers/localhost")
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"PowerDNS API not up after {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # --- the API, with the stdlib -----------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, *, key: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers={"X-API-Key": key or self.api_key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def create_zone(self, zone: str) -> None:
        self.api("POST", "/api/v1/servers/localhost/zones",
                 {"name": zone + ".", "kind": "Native", "nameservers": [f"ns1.{zone}."]})

    def zone(self, zone: str) -> dict[str, Any] | None:
        try:
            z = self.api("GET", f"/api/v1/servers/localhost/zones/{zone}.")
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 422):
                return None
            raise
        assert isinstance(z, dict)
        return z

    def rrsets(self, zone: str) -> dict[tuple[str, str], list[str]]:
        """(name without trailing dot, type) → sorted record contents."""
        z = self.zone(zone) or {"rrsets": []}
        return {(rr["name"].rstrip("."), rr["type"]): sorted(r["content"] for r in rr["records"])
                for rr in z["rrsets"]}

    def patch(self, zone: str, rrsets: list[dict[str, Any]]) -> None:
        self.api("PATCH", f"/api/v1/servers/localhost/zones/{zone}.", {"rrsets": rrsets})
