"""Unattended updates without a machine: pins, the menu's limit, the route check, the
registry host, dpkg's status file and version order, file changes between two trees."""

from __future__ import annotations

import errno
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cfsboot.boot.bootloader import MenuEntry, SystemdBoot
from cfsboot.boot.boottype import BootType
from cfsboot.boot.esp import DirEsp
from cfsboot.composefs.tree import Inode
from cfsboot.deploy import pins
from cfsboot.deploy.diff import file_changes
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.updatecache import CachedUpdate, read_cached_update, write_cached_update
from cfsboot.errors import CfsbootError
from cfsboot.image import dpkg
from cfsboot.linux import route
from cfsboot.oci.network import DOCKER_HUB, offline_reason, registry_host
from cfsboot.oci.reference import parse

A, B, C, D = "aa" * 64, "bb" * 64, "cc" * 64, "dd" * 64


def _entry(d: str) -> MenuEntry:
    kdir = f"/EFI/Linux/bootc_composefs-{d}"
    return MenuEntry(
        d,
        BootType.BLS,
        "OS",
        "1",
        "os",
        linux=f"{kdir}/vmlinuz",
        initrd=(f"{kdir}/initrd",),
        options=(f"composefs={d}",),
    )


def _system(tmp_path: Path, menu: Sequence[str]) -> tuple[Sysroot, SystemdBoot]:
    (tmp_path / "root").mkdir()
    (tmp_path / "esp").mkdir()
    bl = SystemdBoot(DirEsp(tmp_path / "esp"))
    bl.write_menu([_entry(d) for d in menu])
    return Sysroot(tmp_path / "root", run_dir=tmp_path / "run"), bl


# -- pins --------------------------------------------------------------------------------


def test_pin_and_unpin(tmp_path: Path) -> None:
    sysroot, bl = _system(tmp_path, [A, B, C])
    assert pins.pinned(sysroot) == set()
    msg = pins.pin(sysroot, bl, "bbbb")
    assert msg == f"pinned deployment {B[:12]}…: it stays in the boot menu and gc keeps it"
    assert (tmp_path / "root/state/cfsboot/pinned" / B).read_bytes() == b""
    assert pins.pinned(sysroot) == {B}
    assert pins.pin(sysroot, bl, B) == f"deployment {B[:12]}… is already pinned"
    assert pins.pin(sysroot, bl, "rollback") == pins.pin(sysroot, bl, "bbbb")  # B: menu[1]
    pins.pin(sysroot, bl, "booted")  # offline: the menu's default, A
    assert pins.pinned(sysroot) == {A, B}
    assert pins.unpin(sysroot, bl, "aaaa") == (
        f"unpinned deployment {A[:12]}…: gc may remove it once it is not needed"
    )
    assert pins.unpin(sysroot, bl, C) == f"deployment {C[:12]}… is not pinned"
    assert pins.pinned(sysroot) == {B}
    # A pin outlives its deployment's entry: unpin still finds it.
    bl.write_menu([_entry(A)])
    assert pins.unpin(sysroot, bl, "bbbb").startswith("unpinned deployment")
    assert pins.pinned(sysroot) == set()


@pytest.mark.parametrize(
    ("ident", "message"),
    [
        ("dddd", "no deployment dddd; cfsboot status lists the deployments"),
        (
            "ab",
            "'ab' does not name a deployment; give booted, staged, rollback, or an ID"
            " (4 or more hex digits) from status",
        ),  # fmt: skip
        ("staged", "there is no staged deployment; cfsboot status lists the deployments"),
    ],
)
def test_pin_errors(tmp_path: Path, ident: str, message: str) -> None:
    sysroot, bl = _system(tmp_path, [A, B])
    with pytest.raises(CfsbootError) as e:
        pins.pin(sysroot, bl, ident)
    assert str(e.value) == message


def test_pin_needs_an_entry_and_a_unique_prefix(tmp_path: Path) -> None:
    sysroot, bl = _system(tmp_path, [A, "aaaa" + "bb" * 62])
    with pytest.raises(CfsbootError) as e:
        pins.resolve(sysroot, bl, "aaaa")
    assert str(e.value) == "aaaa names 2 deployments; give more of the ID"
    assert pins.resolve(sysroot, bl, "AAAAA") == A
    (tmp_path / "root/state/deploy" / C).mkdir(parents=True)  # state, no entry
    with pytest.raises(CfsbootError) as e:
        pins.pin(sysroot, bl, "cccc")
    assert str(e.value) == (
        f"deployment {C[:12]}… is not in the boot menu: a pin keeps an entry, it does not"
        " bring one back; cfsboot switch to its image stages it again"
    )


def test_cap_menu_drops_unpinned_entries_first() -> None:
    menu = [_entry(d) for d in (A, B, C, D)]
    kept = pins.cap_menu(menu, {D}, 3)
    assert [m.deployment for m in kept] == [A, B, D]
    assert [m.deployment for m in pins.cap_menu(menu, set(), 3)] == [A, B, C]
    assert [m.deployment for m in pins.cap_menu(menu, {C, D}, 3)] == [A, C, D]
    assert pins.cap_menu(menu, {"ee" * 64}, 9) == menu  # a pin of no entry takes no room
    with pytest.raises(CfsbootError) as e:
        pins.cap_menu(menu, {B, C, D}, 3)
    assert str(e.value) == (
        "the boot menu holds at most 3 cfsboot entries and 4 must stay (the new one, the"
        " booted one and the pinned ones); cfsboot unpin one"
    )


# -- the cached update -------------------------------------------------------------------


def test_cached_update_round_trip(tmp_path: Path) -> None:
    sysroot, _ = _system(tmp_path, [A])
    assert read_cached_update(sysroot) is None
    image = {"image": {"image": "r/x:1", "transport": "registry"}, "version": "2"}
    write_cached_update(sysroot, CachedUpdate(A, image))
    assert read_cached_update(sysroot) == CachedUpdate(A, image)
    write_cached_update(sysroot, None)
    assert not (tmp_path / "root/state/cfsboot/cached-update.json").exists()
    write_cached_update(sysroot, None)  # none to remove: no error
    (tmp_path / "root/state/cfsboot/cached-update.json").write_text("[1]")
    assert read_cached_update(sysroot) is None
    (tmp_path / "root/state/cfsboot/cached-update.json").write_text("[" * 100_000)
    assert read_cached_update(sysroot) is None  # was a RecursionError out of json.loads


# -- the route check ---------------------------------------------------------------------


def _msg(rtype: int, **attrs: object) -> rtmsg:
    m = rtmsg()
    m["type"] = rtype
    m["attrs"] = [(f"RTA_{k.upper()}", v) for k, v in attrs.items()]
    return m


def test_route_from_netlink_answers() -> None:
    asked: list[str] = []

    def answer(*msgs: rtmsg) -> route.RouteGet:
        def get(address: str) -> list[rtmsg]:
            asked.append(address)
            return list(msgs)

        return get

    via = answer(_msg(1, oif=2, gateway="10.0.2.2"))
    assert route.route_to("192.0.2.7", via) == route.Route("192.0.2.7", 2, "10.0.2.2")
    assert route.route_to("10.0.2.2", answer(_msg(1, oif=2))) == route.Route("10.0.2.2", 2, None)
    for kind in (route.RTN_UNREACHABLE, route.RTN_BLACKHOLE, route.RTN_PROHIBIT):
        assert route.route_to("192.0.2.7", answer(_msg(kind))) is None
    assert route.route_to("192.0.2.7", answer()) is None
    assert asked == ["192.0.2.7", "10.0.2.2", *["192.0.2.7"] * 4]


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES])
def test_no_route_errors_mean_no_route(code: int) -> None:
    def get(address: str) -> list[rtmsg]:
        raise OSError(code, "no", address)

    assert route.route_to("192.0.2.7", get) is None


def test_other_netlink_errors_are_raised() -> None:
    def get(address: str) -> list[rtmsg]:
        raise OSError(errno.ENOBUFS, "No buffer space available", address)

    with pytest.raises(OSError) as e:
        route.route_to("192.0.2.7", get)
    assert e.value.errno == errno.ENOBUFS


def test_a_real_lookup_of_loopback() -> None:
    """The kernel's own answer (pyroute2, no privileges): 127.0.0.1 is local, on lo."""
    found = route.route_to("127.0.0.1")
    assert found is not None
    assert found.interface == 1  # lo is always ifindex 1
    assert found.gateway is None


@pytest.mark.parametrize(
    ("ref", "host"),
    [
        ("docker://10.0.2.2:5000/cfsboot/testos:v2", "10.0.2.2"),
        ("docker://quay.io/fedora/fedora-bootc:42", "quay.io"),
        ("docker://localhost/os", "localhost"),
        ("docker://[fd00::1]:5000/os:1", "fd00::1"),
        ("docker://debian:trixie", DOCKER_HUB),
        ("docker://library/debian", DOCKER_HUB),
        ("docker://docker.io/library/debian", DOCKER_HUB),
        ("registry:example.com/os@sha256:" + "0" * 64, "example.com"),
        ("oci:/srv/os:1", None),
        ("containers-storage:localhost/os", None),
    ],
)
def test_registry_host(ref: str, host: str | None) -> None:
    assert registry_host(parse(ref)) == host


def test_offline_reason() -> None:
    ref = parse("docker://registry.example:5000/os:2")
    resolved = {"registry.example": ["192.0.2.7", "2001:db8::7"]}

    def resolver(host: str) -> list[str]:
        if host not in resolved:
            raise OSError(-3, "Temporary failure in name resolution")
        return resolved[host]

    def none(address: str) -> list[rtmsg]:
        raise OSError(errno.ENETUNREACH, "Network is unreachable", address)

    def v6_only(address: str) -> list[rtmsg]:
        return [_msg(1, oif=3)] if ":" in address else none(address)

    assert offline_reason(ref, route_get=none, resolver=resolver) == (
        "offline: no route to registry.example"
    )
    assert offline_reason(ref, route_get=v6_only, resolver=resolver) is None
    other = parse("docker://elsewhere.example/os")
    assert offline_reason(other, route_get=v6_only, resolver=resolver) == (
        "offline: cannot resolve elsewhere.example (Temporary failure in name resolution)"
    )
    assert offline_reason(parse("oci:/srv/os"), route_get=none, resolver=resolver) is None
    # The real lookup: an address on this machine always has a route.
    assert offline_reason(parse("docker://127.0.0.1:5000/os:1")) is None


# -- dpkg --------------------------------------------------------------------------------

STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.41-12
Description: GNU C Library
 continuation: not a field

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.41-12

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2025b-4

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.37-2+b5
"""


def test_parse_status() -> None:
    found = dpkg.parse_status(STATUS)
    assert found == {
        "libc6": dpkg.Package("libc6", "2.41-12", "amd64"),
        "libc6:i386": dpkg.Package("libc6:i386", "2.41-12", "i386"),
        "tzdata": dpkg.Package("tzdata", "2025b-4", "all"),
        "bash": dpkg.Package("bash", "5.2.37-2+b5", "amd64"),
    }


# (older, newer) pairs as `dpkg --compare-versions A lt B` orders them (dpkg 1.21).
OLDER_NEWER = [
    ("1.0", "1.0-1"),
    ("1.0~rc1", "1.0"),
    ("1.0~~", "1.0~"),
    ("1.0", "1.0+b1"),
    ("1.0", "1.0a"),
    ("1.0a", "1.0.1"),
    ("2", "10"),
    ("9.9", "1:0.1"),
    ("1.0-1~bpo1", "1.0-1"),
    ("6.12.6-1", "6.12.57-1"),
    ("2.36.1-8", "2.36.1-8+deb12u1"),
    ("1.0-0", "1.0-1"),
]


@pytest.mark.parametrize(("older", "newer"), OLDER_NEWER)
def test_version_order(older: str, newer: str) -> None:
    assert dpkg.compare(older, newer) < 0
    assert dpkg.compare(newer, older) > 0
    assert dpkg.compare(older, older) == 0


def test_version_equalities() -> None:
    assert dpkg.compare("0:1.0", "1.0") == 0
    assert dpkg.compare("1.0-0", "1.0") == 0  # dpkg: an absent revision is "" and 0 == ""
    assert dpkg.compare("1.01", "1.1") == 0


# -- file changes ------------------------------------------------------------------------


def _file(data: bytes, mode: int = 0o644, **kw: object) -> Inode:
    return Inode(stat.S_IFREG | mode, size=len(data), content=data, **kw)  # type: ignore[arg-type]


def _tree(files: dict[str, Inode]) -> Inode:
    root = Inode.directory()
    for path, node in files.items():
        parts = path.strip("/").split("/")
        d = root
        for p in parts[:-1]:
            assert d.children is not None
            d = d.children.setdefault(p.encode(), Inode.directory())
        assert d.children is not None
        d.children[parts[-1].encode()] = node
    return root


def test_file_changes() -> None:
    old = _tree(
        {
            "/etc/a": _file(b"a"),
            "/etc/same": _file(b"s", mtime=1),
            "/usr/mode": _file(b"m"),
            "/usr/gone/x": _file(b"x"),
            "/usr/link": Inode(stat.S_IFLNK | 0o777, payload=b"a"),
            "/usr/big": _file(b"", digest=b"\x01" * 32),
        }
    )
    new = _tree(
        {
            "/etc/a": _file(b"A"),
            "/etc/same": _file(b"s", mtime=2),  # only the time: not a change
            "/usr/mode": _file(b"m", mode=0o755),
            "/usr/link": Inode(stat.S_IFLNK | 0o777, payload=b"b"),
            "/usr/big": _file(b"", digest=b"\x02" * 32),
            "/usr/new/y": _file(b"y"),
        }
    )
    added, removed, changed = file_changes(old, new)
    assert added == ["/usr/new", "/usr/new/y"]
    assert removed == ["/usr/gone", "/usr/gone/x"]
    assert changed == ["/etc/a", "/usr/big", "/usr/link", "/usr/mode"]
    assert file_changes(old, old) == ([], [], [])


def test_file_changes_walk_deep_trees() -> None:
    """No recursion: a tree deeper than Python's recursion limit is compared."""
    deep = "/" + "/".join(["d"] * 3000) + "/f"
    added, removed, changed = file_changes(_tree({"/x": _file(b"x")}), _tree({deep: _file(b"")}))
    assert len(added) == 3001 and added[-1] == deep
    assert (removed, changed) == (["/x"], [])
