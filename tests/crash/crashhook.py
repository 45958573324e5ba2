"""Kill cfsboot at its Nth write step: the crash points of the crash-safety tests.

Installed in a cfsboot process before `cfsboot.cli.main` runs: `python
crashhook.py ARGV...` runs one command, `python crashhook.py --serve` is a fork
server that runs many (see `serve()`). Configured by environment:

    CFSBOOT_CRASH_AT     N: SIGKILL this process at crash point N (1-based); 0: only count
    CFSBOOT_CRASH_TRACE  a file the points are appended to, one line each
                         (`N<TAB>before|after|at<TAB>op<TAB>what<TAB>fingerprint`, and
                         `-<TAB>failed<TAB>op<TAB>error<TAB>-` after a step that raised)
    CFSBOOT_CRASH_ROOTS  colon-separated directories and files (sysroot, ESP directory or
                         FAT image, run directory): only steps that touch them count
    CFSBOOT_CRASH_FINGERPRINT  1: add a digest of the roots' contents at each point to the
                         trace, so that points leaving the same disk can be told apart

A *step* is one primitive the deployment code uses to change what is on disk
for good, wrapped where every caller reaches it:

- namespace changes: os.rename, os.replace, os.link (O_TMPFILE objects are
  published with linkat), os.symlink, os.unlink, os.remove, os.rmdir, os.mkdir
  (shutil.rmtree removes through os.unlink/os.rmdir, so every file of a removed
  tree is a step of its own), and cfsboot.linux.syscalls' renameat2 (RENAME_EXCHANGE
  of the boot menus);
- durability barriers: os.fsync, os.sync, and syncfs(2) (cfsboot.composefs.objectstore's
  ctypes call, which extract, etcmerge and the object store share);
- the FAT directory edits of cfsboot.boot.fat (`FatFs._write_sector`: one sector
  pwrite and its fsync);
- external commands that write the ESP image (subprocess.run, which
  cfsboot.linux.run.run calls): mcopy to a `::` destination, mren, mdel, mdeltree,
  mmd, mmove. Reads (mdir, mcopy to stdout) are not steps.

Every step has a crash point just before and one just after it, so "after
step i" and "before step i+1" bracket whatever unsynced work happens between
two durable steps. A barrier changes nothing a process can see, so it has a
single point ("at"); so has nothing inside a FAT sector edit (its pwrite is done
when its fsync comes, and a kill cannot tell the two apart).

Why a process kill models a power cut here: cfsboot's rule is that every step
a boot depends on is durable (fsynced, or covered by a syncfs) before the next
one is taken, and that data is only ever published by a rename, link or
exchange after it was synced. Under that rule the disk after a power cut
between two steps holds exactly what it held when the earlier step completed,
plus unsynced writes to names nothing boots from (temporary names, staging
directories, a staged menu), which is the state a kill at that point leaves
as well, up to those unsynced writes being complete rather than torn.

What it does not cover: (1) a kill cannot lose data the page cache holds, so
a *missing* fsync (a rename of a file whose data was never synced, a directory
never fsynced after a rename) is invisible to it; the trace makes such gaps
reviewable but nothing here drops unsynced writes. (2) A power cut *inside* an
mtools command: mtools writes the FAT, the directory and the data of one
command in its own order without syncing, and cfsboot only fsyncs the image
between commands, so a torn mcopy/mren is not modelled (the replace protocol
assumes each command lands whole). (3) A torn sector: fat.py relies on a
sector write being atomic. (4) Reordering by the disk of writes that were
already fsynced is ruled out by assumption (disks honour flushes).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_AT = "CFSBOOT_CRASH_AT"
ENV_TRACE = "CFSBOOT_CRASH_TRACE"
ENV_ROOTS = "CFSBOOT_CRASH_ROOTS"
ENV_FINGERPRINT = "CFSBOOT_CRASH_FINGERPRINT"
# Files bigger than this are not hashed for a point's fingerprint (see _state).
BIG_FILE = 1 << 20

# mtools commands that write; mcopy writes only when its destination is on the image (::).
MTOOLS_WRITERS = frozenset({"mren", "mdel", "mdeltree", "mmd", "mmove"})
# Steps that change nothing a process can see: "before" and "after" them are one state.
BARRIERS = frozenset({"fsync", "sync", "syncfs"})


class _Counter:
    def __init__(
        self, crash_at: int, trace: str | None, roots: Sequence[str], *, fingerprint: bool
    ) -> None:
        self.crash_at = crash_at
        self.roots = tuple(os.path.realpath(r) for r in roots)
        self.fingerprint = fingerprint
        self.point = 0
        self.image_writes = 0  # completed mtools writes and sector edits (see _state)
        # Inside one: its own fsync is no point of its own (the sector is written already,
        # and a kill cannot tell synced from unsynced), and the fingerprint would miss it.
        self.in_image_write = 0
        self.lock = threading.RLock()
        self.trace_fd = (
            os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            if trace
            else -1
        )

    def watched(self, *paths: str | None) -> bool:
        """Does any of the (absolute) paths lie in one of the roots?"""
        if not self.roots:
            return True
        for p in paths:
            if p is None:
                continue
            for r in self.roots:
                if p == r or p.startswith(r.rstrip("/") + "/"):
                    return True
        return False

    def _write(self, line: str) -> None:
        if self.trace_fd >= 0:
            os.write(self.trace_fd, line.encode(errors="surrogateescape"))

    def mark(self, when: str, op: str, what: str) -> None:
        with self.lock:
            if self.in_image_write:
                return
            self.point += 1
            n = self.point
            state = _state(self.roots, self.image_writes) if self.fingerprint else "-"
            self._write(f"{n}\t{when}\t{op}\t{what}\t{state}\n")
            if n == self.crash_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def step(self, op: str, what: str, call: Callable[[], Any], *, image: bool = False) -> Any:
        self.mark("before", op, what)
        self.in_image_write += image
        try:
            result = call()
        except BaseException as e:
            # Not a point: the step changed nothing, the next point follows.
            self._write(f"-\tfailed\t{op}\t{type(e).__name__}\t-\n")
            raise
        finally:
            self.in_image_write -= image
        if image:
            self.image_writes += 1
        self.mark("after", op, what)
        return result


def _state(roots: Sequence[str], image_writes: int) -> str:
    """A digest of what the roots hold now: names, types, modes, sizes, contents, link targets.

    Two points with the same digest leave the same disk behind, so a test may crash at
    one of them only. Big files (the FAT image) are not read: every write to them is a
    step, so the number of completed image writes stands for their content.
    """
    h = hashlib.sha256()
    for root in roots:
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            h.update(f"{root} missing\n".encode())
            continue
        if not stat.S_ISDIR(st.st_mode):
            h.update(f"{root} {st.st_size} {image_writes}\n".encode())
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*sorted(dirnames), *sorted(filenames)]:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                h.update(f"{path} {st.st_mode:o} {st.st_size}".encode(errors="surrogateescape"))
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.fsencode(os.readlink(path)))
                elif stat.S_ISREG(st.st_mode):
                    if st.st_size > BIG_FILE:
                        h.update(f" {image_writes}".encode())
                    else:
                        with open(path, "rb") as f:
                            h.update(hashlib.sha256(f.read()).digest())
                h.update(b"\n")
    return h.hexdigest()[:32]


_counter: _Counter | None = None


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _abs(path: Any, dir_fd: int | None = None) -> str | None:
    """The absolute path a path argument names (relative to `dir_fd` when given)."""
    if isinstance(path, int):
        return _fd_path(path)
    try:
        p = os.fsdecode(path)
    except TypeError:
        return None
    if not os.path.isabs(p):
        base = _fd_path(dir_fd) if dir_fd is not None else os.getcwd()
        if base is None:
            return None
        p = os.path.join(base, p)
    # The parent resolved, the last component kept: links and renamed names stay themselves.
    head, tail = os.path.split(os.path.normpath(p))
    return os.path.join(os.path.realpath(head), tail)


def _wrap_path_op(name: str, nargs: int) -> None:
    """Wrap os.NAME, whose first `nargs` arguments are paths (dir fds in src_/dst_/dir_fd)."""
    real = getattr(os, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        c = _counter
        assert c is not None
        dir_fds = [kw.get("src_dir_fd", kw.get("dir_fd")), kw.get("dst_dir_fd", kw.get("dir_fd"))]
        paths = [_abs(a, dir_fds[i] if i < 2 else None) for i, a in enumerate(args[:nargs])]
        if name == "symlink":  # symlink(target, link): only the link is written
            paths = [_abs(args[1], kw.get("dir_fd"))] if len(args) > 1 else []
        if not c.watched(*paths):
            return real(*args, **kw)
        return c.step(name, " -> ".join(str(p) for p in paths), lambda: real(*args, **kw))

    setattr(wrapper, "__wrapped__", real)  # noqa: B010 - a plain function has no such field
    setattr(os, name, wrapper)
    # Callers that ask `os.unlink in os.supports_dir_fd` must get the same answer.
    for support in (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks):
        if real in support:
            support.add(wrapper)


def _wrap_fsync() -> None:
    real = os.fsync

    def fsync(fd: Any) -> None:
        c = _counter
        assert c is not None
        fileno = fd if isinstance(fd, int) else fd.fileno()
        path = _fd_path(fileno)
        if not c.watched(path):
            return real(fd)
        c.mark("at", "fsync", str(path))
        return real(fd)

    os.fsync = fsync

    real_sync = os.sync

    def sync() -> None:
        assert _counter is not None
        _counter.mark("at", "sync", "")
        real_sync()

    os.sync = sync


class _LibcProxy:
    """cfsboot.composefs.objectstore's ctypes libc, with syncfs counted."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._libc, name)

    def syncfs(self, fd: int) -> int:
        c = _counter
        assert c is not None
        path = _fd_path(fd)
        # syncfs flushes a whole filesystem: count it when a root is on it.
        if path is None or not any(_same_fs(path, r) for r in c.roots):
            return int(self._libc.syncfs(fd))
        c.mark("at", "syncfs", path)
        return int(self._libc.syncfs(fd))


def _same_fs(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _wrap_cfsboot() -> None:
    from cfsboot.boot import fat
    from cfsboot.composefs import objectstore
    from cfsboot.linux import syscalls

    setattr(objectstore, "_libc", _LibcProxy(objectstore._libc))  # noqa: B010 - a patch

    real_renameat2 = syscalls._renameat2
    assert real_renameat2 is not None

    def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        c = _counter
        assert c is not None
        a, b = _abs(old, olddirfd), _abs(new, newdirfd)
        if not c.watched(a, b):
            return real_renameat2(olddirfd, old, newdirfd, new, flags)
        what = f"{a} <-> {b}" if flags & syscalls.RENAME_EXCHANGE else f"{a} -> {b}"
        return int(
            c.step("renameat2", what, lambda: real_renameat2(olddirfd, old, newdirfd, new, flags))
        )

    syscalls._renameat2 = renameat2

    real_write_sector = fat.FatFs._write_sector

    def write_sector(self: fat.FatFs, sector: int, changes: Any) -> None:
        assert _counter is not None
        _counter.step(
            "fat-sector",
            f"{self.offset}+sector {sector}",
            lambda: real_write_sector(self, sector, changes),
            image=True,
        )

    setattr(fat.FatFs, "_write_sector", write_sector)  # noqa: B010 - a patch


def _wrap_subprocess() -> None:
    real = subprocess.run

    def run(args: Any, *a: Any, **kw: Any) -> Any:
        c = _counter
        assert c is not None
        argv = [os.fsdecode(x) for x in args] if isinstance(args, (list, tuple)) else []
        tool = os.path.basename(argv[0]) if argv else ""
        writes = tool in MTOOLS_WRITERS or (
            tool == "mcopy" and bool(argv) and argv[-1].startswith("::")
        )
        if not writes:
            return real(args, *a, **kw)
        return c.step(tool, " ".join(argv[1:]), lambda: real(args, *a, **kw), image=True)

    subprocess.run = run


def configure(env: Mapping[str, str]) -> None:
    """Start counting afresh with the settings in `env` (see the module docstring)."""
    global _counter
    roots = [r for r in env.get(ENV_ROOTS, "").split(":") if r]
    _counter = _Counter(
        int(env.get(ENV_AT, "0")),
        env.get(ENV_TRACE),
        roots,
        fingerprint=env.get(ENV_FINGERPRINT) == "1",
    )


_installed = False


def install() -> None:
    """Install the counting wrappers (once), configured from the environment."""
    global _installed
    configure(os.environ)
    if _installed:
        return
    _installed = True
    assert shutil.rmtree  # imported first: shutil picks its fd-based rmtree at import time
    for name, nargs in (
        ("rename", 2),
        ("replace", 2),
        ("link", 2),
        ("symlink", 2),
        ("unlink", 1),
        ("remove", 1),
        ("rmdir", 1),
        ("mkdir", 1),
    ):
        _wrap_path_op(name, nargs)
    _wrap_fsync()
    _wrap_subprocess()
    _wrap_cfsboot()


def main(argv: Sequence[str]) -> int:
    """`cfsboot ARGV` with the hook installed."""
    install()
    from cfsboot.cli import main as cfsboot_main

    return cfsboot_main(list(argv))


# A run that takes longer than this is stuck (the child gets SIGALRM).
CHILD_TIMEOUT = 120


def _child(req: dict[str, Any]) -> int:
    from cfsboot.cli import main as cfsboot_main

    out = os.open(req["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    signal.alarm(CHILD_TIMEOUT)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    configure(req["env"])
    try:
        return cfsboot_main(req["argv"])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve() -> None:
    """A fork server: import cfsboot once, then run each request in a child of its own.

    Requests are JSON lines on stdin ({"argv", "env", "cwd", "output"}); each answer is a
    JSON line {"status": exit code, or -signal} on stdout. Forking spares every crash
    point the half second Python takes to import cfsboot; each child still runs
    `cfsboot.cli.main` from the start, in a fresh process, with a fresh counter.
    """
    install()
    from cfsboot.cli import build_parser

    build_parser()  # imports every command module
    replies = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        replies.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(req)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        raise SystemExit(main(sys.argv[1:]))
