"""MtoolsEsp keeps the directory tree and small files until it changes the filesystem itself.

Reading a boot menu stats, lists and reads the same few directories and
files over and over; each would be an `mdir` or `mcopy` process. The whole
tree is listed by one recursive `mdir`, and what was read must never outlive
a change made through the object: every mtools write and the FAT exchange
drop it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cfsboot.boot import esp as esp_mod
from cfsboot.boot.esp import EspEntry, MtoolsEsp
from cfsboot.linux.run import run as real_run
from cfstest.gates import FAT_TOOLS, require_tools

OFFSET = 1 << 20


@pytest.fixture
def esp(tmp_path: Path) -> MtoolsEsp:
    require_tools(FAT_TOOLS)
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(OFFSET + (32 << 20))
    subprocess.run(
        ["mkfs.vfat", "--offset", str(OFFSET // 512), str(img), str(32 << 10)],
        check=True,
        capture_output=True,
    )
    return MtoolsEsp(img, OFFSET)


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The mtools run, in order."""
    calls: list[str] = []

    def recording_run(argv: Sequence[Any], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(os.fspath(argv[0]))
        return real_run(argv, **kw)

    monkeypatch.setattr(esp_mod, "run", recording_run)
    return calls


def test_a_menu_read_lists_and_reads_each_once(esp: MtoolsEsp, tools: list[str]) -> None:
    esp.mkdir("loader/entries")
    esp.write("loader/entries/a.conf", b"title a\n")
    esp.write("loader/entries/b.conf", b"title b\n")
    tools.clear()
    for _ in range(2):
        assert esp.is_dir("loader/entries")
        assert [e.name for e in esp.listdir("loader/entries")] == ["a.conf", "b.conf"]
        assert esp.read("loader/entries/a.conf") == b"title a\n"
        assert esp.read("loader/entries/b.conf") == b"title b\n"
    # One mdir for the whole tree, one mcopy per file.
    assert tools == ["mdir", "mcopy", "mcopy"]
    # Large files are read each time (kernels, UKIs: not kept in memory).
    big = b"k" * (esp_mod.KEEP_READ_MAX + 1)
    esp.write("loader/big", big)
    tools.clear()
    assert esp.read("loader/big") == big and esp.read("loader/big") == big
    assert tools == ["mdir", "mcopy", "mcopy"]


def test_names_are_found_whatever_their_case(esp: MtoolsEsp) -> None:
    esp.mkdir("EFI/BOOT")
    esp.write("EFI/BOOT/BOOTX64.EFI", b"x")
    esp.mkdir("loader/entries")
    assert esp.listdir("efi/boot") == [EspEntry("BOOTX64.EFI", False)]
    assert esp.stat("efi/Boot/bootx64.efi") == EspEntry("BOOTX64.EFI", False)
    assert esp.read("efi/boot/bootx64.efi") == b"x" == esp.read("EFI/BOOT/BOOTX64.EFI")
    assert esp.listdir("") == [EspEntry("EFI", True), EspEntry("loader", True)]
    assert esp.listdir("LOADER/ENTRIES") == []
    assert esp.stat("loader/entries/x") is None and esp.stat("nothing/here") is None


def test_every_change_drops_the_listings(esp: MtoolsEsp) -> None:
    esp.mkdir("loader/entries")
    assert esp.listdir("loader/entries") == []
    esp.write("loader/entries/a.conf", b"1")
    assert esp.listdir("loader/entries") == [EspEntry("a.conf", False)]
    assert esp.read("loader/entries/a.conf") == b"1"
    esp.write("loader/entries/a.conf", b"new")
    assert esp.read("loader/entries/a.conf") == b"new"
    esp.rename("loader/entries/a.conf", "loader/a.conf")
    assert esp.listdir("loader/entries") == []
    assert esp.stat("loader/a.conf") == EspEntry("a.conf", False)
    esp.mkdir("loader/entries.staged")
    esp.write("loader/entries.staged/b.conf", b"2")
    esp.exchange("loader/entries", "loader/entries.staged")
    assert esp.listdir("loader/entries") == [EspEntry("b.conf", False)]
    assert esp.listdir("loader/entries.staged") == []
    assert esp.read("loader/entries/b.conf") == b"2"
    esp.remove("loader/a.conf")
    assert esp.stat("loader/a.conf") is None
    esp.remove_tree("loader/entries.staged")
    assert [e.name for e in esp.listdir("loader")] == ["entries"]


def test_a_failed_change_drops_them_too(esp: MtoolsEsp, monkeypatch: pytest.MonkeyPatch) -> None:
    esp.mkdir("loader")
    assert esp.listdir("loader") == []
    subprocess.run(
        ["mmd", "-i", esp.drive, "::/loader/made-elsewhere"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
    )
    # Another process's change is not seen until this object changes something ...
    assert esp.listdir("loader") == [] and esp.is_dir("loader")

    def failing(argv: Sequence[Any], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        raise OSError("mmd failed")

    monkeypatch.setattr(esp_mod, "run", failing)
    with pytest.raises(OSError):
        esp.mkdir("loader/x")
    monkeypatch.undo()
    # ... and then it is, even though the change failed.
    assert esp.listdir("loader") == [EspEntry("made-elsewhere", True)]
