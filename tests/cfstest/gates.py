"""The one gate every skip goes through, and the probes that decide whether to take it.

A test that needs something the machine may lack (root, mounts, a tool, a filesystem
feature, the reference C tools) asks a probe that *tries the operation* (osbuild's
`can_bind_mount()`), not one that guesses from the uid, and calls `missing_capability`
when it is absent. Outside CI that skips with the reason; in CI (`CI=true`) the machine
must have everything `make setup` installs, so it fails instead. No test skips any other
way: tests/unit/test_test_gates.py fails on a skip outside this module.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """CI runs set CI=true (.ci/run); read at every call so that tests can change it."""
    return os.environ.get("CI") == "true"


def missing_capability(reason: str) -> NoReturn:
    """Skip where a capability is truly absent; in CI the machine has it, so fail loudly."""
    if in_ci():
        pytest.fail(f"{reason} (CI must have it: is `make setup` complete?)")
    pytest.skip(reason)


def require_tools(packages: dict[str, str]) -> None:
    """Every tool (name -> the Debian package that has it) is on PATH, or the gate."""
    missing = [(tool, pkg) for tool, pkg in packages.items() if shutil.which(tool) is None]
    if missing:
        tools = ", ".join(tool for tool, _ in missing)
        pkgs = " ".join(dict.fromkeys(pkg for _, pkg in missing))
        missing_capability(f"{tools} not found (apt-get install {pkgs})")


FAT_TOOLS = {"mkfs.vfat": "dosfstools", "fsck.vfat": "dosfstools", "mcopy": "mtools"}


def _succeeds(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@functools.cache
def can_mount() -> bool:
    """Mounting a tmpfs in a private mount namespace works (root, unshare, mount(2))."""
    probe = ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "t", "/mnt"]
    return _succeeds(probe)


def require_mount() -> None:
    if not can_mount():
        missing_capability("cannot mount in a private mount namespace (needs root and unshare)")


def can_set_user_xattr(path: Path) -> bool:
    """Setting a user.* xattr on `path` works (the filesystem has user xattrs)."""
    try:
        os.setxattr(path, "user.cfsboot-probe", b"1", follow_symlinks=False)
        os.removexattr(path, "user.cfsboot-probe", follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return False
        raise
    return True


def can_mknod(directory: Path) -> bool:
    """Creating a character device (the 0/0 whiteout) in `directory` works (CAP_MKNOD)."""
    probe = Path(tempfile.mktemp(prefix=".mknod-probe-", dir=directory))
    try:
        os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    except PermissionError:
        return False
    probe.unlink()
    return True


def tmpfs_dir() -> Path:
    """A directory on a tmpfs (/dev/shm), which has no fs-verity; else the gate."""
    shm = Path("/dev/shm")
    try:
        with tempfile.NamedTemporaryFile(dir=shm):
            pass
    except OSError as e:
        missing_capability(f"no writable tmpfs at {shm}: {e}")
    return shm
