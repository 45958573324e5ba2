"""Carrying local /etc changes from the booted deployment onto a staged one."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cfsboot.deploy import etcmerge
from cfsboot.deploy.state import ETC_VIEWS_PREFIX, remove_tree
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import Target
from cfsboot.errors import die
from cfsboot.image import extract
from cfsboot.linux.fsutil import TEMP_MARKER, fsync_dir, temp_name
from setuproot.config import EtcMount


@contextmanager
def _etc_views(sysroot: Sysroot, old: Target, new: Target) -> Iterator[tuple[Path, Path]]:
    """Temporary copies of the pristine /etc of the old and of the new image."""
    objects = sysroot.repo.path / "objects"
    with tempfile.TemporaryDirectory(prefix=ETC_VIEWS_PREFIX, dir=sysroot.path) as tmp:
        views = []
        for name, t in (("old", old), ("new", new)):
            dest = Path(tmp) / name
            node = extract.subtree(t.tree, "etc")
            if node is None:
                dest.mkdir()
            else:
                extract.extract(node, dest, objects)
            views.append(dest)
        yield views[0], views[1]


def _etc_mode(old: Target, new: Target) -> EtcMount:
    if old.config.etc is not new.config.etc:
        die(
            f"the new image mounts /etc as {new.config.etc}, the booted one as {old.config.etc}:"
            " carrying /etc changes between the two modes is not supported",
            hint="keep [etc] mount in /usr/lib/composefs/setup-root-conf.toml the same",
        )
    return new.config.etc


def check_etc(sysroot: Sysroot, old: Target, new: Target) -> None:
    """Refuse to stage when local /etc changes cannot be carried onto the new image."""
    mode = _etc_mode(old, new)
    state = sysroot.deploy_dir(old.digest) / "etc"
    if mode not in (EtcMount.BIND, EtcMount.OVERLAY) or not state.exists():
        return
    with _etc_views(sysroot, old, new) as (old_etc, new_etc):
        if mode is EtcMount.BIND:
            conflicts = etcmerge.find_conflicts(old_etc, state, new_etc)
        else:
            conflicts = etcmerge.find_upper_conflicts(state / "upper", old_etc, new_etc)
    if conflicts:
        shown = "; ".join(str(c) for c in conflicts[:5])
        more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        die(
            f"local changes to /etc conflict with the new image: {shown}{more}",
            hint="resolve them in /etc and run the command again; nothing was staged",
        )


def merge_etc(sysroot: Sysroot, old: Target, new: Target) -> etcmerge.MergeReport | None:
    """Carry the old deployment's /etc changes onto the new one's state (finalize)."""
    mode = _etc_mode(old, new)
    old_state = sysroot.deploy_dir(old.digest) / "etc"
    new_state = sysroot.deploy_dir(new.digest) / "etc"
    if mode not in (EtcMount.BIND, EtcMount.OVERLAY) or not old_state.exists():
        return None
    with _etc_views(sysroot, old, new) as (old_etc, new_etc):
        if mode is EtcMount.BIND:
            return etcmerge.merge(old_etc, old_state, new_state)
        _reset_upper(new_state / "upper")
        return etcmerge.carry_upper(old_state / "upper", old_etc, new_etc, new_state / "upper")


def _reset_upper(upper: Path) -> None:
    """Empty a staged deployment's upper dir that an interrupted finalize already filled.

    A staged deployment has never been booted: its upper dir holds nothing but an
    earlier carry of the booted deployment's changes, which is carried again (the
    booted /etc may have changed since). Moved aside first, so the name is never
    seen half-emptied; an interrupted carry's temporary directory goes too.
    """
    for leftover in upper.parent.glob(f".{upper.name}{TEMP_MARKER}*"):
        remove_tree(leftover)
    if not upper.is_dir() or not any(upper.iterdir()):
        return
    doomed = upper.with_name(temp_name(upper.name))
    upper.rename(doomed)
    fsync_dir(upper.parent)
    remove_tree(doomed)
