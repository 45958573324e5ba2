"""tree_from_directory + build_image against C `mkcomposefs --digest-store` on the same directory.

The images must be byte-identical and the digest stores must hold the same
objects. The source trees use every file type, xattrs (including the
trusted.overlay.* ones the writer escapes), device nodes and whiteouts,
hardlinks, odd names, inline-size edges and directories spanning blocks.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot.composefs.srctree import tree_from_directory
from cfsboot.composefs.tree import walk
from cfstest.gates import missing_capability
from cfstest.reftools import RefTools

pytestmark = pytest.mark.conformance


def _try(fn: Callable[..., object], *args: object, **kw: object) -> bool:
    """Run an operation that needs privileges (mknod, trusted.* xattrs, chown); False if denied."""
    try:
        fn(*args, **kw)
        return True
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EACCES):
            return False
        raise


def make_rich_tree(src: Path) -> None:
    src.mkdir()
    (src / "dir" / "nested" / "deeper").mkdir(parents=True)
    (src / "many").mkdir()
    for size in (0, 1, 63, 64, 65, 4095, 4096, 4097, 200_000):
        (src / f"size-{size}").write_bytes(bytes((i * 7 + size) % 251 for i in range(size)))
    (src / "dir" / "dup-of-size-65").write_bytes((src / "size-65").read_bytes())
    os.link(src / "size-4097", src / "dir" / "hardlink-4097")
    os.link(src / "size-1", src / "hardlink-1")
    for i in range(300):  # a directory of several blocks
        (src / "many" / f"entry-{i:03d}-{'x' * (i % 40)}").write_bytes(b"m" * (i % 3 * 40))
    (src / ("n" * 255)).write_bytes(b"long name")
    (src / os.fsdecode(b"bytes-\xff\xfe name")).write_bytes(b"odd name" * 20)
    os.symlink("size-65", src / "link-rel")
    os.symlink("/" + "t" * 1000, src / "link-long")
    os.symlink("dangling/target", src / "dir" / "link-dangling")
    os.mkfifo(src / "fifo")
    os.chmod(src / "size-1", 0o6755)
    os.chmod(src / "dir" / "nested", 0o1777)
    _try(os.mknod, src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    _try(os.mknod, src / "blockdev", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    _try(os.mknod, src / "dir" / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
    _try(os.chown, src / "size-64", 1000, 1001)
    _try(os.chown, src / "link-rel", 12345, 54321, follow_symlinks=False)
    for path, name, value in (
        (src / "size-4096", "user.comment", b"hello"),
        (src / "size-4096", "user.binary", b"\x00\x01\xff"),
        (src / "size-65", "trusted.overlay.redirect", b"/somewhere"),
        (src / "dir", "trusted.overlay.opaque", b"y"),
        (src / "dir", "trusted.other", b"v" * 300),
        (src / "size-200000", "security.capability", b"\x01\x00\x00\x02" + bytes(16)),
        (src / "link-rel", "trusted.on-a-symlink", b"1"),
    ):
        _try(os.setxattr, path, name, value, follow_symlinks=False)
    # mtimes: nanoseconds, the epoch, and directories after their children were made.
    # (os.walk, not Path.rglob: 3.11.2's rglob fails on the symlink with a 4095-byte target)
    every = [Path(d, n) for d, dirs, files in os.walk(src) for n in dirs + files]
    for i, p in enumerate(sorted(every, reverse=True)):
        t = 1_700_000_000_000_000_000 + i * 1_000_000_007
        if p.name == "size-0":
            t = 0
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.utime(src, ns=(1_600_000_000_000_000_005,) * 2)


def _c_image(reftools: RefTools, src: Path, out: Path, store: Path, *opts: str) -> bytes:
    reftools.run("mkcomposefs", *opts, f"--digest-store={store}", src, out)
    return out.read_bytes()


def _store_contents(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


def _versions(opts: tuple[str, ...]) -> tuple[int, int]:
    lo, hi = 0, 1
    for o in opts:
        if o.startswith("--min-version="):
            lo = int(o.split("=")[1])
            hi = max(hi, lo)
    return lo, hi


@pytest.mark.parametrize(
    "opts",
    [(), ("--min-version=1",), ("--use-epoch",), ("--use-epoch", "--min-version=1")],
    ids=["default", "v1", "epoch", "epoch-v1"],
)
def test_rich_tree_identical_to_c(
    reftools: RefTools, tmp_path: Path, opts: tuple[str, ...]
) -> None:
    from cfsboot.composefs.erofs.writer import build_image

    src = tmp_path / "src"
    make_rich_tree(src)
    c_img = _c_image(reftools, src, tmp_path / "c.img", tmp_path / "store-c", *opts)

    tree = tree_from_directory(
        src, digest_store=tmp_path / "store-py", use_epoch="--use-epoch" in opts, threads=2
    )
    lo, hi = _versions(opts)
    assert build_image(tree, min_version=lo, max_version=hi) == c_img
    assert _store_contents(tmp_path / "store-py") == _store_contents(tmp_path / "store-c")


def test_real_directory_identical_to_c(reftools: RefTools, tmp_path: Path) -> None:
    """A copy of the host's /etc: real permissions, symlinks, sizes, names."""
    from cfsboot.composefs.erofs.writer import build_image

    src = tmp_path / "etc"
    # A private copy, so that nothing changes between the two reads.
    subprocess.run(["cp", "-a", "/etc", str(src)], check=False)
    if not src.is_dir():
        missing_capability("cannot copy /etc")
    c_img = _c_image(reftools, src, tmp_path / "c.img", tmp_path / "store-c")
    tree = tree_from_directory(src, digest_store=tmp_path / "store-py")
    assert build_image(tree) == c_img
    assert _store_contents(tmp_path / "store-py") == _store_contents(tmp_path / "store-c")


def test_tree_matches_c_dump(reftools: RefTools, tmp_path: Path) -> None:
    """Our tree, field by field, against `composefs-info dump` of C's image.

    Independent of our EROFS writer. Directory sizes are left out: the dump shows
    the EROFS directory size, which only exists once the image is laid out.
    """
    from cfsboot.composefs.dumpfile import dumps

    src = tmp_path / "src"
    make_rich_tree(src)
    # Whiteouts and trusted.overlay.* xattrs are rewritten inside images; leave them out.
    (src / "dir" / "whiteout").unlink(missing_ok=True)
    for p in (src / "size-65", src / "dir"):
        for name in os.listxattr(p):
            if name.startswith("trusted.overlay."):
                os.removexattr(p, name)
    img = tmp_path / "c.img"
    reftools.run("mkcomposefs", src, img)
    c_dump = reftools.run("composefs-info", "dump", img)
    ours = dumps(tree_from_directory(src))

    def mask_dir_sizes(dump: bytes) -> list[list[bytes]]:
        rows = [line.split(b" ") for line in dump.splitlines()]
        for row in rows:
            if stat.S_ISDIR(int(row[2], 8)):
                row[1] = b"DIRSIZE"
        return rows

    assert mask_dir_sizes(ours) == mask_dir_sizes(c_dump)
    assert sum(1 for _ in walk(tree_from_directory(src))) == len(c_dump.splitlines())


@pytest.fixture(autouse=True)
def _cleanup(tmp_path: Path) -> object:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
