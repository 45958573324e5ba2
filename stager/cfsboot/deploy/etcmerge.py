"""Carry local /etc changes from the booted deployment onto a newly staged one.

Two layouts, matching the two persistent /etc modes of setup-root:

* bind mode (bootc/ostree semantics): the deployment's /etc is a full copy.
  `merge()` takes the three-way difference: what the admin changed between
  the booted image's pristine /etc and the live /etc is applied onto a copy
  of the new image's /etc; everything the admin did not touch stays as the
  new image has it.
* overlay mode (composefs-rs's layout): /etc is an overlayfs whose upper dir
  holds exactly the local changes. `carry_upper()` copies the meaningful part
  of the booted upper dir into a fresh upper dir for the new deployment.

Both work on plain directories the caller prepares and know nothing about
repositories or boot entries. Conflicts are found before anything is
written, so staging can refuse cleanly. Symlinks are never followed, and
hardlinks inside /etc are copied as separate files (the link is not kept).
Needs root for anything owned by other users, devices and trusted.* xattrs.
"""

from __future__ import annotations

import enum
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cfsboot.composefs.objectstore import copy_fd, syncfs
from cfsboot.errors import CfsbootError, die
from cfsboot.linux.fsutil import TEMP_MARKER, fsync_dir, temp_name

ROOT = "."  # the relative path of the /etc directory itself

# Overlayfs upper-dir conventions (Documentation/filesystems/overlayfs.rst).
OVL_PREFIX = "trusted.overlay."
OVL_ESCAPED = "trusted.overlay.overlay."  # a user's own trusted.overlay.* xattr, escaped
OVL_OPAQUE = "trusted.overlay.opaque"
OVL_WHITEOUT = "trusted.overlay.whiteout"
OVL_METACOPY = "trusted.overlay.metacopy"
OVL_REDIRECT = "trusted.overlay.redirect"
WHITEOUT_RDEV = os.makedev(0, 0)

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

    Regular file contents are not held here (only their size); `_same()`
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


def _show(rel: str) -> str:
    return "/etc" if rel == ROOT else f"/etc/{rel}"


def _join(root: str, rel: str) -> str:
    return root if rel == ROOT else os.path.join(root, rel)


def _ancestors(rel: str) -> Iterator[str]:
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


def _lkind(path: str) -> Kind | None:
    """The type of `path` itself (a symlink is a symlink), or None if nothing is there."""
    try:
        return _KINDS.get(stat.S_IFMT(os.lstat(path).st_mode))
    except FileNotFoundError:
        return None


def _scan(root: str) -> Tree:
    """Every path under `root` (and `root` itself as "."), without following symlinks."""
    top = os.path.realpath(root)  # the caller's own path may go through a symlink
    if not os.path.isdir(top):
        die(f"{root} is not a directory")
    tree: Tree = {ROOT: _read_entry(top)}

    def walk(rel: str) -> None:
        with os.scandir(_join(top, rel)) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child = name if rel == ROOT else f"{rel}/{name}"
            entry = _read_entry(_join(top, child))
            tree[child] = entry
            if entry.is_dir:
                walk(child)

    walk(ROOT)
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


def _same(root_a: str, a: Entry, root_b: str, b: Entry, rel: str) -> bool:
    """Same type, metadata, xattrs and content (mtime does not count)."""
    if a != b:
        return False
    return a.kind is not Kind.FILE or _same_bytes(_join(root_a, rel), _join(root_b, rel))


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


def _create(src: str, entry: Entry, dst: str) -> None:
    """Create the non-directory `dst` as a copy of `src` (described by `entry`) and its metadata."""
    if entry.kind is Kind.FILE:
        with open(src, "rb", opener=_opener) as fin, open(dst, "xb", opener=_opener) as fout:
            copy_fd(fin.fileno(), fout.fileno(), os.fstat(fin.fileno()).st_size)
    elif entry.kind is Kind.SYMLINK:
        os.symlink(entry.target, os.fsencode(dst))
    else:
        os.mknod(dst, _FORMATS[entry.kind] | 0o600, entry.rdev)
    _set_metadata(dst, entry)


def _replace(src: str, entry: Entry, dst: str) -> None:
    """Put a copy of `src` at `dst` in one rename, so `dst` is never missing or half-written."""
    tmp = os.path.join(os.path.dirname(dst), temp_name(os.path.basename(dst)))
    try:
        _create(src, entry, tmp)
        os.rename(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _remove(path: str) -> None:
    kind = _lkind(path)
    if kind is Kind.DIR:
        shutil.rmtree(path)  # never follows symlinks inside
    elif kind is not None:
        os.unlink(path)


def _make_dir(path: str, entry: Entry, times: dict[str, int], *, update: bool) -> None:
    """Make sure `path` is a directory; give it `entry`'s metadata if made here or `update`.

    Its mtime goes into `times`, to be set once everything inside has been written.
    """
    kind = _lkind(path)
    if kind is not None and kind is not Kind.DIR:
        die(f"{path} stopped being a directory while /etc was merged")
    if kind is None:
        os.mkdir(path, 0o700)
    if kind is None or update:
        _set_metadata(path, entry, times=False)
        times[path] = entry.mtime_ns


def _set_times(times: dict[str, int]) -> None:
    for path, ns in times.items():
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


# --- bind mode: three-way merge ------------------------------------------------------------


def _diff(pristine: str, pt: Tree, current: str, ct: Tree) -> MergeReport:
    """The local changes: added, modified and removed paths."""
    both = sorted(rel for rel in ct if rel in pt)
    return MergeReport(
        added=tuple(sorted(set(ct) - set(pt))),
        modified=tuple(r for r in both if not _same(pristine, pt[r], current, ct[r], r)),
        removed=tuple(sorted(set(pt) - set(ct))),
    )


def _changed(changes: MergeReport) -> list[str]:
    return sorted(changes.added + changes.modified)


def _already(current: str, entry: Entry, new: str, there: Entry | None, rel: str) -> bool:
    """`new` already has exactly this (a merge run again): leave it, and its directory, alone."""
    if there is None or there.mtime_ns != entry.mtime_ns:
        return False
    return _same(current, entry, new, there, rel)


def _kind_clash(rel: str, here: Entry, there: Entry) -> Conflict | None:
    """A directory on one side and a non-directory on the other cannot be merged."""
    if here.is_dir == there.is_dir:
        return None
    return Conflict(rel, f"{_show(rel)} is a {here.kind} here but a {there.kind} in the new image")


def _bind_conflicts(changed: Iterable[str], ct: Tree, nt: Tree) -> list[Conflict]:
    found: dict[str, Conflict] = {}
    for rel in changed:
        # A change below something that is no longer a directory in the new image has no
        # place to go: writing it would mean following the new image's symlink (#335) or
        # deleting its file. Reported once, at the outermost such path.
        blocker = next((a for a in _ancestors(rel) if a in nt and not nt[a].is_dir), None)
        if blocker is not None:
            reason = (
                f"{_show(blocker)} is a directory with local changes here ({_show(rel)}) "
                f"but a {nt[blocker].kind} in the new image"
            )
            found.setdefault(blocker, Conflict(blocker, reason))
        elif rel in nt and (clash := _kind_clash(rel, ct[rel], nt[rel])) is not None:
            found.setdefault(rel, clash)
    return sorted(found.values(), key=lambda c: c.path)


def find_conflicts(
    pristine: str | os.PathLike[str],
    current: str | os.PathLike[str],
    new: str | os.PathLike[str],
) -> list[Conflict]:
    """Local changes (pristine -> current) that cannot be applied onto `new`; [] if none.

    Unmergeable: a path changed or added locally that is a directory on one side
    and a non-directory on the other (also a directory here where the new image
    has a symlink), and any local change below a path that is not a directory in
    the new image. Local deletions never conflict: they win, whatever is there.
    """
    p, c, n = os.fspath(pristine), os.fspath(current), os.fspath(new)
    ct = _scan(c)
    return _bind_conflicts(_changed(_diff(p, _scan(p), c, ct)), ct, _scan(n))


def merge(
    pristine: str | os.PathLike[str],
    current: str | os.PathLike[str],
    new: str | os.PathLike[str],
) -> MergeReport:
    """Apply the local /etc changes (pristine -> current) onto `new`, in place.

    Added and modified paths take current's content, type, mode, owner, xattrs
    and mtime; locally removed paths are removed from `new` (a removed directory
    with everything the new image has in it); all else stays as `new` has it.
    Directories missing in `new` above a change are created with current's
    metadata. Hardlinks are written as separate files. Raises EtcMergeConflict,
    before writing anything, if `find_conflicts()` finds something. Running it
    again on the merged `new` changes nothing. Everything is on disk (syncfs)
    when it returns.
    """
    p, c, n = os.fspath(pristine), os.fspath(current), os.fspath(new)
    pt, ct, nt = _scan(p), _scan(c), _scan(n)
    changes = _diff(p, pt, c, ct)
    conflicts = _bind_conflicts(_changed(changes), ct, nt)
    if conflicts:
        raise EtcMergeConflict(conflicts)

    # Files an interrupted earlier run left under temporary names are not the admin's.
    for rel in (r for r in nt if TEMP_MARKER in os.path.basename(r) and r not in ct):
        _remove(_join(n, rel))
    for rel in changes.removed:
        # Only what the scan reached without passing a symlink: below a symlink in the new
        # image is somewhere else entirely. Below an already removed directory is gone.
        if rel in nt:
            _remove(_join(n, rel))

    times: dict[str, int] = {}
    for rel in _changed(changes):
        for anc in _ancestors(rel):  # the new image may have dropped a parent
            _make_dir(_join(n, anc), ct[anc], times, update=False)
        entry, dst = ct[rel], _join(n, rel)
        if entry.is_dir:
            _make_dir(dst, entry, times, update=True)
        elif _lkind(dst) is Kind.DIR:
            die(f"{dst} became a directory while /etc was merged")
        elif not _already(c, entry, n, nt.get(rel), rel):
            _replace(_join(c, rel), entry, dst)
    _set_times(times)
    _sync(n)
    return changes


# --- overlay mode: carrying the upper dir --------------------------------------------------


class _Do(enum.StrEnum):
    COPY = "copy"  # a local change: copy the upper entry
    OPAQUE = "opaque"  # a directory replacing the lower one: copy, mark opaque
    WHITEOUT = "whiteout"  # a local deletion that still hides something
    PARENT = "parent"  # an unchanged directory holding carried entries


@dataclass(frozen=True)
class _Plan:
    actions: dict[str, _Do]
    root: Entry  # metadata for the new upper dir itself
    upper: Tree
    new_lower: Tree
    report: MergeReport
    conflicts: list[Conflict]


def _plain(entry: Entry) -> Entry:
    """The entry without overlayfs bookkeeping (origin, impure, opaque, whiteout, ...)."""
    keep = tuple(
        (k, v) for k, v in entry.xattrs if not k.startswith(OVL_PREFIX) or k.startswith(OVL_ESCAPED)
    )
    return replace(entry, xattrs=keep)


def _is_whiteout(entry: Entry) -> bool:
    if entry.kind is Kind.CHAR and entry.rdev == WHITEOUT_RDEV:
        return True
    return entry.kind is Kind.FILE and entry.size == 0 and entry.xattr(OVL_WHITEOUT) is not None


def _plan_upper(old_upper: str, old_lower: str, new_lower: str) -> _Plan:
    ut, ot, nt = _scan(old_upper), _scan(old_lower), _scan(new_lower)
    actions: dict[str, _Do] = {}
    added: list[str] = []
    modified: list[str] = []
    removed: list[str] = []
    dropped: list[str] = []
    conflicts: list[Conflict] = []
    opaque: set[str] = set()

    for rel, entry in ut.items():  # sorted, parents before children
        if rel == ROOT:
            continue
        hidden = any(a in opaque for a in _ancestors(rel))  # the lower does not show here
        for name, what in ((OVL_METACOPY, "a metadata-only copy-up"), (OVL_REDIRECT, "renamed")):
            if entry.xattr(name) is not None:
                # Its content or name lives in the old lower layer, which is going away;
                # /etc's overlay is mounted without metacopy and redirect_dir.
                reason = f"{_show(rel)} is {what} in the upper dir ({name}); cannot carry it"
                conflicts.append(Conflict(rel, reason))
        if _is_whiteout(entry):
            # Only a whiteout over something in both lowers deletes anything.
            if not hidden and rel in ot and rel in nt:
                actions[rel] = _Do.WHITEOUT
                removed.append(rel)
            else:
                dropped.append(rel)
            continue
        old = ot.get(rel)
        if entry.is_dir and entry.xattr(OVL_OPAQUE) == b"y":
            opaque.add(rel)
            actions[rel] = _Do.OPAQUE
        elif hidden or old is None or not _same(old_upper, _plain(entry), old_lower, old, rel):
            actions[rel] = _Do.COPY
        else:
            # A copy-up without a change (touch, or a parent of a changed file): leave it out,
            # so that the new image's version shows through.
            if not entry.is_dir:
                dropped.append(rel)
            continue
        (added if old is None else modified).append(rel)

    for rel in list(actions):
        for anc in _ancestors(rel):
            actions.setdefault(anc, _Do.PARENT)

    for rel in sorted(actions):
        do, there = actions[rel], nt.get(rel)
        if do is _Do.WHITEOUT or there is None or any(a in opaque for a in _ancestors(rel)):
            continue
        if ut[rel].is_dir == there.is_dir:
            continue
        old = ot.get(rel)
        if old is not None and old.is_dir == there.is_dir:
            # The admin changed the type; the new image did not: the upper entry still
            # hides the lower one exactly as it did before.
            continue
        if do is _Do.PARENT:
            inner = next(r for r in sorted(actions) if r.startswith(rel + "/"))
            reason = (
                f"{_show(rel)} is a directory with local changes here ({_show(inner)}) "
                f"but a {there.kind} in the new image"
            )
            conflicts.append(Conflict(rel, reason))
        elif (clash := _kind_clash(rel, ut[rel], there)) is not None:
            conflicts.append(clash)

    # Overlayfs shows the upper root's metadata for /etc: carry a local chmod/chown of
    # /etc itself, otherwise take the new image's.
    root = _plain(ut[ROOT])
    if root == _plain(ot[ROOT]):
        root = _plain(nt[ROOT])
    else:
        modified.insert(0, ROOT)
    report = MergeReport(*(tuple(sorted(x)) for x in (added, modified, removed, dropped)))
    conflicts.sort(key=lambda c: c.path)
    return _Plan(actions, root, ut, nt, report, conflicts)


def find_upper_conflicts(
    old_upper: str | os.PathLike[str],
    old_lower: str | os.PathLike[str],
    new_lower: str | os.PathLike[str],
) -> list[Conflict]:
    """Upper-dir changes that cannot be carried onto `new_lower`; [] if none.

    In overlay semantics an upper non-directory hides whatever the lower has,
    and an upper directory hides a lower non-directory. So carrying is only
    wrong where the new image changed a path between directory and
    non-directory and a carried entry is of the other kind: it would hide the
    new image's directory tree, or stand where the new image put a file or
    symlink (#335: /etc/ssl/certs became a symlink while it holds a local
    certificate). If the old image already had the new image's kind there,
    the admin replaced it on purpose and it is carried. Entries below an
    opaque directory never conflict (the lower is hidden there), nor do
    whiteouts (a deletion wins). Metadata-only copy-ups and redirected
    directories are unmergeable too: they point into the old image.
    """
    return _plan_upper(os.fspath(old_upper), os.fspath(old_lower), os.fspath(new_lower)).conflicts


def _write_upper(plan: _Plan, old_upper: str, out: str) -> None:
    ut, nt = plan.upper, plan.new_lower
    times: dict[str, int] = {}
    _make_dir(out, plan.root, times, update=True)
    for rel in sorted(plan.actions):
        do, dst = plan.actions[rel], _join(out, rel)
        entry = _plain(ut[rel])
        if do is _Do.WHITEOUT:
            # Always the character-device form, which every overlayfs understands.
            os.mknod(dst, stat.S_IFCHR, WHITEOUT_RDEV)
        elif entry.is_dir:
            if do is _Do.PARENT and rel in nt and nt[rel].is_dir:
                entry = _plain(nt[rel])  # unchanged here: the new image's metadata shows
            if do is _Do.OPAQUE:
                entry = replace(entry, xattrs=(*entry.xattrs, (OVL_OPAQUE, b"y")))
            _make_dir(dst, entry, times, update=True)
        else:
            _create(_join(old_upper, rel), entry, dst)
    _set_times(times)


def carry_upper(
    old_upper: str | os.PathLike[str],
    old_lower: str | os.PathLike[str],
    new_lower: str | os.PathLike[str],
    new_upper: str | os.PathLike[str],
) -> MergeReport:
    """Fill `new_upper` (absent or empty) with the local changes held in `old_upper`.

    Carried: entries that differ from `old_lower` (type, content, mode, owner,
    xattrs apart from trusted.overlay.* bookkeeping), opaque directories with
    all they hold, and whiteouts of paths that both images have. Left out (in
    the report's `dropped`): copy-ups without a change, so the new image's
    version shows through, and whiteouts that hide nothing in `new_lower`.
    Unchanged directories holding carried entries get the new image's
    metadata. Hardlinks are written as separate files. Raises EtcMergeConflict
    (see `find_upper_conflicts()`) before writing anything. The result is
    built in a temporary sibling directory, synced and renamed into place, so
    an interruption leaves either no `new_upper` change or the whole result.
    """
    ou, ol, nl = os.fspath(old_upper), os.fspath(old_lower), os.fspath(new_lower)
    target = Path(new_upper)
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        die(f"{target} is not an empty directory (a new upper dir must start empty)")
    plan = _plan_upper(ou, ol, nl)
    if plan.conflicts:
        raise EtcMergeConflict(plan.conflicts)

    for stale in target.parent.iterdir():
        if stale.name.startswith(f".{target.name}{TEMP_MARKER}"):
            shutil.rmtree(stale)  # what an interrupted earlier carry left
    tmp = target.parent / temp_name(target.name)
    os.mkdir(tmp, 0o700)
    try:
        _write_upper(plan, ou, os.fspath(tmp))
        _sync(os.fspath(tmp))
        os.rename(tmp, target)  # replaces an empty directory in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return plan.report
