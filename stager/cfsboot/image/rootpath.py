"""Paths inside an image's root directory, as the image itself sees them (as in a chroot).

`container lint`, `ukify` and kargs.d reading look at a root directory in an image
build: a symlink in it names a path of the image, never one of the host, the way
the import resolves links inside the image's tree (cfsboot.image.bootscan).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SYMLINK_HOPS = 40


def resolve(root: Path, rel: str) -> Path | None:
    """root/rel with every symlink resolved inside root (as in a chroot); None if absent."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        path = root.joinpath(*done, name)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(name)
    return root.joinpath(*done)


def resolve_file(root: Path, rel: str) -> Path | None:
    """root/rel resolved inside root when it is a regular file there; else None."""
    path = resolve(root, rel)
    return path if path is not None and path.is_file() else None
