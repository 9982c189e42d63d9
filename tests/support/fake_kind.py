"""A stand-in `kind` executable for the tests (there is no kind binary or node image here).

It behaves like kind where maculad can see it, and makes real Docker
containers through the `docker` CLI, as kind itself does:

* nodes are containers from the locally built busybox image, named
  `<cluster>-control-plane`, `<cluster>-control-plane2`, `<cluster>-worker`,
  `<cluster>-worker2`, ... from the kind config's `nodes`, labelled
  `io.x-k8s.kind.cluster=<cluster>` and `io.x-k8s.kind.role=<role>`, with
  `--restart on-failure:1`, on the `kind` network (created when missing),
  publishing each node's `extraPortMappings` (UDP included; `listenAddress`,
  `hostPort` 0 → random) and, on control-plane nodes, the API server port
  6443 on a random 127.0.0.1 port; they run a shell that sleeps and exits 0
  on SIGTERM;
* `get clusters` lists the label values (sorted, unique; "No kind clusters
  found." on stderr when there are none); `get nodes --name`;
* `create cluster --name --config --kubeconfig` refuses an existing cluster
  with kind's message, `delete cluster` removes the containers and the
  kubeconfig entries (exit 0 when there is nothing), `export kubeconfig`
  needs a running control-plane node (kind asks Docker for the API port);
* the kubeconfig it writes (merged into an existing file, context
  `kind-<cluster>`) points at the fake API server named in the state
  directory's `api.json` ({"server": URL, "token": T}).

State lives in the directory named by `FAKE_KIND_STATE`: `api.json`,
`calls.jsonl` (one JSON argv per run) and `fail.json` for failure injection
({"create": {"exit": 1, "stderr": "...", "times": 2}}: the next two creates
fail that way). Errors go to stderr as `ERROR: ...` with exit code 1.

`install_fake_kind(dir, ...)` writes an executable `kind` wrapper into `dir`
that runs this file with the test's interpreter and returns a `FakeKind`
handle.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
DEFAULT_IMAGE = "maculad-test/busybox:latest"
NODE_CMD = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"]


class KindFailure(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- the executable


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        cmd = "docker " + " ".join(shlex.quote(a) for a in args[:3])
        raise KindFailure(f'command "{cmd} ..." failed with error: exit status {res.returncode}: '
                          f"{res.stderr.strip()}")
    return res


def _list(cluster: str | None) -> list[tuple[str, str, str]]:
    """(name, cluster, role) of every node container (all clusters when `cluster` is None)."""
    flt = f"label={CLUSTER_LABEL}" + (f"={cluster}" if cluster else "")
    res = _docker("ps", "-a", "--filter", flt, "--format",
                  '{{.Names}}\t{{.Label "' + CLUSTER_LABEL + '"}}\t{{.Label "' + ROLE_LABEL + '"}}')
    out = []
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0]:
            out.append((parts[0], parts[1], parts[2]))
    return out


def _opts(args: list[str], known: dict[str, bool]) -> dict[str, str]:
    """--flag value / --flag=value parsing; `known` maps flag → takes a value."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise KindFailure(f"unknown command {a!r}")
        name, eq, val = a[2:].partition("=")
        if name not in known:
            raise KindFailure(f"unknown flag: --{name}")
        if known[name] and not eq:
            i += 1
            if i >= len(args):
                raise KindFailure(f"flag needs an argument: --{name}")
            val = args[i]
        out[name] = val if known[name] else "true"
        i += 1
    return out


def _node_names(cluster: str, config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    nodes = config.get("nodes") or [{"role": "control-plane"}]
    if not isinstance(nodes, list):
        raise KindFailure("failed to create cluster: invalid config: nodes must be a list")
    counts: dict[str, int] = {}
    out = []
    for n in nodes:
        if not isinstance(n, dict):
            raise KindFailure("failed to create cluster: invalid config: a node must be a mapping")
        role = n.get("role", "control-plane")
        if role not in ("control-plane", "worker"):
            raise KindFailure(f"failed to create cluster: invalid config: unknown role {role!r}")
        counts[role] = counts.get(role, 0) + 1
        suffix = "" if counts[role] == 1 else str(counts[role])
        out.append((f"{cluster}-{role}{suffix}", role, n))
    if "control-plane" not in counts:
        raise KindFailure("failed to create cluster: invalid config: must have at least one control-plane node")
    return out


def _ports(node: dict[str, Any]) -> list[str]:
    out = []
    for m in node.get("extraPortMappings") or []:
        if not isinstance(m, dict) or "containerPort" not in m:
            raise KindFailure("failed to create cluster: invalid config: extraPortMappings need containerPort")
        proto = str(m.get("protocol", "TCP")).lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise KindFailure(f"failed to create cluster: invalid port mapping protocol {m.get('protocol')!r}")
        addr = m.get("listenAddress", "0.0.0.0")
        host_port = int(m.get("hostPort", 0) or 0)
        hp = str(host_port) if host_port else ""
        out += ["-p", f"{addr}:{hp}:{int(m['containerPort'])}/{proto}"]
    return out


def _kubeconfig_path(opts: dict[str, str]) -> Path:
    if opts.get("kubeconfig"):
        return Path(opts["kubeconfig"])
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return Path(env) if env else Path.home() / ".kube" / "config"


def _load_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        doc = {}
    except (OSError, yaml.YAMLError) as exc:
        raise KindFailure(f"failed to read kubeconfig {path}: {exc}") from None
    if not isinstance(doc, dict):
        doc = {}
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    for k in ("clusters", "users", "contexts"):
        if not isinstance(doc.get(k), list):
            doc[k] = []
    return doc


def _save_kubeconfig(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".fake-kind.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def _write_kubeconfig(state: Path, cluster: str, path: Path) -> None:
    try:
        api = json.loads((state / "api.json").read_text())
    except (OSError, ValueError) as exc:
        raise KindFailure(f"fake kind: no API server in {state / 'api.json'}: {exc}") from None
    name = f"kind-{cluster}"
    doc = _load_kubeconfig(path)
    entries = {
        "clusters": {"name": name, "cluster": {"server": api["server"]}},
        "users": {"name": name, "user": {"token": api["token"]} if api.get("token") else {}},
        "contexts": {"name": name, "context": {"cluster": name, "user": name}},
    }
    for key, entry in entries.items():
        doc[key] = [e for e in doc[key] if not (isinstance(e, dict) and e.get("name") == name)] + [entry]
    doc["current-context"] = name
    _save_kubeconfig(path, doc)


def _remove_kubeconfig(cluster: str, path: Path) -> None:
    if not path.exists():
        return
    name = f"kind-{cluster}"
    doc = _load_kubeconfig(path)
    for key in ("clusters", "users", "contexts"):
        doc[key] = [e for e in doc[key] if not (isinstance(e, dict) and e.get("name") == name)]
    if doc.get("current-context") == name:
        doc["current-context"] = ""
    _save_kubeconfig(path, doc)


def _injected(state: Path, command: str) -> None:
    f = state / "fail.json"
    try:
        fails = json.loads(f.read_text())
    except (OSError, ValueError):
        return
    spec = fails.get(command)
    if not isinstance(spec, dict):
        return
    times = int(spec.get("times", 1))
    if times <= 1:
        fails.pop(command)
    else:
        spec["times"] = times - 1
    f.write_text(json.dumps(fails))
    sys.stderr.write(str(spec.get("stderr", "ERROR: injected failure")) + "\n")
    raise SystemExit(int(spec.get("exit", 1)))


def _create(state: Path, opts: dict[str, str]) -> None:
    cluster = opts.get("name", "kind")
    config: dict[str, Any] = {}
    if opts.get("config"):
        try:
            loaded = yaml.safe_load(Path(opts["config"]).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KindFailure(f"failed to create cluster: error reading file: {exc}") from None
        if not isinstance(loaded, dict) or loaded.get("kind") != "Cluster":
            raise KindFailure("failed to create cluster: invalid config: kind must be Cluster")
        config = loaded
    if _list(cluster):
        raise KindFailure(f'failed to create cluster: node(s) already exist for a cluster with the name "{cluster}"')
    nodes = _node_names(cluster, config)
    if _docker("network", "inspect", "kind", check=False).returncode != 0:
        res = _docker("network", "create", "kind", check=False)
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise KindFailure(f"failed to create cluster: failed to ensure docker network: {res.stderr.strip()}")
    image = opts.get("image") or os.environ.get("FAKE_KIND_IMAGE", DEFAULT_IMAGE)
    sys.stderr.write(f'Creating cluster "{cluster}" ...\n')
    made: list[str] = []
    try:
        for name, role, node in nodes:
            args = ["run", "-d", "--name", name, "--hostname", name,
                    "--label", f"{CLUSTER_LABEL}={cluster}", "--label", f"{ROLE_LABEL}={role}",
                    "--restart", "on-failure:1", "--net", "kind", *_ports(node)]
            if role == "control-plane":
                args += ["-p", "127.0.0.1::6443/tcp"]
            _docker(*args, image, *NODE_CMD)
            made.append(name)
    except KindFailure:
        if made and "retain" not in opts:
            _docker("rm", "-f", "-v", *made, check=False)
        raise
    _write_kubeconfig(state, cluster, _kubeconfig_path(opts))
    sys.stderr.write(f'Set kubectl context to "kind-{cluster}"\n')


def _export(state: Path, opts: dict[str, str]) -> None:
    cluster = opts.get("name", "kind")
    cps = [n for n, _, role in _list(cluster) if role == "control-plane"]
    if not cps:
        raise KindFailure(f"could not locate any control plane nodes for cluster named '{cluster}'. "
                          "Use the --name option to select a different cluster")
    res = _docker("port", cps[0], "6443/tcp", check=False)
    if res.returncode != 0 or not res.stdout.strip():
        raise KindFailure(f"failed to get api server endpoint: failed to get api server port: "
                          f"{res.stderr.strip() or cps[0] + ' is not running'}")
    _write_kubeconfig(state, cluster, _kubeconfig_path(opts))
    sys.stderr.write(f'Set kubectl context to "kind-{cluster}"\n')


def _delete(opts: dict[str, str]) -> None:
    cluster = opts.get("name", "kind")
    sys.stderr.write(f'Deleting cluster "{cluster}" ...\n')
    names = [n for n, _, _ in _list(cluster)]
    if names:
        _docker("rm", "-f", "-v", *names)
        sys.stderr.write(f"Deleted nodes: {json.dumps(names)}\n")
    _remove_kubeconfig(cluster, _kubeconfig_path(opts))


def run(argv: list[str]) -> int:
    state = Path(os.environ.get("FAKE_KIND_STATE", "."))
    try:
        with (state / "calls.jsonl").open("a") as f:
            f.write(json.dumps(argv) + "\n")
    except OSError:
        pass
    try:
        cmd = argv[:2]
        rest = argv[2:]
        if argv[:1] == ["version"]:
            print("kind v0.0.0-fake go1.0 linux/amd64")
        elif cmd == ["get", "clusters"]:
            _opts(rest, {})
            names = sorted({c for _, c, _ in _list(None)})
            if names:
                print("\n".join(names))
            else:
                sys.stderr.write("No kind clusters found.\n")
        elif cmd == ["get", "nodes"]:
            opts = _opts(rest, {"name": True})
            for n, _, _ in _list(opts.get("name", "kind")):
                print(n)
        elif cmd == ["create", "cluster"]:
            _injected(state, "create")
            _create(state, _opts(rest, {"name": True, "config": True, "kubeconfig": True, "wait": True,
                                        "image": True, "retain": False}))
        elif cmd == ["delete", "cluster"]:
            _injected(state, "delete")
            _delete(_opts(rest, {"name": True, "kubeconfig": True}))
        elif cmd == ["export", "kubeconfig"]:
            _injected(state, "export")
            _export(state, _opts(rest, {"name": True, "kubeconfig": True, "internal": False}))
        else:
            raise KindFailure(f'unknown command "{" ".join(argv[:2])}" for "kind"')
    except KindFailure as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return exc.code
    return 0


# --------------------------------------------------------------------------- the tests' handle


@dataclass(frozen=True, slots=True)
class FakeKind:
    binary: Path
    state: Path

    def calls(self) -> list[list[str]]:
        try:
            lines = (self.state / "calls.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(ln) for ln in lines if ln.strip()]

    def count(self, *command: str) -> int:
        return sum(1 for c in self.calls() if c[:len(command)] == list(command))

    def set_api(self, server: str, token: str | None) -> None:
        (self.state / "api.json").write_text(json.dumps({"server": server, "token": token}))

    def fail_next(self, command: str, *, times: int = 1, exit_code: int = 1,
                  stderr: str = "ERROR: failed to create cluster: injected by the test") -> None:
        f = self.state / "fail.json"
        try:
            fails = json.loads(f.read_text())
        except (OSError, ValueError):
            fails = {}
        fails[command] = {"times": times, "exit": exit_code, "stderr": stderr}
        f.write_text(json.dumps(fails))


def install_fake_kind(directory: Path, *, api_server: str, token: str | None = None,
                      image: str = DEFAULT_IMAGE) -> FakeKind:
    directory.mkdir(parents=True, exist_ok=True)
    state = directory / "fake-kind-state"
    state.mkdir(exist_ok=True)
    binary = directory / "kind"
    binary.write_text(
        "#!/bin/sh\n"
        f"FAKE_KIND_STATE={shlex.quote(str(state))}; export FAKE_KIND_STATE\n"
        f"FAKE_KIND_IMAGE={shlex.quote(image)}; export FAKE_KIND_IMAGE\n"
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} \"$@\"\n"
    )
    binary.chmod(0o755)
    fk = FakeKind(binary=binary, state=state)
    fk.set_api(api_server, token)
    return fk


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
