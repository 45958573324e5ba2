"""What /etc merging works on: the entries of a directory tree, compared and written back.

An Entry is everything that is compared about one path but its timestamps
(type, mode, owner, device number, size, symlink target, xattrs); regular
file contents are compared on disk, only when all else matches. Trees are
read without following symlinks. The writers copy one entry's type, content
and metadata, private until the real mode is set, and never through a
symlink. Used by the bind-mode merge (etcmerge.py) and the overlay-mode carry
(etcupper.py).
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cfsboot.composefs.directio import copy_fd
from cfsboot.composefs.objectstore import syncfs
from cfsboot.errors import CfsbootError, die
from cfsboot.linux.fsutil import remove_tree, temp_name

ROOT = "."  # the relative path of the /etc directory itself

_CHUNK = 1 << 16


class Kind(enum.StrEnum):
    """File types, named the way messages spell them."""

    DIR = "directory"
    FILE = "file"
    SYMLINK = "symlink"
    CHAR = "character device"
    BLOCK = "block device"
    FIFO = "fifo"
    SOCKET = "socket"


_KINDS = {
    stat.S_IFDIR: Kind.DIR,
    stat.S_IFREG: Kind.FILE,
    stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR,
    stat.S_IFBLK: Kind.BLOCK,
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
}
_FORMATS = {kind: fmt for fmt, kind in _KINDS.items()}


@dataclass(frozen=True)
class Entry:
    """What is compared about one path: everything but the timestamps.

    Regular file contents are not held here (only their size); `same()`
    compares the bytes on disk when everything else matches.
    """

    kind: Kind
    mode: int  # permission bits including setuid/setgid/sticky
    uid: int
    gid: int
    rdev: int = 0  # devices only
    size: int = 0  # regular files only
    target: bytes = b""  # symlinks only
    xattrs: tuple[tuple[str, bytes], ...] = ()
    mtime_ns: int = field(default=0, compare=False)

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    def xattr(self, name: str) -> bytes | None:
        return dict(self.xattrs).get(name)


@dataclass(frozen=True)
class Conflict:
    """A local change that cannot be carried onto the new image."""

    path: str  # relative to /etc
    reason: str  # one line, naming /etc paths

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class MergeReport:
    """What was carried, as paths relative to /etc ("." is /etc itself), sorted."""

    added: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # Overlay mode only: upper entries left behind (unchanged copy-ups, needless whiteouts).
    dropped: tuple[str, ...] = ()


class EtcMergeConflict(CfsbootError):
    """Local /etc changes collide with the new image; nothing was written."""

    def __init__(self, conflicts: Sequence[Conflict]) -> None:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        super().__init__(
            f"cannot carry local /etc changes to the new image: {conflicts[0].reason}{more}",
            hint="move the local change aside and stage again",
        )
        self.conflicts = tuple(conflicts)


Tree = dict[str, Entry]


def show(rel: str) -> str:
    return "/etc" if rel == ROOT else f"/etc/{rel}"


def join(root: str, rel: str) -> str:
    return root if rel == ROOT else os.path.join(root, rel)


def ancestors(rel: str) -> Iterator[str]:
    """The directories above `rel` inside /etc, outermost first (not "." itself)."""
    if rel == ROOT:
        return
    parts = rel.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _read_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
        return tuple((name, os.getxattr(path, name, follow_symlinks=False)) for name in names)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:  # a filesystem without xattrs
            return ()
        raise


def _read_entry(path: str) -> Entry:
    st = os.lstat(path)
    kind = _KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        die(f"{path}: unknown file type {stat.S_IFMT(st.st_mode):o}")
    return Entry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        rdev=st.st_rdev if kind in (Kind.CHAR, Kind.BLOCK) else 0,
        size=st.st_size if kind is Kind.FILE else 0,
        target=os.readlink(os.fsencode(path)) if kind is Kind.SYMLINK else b"",
        xattrs=_read_xattrs(path),
        mtime_ns=st.st_mtime_ns,
    )


def lkind(path: str) -> Kind | None:
    """The type of `path` itself (a symlink is a symlink), or None if nothing is there."""
    try:
        return _KINDS.get(stat.S_IFMT(os.lstat(path).st_mode))
    except FileNotFoundError:
        return None


def scan(root: str) -> Tree:
    """Every path under `root` (and `root` itself as "."), without following symlinks.

    In depth-first order, each directory's names sorted: parents before children.
    Walked with an explicit stack, so depth is not bounded by Python's recursion.
    """
    top = os.path.realpath(root)  # the caller's own path may go through a symlink
    if not os.path.isdir(top):
        die(f"{root} is not a directory")
    tree: Tree = {ROOT: _read_entry(top)}

    def children(rel: str) -> Iterator[str]:
        with os.scandir(join(top, rel)) as it:
            names = sorted(e.name for e in it)
        return iter(names if rel == ROOT else [f"{rel}/{name}" for name in names])

    pending = [children(ROOT)]
    while pending:
        child = next(pending[-1], None)
        if child is None:
            pending.pop()
            continue
        entry = _read_entry(join(top, child))
        tree[child] = entry
        if entry.is_dir:
            pending.append(children(child))
    return tree


def _opener(path: str, flags: int) -> int:
    # Never through a symlink, and private until the real mode is set (think /etc/shadow).
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb", opener=_opener) as fa, open(b, "rb", opener=_opener) as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def same(root_a: str, a: Entry, root_b: str, b: Entry, rel: str) -> bool:
    """Same type, metadata, xattrs and content (mtime does not count)."""
    if a != b:
        return False
    return a.kind is not Kind.FILE or _same_bytes(join(root_a, rel), join(root_b, rel))


def kind_clash(rel: str, here: Entry, there: Entry) -> Conflict | None:
    """A directory on one side and a non-directory on the other cannot be merged."""
    if here.is_dir == there.is_dir:
        return None
    return Conflict(rel, f"{show(rel)} is a {here.kind} here but a {there.kind} in the new image")


# --- writing -------------------------------------------------------------------------------


def _set_xattrs(path: str, entry: Entry) -> None:
    """Make the xattrs of `path` exactly those of `entry` (drops inherited or stale ones)."""
    wanted = dict(entry.xattrs)
    for name in os.listxattr(path, follow_symlinks=False):
        if name not in wanted:
            try:
                os.removexattr(path, name, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    for name, value in entry.xattrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as e:
            # Linux refuses user.* on symlinks, so the source cannot have had it either.
            if not (entry.kind is Kind.SYMLINK and e.errno in (errno.EPERM, errno.EOPNOTSUPP)):
                raise


def _set_metadata(path: str, entry: Entry, *, times: bool = True) -> None:
    # chown first: it clears setuid/setgid and security.capability, which come after.
    os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
    if entry.kind is not Kind.SYMLINK:
        os.chmod(path, entry.mode)
    _set_xattrs(path, entry)
    if times:
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def create(src: str, entry: Entry, dst: str) -> None:
    """Create the non-directory `dst` as a copy of `src` (described by `entry`) and its metadata."""
    if entry.kind is Kind.FILE:
        with open(src, "rb", opener=_opener) as fin, open(dst, "xb", opener=_opener) as fout:
            copy_fd(fin.fileno(), fout.fileno(), os.fstat(fin.fileno()).st_size)
    elif entry.kind is Kind.SYMLINK:
        os.symlink(entry.target, os.fsencode(dst))
    else:
        os.mknod(dst, _FORMATS[entry.kind] | 0o600, entry.rdev)
    _set_metadata(dst, entry)


def replace_copy(src: str, entry: Entry, dst: str) -> None:
    """Put a copy of `src` at `dst` in one rename, so `dst` is never missing or half-written."""
    tmp = os.path.join(os.path.dirname(dst), temp_name(os.path.basename(dst)))
    try:
        create(src, entry, tmp)
        os.rename(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def remove(path: str) -> None:
    kind = lkind(path)
    if kind is Kind.DIR:
        remove_tree(path)  # never follows symlinks inside; any depth
    elif kind is not None:
        os.unlink(path)


def make_dir(path: str, entry: Entry, times: dict[str, int], *, update: bool) -> None:
    """Make sure `path` is a directory; give it `entry`'s metadata if made here or `update`.

    Its mtime goes into `times`, to be set once everything inside has been written.
    """
    kind = lkind(path)
    if kind is not None and kind is not Kind.DIR:
        die(f"{path} stopped being a directory while /etc was merged")
    if kind is None:
        os.mkdir(path, 0o700)
    if kind is None or update:
        _set_metadata(path, entry, times=False)
        times[path] = entry.mtime_ns


def set_times(times: dict[str, int]) -> None:
    for path, ns in times.items():
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
