"""Durable file publishing (temp name in the same directory, fsync, rename, fsync the
directory), and removing a tree of any depth."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

# Leftovers of an interrupted write carry this marker, so a cleanup can find them.
TEMP_MARKER = ".cfsboot-tmp-"


def temp_name(final_name: str) -> str:
    """A unique hidden name next to `final_name` for writing before the rename."""
    return f".{final_name}{TEMP_MARKER}{os.urandom(6).hex()}"


def link_fd(fd: int, dst: str | os.PathLike[str]) -> None:
    """linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N: give an O_TMPFILE file a name.

    os.link() only calls linkat() (not link()) when a dir fd is given; link()
    would try to hardlink the /proc symlink itself and fail with EXDEV.
    """
    os.link(f"/proc/self/fd/{fd}", dst, src_dir_fd=fd, follow_symlinks=True)


def umask_hides(mode: int) -> bool:
    """Would the umask take bits from `mode` (or is it unknown)? Read, not set: os.umask()
    would race with other threads. Asked at a first write, never by a reader (status)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return (mode & ~int(line.split()[1], 8)) != mode
    except (OSError, ValueError):
        pass
    return True


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


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove `path` and everything below it, as `rm -rf` does; nothing if it is not there.

    Unlike Python 3.11's shutil.rmtree this keeps its own stack and works relative to one
    open directory at a time, so neither the depth of the tree (a hostile image's /etc)
    nor the length of its paths is limited. Symlinks are removed, never followed;
    directories we may not enter or change (an overlay's 0000 work dir) are made ours first.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    if st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(path, stat.S_IRWXU)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        below: list[str] = []  # the names from `path` down to the directory `fd` is
        pending = [_clear_files(fd)]  # per level: the subdirectories left to remove
        while pending:
            if pending[-1]:
                name = pending[-1].pop()
                child = os.open(name, flags, dir_fd=fd)
                os.close(fd)
                fd = child
                below.append(name)
                pending.append(_clear_files(fd))
                continue
            pending.pop()
            if below:
                parent = os.open("..", flags, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(below.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear_files(fd: int) -> list[str]:
    """Unlink every entry of the directory `fd` that is not a directory; the others' names."""
    dirs = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mode & stat.S_IRWXU != stat.S_IRWXU:
                    os.chmod(entry.name, stat.S_IRWXU, dir_fd=fd)
                dirs.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return dirs
