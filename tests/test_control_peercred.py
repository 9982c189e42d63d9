"""The peer-credential policy as a pure function, and the kernel's answer on a real socket."""

from __future__ import annotations

import os
import socket

import pytest

from maculad.control.peercred import PeerCred, authorize, peer_groups, proc_groups, read_peercred, resolve_group

DAEMON = 998
MACULA = 999


@pytest.mark.parametrize(
    ("uid", "groups", "group_gid", "allowed", "rule"),
    [
        (0, frozenset(), MACULA, True, "act: root"),
        (DAEMON, frozenset({DAEMON}), MACULA, True, "act: the daemon's own user (uid 998)"),
        (1000, frozenset({1000, MACULA}), MACULA, True, "act: member of group 'macula'"),
        (1000, frozenset({1000, 27}), MACULA, False,
         "acting needs root, the daemon's user (uid 998) or membership of group 'macula'"),
        (1000, frozenset({1000}), None, False,
         "acting needs root, the daemon's user (uid 998); no control.group is configured"),
        (None, frozenset(), MACULA, False, "acting needs known peer credentials, and the kernel gave none"),
    ],
)
def test_who_may_act(uid: int | None, groups: frozenset[int], group_gid: int | None, allowed: bool,
                     rule: str) -> None:
    d = authorize("act", uid=uid, groups=groups, daemon_uid=DAEMON, group_gid=group_gid,
                  group_name="macula" if group_gid else None)
    assert (d.allowed, d.rule) == (allowed, rule)


@pytest.mark.parametrize("uid", [0, DAEMON, 1000, 65534, None])
def test_anyone_who_can_connect_may_read(uid: int | None) -> None:
    d = authorize("read", uid=uid, groups=frozenset(), daemon_uid=DAEMON, group_gid=MACULA)
    assert d.allowed


def test_group_named_by_gid_when_no_name() -> None:
    d = authorize("act", uid=5, groups=frozenset(), daemon_uid=DAEMON, group_gid=MACULA)
    assert d.rule.endswith("membership of gid 999")


def test_proc_groups_line() -> None:
    assert proc_groups("Name:\tx\nGroups:\t4 24 27 999 \nNgid:\t0\n") == frozenset({4, 24, 27, 999})
    assert proc_groups("Groups:\t\n") == frozenset()
    assert proc_groups("Name: x\n") is None
    assert proc_groups("Groups: a b\n") is None


def test_real_so_peercred_on_a_unix_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        cred = read_peercred(a)
        assert cred is not None
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert peer_groups(cred) == frozenset(os.getgroups()) | {os.getegid()}
    finally:
        a.close()
        b.close()


def test_peer_groups_falls_back_to_the_user_database() -> None:
    cred = PeerCred(uid=65534, gid=65534, pid=None)
    assert 65534 in peer_groups(cred)
    assert peer_groups(PeerCred(uid=0, gid=0, groups=(0, 5, 7))) == frozenset({0, 5, 7})


def test_resolve_group() -> None:
    assert resolve_group("daemon") == 1
    assert resolve_group("4242") == 4242
    with pytest.raises(LookupError, match="does not exist"):
        resolve_group("no-such-group-xyz")
