"""ObjectStore.add_fd_hashed and copy_fd_direct: a file read once, hashed as it is
copied, its whole blocks written with O_DIRECT where the filesystem takes it."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfsboot.composefs import directio
from cfsboot.composefs.directio import COPY_CHUNK, DIRECT_ALIGN, Direct, copy_fd_direct
from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.objectstore import ObjectStore
from setuproot.contract import HashAlg

# Sizes around every boundary of the copy: no whole block, exactly blocks, a tail,
# one chunk exactly, more than a chunk (streamed in a batch) with and without a tail.
SIZES = [
    0,
    65,
    DIRECT_ALIGN - 1,
    DIRECT_ALIGN,
    3 * DIRECT_ALIGN + 17,
    COPY_CHUNK,
    COPY_CHUNK + 1,
    2 * COPY_CHUNK + DIRECT_ALIGN,
    3 * COPY_CHUNK + 12345,
]


def _content(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(4099))
    return (block * (size // len(block) + 1))[:size]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def src_fd(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    fds: list[int] = []
    yield tmp_path, fds
    for fd in fds:
        os.close(fd)


def _open(tmp_path: Path, fds: list[int], data: bytes, name: str = "src") -> int:
    p = tmp_path / name
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    fds.append(fd)
    return fd


def _store(tmp_path: Path, alg: HashAlg = HashAlg.SHA256) -> ObjectStore:
    store = ObjectStore(tmp_path / "objects", alg)
    store.root.mkdir()
    store._reflink_works = False  # tmp_path may be btrfs or xfs: test the copy paths
    store._verity_works = False  # as learnt on a filesystem without fs-verity (ext4 here)
    return store


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_add_fd_hashed_stores_and_names(
    src_fd: tuple[Path, list[int]], size: int, batch: bool
) -> None:
    tmp_path, fds = src_fd
    data = _content(size)
    store = _store(tmp_path)
    fd = _open(tmp_path, fds, data)
    expected = digest_bytes(data).hex()
    if batch:
        with store.batch():
            assert store.add_fd_hashed(fd, size) == expected
            # Nothing is visible under its name before the batch's syncfs and rename.
            assert not store.path(expected).exists()
    else:
        assert store.add_fd_hashed(fd, size) == expected
    assert store.path(expected).read_bytes() == data
    assert (store.path(expected).stat().st_mode & 0o7777) == 0o644
    assert _files(store.root) == [f"{expected[:2]}/{expected[2:]}"]


def test_duplicates_leave_one_object_and_no_temporary(src_fd: tuple[Path, list[int]]) -> None:
    tmp_path, fds = src_fd
    big, small = _content(COPY_CHUNK + 5000, 1), _content(5000, 2)
    store = _store(tmp_path, HashAlg.SHA512)
    with store.batch():
        for i in range(2):
            assert store.add_fd_hashed(_open(tmp_path, fds, big, f"b{i}"), len(big)) == (
                digest_bytes(big, HashAlg.SHA512).hex()
            )
            store.add_fd_hashed(_open(tmp_path, fds, small, f"s{i}"), len(small))
        staging = store._staging
        assert staging is not None
        # The second big copy was written to a temporary name and deleted again. Staged
        # objects are spread over XX/ as in objects/ (not all in one directory).
        staged = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        digests = [digest_bytes(c, HashAlg.SHA512).hex() for c in (big, small)]
        assert staged == sorted(f"{d[:2]}/{d[2:]}" for d in digests)
    # Present before the batch: not written again.
    with store.batch():
        store.add_fd_hashed(_open(tmp_path, fds, big, "b3"), len(big))
        assert store._staging is None or list(store._staging.iterdir()) == []
    assert len(_files(store.root)) == 2
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("size", [COPY_CHUNK - 10, COPY_CHUNK + 3 * DIRECT_ALIGN])
def test_file_shorter_than_its_size_fails_and_leaves_nothing(
    src_fd: tuple[Path, list[int]], size: int
) -> None:
    """A file that shrank after it was stat()ed: the same clear error on both paths."""
    tmp_path, fds = src_fd
    fd = _open(tmp_path, fds, _content(size - 100))
    store = _store(tmp_path)
    with pytest.raises(OSError, match=r"file shrank while it was copied \(\d+ of \d+ bytes\)"):
        with store.batch():
            store.add_fd_hashed(fd, size)
    assert _files(store.root) == []


def test_without_o_direct_falls_back_to_buffered_writes(
    src_fd: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that refuses O_DIRECT (fcntl F_SETFL fails with EINVAL)."""
    tmp_path, fds = src_fd
    real_fcntl = fcntl.fcntl
    refused: list[int] = []

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_direct)
    store = _store(tmp_path)
    datas = [_content(3 * COPY_CHUNK + 1, 3), _content(9000, 4), _content(20000, 5)]
    with store.batch():
        hexes = [
            store.add_fd_hashed(_open(tmp_path, fds, d, f"f{i}"), len(d))
            for i, d in enumerate(datas)
        ]
    assert [store.path(h).read_bytes() for h in hexes] == datas
    assert store._direct.write is False
    assert store._direct.read is None  # the sources were in the page cache
    assert len(refused) == 1  # learnt once for the store


def test_direct_write_refused_at_write_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_DIRECT set, but the write itself fails with EINVAL (alignment): written buffered."""
    real_pwrite = os.pwrite

    def picky(fd: int, data: memoryview, off: int) -> int:
        if real_fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, off)

    real_fcntl = fcntl.fcntl
    monkeypatch.setattr(os, "pwrite", picky)
    data = _content(2 * COPY_CHUNK + 100)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        d = Direct()
        copy_fd_direct(src.fileno(), dst.fileno(), len(data), d)
        assert d.write is False
        assert not real_fcntl(dst.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    assert (tmp_path / "dst").read_bytes() == data


def test_copy_fd_direct_feeds_every_byte_in_order(tmp_path: Path) -> None:
    data = _content(2 * COPY_CHUNK + DIRECT_ALIGN + 3)
    (tmp_path / "src").write_bytes(data)
    fed: list[bytes] = []
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        copy_fd_direct(src.fileno(), dst.fileno(), len(data), feed=lambda m: fed.append(bytes(m)))
        assert not fcntl.fcntl(dst.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    assert [len(f) for f in fed] == [COPY_CHUNK, COPY_CHUNK, DIRECT_ALIGN + 3]
    assert b"".join(fed) == data
    assert (tmp_path / "dst").read_bytes() == data


def test_copy_fd_direct_small_file_is_not_direct(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 100)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        d = Direct()
        copy_fd_direct(src.fileno(), dst.fileno(), 100, d)
        assert (d.read, d.write) == (None, None)
    assert (tmp_path / "dst").read_bytes() == b"x" * 100


def _takes_o_direct(directory: Path) -> bool:
    """Does the filesystem of `directory` take an aligned O_DIRECT write?"""
    buf = memoryview(directio.copy_buffer())[:DIRECT_ALIGN]
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        return os.pwrite(fd, buf, 0) == DIRECT_ALIGN
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(directory / "probe")


def test_store_learns_whether_o_direct_works(src_fd: tuple[Path, list[int]]) -> None:
    tmp_path, fds = src_fd
    store = _store(tmp_path)
    data = _content(COPY_CHUNK + 3 * DIRECT_ALIGN)
    with store.batch():
        store.add_fd_hashed(_open(tmp_path, fds, data), len(data))
    assert store._direct.write is _takes_o_direct(tmp_path)
    if store._direct.write:
        with open(store.path(digest_bytes(data).hex()), "rb") as f:
            assert directio.cached_pages(f.fileno()) == 0  # not through the page cache


def _evict(path: Path) -> None:
    """Drop the file's (clean) pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [DIRECT_ALIGN + 1, COPY_CHUNK, 2 * COPY_CHUNK + 4095])
def test_uncached_source_is_read_direct(src_fd: tuple[Path, list[int]], size: int) -> None:
    tmp_path, fds = src_fd
    data = _content(size, 6)
    fd = _open(tmp_path, fds, data)
    _evict(tmp_path / "src")
    if directio.cached_pages(fd) != 0:
        pytest.fail(f"{tmp_path}: the kernel kept the pages after POSIX_FADV_DONTNEED")
    store = _store(tmp_path)
    with store.batch():
        h = store.add_fd_hashed(fd, size)
    assert h == digest_bytes(data).hex()
    assert store.path(h).read_bytes() == data
    assert store._direct.read is _takes_o_direct(tmp_path)
    if store._direct.read:
        assert directio.cached_pages(fd) == 0  # read without filling the page cache


def test_cached_source_is_read_from_the_page_cache(src_fd: tuple[Path, list[int]]) -> None:
    tmp_path, fds = src_fd
    data = _content(3 * DIRECT_ALIGN)
    fd = _open(tmp_path, fds, data)
    assert directio.cached_pages(fd) == 3
    d = Direct()
    with open(tmp_path / "dst", "wb") as dst:
        copy_fd_direct(fd, dst.fileno(), len(data), d)
    assert d.read is None
    assert (tmp_path / "dst").read_bytes() == data


def test_uncached_source_shorter_than_its_size(src_fd: tuple[Path, list[int]]) -> None:
    """The same clear error when the short read is a direct one (it ends mid-block)."""
    tmp_path, fds = src_fd
    fd = _open(tmp_path, fds, _content(COPY_CHUNK + 5000))
    _evict(tmp_path / "src")
    with open(tmp_path / "dst", "wb") as dst:
        with pytest.raises(OSError, match=r"file shrank while it was copied \(1053576 of 1054576"):
            copy_fd_direct(fd, dst.fileno(), COPY_CHUNK + 6000)


def test_source_refusing_o_direct_is_read_buffered(
    src_fd: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path, fds = src_fd
    data = _content(COPY_CHUNK + 3 * DIRECT_ALIGN + 5, 7)
    fd = _open(tmp_path, fds, data)
    _evict(tmp_path / "src")
    real_fcntl = fcntl.fcntl

    def no_direct_read(f: int, cmd: int, arg: int = 0) -> int:
        if f == fd and cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(f, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_direct_read)
    d = Direct()
    with open(tmp_path / "dst", "wb") as dst:
        copy_fd_direct(fd, dst.fileno(), len(data), d)
    assert d.read is False
    assert (tmp_path / "dst").read_bytes() == data


def test_no_direct_writes_where_fs_verity_is_enabled(
    src_fd: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enabling fs-verity reads the object back: it must still be in the page cache."""
    tmp_path, fds = src_fd
    store = _store(tmp_path)
    store._verity_works = True
    sealed: list[str] = []
    monkeypatch.setattr(store, "_seal", lambda ro, h, path: sealed.append(h))
    data = _content(COPY_CHUNK + 3 * DIRECT_ALIGN, 8)
    small = _content(3 * DIRECT_ALIGN, 9)
    with store.batch():
        h = store.add_fd_hashed(_open(tmp_path, fds, data), len(data))
        h2 = store.add_fd_hashed(_open(tmp_path, fds, small, "small"), len(small))
    assert sealed == [h, h2]
    assert store._direct.write is None  # never tried
    with open(store.path(h), "rb") as f:
        assert directio.cached_pages(f.fileno()) == len(data) // 4096  # 259 whole pages
