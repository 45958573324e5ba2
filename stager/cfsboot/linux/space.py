"""Free space, checked before writes that would otherwise stop halfway: one line with the figures.

The sizes are estimates (a layer's contents before it is read, say): the check
refuses what cannot fit, and leaves MARGIN over for what estimates miss
(directories, metadata, the filesystem's own needs). A write that still runs out
of space fails cleanly where it is (the repository's batches, the temporary names
of the state and of the ESP files); `nospace_error` words that failure.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cfsboot.errors import CfsbootError, die

MIB = 1 << 20
MARGIN = 8 * MIB
GC_HINT = "free space there; `cfsboot gc` removes the images and objects no deployment needs"


@dataclass(frozen=True)
class Need:
    """`size` bytes that `what` will write."""

    what: str
    size: int


def show(n: int) -> str:
    """A size for people: MiB below 10 GiB, GiB above."""
    if n >= 10 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / MIB:.1f} MiB"


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (what will be written may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of `path` (df's Avail)."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def check(
    where: str, free: int | None, needs: Sequence[Need], *, action: str, margin: int = MARGIN
) -> None:
    """Refuse `action` unless `needs` (and `margin`) fit in `free` bytes; None: not known."""
    total = sum(n.size for n in needs)
    if free is None or total == 0 or total + margin <= free:
        return
    parts = " + ".join(f"{n.what} {show(n.size)}" for n in needs if n.size)
    die(
        f"not enough free space on {where} for {action}: it needs about {show(total)}"
        f" ({parts}) and {show(margin)} to spare, {show(free)} is free",
        hint=GC_HINT,
    )


def check_paths(needs: Sequence[tuple[Path, Need]], *, action: str) -> None:
    """check() for needs on local paths: those on one filesystem add up."""
    groups: dict[int, tuple[Path, list[Need]]] = {}
    for path, need in needs:
        at = _existing(path)
        groups.setdefault(os.stat(at).st_dev, (at, []))[1].append(need)
    for at, group in groups.values():
        check(f"the filesystem of {at}", free_bytes(at), group, action=action)


def is_nospace(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def nospace_error(where: Path, *, action: str, kept: str) -> CfsbootError:
    """The one line for a write that ran out of space: where, what is left, what to free."""
    try:
        free = f" ({show(free_bytes(where))} free now)"
    except OSError:
        free = ""
    return CfsbootError(
        f"no space left on the filesystem of {where}{free} while {action}; {kept}",
        hint=GC_HINT,
    )
