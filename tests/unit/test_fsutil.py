from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfsboot.linux import fsutil
from cfsboot.linux.fsutil import TEMP_MARKER, copy_file_atomic, write_file_atomic


def test_write_replaces_with_mode_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_file_atomic(target, b"new", 0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o7777 == 0o644
    assert os.listdir(tmp_path) == ["f"]
    write_file_atomic(target, b"", None)
    assert target.read_bytes() == b""


def test_copy_streams_from_a_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    copy_file_atomic(src, tmp_path / "dst", 0o600)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert (tmp_path / "dst").stat().st_mode & 0o777 == 0o600


def test_order_fsync_file_then_rename_then_fsync_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append("fsync dir" if os.path.isdir(path) else f"fsync {Path(path).name[:3]}")
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    write_file_atomic(tmp_path / "f", b"x")
    assert events == ["fsync .f.", "rename", "fsync dir"]


def test_failure_removes_the_temp_file_and_keeps_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        write_file_atomic(target, b"new")
    assert os.listdir(tmp_path) == ["f"]
    assert target.read_bytes() == b"old"


def test_temp_names_are_hidden_and_marked() -> None:
    name = fsutil.temp_name("x.conf")
    assert name.startswith(".x.conf" + TEMP_MARKER) and not name.endswith(".conf")


def _deep(top: Path, depth: int) -> None:
    """`top`/d/d/.../d with a file at the bottom, made relative to one open directory at a
    time, so deeper than PATH_MAX allows as one path."""
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)


def test_remove_tree_of_any_depth_and_path_length(tmp_path: Path) -> None:
    """3000 levels: past Python 3.11's shutil.rmtree (recursion) and PATH_MAX (6000 bytes)."""
    _deep(tmp_path / "top", 3000)
    fsutil.remove_tree(tmp_path / "top")
    assert list(tmp_path.iterdir()) == []


def test_remove_tree_never_follows_symlinks_and_enters_0000_dirs(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file").write_bytes(b"x")
    top = tmp_path / "top"
    (top / "work" / "work").mkdir(parents=True)
    (top / "work" / "work" / "f").write_bytes(b"")
    (top / "link").symlink_to(keep)
    (top / "work" / "dirlink").symlink_to(keep)
    os.chmod(top / "work" / "work", 0)  # an overlay's work dir
    os.chmod(top / "work", 0o500)
    fsutil.remove_tree(top)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert (keep / "file").read_bytes() == b"x"
    fsutil.remove_tree(top)  # gone: nothing to do
    (tmp_path / "file").write_bytes(b"")
    fsutil.remove_tree(tmp_path / "file")
    (tmp_path / "link").symlink_to(keep)
    fsutil.remove_tree(tmp_path / "link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
