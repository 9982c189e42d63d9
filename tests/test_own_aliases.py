"""macOS lo0 aliases for maculad's own addresses (no macOS here: planned commands, and
`AliasPlatform.keep_only` through the stand-in ifconfig): the shipped configs' DNS address
127.0.0.153 gets an alias like every route IP; 127.0.0.1 never does; Linux needs none."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from maculad.app.reload import own_addresses
from maculad.config import load_config
from maculad.core.net import Backend
from maculad.proxy.platform import AliasError, AliasPlatform, alias_plan
from tests.support.proxy import FakeIfconfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["maculad.toml", "maculad-user.toml"])
def test_the_shipped_configs_plan_an_alias_for_the_dns_address(name: str) -> None:
    cfg = load_config(ROOT / "config" / name)
    assert own_addresses(cfg) == ("127.0.0.153", "127.0.0.1")  # DNS and page; metrics on 127.0.0.1
    assert alias_plan("Darwin", own_addresses(cfg)) == (("ifconfig", "lo0", "alias", "127.0.0.153", "up"),)
    assert alias_plan("Linux", own_addresses(cfg)) == ()


def test_a_separate_page_address_and_every_dns_address_get_aliases() -> None:
    cfg = load_config(ROOT / "config" / "maculad.toml")
    cfg = dataclasses.replace(
        cfg,
        dns=dataclasses.replace(cfg.dns, listen=(Backend("127.0.0.153", 53), Backend("127.0.0.154", 53))),
        web=dataclasses.replace(cfg.web, listen=Backend("127.0.0.160", 80)),
        metrics=dataclasses.replace(cfg.metrics, listen=Backend("127.0.0.161", 9469)))
    assert [c[3] for c in alias_plan("Darwin", own_addresses(cfg))] == [
        "127.0.0.153", "127.0.0.154", "127.0.0.160", "127.0.0.161"]
    no_page = dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, enabled=False))
    assert "127.0.0.160" not in own_addresses(no_page)


async def test_keep_only_adds_follows_a_reload_and_removes_only_its_own() -> None:
    ifconfig = FakeIfconfig({"127.0.0.1", "127.0.0.200"})  # .200: someone else's alias
    plat = AliasPlatform(system="Darwin", runner=ifconfig)
    await plat.keep_only(["127.0.0.153", "127.0.0.1", "127.0.0.200"])
    assert ifconfig.addresses == {"127.0.0.1", "127.0.0.153", "127.0.0.200"}
    assert plat.managed() == {"127.0.0.153"}
    # a reload moves DNS to .154: staged with both, then only the new one
    await plat.keep_only(["127.0.0.153", "127.0.0.154"])
    await plat.keep_only(["127.0.0.154"])
    assert ifconfig.addresses == {"127.0.0.1", "127.0.0.154", "127.0.0.200"}
    await plat.remove_all()  # shutdown
    assert ifconfig.addresses == {"127.0.0.1", "127.0.0.200"}
    assert ("ifconfig", "lo0", "-alias", "127.0.0.200") not in ifconfig.calls


async def test_an_alias_that_cannot_be_added_is_an_error_naming_the_command() -> None:
    async def refuse(argv: tuple[str, ...]) -> tuple[int, str]:
        return (0, "lo0: flags=8049<UP,LOOPBACK>\n\tinet 127.0.0.1") if argv == ("ifconfig", "lo0") else (
            1, "ifconfig: ioctl (SIOCAIFADDR): permission denied")

    plat = AliasPlatform(system="Darwin", runner=refuse)
    with pytest.raises(AliasError, match=r"ifconfig lo0 alias 127\.0\.0\.153 up failed \(1\): .*permission denied"):
        await plat.keep_only(["127.0.0.153"])
    assert plat.managed() == frozenset()
