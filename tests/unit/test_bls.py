from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.boot.bls import (
    BLSEntry,
    BLSError,
    EntryFile,
    default_entry,
    entry_file_name,
    entry_sort_key,
    parse_entries,
    sort_entries,
)
from cfsboot.boot.bootloader import MenuEntry, SystemdBoot
from cfsboot.boot.boottype import BootType
from cfsboot.boot.esp import DirEsp
from cfsboot.image.versions import compare_versions
from cfstest import bootorder

SHA512 = "ab" * 64

# systemd's test list for strverscmp_improved: each is older than every later one.
ASCENDING = [
    "~1",
    "",
    "ab",
    "abb",
    "abc",
    "0001",
    "002",
    "12",
    "122",
    "122.9",
    "123~rc1",
    "123",
    "123-a",
    "123-a.1",
    "123-a1",
    "123-a1.1",
    "123-3",
    "123-3.1",
    "123^patch1",
    "123^1",
    "123.a-1",
    "123.1-1",
    "123a-1",
    "124",
]


def test_version_order_systemd_list() -> None:
    for older, newer in itertools.combinations(ASCENDING, 2):
        assert compare_versions(older, newer) == -1, (older, newer)
        assert compare_versions(newer, older) == 1, (older, newer)
    for v in ASCENDING:
        assert compare_versions(v, v) == 0


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("123.45-67.88", "123.45-67.89"),
        ("123.45-67.89", "123.45-67.89a"),
        ("123.45-67.ab", "123.45-67.89"),
        ("123.45-67.9", "123.45-67.89"),
        ("123-99.99", "123.45-67.89"),
        ("123~rc1-99.99", "123~rc2-67.89"),
        ("123^45-67.89", "123.45-67.89"),
        ("123.aa2-67.89", "123aa2-67.89"),
        ("1.0", "1.0^"),
        ("1.0^git1", "1.01"),
        ("1.0~rc1", "1.0"),
        ("2.0", "2_0"),
        ("12_3", "123"),
        ("123", "123.0"),
        ("123..0", "123.0"),
        ("xyz.4", "8"),
        ("A", "a"),
        ("41.20251124.0", "41.20251125.0"),
    ],
)
def test_version_pairs(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1


@pytest.mark.parametrize(
    ("a", "b"),
    [("10.0001", "10.1"), ("0_", "0"), ("_", ""), ("", None), ("1.1.α", "1.1.ββ"), ("a+", "a_")],
)
def test_version_equal(a: str, b: str | None) -> None:
    assert compare_versions(a, b) == 0


ENTRY_TEXT = """\
# comment lines are dropped
title Fedora Linux 41
version 41.20251125.0
linux /EFI/Linux/bootc_composefs-X/vmlinuz
initrd /EFI/Linux/bootc_composefs-X/initrd
initrd /extra.img
options rw  console=ttyS0
options quiet
devicetree-overlay /a.dtbo /b.dtbo
sort-key bootc-fedora-0
architecture x64
machine-id 0123456789abcdef0123456789abcdef
"""


def test_parse_keeps_unknown_keys_and_orders_output() -> None:
    e = BLSEntry.parse(ENTRY_TEXT)
    assert e.title == "Fedora Linux 41"
    assert e.initrd == ("/EFI/Linux/bootc_composefs-X/initrd", "/extra.img")
    assert e.options == ("rw  console=ttyS0", "quiet")
    assert e.cmdline == "rw  console=ttyS0 quiet"
    assert e.extra == (("devicetree-overlay", "/a.dtbo /b.dtbo"), ("architecture", "x64"))
    assert e.serialise() == (
        "title Fedora Linux 41\n"
        "version 41.20251125.0\n"
        "linux /EFI/Linux/bootc_composefs-X/vmlinuz\n"
        "initrd /EFI/Linux/bootc_composefs-X/initrd\n"
        "initrd /extra.img\n"
        "options rw  console=ttyS0\n"
        "options quiet\n"
        "machine-id 0123456789abcdef0123456789abcdef\n"
        "sort-key bootc-fedora-0\n"
        "devicetree-overlay /a.dtbo /b.dtbo\n"
        "architecture x64\n"
    )
    assert BLSEntry.parse(e.serialise()) == e


def test_tabs_and_last_single_key_wins() -> None:
    e = BLSEntry.parse("title\tA\ntitle   B  \nversion\n")
    assert (e.title, e.version) == ("B", "")
    assert e.serialise() == "title B\nversion\n"


@pytest.mark.parametrize("bad", ["a\nb", " lead", "trail "])
def test_serialise_refuses_values_that_do_not_read_back(bad: str) -> None:
    with pytest.raises(BLSError):
        BLSEntry(title=bad).serialise()
    with pytest.raises(BLSError):
        BLSEntry(extra=(("my key", "v"),)).serialise()


_value = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]), min_size=1
).map(str.strip).filter(bool) | st.just("a  b")
_key = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(
    lambda k: (
        k
        not in (
            "title",
            "version",
            "machine-id",
            "sort-key",
            "linux",
            "initrd",
            "efi",
            "uki",
            "options",
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(
    title=st.none() | _value,
    version=st.none() | _value,
    sort_key=st.none() | _value,
    linux=st.none() | _value,
    initrd=st.lists(_value, max_size=3).map(tuple),
    options=st.lists(_value, max_size=3).map(tuple),
    extra=st.lists(st.tuples(_key, _value), max_size=3).map(tuple),
)
def test_round_trip(
    title: str | None,
    version: str | None,
    sort_key: str | None,
    linux: str | None,
    initrd: tuple[str, ...],
    options: tuple[str, ...],
    extra: tuple[tuple[str, str], ...],
) -> None:
    e = BLSEntry(
        title=title,
        version=version,
        sort_key=sort_key,
        linux=linux,
        initrd=initrd,
        options=options,
        extra=extra,
    )
    assert BLSEntry.parse(e.serialise()) == e


def test_deployment_from_options_or_uki_name() -> None:
    assert BLSEntry(options=(f"rw composefs=?{SHA512.upper()}",)).deployment() == SHA512
    assert BLSEntry(uki=f"/EFI/Linux/bootc/bootc_composefs-{SHA512}.efi").deployment() == SHA512
    assert BLSEntry(efi=f"/EFI/Linux/bootc/bootc_composefs-{SHA512}.efi").deployment() == SHA512
    assert BLSEntry(options=("root=/dev/sda1",)).deployment() is None
    assert BLSEntry(options=("composefs=zz",)).deployment() is None


def test_bootc_names() -> None:
    assert entry_file_name("fedora", "41.20251125.0", primary=True) == (
        "bootc_fedora-41.20251125.0-1.conf"
    )
    assert entry_file_name("my-os", "1/2", primary=False) == "bootc_my_os-1_2-0.conf"
    assert entry_sort_key("my-os", primary=True) == "bootc-my-os-0"
    assert entry_sort_key("my-os", primary=False) == "bootc-my-os-1"


class _Fields(TypedDict, total=False):
    title: str
    version: str
    sort_key: str
    machine_id: str


def _ef(name: str, **kw: Unpack[_Fields]) -> EntryFile:
    return EntryFile(name, BLSEntry(**kw))


def test_newest_is_default_with_bootc_sort_keys() -> None:
    primary = _ef("bootc_debian-13-1.conf", sort_key="bootc-debian-0", version="13")
    secondary = _ef("bootc_debian-14-0.conf", sort_key="bootc-debian-1", version="14")
    other = _ef("windows.conf", title="Windows")
    order = sort_entries([other, secondary, primary])
    assert [e.name for e in order] == [primary.name, secondary.name, other.name]
    assert default_entry([other, secondary, primary]) == primary
    assert default_entry([other, secondary, primary], "windows.*") == other
    assert default_entry([]) is None


def test_systemd_boot_order_rules() -> None:
    entries = [
        _ef("a.conf", sort_key="x", version="1.2"),
        _ef("b.conf", sort_key="x", version="1.10"),  # same key: newer version first
        _ef("c.conf", sort_key="x", version="1.10", machine_id="m"),  # set machine-id after unset
        _ef("z.conf", sort_key="w"),  # smaller sort key first
        _ef("linux-6.1.conf"),  # no sort key: after all keyed ones, by id, newest first
        _ef("linux-6.10.conf"),
        _ef("linux-6.12+0-3.conf"),  # no tries left: last
        _ef("linux-6.9+2.conf"),
        _ef("linux-6.9+1-1.conf"),  # same id: more tries left first
    ]
    got = [e.name for e in sort_entries(entries)]
    assert got == [
        "z.conf",
        "b.conf",
        "a.conf",
        "c.conf",
        "linux-6.10.conf",
        "linux-6.9+2.conf",
        "linux-6.9+1-1.conf",
        "linux-6.1.conf",
        "linux-6.12+0-3.conf",
    ]
    e = EntryFile("linux-6.9+1-1.conf", BLSEntry())
    assert (e.id, e.tries_left, e.tries_done) == ("linux-6.9.conf", 1, 1)
    assert EntryFile("x+3.conf", BLSEntry()).tries_done == 0


def test_parse_entries_skips_other_files_and_marks_ours() -> None:
    files = parse_entries([("bootc_x-1-1.conf", "title X\n"), ("README", "hi"), ("o.conf", "")])
    assert [(f.name, f.ours) for f in files] == [("bootc_x-1-1.conf", True), ("o.conf", False)]


_version = st.text(alphabet="0123456789abAB.-~^_+", max_size=8)


@settings(max_examples=300, deadline=None)
@given(a=_version, b=_version, c=_version)
def test_version_order_is_a_total_preorder(a: str, b: str, c: str) -> None:
    assert compare_versions(a, a) == 0
    assert compare_versions(a, b) == -compare_versions(b, a)
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0


def test_menu_order_survives_another_os_id(tmp_path: Path) -> None:
    """Switching from one OS (os-release ID) to another: the menu keeps its order.

    Sort keys `bootc-<os>-<position>` of two IDs would sort by ID (bootc-bootcos-1 before
    bootc-testos-0); every key of a menu carries the default entry's ID instead. The order
    is read back with systemd-boot's rules (cfstest.bootorder), not cfsboot's.
    """
    esp = tmp_path / "esp"
    esp.mkdir()
    a, b = "a" * 64, "b" * 64
    new = MenuEntry(
        b, BootType.BLS, "Test OS 2", "2", "testos", linux="/k", options=(f"composefs=?{b}",)
    )
    old = MenuEntry(
        a, BootType.BLS, "bootc OS 41", "41", "bootcos", linux="/k", options=(f"composefs=?{a}",)
    )
    SystemdBoot(DirEsp(esp)).write_menu([new, old])
    files = sorted(os.listdir(esp / "loader/entries"))
    assert files == ["bootc_bootcos-41-0.conf", "bootc_testos-2-1.conf"]
    menu = bootorder.read_esp(esp)
    assert [e.fields["sort-key"] for e in menu.entries] == ["bootc-testos-0", "bootc-testos-1"]
    assert [e.fields["title"] for e in menu.entries] == ["Test OS 2", "bootc OS 41"]
    assert [m.deployment for m in SystemdBoot(DirEsp(esp)).menu()] == [b, a]
