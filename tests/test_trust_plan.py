"""`maculactl trust` planning (pure): which files and commands each platform gets, and that
uninstall undoes exactly what install adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from maculad.pki.trust import Facts, Root, detect, plan_install, plan_uninstall

ROOT = Root(path=Path("/var/lib/maculad/ca/ca.pem"), pem=b"PEM", der=b"DER", domain="macula.local",
            fingerprint="AA")


def facts(tmp: Path, family: str, tools: set[str], *, root: Path = Path("/")) -> Facts:
    return Facts(root=root, home=tmp, family=family, tools=frozenset(tools),  # type: ignore[arg-type]
                 nss_dbs=(tmp / ".pki" / "nssdb",), chromium_db_exists=False)


@pytest.mark.parametrize(("family", "tools", "path", "refresh"), [
    ("debian", {"update-ca-certificates"}, "/usr/local/share/ca-certificates/maculad-macula.local.crt",
     ("update-ca-certificates",)),
    ("fedora", {"update-ca-trust"}, "/etc/pki/ca-trust/source/anchors/maculad-macula.local.pem",
     ("update-ca-trust", "extract")),
    ("arch", {"trust"}, "/etc/ca-certificates/trust-source/anchors/maculad-macula.local.crt",
     ("trust", "extract-compat")),
])
def test_system_stores(tmp_path: Path, family: str, tools: set[str], path: str, refresh: tuple[str, ...]) -> None:
    actions, notes = plan_install(facts(tmp_path, family, tools), ROOT)
    assert [(a.kind, str(a.path) if a.path else None, a.argv) for a in actions] == [
        ("write", path, ()), ("run", None, refresh)]
    assert "certutil" in notes[0]  # no certutil: NSS skipped, and said so


def test_uninstall_removes_only_what_install_wrote(tmp_path: Path) -> None:
    f = facts(tmp_path, "debian", {"update-ca-certificates", "certutil"}, root=tmp_path / "sys")
    inst, _ = plan_install(f, ROOT)
    written = {a.path for a in inst if a.kind == "write"}
    nicknames = {a.argv[3] for a in inst if a.argv[:2] == ("certutil", "-A")}
    assert not [a for a in plan_uninstall(f, ROOT)[0] if a.kind == "remove"]  # nothing there yet
    for p in written:
        assert p is not None
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"PEM")
    un, _ = plan_uninstall(f, ROOT)
    assert {a.path for a in un if a.kind == "remove"} == written
    assert {a.argv[3] for a in un if a.argv[:2] == ("certutil", "-D")} <= nicknames
    sys_ = tmp_path / "sys"
    assert inst[1].argv == ("update-ca-certificates", "--certsconf", f"{sys_}/etc/ca-certificates.conf",
                            "--certsdir", f"{sys_}/usr/share/ca-certificates",
                            "--localcertsdir", f"{sys_}/usr/local/share/ca-certificates",
                            "--etccertsdir", f"{sys_}/etc/ssl/certs",
                            "--hooksdir", f"{sys_}/etc/ca-certificates/update.d")


def test_macos_and_unknown(tmp_path: Path) -> None:
    mac, _ = plan_install(facts(tmp_path, "macos", {"security"}), ROOT)
    assert mac[0].argv[:5] == ("security", "add-trusted-cert", "-d", "-r", "trustRoot")
    un, _ = plan_uninstall(facts(tmp_path, "macos", {"security"}), ROOT)
    assert un[0].argv[:2] == ("security", "delete-certificate")
    none, notes = plan_install(facts(tmp_path, "unknown", set()), ROOT)
    assert none == [] and any("no known system trust store" in n for n in notes)


def test_detect_reads_the_root_dir(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "fedora-release").write_text("Fedora 40\n")
    ff = tmp_path / "home" / ".mozilla" / "firefox" / "abc.default"
    ff.mkdir(parents=True)
    (ff / "cert9.db").write_bytes(b"")
    f = detect(root=tmp_path, home=tmp_path / "home", platform="linux", which=lambda t: None)
    assert f.family == "fedora" and ff in f.nss_dbs and f.tools == frozenset()
