from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cfsboot import esp as esp_mod
from cfsboot import fsutil
from cfsboot.esp import DirEsp, Esp, EspEntry, EspError, MtoolsEsp
from cfsboot.run import run as real_run

OFFSET = 1 << 20
needs_mtools = pytest.mark.skipif(
    shutil.which("mcopy") is None or shutil.which("mkfs.vfat") is None,
    reason="mtools/dosfstools not installed",
)


def _fat_image(tmp_path: Path) -> Path:
    """A 33 MiB file with a FAT filesystem 1 MiB in, like an ESP inside a disk image."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(OFFSET + (32 << 20))
    subprocess.run(
        ["mkfs.vfat", "-n", "ESP", "--offset", str(OFFSET // 512), str(img), str(32 << 10)],
        check=True,
        capture_output=True,
    )
    return img


@pytest.fixture(params=["dir", "mtools"])
def esp(request: pytest.FixtureRequest, tmp_path: Path) -> Esp:
    if request.param == "dir":
        root = tmp_path / "esp"
        root.mkdir()
        return DirEsp(root)
    if shutil.which("mcopy") is None or shutil.which("mkfs.vfat") is None:
        pytest.skip("mtools/dosfstools not installed")
    return MtoolsEsp(_fat_image(tmp_path), OFFSET)


def test_write_read_replace_list_remove(esp: Esp) -> None:
    esp.mkdir("loader/entries")
    esp.mkdir("loader/entries")  # existing is fine
    esp.write("loader/entries/a.conf", b"title A\n")
    esp.write_text("/loader/loader.conf", "timeout 5\n")
    assert esp.read("loader/entries/a.conf") == b"title A\n"
    esp.write("loader/entries/a.conf", b"title A2\n" * 1000)  # replace with a bigger file
    assert esp.read("loader/entries/a.conf") == b"title A2\n" * 1000
    assert esp.listdir("loader") == [EspEntry("entries", True), EspEntry("loader.conf", False)]
    assert esp.listdir("loader/entries") == [EspEntry("a.conf", False)]  # no temp names left
    assert esp.read_text("loader/loader.conf") == "timeout 5\n"
    assert esp.stat("loader/entries/a.conf") == EspEntry("a.conf", False)
    assert esp.stat("loader/entries/none.conf") is None
    assert esp.stat("loader/entries/a.conf/x") is None
    assert esp.is_dir("") and esp.is_dir("loader") and not esp.is_dir("loader/loader.conf")
    esp.remove("loader/entries/a.conf")
    assert esp.listdir("loader/entries") == []


def test_binary_round_trip_and_install(esp: Esp, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096 + b"\r\n\0"
    src = tmp_path / "vmlinuz"
    src.write_bytes(data)
    esp.mkdir("EFI/Linux/bootc_composefs-" + "ab" * 64)
    path = "EFI/Linux/bootc_composefs-" + "ab" * 64 + "/vmlinuz"
    esp.install(path, src)
    assert esp.read(path) == data
    esp.install(path, src)
    names = [e.name for e in esp.listdir("EFI/Linux/bootc_composefs-" + "ab" * 64)]
    # mtools stores a renamed lower-case 8.3 name in upper case (see cfsboot.esp).
    assert names == (["VMLINUZ"] if isinstance(esp, MtoolsEsp) else ["vmlinuz"])
    assert esp.stat(path) is not None


def test_rename_and_remove_tree(esp: Esp) -> None:
    esp.mkdir("loader/entries.staged")
    esp.write("loader/entries.staged/b.conf", b"B")
    esp.rename("loader/entries.staged", "loader/entries")
    assert esp.read("loader/entries/b.conf") == b"B"
    esp.mkdir("loader/other")
    esp.rename("loader/entries/b.conf", "loader/other/c.conf")
    assert esp.listdir("loader/other") == [EspEntry("c.conf", False)]
    with pytest.raises(EspError, match="exists"):
        esp.rename("loader/other", "loader/entries")
    with pytest.raises(EspError, match="does not exist"):
        esp.rename("loader/none", "loader/x")
    esp.remove_tree("loader")
    assert esp.listdir("") == []


def test_errors(esp: Esp) -> None:
    esp.write("f", b"x")
    with pytest.raises(EspError, match="no file none on the ESP"):
        esp.read("none")
    with pytest.raises(EspError, match="cannot write a/b on the ESP: a is not a directory"):
        esp.write("a/b", b"x")
    with pytest.raises(EspError, match="f/b on the ESP: f is not a directory"):
        esp.write("f/b", b"x")
    with pytest.raises(EspError, match="cannot create f/x on the ESP: f is a file"):
        esp.mkdir("f/x")
    with pytest.raises(EspError, match="a/b on the ESP: a does not exist"):
        esp.mkdir("a/b", parents=False)
    with pytest.raises(EspError, match="not a directory on the ESP"):
        esp.listdir("f")
    with pytest.raises(EspError, match="no directory f on the ESP"):
        esp.remove_tree("f")
    with pytest.raises(EspError, match="no file none on the ESP"):
        esp.remove("none")
    with pytest.raises(EspError, match="'.' and '..' are not allowed"):
        esp.read("../etc/passwd")
    esp.mkdir("d")
    with pytest.raises(EspError, match="no file d on the ESP"):
        esp.read("d")


def test_recover_interrupted_replaces(esp: Esp) -> None:
    esp.mkdir("loader/entries")
    # Crash after the old copy was moved aside: the new one is complete, roll forward.
    esp.write("loader/entries/.a.conf.cfsboot-new", b"new")
    esp.write("loader/entries/.a.conf.cfsboot-old", b"old")
    # Crash while writing the new copy: the name still holds the old one.
    esp.write("loader/entries/b.conf", b"old b")
    esp.write("loader/entries/.b.conf.cfsboot-new", b"partial")
    # Crash after the rename: only the old copy is left over.
    esp.write("loader/loader.conf", b"new")
    esp.write("loader/.loader.conf.cfsboot-old", b"old")
    # A temp file of an atomic rename.
    esp.write(f"loader/.x.conf{fsutil.TEMP_MARKER}0123", b"junk")
    done = esp.recover()
    assert done == [
        "removed loader/.x.conf.cfsboot-tmp-0123",
        "removed loader/.loader.conf.cfsboot-old",
        "renamed loader/entries/.a.conf.cfsboot-new to loader/entries/a.conf",
        "removed loader/entries/.a.conf.cfsboot-old",
        "removed loader/entries/.b.conf.cfsboot-new",
    ]
    assert esp.listdir("loader/entries") == [EspEntry("a.conf", False), EspEntry("b.conf", False)]
    assert (esp.read("loader/entries/a.conf"), esp.read("loader/entries/b.conf")) == (
        b"new",
        b"old b",
    )
    assert esp.listdir("loader") == [EspEntry("entries", True), EspEntry("loader.conf", False)]
    assert esp.recover() == []


def test_write_finishes_an_interrupted_replace_first(esp: Esp) -> None:
    esp.write(".c.conf.cfsboot-old", b"only old")  # both the name and the new copy lost
    esp.write("c.conf", b"next")
    assert esp.listdir("") == [EspEntry("c.conf", False)]
    assert esp.read("c.conf") == b"next"
    esp.write(".c.conf.cfsboot-new", b"partial")
    esp.install("c.conf", Path("/dev/null"))
    assert esp.listdir("") == [EspEntry("c.conf", False)]
    assert esp.read("c.conf") == b""


@needs_mtools
def test_mtools_replace_protocol_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    esp = MtoolsEsp(_fat_image(tmp_path), OFFSET)
    esp.write("a.conf", b"1")
    calls: list[list[str]] = []

    def recording_run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append([os.fspath(a) for a in argv])
        return real_run(argv, **kw)

    monkeypatch.setattr(esp_mod, "run", recording_run)
    esp.write("a.conf", b"2")
    drive = f"{tmp_path}/disk.img@@{OFFSET}"
    mutating = [c for c in calls if c[0] != "mdir"]
    assert [c[:1] + c[3:] for c in mutating] == [
        ["mcopy", mutating[0][3], "::/.a.conf.cfsboot-new"],
        ["mren", "::/a.conf", ".a.conf.cfsboot-old"],
        ["mren", "::/.a.conf.cfsboot-new", "a.conf"],
        ["mdel", "::/.a.conf.cfsboot-old"],
    ]
    assert all(c[1:3] == ["-i", drive] for c in calls)
    assert esp.read("a.conf") == b"2"


@needs_mtools
def test_mtools_case_insensitive_names_and_no_offset(tmp_path: Path) -> None:
    img = tmp_path / "esp.img"
    subprocess.run(["mkfs.vfat", "-C", str(img), "8192"], check=True, capture_output=True)
    esp = MtoolsEsp(img)
    assert esp.drive == str(img)
    esp.mkdir("EFI/BOOT")
    esp.write("EFI/BOOT/BOOTX64.EFI", b"x")
    assert esp.stat("efi/boot/bootx64.efi") == EspEntry("BOOTX64.EFI", False)


@needs_mtools
def test_mtools_unreadable_image_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "zero.img"
    bad.write_bytes(b"\0" * 65536)
    with pytest.raises(EspError, match=r"^cannot read the ESP in .*zero.img: "):
        MtoolsEsp(bad).listdir()


def test_dir_esp_file_mode(tmp_path: Path) -> None:
    esp = DirEsp(tmp_path, file_mode=0o644)
    esp.write("x", b"1")
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
