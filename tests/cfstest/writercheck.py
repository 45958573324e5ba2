"""Trees built by hand for the writer conformance tests, and the comparison with C
`mkcomposefs --from-file` 1.0.8 (tests/conformance/test_writer_conformance.py).

Each tree is serialized to a dumpfile, given to C, and the image compared with
`build_image()` of both the tree itself and of the dumpfile parsed back.
"""

from __future__ import annotations

import stat
from typing import TypedDict, Unpack

import pytest

from cfsboot.composefs import dumpfile
from cfsboot.composefs.dumpfile import dumps
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.tree import Inode
from cfstest.reftools import RefTools

VERSIONS = [((0, 1), []), ((1, 1), ["--min-version=1"]), ((0, 0), ["--max-version=0"])]
S = stat.S_IFREG


def c_image(reftools: RefTools, dump: bytes, args: list[str]) -> bytes:
    run = reftools.run
    image: bytes = run("mkcomposefs", *args, "--from-file", "-", "-", input=dump)
    return image


def c_result(reftools: RefTools, dump: bytes, args: list[str]) -> bytes | None:
    """C's image, or None where C refuses the tree."""
    try:
        return c_image(reftools, dump, args)
    except AssertionError as e:
        # The one refusal a tree our parser accepts can cause (see writer._c_set_xattr).
        assert "Numerical result out of range" in str(e), str(e)
        return None


def assert_same_as_c(reftools: RefTools, root: Inode, versions: list[int] | None = None) -> None:
    dump = dumps(root)
    reparsed = dumpfile.parse(dump)
    for (lo, hi), args in VERSIONS if versions is None else [VERSIONS[v] for v in versions]:
        expected = c_result(reftools, dump, args)
        if expected is None:
            with pytest.raises(ValueError, match="Numerical result out of range"):
                build_image(reparsed, min_version=lo, max_version=hi)
            with pytest.raises(ValueError, match="Numerical result out of range"):
                build_image(root, min_version=lo, max_version=hi)
            continue
        ours = build_image(reparsed, min_version=lo, max_version=hi)
        assert ours == expected, f"differs from C mkcomposefs {args} (via dumpfile)"
        assert build_image(root, min_version=lo, max_version=hi) == expected, (
            f"differs from C mkcomposefs {args} (tree given directly)"
        )


class Meta(TypedDict, total=False):
    """Inode metadata the helpers below pass through."""

    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    rdev: int
    nlink: int
    xattrs: dict[bytes, bytes]


def d(mode: int = 0o755, **kw: Unpack[Meta]) -> Inode:
    return Inode.directory(mode, **kw)


def f(content: bytes = b"", mode: int = 0o644, **kw: Unpack[Meta]) -> Inode:
    return Inode(mode=S | mode, content=content or None, size=len(content), **kw)


def ext(
    size: int,
    digest: bytes | None = b"\x11" * 32,
    payload: bytes | None = None,
    **kw: Unpack[Meta],
) -> Inode:
    if payload is None and digest is not None:
        payload = digest[:1].hex().encode() + b"/" + digest[1:].hex().encode()
    return Inode(mode=S | 0o644, size=size, digest=digest, payload=payload, **kw)


def lnk(target: bytes, **kw: Unpack[Meta]) -> Inode:
    return Inode(mode=stat.S_IFLNK | 0o777, payload=target, size=len(target), **kw)


def tree(children: dict[bytes, Inode], mode: int = 0o755, **kw: Unpack[Meta]) -> Inode:
    root = d(mode, **kw)
    root.children = children
    return root
