"""The in-memory file tree that flows between importers, dumpfiles and EROFS images.

Names and paths are bytes (any byte but '/' and NUL may appear in a name).
A hardlink is the same `Inode` object reachable under several names.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Final

from cfsboot.composefs.limits import RECOMMENDED_INLINE_CONTENT_MAX

# Regular files of this many bytes or fewer keep their contents in the tree (and inline in
# the EROFS image); larger ones are objects named by their fs-verity digest.
# What C mkcomposefs does (LCFS_RECOMMENDED_INLINE_CONTENT_MAX).
INLINE_MAX: Final = RECOMMENDED_INLINE_CONTENT_MAX

# The file types a composefs tree (dumpfile, EROFS image) can hold.
FILE_TYPES: Final = frozenset(
    (
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFBLK,
        stat.S_IFCHR,
        stat.S_IFSOCK,
        stat.S_IFIFO,
    )
)


_FIELDS: Final = (
    "mode", "uid", "gid", "mtime", "mtime_nsec", "rdev", "nlink", "size", "xattrs", "content",
    "payload", "digest", "children",
)  # fmt: skip


class Inode:
    """One file, directory, symlink or special file.

    For regular files exactly one of these describes the content:
    `content` (stored inline in the image), or `payload` + `digest` (an external
    object: `payload` is its path relative to the objects directory, `digest`
    its raw fs-verity digest), or neither with size 0 (empty file).

    A plain class rather than a dataclass: mypyc compiles its __init__ (native.py),
    and the EROFS build makes one per line of a dumpfile.
    """

    __slots__ = _FIELDS

    mode: int  # st_mode, including the file type bits
    uid: int
    gid: int
    mtime: int  # seconds
    mtime_nsec: int
    rdev: int
    nlink: int
    size: int
    xattrs: dict[bytes, bytes]
    content: bytes | None  # inline content of a regular file
    payload: bytes | None  # symlink target, or object path "xx/rest…"
    digest: bytes | None  # fs-verity digest of an external file's content
    children: dict[bytes, Inode] | None  # directories only

    def __init__(
        self,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        mtime_nsec: int = 0,
        rdev: int = 0,
        nlink: int = 1,
        size: int = 0,
        xattrs: dict[bytes, bytes] | None = None,
        content: bytes | None = None,
        payload: bytes | None = None,
        digest: bytes | None = None,
        children: dict[bytes, Inode] | None = None,
    ) -> None:
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.mtime_nsec = mtime_nsec
        self.rdev = rdev
        self.nlink = nlink
        self.size = size
        self.xattrs = {} if xattrs is None else xattrs
        self.content = content
        self.payload = payload
        self.digest = digest
        self.children = children

    def __reduce__(self) -> tuple[type[Inode], tuple[object, ...]]:
        """For copy and pickle (which cannot see the fields of a compiled class)."""
        return Inode, tuple(getattr(self, name) for name in _FIELDS)

    def __repr__(self) -> str:
        # Children by name only: a repr must not walk the tree (nor recurse into it).
        fields = ", ".join(
            f"children=[{', '.join(map(repr, self.children))}]"
            if name == "children" and self.children is not None
            else f"{name}={getattr(self, name)!r}"
            for name in _FIELDS
        )
        return f"Inode({fields})"

    @property
    def ftype(self) -> int:
        return stat.S_IFMT(self.mode)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def is_whiteout(self) -> bool:
        """An overlay whiteout: a character device 0/0."""
        return stat.S_ISCHR(self.mode) and self.rdev == 0

    @classmethod
    def directory(cls, mode: int = 0o755, **kw: object) -> Inode:
        node = cls(mode=stat.S_IFDIR | (mode & 0o7777), **kw)  # type: ignore[arg-type]
        node.children = {}
        return node


def validate_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise ValueError(f"invalid file name {name!r}")


def split_path(path: bytes) -> list[bytes]:
    """Components of an absolute or relative path; '.' components are dropped."""
    return [c for c in path.split(b"/") if c and c != b"."]


def lookup(root: Inode, path: bytes) -> Inode | None:
    """The inode at `path` (no symlinks are followed), or None."""
    node = root
    for comp in split_path(path):
        if node.children is None:
            return None
        nxt = node.children.get(comp)
        if nxt is None:
            return None
        node = nxt
    return node


def walk(root: Inode) -> Iterator[tuple[bytes, Inode]]:
    """Depth-first, children sorted by name bytes, parents before children.

    Yields (absolute path, inode); a hardlinked inode is yielded once per name.
    This is the order of a composefs dumpfile. The walk keeps its own stack, so
    the depth of a tree is not limited by Python's recursion limit.
    """
    yield b"/", root
    assert root.children is not None
    # (path of a directory, its remaining children in name order)
    stack: list[tuple[bytes, Iterator[tuple[bytes, Inode]]]] = [
        (b"", iter(sorted(root.children.items(), key=_name)))
    ]
    while stack:
        path, children = stack[-1]
        for name, child in children:
            child_path = path + b"/" + name
            yield child_path, child
            if child.children is not None:
                stack.append((child_path, iter(sorted(child.children.items(), key=_name))))
                break
        else:
            stack.pop()


def _name(item: tuple[bytes, Inode]) -> bytes:
    return item[0]
