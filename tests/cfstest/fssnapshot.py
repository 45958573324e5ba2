"""Everything on a filesystem tree that /etc merge promises to keep, read with os.lstat
and friends, independently of the code under test (tests/unit/test_etcmerge*.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

Snap = dict[str, tuple[Any, ...]]


def snapshot(root: Path, *, mtimes: bool = False) -> Snap:
    """Everything merge promises to keep, read independently of the code under test."""
    out: Snap = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinks
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else dirnames + filenames:
            path = os.path.normpath(os.path.join(dirpath, name))
            st_ = os.lstat(path)
            if stat.S_ISREG(st_.st_mode):
                data: object = Path(path).read_bytes()
            elif stat.S_ISLNK(st_.st_mode):
                data = os.readlink(path)
            else:
                data = st_.st_rdev
            xattrs = sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            )
            row = (stat.filemode(st_.st_mode), st_.st_uid, st_.st_gid, data, xattrs)
            out[os.path.relpath(path, root)] = (*row, st_.st_mtime_ns) if mtimes else row
    return out
