"""The in-memory file tree that flows between importers, dumpfiles and EROFS images.

Names and paths are bytes (any byte but '/' and NUL may appear in a name).
A hardlink is the same `Inode` object reachable under several names.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

# Regular files of this many bytes or fewer keep their contents in the tree (and inline in
# the EROFS image); larger ones are objects named by their fs-verity digest.
# LCFS_RECOMMENDED_INLINE_CONTENT_MAX (lcfs-writer.h): what C mkcomposefs does.
INLINE_MAX = 64

# The file types a composefs tree (dumpfile, EROFS image) can hold.
FILE_TYPES = frozenset(
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


@dataclass(eq=False, slots=True)
class Inode:
    """One file, directory, symlink or special file.

    For regular files exactly one of these describes the content:
    `content` (stored inline in the image), or `payload` + `digest` (an external
    object: `payload` is its path relative to the objects directory, `digest`
    its raw fs-verity digest), or neither with size 0 (empty file).
    """

    mode: int  # st_mode, including the file type bits
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds
    mtime_nsec: int = 0
    rdev: int = 0
    nlink: int = 1
    size: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    content: bytes | None = None  # inline content of a regular file
    payload: bytes | None = None  # symlink target, or object path "xx/rest…"
    digest: bytes | None = None  # fs-verity digest of an external file's content
    children: dict[bytes, Inode] | None = None  # directories only

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
    This is the order of a composefs dumpfile.
    """
    yield b"/", root
    yield from _walk_children(b"", root)


def _walk_children(path: bytes, node: Inode) -> Iterator[tuple[bytes, Inode]]:
    assert node.children is not None
    for name in sorted(node.children):
        child = node.children[name]
        child_path = path + b"/" + name
        yield child_path, child
        if child.children is not None:
            yield from _walk_children(child_path, child)
