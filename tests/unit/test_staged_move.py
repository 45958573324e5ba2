"""A batch's staged objects moved to their names (composefs/staged.py): a whole staged XX/
where objects/ has none, object by object everywhere else, and never a file the batch
did not stage."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.objectstore import ObjectStore
from cfsboot.linux import syscalls
from setuproot.contract import HashAlg


def _store(tmp_path: Path) -> ObjectStore:
    store = ObjectStore(tmp_path / "objects", HashAlg.SHA256)
    store.root.mkdir()
    store._verity_works = False  # as learnt on a filesystem without fs-verity
    return store


def _contents(n: int) -> dict[str, bytes]:
    """n contents by digest, spread over a few XX/ (some share one)."""
    out: dict[str, bytes] = {}
    for i in range(n):
        data = f"object {i}\n".encode() * (i + 1)
        out[digest_bytes(data).hex()] = data
    return out


class _Renames:
    """Counts os.rename calls (object by object) and renameat2 calls (whole XX/)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[str] = []
        self.dirs: list[str] = []
        rename, renameat2 = os.rename, syscalls.renameat2

        def count_rename(src: str, dst: str) -> None:
            self.files.append(dst)
            rename(src, dst)

        def count_renameat2(src: str, dst: str, flags: int) -> None:
            self.dirs.append(dst)
            renameat2(src, dst, flags)

        monkeypatch.setattr(os, "rename", count_rename)
        monkeypatch.setattr(syscalls, "renameat2", count_renameat2)


def _check_published(store: ObjectStore, contents: dict[str, bytes]) -> None:
    for hexd, data in contents.items():
        assert store.path(hexd).read_bytes() == data
    for sub in {h[:2] for h in contents}:
        assert stat.S_IMODE(os.stat(store.root / sub).st_mode) == 0o755
    assert not [p.name for p in store.root.iterdir() if p.name.startswith(".")]


def test_new_repository_moves_each_staged_directory_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, contents = _store(tmp_path), _contents(40)
    renames = _Renames(monkeypatch)
    with store.batch():
        for hexd, data in contents.items():
            store.add_bytes(hexd, data)
    assert renames.files == []
    assert sorted(renames.dirs) == sorted({f"{store.root}/{h[:2]}" for h in contents})
    _check_published(store, contents)


def test_existing_directories_get_their_objects_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, contents = _store(tmp_path), _contents(40)
    old = next(iter(contents))
    (store.root / old[:2]).mkdir(mode=0o755)
    (store.root / old[:2] / ("f" * 126)).write_bytes(b"")  # (another object already there)
    renames = _Renames(monkeypatch)
    with store.batch():
        for hexd, data in contents.items():
            store.add_bytes(hexd, data)
    assert sorted(renames.files) == sorted(str(store.path(h)) for h in contents if h[:2] == old[:2])
    assert f"{store.root}/{old[:2]}" not in renames.dirs
    _check_published(store, contents)


def test_a_file_the_batch_did_not_stage_is_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that failed halfway leaves its file in the staged XX/: moving that XX/
    whole would give the half-written file an object's name. Its XX/ is listed, and its
    objects move one by one."""
    store, contents = _store(tmp_path), _contents(6)
    renames = _Renames(monkeypatch)
    failing, *others = contents
    sub = failing[:2]
    seal = store._seal_path

    def seal_fails(path: str | Path, hexdigest: str) -> None:
        if hexdigest == failing:
            raise OSError(errno.EIO, "Input/output error")
        seal(path, hexdigest)

    monkeypatch.setattr(store, "_seal_path", seal_fails)
    with store.batch():
        with pytest.raises(OSError):
            store.add_bytes(failing, contents[failing])  # written, not sealed: left staged
        for hexd in others:
            store.add_bytes(hexd, contents[hexd])
    assert not store.path(failing).exists()
    assert f"{store.root}/{sub}" not in renames.dirs
    del contents[failing]
    _check_published(store, contents)


def test_a_batch_without_failures_moves_its_directories_unlisted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, contents = _store(tmp_path), _contents(20)
    listed: list[str] = []
    listdir = os.listdir

    def listing(path: str) -> list[str]:
        listed.append(path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", listing)
    with store.batch():
        for hexd, data in contents.items():
            store.add_bytes(hexd, data)
    assert listed == []
    _check_published(store, contents)


def test_a_flush_inside_the_batch_moves_objects_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a batch more objects may be staged into the same XX/ after the flush."""
    store = _store(tmp_path)
    a, b = b"a" * 100, b"b" * 100
    renames = _Renames(monkeypatch)
    with store.batch():
        store.add_bytes(digest_bytes(a).hex(), a)
        store.flush()
        assert renames.dirs == []
        store.add_bytes(digest_bytes(b).hex(), b)
    _check_published(store, {digest_bytes(d).hex(): d for d in (a, b)})


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EEXIST])
def test_without_renameat2_objects_move_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    def refuse(src: str, dst: str, flags: int) -> None:
        raise OSError(err, os.strerror(err), src, None, dst)

    monkeypatch.setattr(syscalls, "renameat2", refuse)
    store, contents = _store(tmp_path), _contents(10)
    with store.batch():
        for hexd, data in contents.items():
            store.add_bytes(hexd, data)
    _check_published(store, contents)


def test_other_rename_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: str, dst: str, flags: int) -> None:
        raise OSError(errno.EIO, "Input/output error", src, None, dst)

    monkeypatch.setattr(syscalls, "renameat2", fail)
    store, contents = _store(tmp_path), _contents(2)
    with pytest.raises(OSError, match="Input/output"), store.batch():
        for hexd, data in contents.items():
            store.add_bytes(hexd, data)
