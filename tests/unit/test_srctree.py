"""tree_from_directory: what C `mkcomposefs SOURCE` reads from a directory."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest

from cfsboot.composefs import srctree
from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.objectstore import ObjectStore
from cfsboot.composefs.srctree import tree_from_directory
from cfsboot.composefs.tree import Inode, lookup, walk
from cfstest.gates import can_mknod, can_set_user_xattr, missing_capability
from setuproot.contract import HashAlg

NS = 1_600_000_000_123_456_789


def _user_xattr(path: Path, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
        return True
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "one").write_bytes(b"1")
    (src / "f64").write_bytes(b"a" * 64)
    (src / "f65").write_bytes(b"b" * 65)
    (src / "sub" / "big").write_bytes(bytes(range(256)) * 1000)
    (src / "sub" / "same-as-f65").write_bytes(b"b" * 65)
    os.link(src / "f65", src / "hardlink")
    os.symlink("sub/big", src / "link")
    os.mkfifo(src / "fifo")
    os.chmod(src / "one", 0o4751)
    os.utime(src / "one", ns=(NS, NS))
    os.utime(src / "sub", ns=(NS + 1, NS + 1))
    return src


def test_tree_fields(source: Path) -> None:
    root = tree_from_directory(source)
    st = source.stat()
    assert root.is_dir() and root.mode == st.st_mode
    assert (root.uid, root.gid) == (st.st_uid, st.st_gid)
    assert root.nlink == 3  # 2 + the subdirectory "sub"
    assert root.children is not None
    assert sorted(root.children) == [
        b"empty", b"f64", b"f65", b"fifo", b"hardlink", b"link", b"one", b"sub",
    ]  # fmt: skip

    one = lookup(root, b"/one")
    assert one is not None
    assert one.mode == stat.S_IFREG | 0o4751
    assert (one.mtime, one.mtime_nsec) == divmod(NS, 1_000_000_000)
    assert (one.size, one.content, one.payload, one.digest) == (1, b"1", None, None)

    empty = lookup(root, b"/empty")
    assert empty is not None
    assert (empty.size, empty.content, empty.payload, empty.digest) == (0, None, None, None)

    f64 = lookup(root, b"/f64")
    assert f64 is not None and f64.content == b"a" * 64 and f64.payload is None

    f65 = lookup(root, b"/f65")
    assert f65 is not None and f65.content is None and f65.size == 65
    d = digest_bytes(b"b" * 65)
    assert f65.digest == d
    assert f65.payload == f"{d.hex()[:2]}/{d.hex()[2:]}".encode()

    link = lookup(root, b"/link")
    assert link is not None and link.is_symlink()
    assert (link.payload, link.size) == (b"sub/big", 7)

    fifo = lookup(root, b"/fifo")
    assert fifo is not None and stat.S_ISFIFO(fifo.mode) and fifo.size == 0

    sub = lookup(root, b"/sub")
    assert sub is not None and sub.nlink == 3 and sub.mtime_nsec == (NS + 1) % 1_000_000_000
    deeper = lookup(root, b"/sub/deeper")
    assert deeper is not None and deeper.nlink == 2 and deeper.children == {}


def test_hardlinks_are_separate_files_like_c(source: Path) -> None:
    """C mkcomposefs 1.0.8 does no hardlink detection when it reads a directory."""
    root = tree_from_directory(source)
    a, b = lookup(root, b"/f65"), lookup(root, b"/hardlink")
    assert a is not None and b is not None
    assert a is not b and a.nlink == b.nlink == 1 and a.digest == b.digest


def test_hardlinks_option_shares_inodes(source: Path) -> None:
    root = tree_from_directory(source, hardlinks=True)
    a, b = lookup(root, b"/f65"), lookup(root, b"/hardlink")
    assert a is b and a is not None and a.nlink == 2


def test_use_epoch(source: Path) -> None:
    root = tree_from_directory(source, use_epoch=True)
    assert all((n.mtime, n.mtime_nsec) == (0, 0) for _, n in walk(root))


def test_xattrs(source: Path) -> None:
    if not can_set_user_xattr(source / "f65"):
        missing_capability(f"no user xattrs on the filesystem of {source}")
    _user_xattr(source / "f65", "user.b", b"2")
    _user_xattr(source / "f65", "user.a", b"\x00\xff")
    _user_xattr(source / "sub", "user.dir", b"")
    root = tree_from_directory(source)
    f65 = lookup(root, b"/f65")
    assert f65 is not None and list(f65.xattrs.items()) == [
        (b"user.a", b"\x00\xff"),
        (b"user.b", b"2"),
    ]
    sub = lookup(root, b"/sub")
    assert sub is not None and sub.xattrs == {b"user.dir": b""}


def test_device_nodes(tmp_path: Path) -> None:
    src = tmp_path / "dev"
    src.mkdir()
    if not can_mknod(src):
        missing_capability("mknod needs CAP_MKNOD")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    root = tree_from_directory(src)
    null = lookup(root, b"/null")
    assert null is not None and null.rdev == os.makedev(1, 3) and stat.S_ISCHR(null.mode)
    wh = lookup(root, b"/whiteout")
    assert wh is not None and wh.is_whiteout()


def test_digest_store(source: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    root = tree_from_directory(source, digest_store=store, threads=2)
    objects = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    # Only files over 64 bytes; f65, hardlink and same-as-f65 share one object.
    expected = sorted(
        {n.payload.decode() for _, n in walk(root) if n.is_reg() and n.payload is not None}
    )
    assert objects == expected and len(objects) == 2
    for _, node in walk(root):
        if node.is_reg() and node.payload is not None:
            obj = store / node.payload.decode()
            assert digest_bytes(obj.read_bytes()) == node.digest
            assert (obj.stat().st_mode & 0o7777) == 0o644
            assert (obj.parent.stat().st_mode & 0o7777) == 0o755
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []


def test_sha512(source: Path, tmp_path: Path) -> None:
    root = tree_from_directory(source, alg=HashAlg.SHA512, digest_store=tmp_path / "s")
    big = lookup(root, b"/sub/big")
    assert big is not None and big.digest is not None and len(big.digest) == 64
    assert big.digest == digest_bytes(bytes(range(256)) * 1000, HashAlg.SHA512)
    assert big.payload is not None and len(big.payload) == 129
    assert (tmp_path / "s" / big.payload.decode()).exists()


def _flat(root: Inode) -> list[tuple[object, ...]]:
    return [
        (p, n.mode, n.size, n.nlink, n.mtime, n.mtime_nsec, n.content, n.payload, n.digest)
        for p, n in walk(root)
    ]


def test_thread_count_does_not_matter(source: Path) -> None:
    for i in range(150):  # several batches of work
        (source / "sub" / f"file{i}").write_bytes(bytes([i]) * (100 + i))
    one = tree_from_directory(source, threads=1)
    assert _flat(tree_from_directory(source, threads=3)) == _flat(one)


def test_not_a_directory(source: Path) -> None:
    with pytest.raises(NotADirectoryError):
        tree_from_directory(source / "f65")
    with pytest.raises(FileNotFoundError):
        tree_from_directory(source / "missing")


def test_file_changed_while_read(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = srctree._Walker.node

    def node_then_grow(
        self: srctree._Walker, path: bytes, st: os.stat_result, work: srctree._Work
    ) -> Inode:
        n = real(self, path, st, work)
        if path.endswith(b"/sub/big"):
            with open(path, "ab") as f:
                f.write(b"more")
        return n

    monkeypatch.setattr(srctree._Walker, "node", node_then_grow)
    for threads in (1, 8):
        with pytest.raises(OSError, match="file changed while it was read"):
            tree_from_directory(source, threads=threads)
        (source / "sub" / "big").write_bytes(bytes(range(256)) * 1000)


def test_file_shrinking_while_copied_names_the_file(source: Path, tmp_path: Path) -> None:
    big = source / "sub" / "big"
    real = ObjectStore.add_fd_hashed

    def shrink_then_add(self: ObjectStore, fd: int, size: int) -> str:
        if size == 256000:  # big, after the fstat that checks its size
            os.truncate(big, 1000)
        return real(self, fd, size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ObjectStore, "add_fd_hashed", shrink_then_add)
        with pytest.raises(OSError) as err:
            tree_from_directory(source, digest_store=tmp_path / "store", threads=1)
    assert err.value.filename == str(big)
    assert err.value.strerror == "file shrank while it was copied (1000 of 256000 bytes)"
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_directory_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = 1500  # the default recursion limit is 1000
    top = tmp_path / "deep"
    top.mkdir()
    # One level at a time through directory fds (os.makedirs and shutil.rmtree recurse:
    # the tree is removed here, before pytest's own cleanup would meet it).
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1]), "wb") as f:
            f.write(b"x" * 100)
        root = tree_from_directory(top)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("f", dir_fd=fds[-1])
        while fds:
            fd = fds.pop()
            os.close(fd)
            if fds:
                os.rmdir("d", dir_fd=fds[-1])
    paths = [path for path, _ in walk(root)]
    assert len(paths) == depth + 2
    assert paths[-1] == b"/d" * depth + b"/f"
    leaf = lookup(root, paths[-1])
    assert leaf is not None and leaf.digest == digest_bytes(b"x" * 100)
    assert lookup(root, b"/d" * (depth - 1)).nlink == 3  # type: ignore[union-attr]
