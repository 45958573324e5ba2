"""Helpers shared by the tests/unit/test_oci_*.py files (images built with cfstest.ocibuild)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cfsboot.composefs.repository import Repository
from cfstest.ocibuild import Compression, Entry, build_layout
from setuproot.contract import HashAlg


def base_layer(mtime: int = 1700000000) -> list[Entry]:
    """A minimal OS-shaped layer: /usr, /etc, /run, /boot, /sysroot."""
    return [
        Entry("usr", "dir", mtime=mtime),
        Entry("usr/bin", "dir", mtime=mtime),
        Entry("usr/lib", "dir", mtime=mtime),
        Entry("etc", "dir", mtime=mtime),
        Entry("run", "dir", mtime=mtime),
        Entry("boot", "dir", mtime=mtime),
        Entry("sysroot", "dir", mtime=mtime),
    ]


def make_repo(path: Path, alg: HashAlg = HashAlg.SHA256) -> Repository:
    return Repository.init(path, algorithm=alg, insecure=True)


def snapshot(path: Path) -> list[tuple[str, str]]:
    """Everything in a directory tree: names, types, sizes and symlink targets."""
    out = []
    for dirpath, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            p = Path(dirpath, name)
            rel = str(p.relative_to(path))
            if p.is_symlink():
                out.append((rel, "-> " + os.readlink(p)))
            elif p.is_dir():
                out.append((rel, "dir"))
            else:
                out.append((rel, f"file {p.stat().st_size}"))
    return sorted(out)


def count_objects(repo: Repository) -> int:
    return sum(
        1
        for d in (repo.path / "objects").iterdir()
        if d.is_dir() and len(d.name) == 2
        for _ in d.iterdir()
    )


def layout(
    path: Path,
    layers: Sequence[Sequence[Entry]],
    compression: Compression = Compression.GZIP,
) -> str:
    build_layout(path, [list(layer) for layer in layers], compression=compression)
    return f"oci:{path}"
