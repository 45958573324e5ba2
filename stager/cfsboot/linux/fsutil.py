"""Durable file publishing: temp name in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Leftovers of an interrupted write carry this marker, so a cleanup can find them.
TEMP_MARKER = ".cfsboot-tmp-"


def temp_name(final_name: str) -> str:
    """A unique hidden name next to `final_name` for writing before the rename."""
    return f".{final_name}{TEMP_MARKER}{os.urandom(6).hex()}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that entries created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(
    target: Path,
    mode: int | None,
    fill: Callable[[int], None],
    seal: Callable[[Path], None] | None = None,
) -> None:
    """Write through `fill` under a temp name, fsync, `seal(temp path)`, rename, fsync the dir."""
    tmp = target.parent / temp_name(target.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        if seal is not None:
            seal(tmp)  # e.g. enable fs-verity: no writable descriptor may be open
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_file_atomic(
    path: str | os.PathLike[str],
    data: bytes | bytearray,
    mode: int | None = 0o644,
    *,
    seal: Callable[[Path], None] | None = None,
) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never half.

    `mode` is applied with fchmod (independent of the umask); None keeps the
    filesystem's default, for filesystems without modes such as vfat. `seal`
    is called with the synced temporary file just before it gets its name.
    """

    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    _publish(Path(path), mode, fill, seal)


def copy_file_atomic(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: int | None = 0o644
) -> None:
    """Like write_file_atomic, with the contents streamed from the file `src` (kernels, UKIs)."""

    import shutil  # only here: it imports bz2 and lzma, a cost to every `cfsboot status`

    def fill(fd: int) -> None:
        with open(src, "rb") as fsrc, os.fdopen(os.dup(fd), "wb") as fdst:
            shutil.copyfileobj(fsrc, fdst, 1 << 20)

    _publish(Path(dst), mode, fill)
