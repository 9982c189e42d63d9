"""The folder-level import arrows of maculad point down: `core` at the bottom, `app` at the top.

Every module's imports (also those inside functions and under TYPE_CHECKING) are parsed with `ast`;
an import of a folder on the same rank or above is a violation, and so is a folder that has no rank
(a new package must say where it sits). The checker is run on a small tree with a known cycle too, so
a checker that cannot fail would fail here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import maculad

#: Bottom to top. Folders on one rank must not import each other either.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),                  # names, net, backoff, restart, tasks, events, fsutil; also maculad/__init__
    ("config",),                # the schema
    ("observability",),         # metrics, logging, sd_notify, /metrics
    ("routes", "pki"),          # the route table; the CA
    ("adapters",),              # Docker, Kubernetes, kind: the only I/O with other systems
    ("providers",),             # sources → whole snapshots
    ("dns", "proxy"),           # outputs of the table
    ("supervise", "publishers", "horizons"),  # horizons: which answer and listeners each address gets
    ("control",),               # the socket server and its typed shapes
    ("web",),
    ("app",),                   # the composition root, reload, the control facade; cli.py
    ("ctl",),                   # maculactl
)

#: Top-level modules that are not folders: which folder they count as.
MODULES = {"__init__": "core", "__main__": "app", "cli": "app", "config": "config"}


def rank_of(folder: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if folder in layer:
            return i
    return None


def folder_of(module: str, package: str) -> str | None:
    """`maculad.routes.table` → `routes`; `maculad.cli` → `app`; other packages → None."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    if len(parts) == 1:
        return MODULES["__init__"]
    return MODULES.get(parts[1], parts[1])


def imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from maculad import cli`
    return out


def violations(root: Path) -> list[str]:
    """Every import in the package at `root` that does not point down."""
    package = root.name
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        src = folder_of(module, package)
        assert src is not None
        src_rank = rank_of(src)
        if src_rank is None:
            found.append(f"{path.relative_to(root.parent)}: folder {src!r} has no rank in LAYERS")
            continue
        for imp in sorted(imports_of(path, module)):
            dst = folder_of(imp, package)
            if dst is None or dst == src:
                continue
            dst_rank = rank_of(dst)
            if dst_rank is None:
                continue  # `from maculad import x` adds a name that is not a folder; real folders are ranked above
            if dst_rank >= src_rank:
                found.append(f"{path.relative_to(root.parent)}: {src} imports {imp} ({dst} is not below {src})")
    return found


def test_maculad_imports_point_down() -> None:
    root = Path(maculad.__file__).parent
    assert violations(root) == []


def test_every_folder_of_maculad_has_a_rank() -> None:
    root = Path(maculad.__file__).parent
    folders = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert sorted(f for f in folders if rank_of(f) is None) == []


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "maculad"
    for folder in ("core", "routes", "observability", "app"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from maculad.routes.table import qualify\n")
    (pkg / "routes" / "table.py").write_text("from maculad.observability import metrics\n")
    (pkg / "observability" / "metrics.py").write_text("import maculad.config\n")
    (pkg / "core" / "net.py").write_text("def f():\n    from ..app import daemon\n")
    (pkg / "app" / "daemon.py").write_text("from maculad.core import net\nfrom maculad.routes import table\n")
    found = violations(pkg)
    assert any("config.py: config imports maculad.routes.table" in v for v in found)
    assert any("core/net.py: core imports maculad.app" in v for v in found)
    assert not any("metrics.py" in v for v in found)  # observability → config points down
    assert not any("daemon.py" in v for v in found)
    (pkg / "stray").mkdir()
    (pkg / "stray" / "__init__.py").write_text("")
    assert any("'stray' has no rank" in v for v in violations(pkg))
