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

This module holds the bind-mode merge and exports both modes; overlay mode
lives in etcupper.py, and what both compare and write in etctree.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from cfsboot.deploy.etctree import (
    ROOT,
    Conflict,
    Entry,
    EtcMergeConflict,
    Kind,
    MergeReport,
    Tree,
    ancestors,
    join,
    kind_clash,
    lkind,
    make_dir,
    remove,
    replace_copy,
    same,
    scan,
    set_times,
    show,
    sync,
)
from cfsboot.deploy.etcupper import carry_upper, find_upper_conflicts
from cfsboot.errors import die
from cfsboot.linux.fsutil import TEMP_MARKER


def _diff(pristine: str, pt: Tree, current: str, ct: Tree) -> MergeReport:
    """The local changes: added, modified and removed paths."""
    both = sorted(rel for rel in ct if rel in pt)
    return MergeReport(
        added=tuple(sorted(set(ct) - set(pt))),
        modified=tuple(r for r in both if not same(pristine, pt[r], current, ct[r], r)),
        removed=tuple(sorted(set(pt) - set(ct))),
    )


def _changed(changes: MergeReport) -> list[str]:
    return sorted(changes.added + changes.modified)


def _already(current: str, entry: Entry, new: str, there: Entry | None, rel: str) -> bool:
    """`new` already has exactly this (a merge run again): leave it, and its directory, alone."""
    if there is None or there.mtime_ns != entry.mtime_ns:
        return False
    return same(current, entry, new, there, rel)


def _bind_conflicts(changed: Iterable[str], ct: Tree, nt: Tree) -> list[Conflict]:
    found: dict[str, Conflict] = {}
    for rel in changed:
        # A change below something that is no longer a directory in the new image has no
        # place to go: writing it would mean following the new image's symlink (#335) or
        # deleting its file. Reported once, at the outermost such path.
        blocker = next((a for a in ancestors(rel) if a in nt and not nt[a].is_dir), None)
        if blocker is not None:
            reason = (
                f"{show(blocker)} is a directory with local changes here ({show(rel)}) "
                f"but a {nt[blocker].kind} in the new image"
            )
            found.setdefault(blocker, Conflict(blocker, reason))
        elif rel in nt and (clash := kind_clash(rel, ct[rel], nt[rel])) is not None:
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
    ct = scan(c)
    return _bind_conflicts(_changed(_diff(p, scan(p), c, ct)), ct, scan(n))


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
    pt, ct, nt = scan(p), scan(c), scan(n)
    changes = _diff(p, pt, c, ct)
    conflicts = _bind_conflicts(_changed(changes), ct, nt)
    if conflicts:
        raise EtcMergeConflict(conflicts)

    # Files an interrupted earlier run left under temporary names are not the admin's.
    for rel in (r for r in nt if TEMP_MARKER in os.path.basename(r) and r not in ct):
        remove(join(n, rel))
    for rel in changes.removed:
        # Only what the scan reached without passing a symlink: below a symlink in the new
        # image is somewhere else entirely. Below an already removed directory is gone.
        if rel in nt:
            remove(join(n, rel))

    times: dict[str, int] = {}
    for rel in _changed(changes):
        for anc in ancestors(rel):  # the new image may have dropped a parent
            make_dir(join(n, anc), ct[anc], times, update=False)
        entry, dst = ct[rel], join(n, rel)
        if entry.is_dir:
            make_dir(dst, entry, times, update=True)
        elif lkind(dst) is Kind.DIR:
            die(f"{dst} became a directory while /etc was merged")
        elif not _already(c, entry, n, nt.get(rel), rel):
            replace_copy(join(c, rel), entry, dst)
    set_times(times)
    sync(n)
    return changes


__all__ = [
    "ROOT",
    "Conflict",
    "EtcMergeConflict",
    "MergeReport",
    "carry_upper",
    "find_conflicts",
    "find_upper_conflicts",
    "merge",
]
