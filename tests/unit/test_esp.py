from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cfsboot.boot import esp as esp_mod
from cfsboot.boot.esp import DirEsp, Esp, EspEntry, EspError, MtoolsEsp
from cfsboot.linux import fsutil, syscalls
from cfsboot.linux.run import run as real_run
from cfstest.gates import FAT_TOOLS, require_tools

OFFSET = 1 << 20
needs_mtools = pytest.mark.usefixtures("fat_tools")


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
    require_tools(FAT_TOOLS)
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
    # mtools stores a renamed lower-case 8.3 name in upper case (see cfsboot.boot.esp).
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


def test_exchange_directories_and_files(esp: Esp) -> None:
    esp.mkdir("loader/entries")
    esp.mkdir("loader/entries.staged")
    esp.write("loader/entries/bootc_debian-13-1.conf", b"old 1")
    esp.write("loader/entries/bootc_debian-12-0.conf", b"old 0")
    esp.write("loader/entries.staged/bootc_debian-14-1.conf", b"new 1")
    esp.write("loader/entries.staged/bootc_debian-13-0.conf", b"new 0")
    esp.write("loader/grub.cfg", b"menu old")
    esp.write("loader/grub.cfg.staged", b"menu new" * 200)
    esp.exchange("loader/entries", "loader/entries.staged")
    esp.exchange("loader/grub.cfg", "loader/grub.cfg.staged")
    assert esp.listdir("loader/entries") == [
        EspEntry("bootc_debian-13-0.conf", False),
        EspEntry("bootc_debian-14-1.conf", False),
    ]
    assert esp.read("loader/entries/bootc_debian-14-1.conf") == b"new 1"
    assert esp.read("loader/entries.staged/bootc_debian-12-0.conf") == b"old 0"
    assert esp.read("loader/grub.cfg") == b"menu new" * 200
    assert esp.read("loader/grub.cfg.staged") == b"menu old"
    # A directory and a file swap kinds.
    esp.exchange("loader/entries.staged", "loader/grub.cfg.staged")
    assert esp.stat("loader/entries.staged") == EspEntry("entries.staged", False)
    assert esp.read("loader/entries.staged") == b"menu old"
    assert esp.read("loader/grub.cfg.staged/bootc_debian-13-1.conf") == b"old 1"
    assert esp.recover() == []


def test_exchange_refusals(esp: Esp) -> None:
    esp.mkdir("loader/entries")
    esp.mkdir("other")
    with pytest.raises(
        EspError,
        match=r"^cannot exchange loader/entries and loader/entries.staged on the ESP: "
        r"loader/entries.staged does not exist$",
    ):
        esp.exchange("loader/entries", "loader/entries.staged")
    with pytest.raises(EspError, match="^cannot exchange loader/entries and other on the ESP: not"):
        esp.exchange("loader/entries", "other")
    with pytest.raises(EspError, match="^cannot exchange loader/entries with itself on the ESP$"):
        esp.exchange("loader/entries", "/loader//entries/")
    with pytest.raises(EspError, match="^cannot exchange the ESP root$"):
        esp.exchange("", "other")
    with pytest.raises(EspError, match="'.' and '..' are not allowed"):
        esp.exchange("loader/../other", "loader/entries")


def test_dir_esp_exchange_is_renameat2_exchange_then_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "loader/entries").mkdir(parents=True)
    (tmp_path / "loader/entries.staged").mkdir()
    calls: list[tuple[str, ...]] = []
    real_renameat2, real_fsync_dir = syscalls.renameat2, fsutil.fsync_dir

    def renameat2(old: Path, new: Path, flags: int) -> None:
        calls.append(("renameat2", str(old), str(new), str(flags)))
        real_renameat2(old, new, flags)

    def fsync_dir(path: Path) -> None:
        calls.append(("fsync_dir", str(path)))
        real_fsync_dir(path)

    monkeypatch.setattr(syscalls, "renameat2", renameat2)
    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    (tmp_path / "loader/entries/a.conf").write_bytes(b"a")
    DirEsp(tmp_path).exchange("loader/entries", "loader/entries.staged")
    assert calls == [
        ("renameat2", f"{tmp_path}/loader/entries", f"{tmp_path}/loader/entries.staged", "2"),
        ("fsync_dir", f"{tmp_path}/loader"),
    ]
    assert os.listdir(tmp_path / "loader/entries.staged") == ["a.conf"]
    assert os.listdir(tmp_path / "loader/entries") == []


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_dir_esp_exchange_without_fs_support_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")

    def unsupported(old: Path, new: Path, flags: int) -> None:
        raise OSError(err, f"renameat2: {os.strerror(err)}", str(old), None, str(new))

    monkeypatch.setattr(syscalls, "renameat2", unsupported)
    with pytest.raises(EspError) as exc:
        DirEsp(tmp_path).exchange("a", "b")
    assert str(exc.value) == (
        f"cannot exchange a and b on the ESP ({tmp_path}) atomically: the filesystem does not "
        f"support RENAME_EXCHANGE (renameat2: {os.strerror(err)}); "
        "vfat supports it from Linux 6.0 on"
    )
    # No non-atomic fallback happened.
    assert ((tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()) == (b"a", b"b")


def test_renameat2_syscall_numbers() -> None:
    # <asm/unistd_64.h>; a machine without a known number gets no syscall path at all.
    assert syscalls.SYS_RENAMEAT2_BY_MACHINE["x86_64"] == 316
    assert syscalls.syscall_renameat2("no-such-machine") is None


@pytest.mark.parametrize("via", ["glibc", "syscall"])
def test_renameat2_exchange_and_errors(tmp_path: Path, via: str) -> None:
    machine = os.uname().machine
    if via == "glibc":
        impl = syscalls.libc_renameat2()
        assert impl is not None  # glibc >= 2.28 has the wrapper
    else:
        # The raw syscall with this machine's number (x86_64's above); where cfsboot knows
        # none, the glibc wrapper is the only path, and that is what cfsboot uses.
        impl = syscalls.syscall_renameat2(machine)
        if impl is None:
            assert machine not in syscalls.SYS_RENAMEAT2_BY_MACHINE
            impl = syscalls.libc_renameat2()
        assert impl is not None
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.mkdir()
    assert impl(syscalls.AT_FDCWD, bytes(a), syscalls.AT_FDCWD, bytes(b), 2) == 0
    assert b.read_bytes() == b"A" and a.is_dir()
    # The public wrapper: errno becomes OSError carrying both paths.
    with pytest.raises(OSError) as exc:
        syscalls.renameat2(a, tmp_path / "missing", syscalls.RENAME_EXCHANGE)
    assert (exc.value.errno, exc.value.filename, exc.value.filename2) == (
        errno.ENOENT,
        str(a),
        str(tmp_path / "missing"),
    )
    assert str(exc.value).startswith("[Errno 2] renameat2: No such file or directory: ")
    syscalls.renameat2(b, tmp_path / "c", syscalls.RENAME_NOREPLACE)
    assert (tmp_path / "c").read_bytes() == b"A"
