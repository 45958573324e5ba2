"""Overlay-mode /etc: carry the booted deployment's upper dir onto a new deployment.

In composefs-rs's layout /etc is an overlayfs whose upper dir holds exactly
the local changes. `carry_upper()` copies the meaningful part of the booted
upper dir (real changes, opaque directories, whiteouts that still hide
something) into a fresh upper dir for the new image, and drops overlayfs
bookkeeping. Conflicts are found before anything is written.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from cfsboot.deploy.etctree import (
    ROOT,
    Conflict,
    Entry,
    EtcMergeConflict,
    Kind,
    MergeReport,
    Tree,
    ancestors,
    create,
    join,
    kind_clash,
    make_dir,
    same,
    scan,
    set_times,
    show,
    sync,
)
from cfsboot.errors import die
from cfsboot.linux.fsutil import TEMP_MARKER, fsync_dir, remove_tree, temp_name

# Overlayfs upper-dir conventions (Documentation/filesystems/overlayfs.rst).
OVL_PREFIX = "trusted.overlay."
OVL_ESCAPED = "trusted.overlay.overlay."  # a user's own trusted.overlay.* xattr, escaped
OVL_OPAQUE = "trusted.overlay.opaque"
OVL_WHITEOUT = "trusted.overlay.whiteout"
OVL_METACOPY = "trusted.overlay.metacopy"
OVL_REDIRECT = "trusted.overlay.redirect"
WHITEOUT_RDEV = os.makedev(0, 0)


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
    ut, ot, nt = scan(old_upper), scan(old_lower), scan(new_lower)
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
        hidden = any(a in opaque for a in ancestors(rel))  # the lower does not show here
        for name, what in ((OVL_METACOPY, "a metadata-only copy-up"), (OVL_REDIRECT, "renamed")):
            if entry.xattr(name) is not None:
                # Its content or name lives in the old lower layer, which is going away;
                # /etc's overlay is mounted without metacopy and redirect_dir.
                reason = f"{show(rel)} is {what} in the upper dir ({name}); cannot carry it"
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
        elif hidden or old is None or not same(old_upper, _plain(entry), old_lower, old, rel):
            actions[rel] = _Do.COPY
        else:
            # A copy-up without a change (touch, or a parent of a changed file): leave it out,
            # so that the new image's version shows through.
            if not entry.is_dir:
                dropped.append(rel)
            continue
        (added if old is None else modified).append(rel)

    for rel in list(actions):
        for anc in ancestors(rel):
            actions.setdefault(anc, _Do.PARENT)

    for rel in sorted(actions):
        do, there = actions[rel], nt.get(rel)
        if do is _Do.WHITEOUT or there is None or any(a in opaque for a in ancestors(rel)):
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
                f"{show(rel)} is a directory with local changes here ({show(inner)}) "
                f"but a {there.kind} in the new image"
            )
            conflicts.append(Conflict(rel, reason))
        elif (clash := kind_clash(rel, ut[rel], there)) is not None:
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
    make_dir(out, plan.root, times, update=True)
    for rel in sorted(plan.actions):
        do, dst = plan.actions[rel], join(out, rel)
        entry = _plain(ut[rel])
        if do is _Do.WHITEOUT:
            # Always the character-device form, which every overlayfs understands.
            os.mknod(dst, stat.S_IFCHR, WHITEOUT_RDEV)
        elif entry.is_dir:
            if do is _Do.PARENT and rel in nt and nt[rel].is_dir:
                entry = _plain(nt[rel])  # unchanged here: the new image's metadata shows
            if do is _Do.OPAQUE:
                entry = replace(entry, xattrs=(*entry.xattrs, (OVL_OPAQUE, b"y")))
            make_dir(dst, entry, times, update=True)
        else:
            create(join(old_upper, rel), entry, dst)
    set_times(times)


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
            remove_tree(stale)  # what an interrupted earlier carry left
    tmp = target.parent / temp_name(target.name)
    os.mkdir(tmp, 0o700)
    try:
        _write_upper(plan, ou, os.fspath(tmp))
        sync(os.fspath(tmp))
        os.rename(tmp, target)  # replaces an empty directory in one step
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise
    fsync_dir(target.parent)
    return plan.report
