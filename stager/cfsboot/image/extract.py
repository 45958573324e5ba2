"""Write part of an image tree out as real files: a deployment's /etc copy, the shared /var.

The tree is what the image reader (or the OCI importer) produced: inline
contents, external files named by their object in the repository, symlinks,
devices, hardlinks (the same Inode under several names). Owners, modes,
xattrs and mtimes are kept, so the copy looks like the image (needs root).
Nothing here fsyncs file by file: the caller writes into a temporary
directory, calls `syncfs` once, and renames the result into place.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from cfsboot.composefs.directio import copy_fd, reflink
from cfsboot.composefs.objectstore import syncfs
from cfsboot.composefs.tree import Inode, lookup
from cfsboot.errors import die

log = logging.getLogger(__name__)


def subtree(root: Inode, path: str) -> Inode | None:
    """The directory at `path` in the image (no symlinks followed), or None."""
    node = lookup(root, path.encode())
    return node if node is not None and node.is_dir() else None


class _Writer:
    def __init__(self, objects: Path) -> None:
        self.objects = objects
        self.links: dict[int, Path] = {}  # id(Inode) -> first path written (hardlinks)

    def object(self, node: Inode) -> Path:
        if node.payload is not None:
            return self.objects / os.fsdecode(node.payload).lstrip("/")
        assert node.digest is not None
        hexd = node.digest.hex()
        return self.objects / hexd[:2] / hexd[2:]

    def write_file(self, node: Inode, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if node.content is not None:
                os.write(fd, node.content)
            elif node.size:
                src_path = self.object(node)
                try:
                    src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    die(f"object {src_path} is missing from the repository (needed for {path})")
                try:
                    if not reflink(src, fd):
                        copy_fd(src, fd, node.size)
                finally:
                    os.close(src)
        finally:
            os.close(fd)

    def metadata(self, node: Inode, path: Path) -> None:
        is_link = node.is_symlink()
        os.chown(path, node.uid, node.gid, follow_symlinks=False)
        if not is_link:
            # After chown: chown clears the setuid/setgid bits.
            os.chmod(path, stat.S_IMODE(node.mode))
        for key, value in node.xattrs.items():
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as e:
                # Linux refuses user.* xattrs on symlinks; the image cannot carry them either.
                if not (is_link and e.errno in (errno.EPERM, errno.EOPNOTSUPP)):
                    raise
        os.utime(path, ns=(_ns(node), _ns(node)), follow_symlinks=False)

    def tree(self, top: Inode, dest: Path) -> None:
        """Write the directory `top` at `dest`, with its own stack (images nest deep).

        A directory's metadata is set after its children: creating them would
        change its mtime, and its mode may not let us write into it.
        """
        os.mkdir(dest, 0o700)
        assert top.children is not None
        stack = [(top, dest, iter(sorted(top.children.items())))]
        while stack:
            parent, path, children = stack[-1]
            item = next(children, None)
            if item is None:
                stack.pop()
                self.metadata(parent, path)
                continue
            name, node = item
            child = path / os.fsdecode(name)
            if node.is_dir():
                os.mkdir(child, 0o700)
                assert node.children is not None
                stack.append((node, child, iter(sorted(node.children.items()))))
            elif self.leaf(node, child):
                self.metadata(node, child)

    def leaf(self, node: Inode, path: Path) -> bool:
        """Create a non-directory; False when it is a further name of a hardlink written before."""
        if node.nlink > 1:
            first = self.links.get(id(node))
            if first is not None:
                os.link(first, path, follow_symlinks=False)
                return False
            self.links[id(node)] = path
        fmt = node.ftype
        if fmt == stat.S_IFREG:
            self.write_file(node, path)
        elif fmt == stat.S_IFLNK:
            os.symlink(node.payload or b"", path)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            os.mknod(path, fmt | 0o600, node.rdev)
        else:
            raise ValueError(f"unknown file type {fmt:o} at {path}")
        return True


def _ns(node: Inode) -> int:
    return node.mtime * 1_000_000_000 + node.mtime_nsec


def extract(node: Inode, dest: Path, objects: Path) -> None:
    """Create `dest` (which must not exist) as a copy of the directory `node`."""
    if not node.is_dir():
        raise ValueError(f"{dest}: only directories can be extracted")
    _Writer(objects).tree(node, dest)


def sync_filesystem(path: Path) -> None:
    """Make everything written on the filesystem holding `path` durable (one syncfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
