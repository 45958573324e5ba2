"""The file syscalls Python lacks, through ctypes: renameat2(2).

Wrappers raise OSError(errno, strerror, path, None, path2), so a caller can say
which names failed. The mount syscalls live in setuproot.syscalls (the
initramfs needs them too); the shared constants come from there.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from cfsboot.linux.arch import ARCHES
from setuproot.syscalls import AT_FDCWD as AT_FDCWD  # re-exported for dirfd callers

# renameat2 flags, <linux/fs.h> (glibc repeats them in <stdio.h> under _GNU_SOURCE).
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

# renameat2's syscall number by `uname -m` (every spelling), for C libraries without the
# wrapper: a view of the one arch table (cfsboot.linux.arch), where the numbers live.
SYS_RENAMEAT2_BY_MACHINE = {m: a.sys_renameat2 for m, a in ARCHES.items() if a.sys_renameat2}

# (olddirfd, oldpath, newdirfd, newpath, flags) -> 0, or -1 with errno set.
RenameAt2 = Callable[[int, bytes, int, bytes, int], int]

_libc = ctypes.CDLL(None, use_errno=True)


def libc_renameat2() -> RenameAt2 | None:
    """glibc's renameat2 wrapper (glibc >= 2.28), or None."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def call(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        return int(fn(olddirfd, old, newdirfd, new, flags))

    return call


def syscall_renameat2(machine: str | None = None) -> RenameAt2 | None:
    """renameat2 through syscall(2) with this machine's number, or None if we do not know it."""
    nr = SYS_RENAMEAT2_BY_MACHINE.get(machine or os.uname().machine)
    if nr is None:
        return None
    _libc.syscall.restype = ctypes.c_long

    def call(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        args = (ctypes.c_int(olddirfd), old, ctypes.c_int(newdirfd), new, ctypes.c_uint(flags))
        return int(_libc.syscall(ctypes.c_long(nr), *args))

    return call


_renameat2: RenameAt2 | None = libc_renameat2() or syscall_renameat2()


def renameat2(
    old: str | os.PathLike[str],
    new: str | os.PathLike[str],
    flags: int,
    *,
    olddirfd: int = AT_FDCWD,
    newdirfd: int = AT_FDCWD,
) -> None:
    """renameat2(2); with RENAME_EXCHANGE it swaps two existing names in one step."""
    oldp, newp = os.fspath(old), os.fspath(new)
    if _renameat2 is None:
        err = errno.ENOSYS
        raise OSError(
            err, f"renameat2: not in the C library ({os.uname().machine})", oldp, None, newp
        )
    ctypes.set_errno(0)
    if _renameat2(olddirfd, os.fsencode(oldp), newdirfd, os.fsencode(newp), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2: {os.strerror(err)}", oldp, None, newp)
