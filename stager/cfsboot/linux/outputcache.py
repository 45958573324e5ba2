"""A command's output kept while everything it read stays as it was.

`cfsboot status --json` is what monitoring runs most, and nearly all of its cost is
importing the code that works the status out (45 of 54 ms). A run from the command
line is *recorded*: every path it opens, lists, stats or reads a link of (an audit
hook sees opens, listings and ioctls; os.stat, lstat, access and readlink are wrapped
while it runs) is noted with its state when the command looked: device, inode, mode,
links, rdev, size, mtime and ctime; for /proc and /sys, whose times mean nothing, the
bytes, listings and link targets; the errno where it could not be read; the read-only
ioctls in READ_ONLY_IOCTLS are replayed. A later run with the same key (command line,
working directory, user and groups, interpreter and search path, stdout's encoding,
version, CFSBOOT_* environment, kernel release) checks every note (and the files of
cfsboot's modules), importing only os and sys, and prints the kept output when each
is as it was; otherwise the command runs and is recorded anew.

Nothing is kept of a run that wrote to stderr (each run prints its warnings), failed,
started a process, wrote, renamed or removed anything, read a device, used a path by
descriptor, raised an audit event not known here, or noted a time within RACY_NS of
its start (a change within a timestamp's granularity, 2 s on FAT, could leave every
stat as it was: git's "racily clean" index entries). The record lives under the run
directory (tmpfs), mode 0600 in a directory no one else can write to; one that is not
so, or cannot be parsed, is ignored. CFSBOOT_OUTPUT_CACHE=0 turns this off (cfsboot.cli);
CFSBOOT_OUTPUT_CACHE_RACY_MS sets the racy window (tests).
"""

from __future__ import annotations

import os
import sys
import time  # built in: no import cost

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

MAGIC = b"cfsboot-output-cache 1"
ENV_RACY = "CFSBOOT_OUTPUT_CACHE_RACY_MS"
RACY_NS = 3_000_000_000  # FAT keeps times to 2 s; a margin over that
# Pseudo-filesystems whose times and inode numbers say nothing about their contents.
PSEUDO = ("/proc/", "/sys/")
CONTENT_LIMIT = 1 << 20  # a bigger /proc or /sys file is not recorded
MAX_RECORDS = 16  # a user's records kept in one directory, the newest
# ioctls that only read (replayed on each check): FS_IOC_MEASURE_VERITY, FS_IOC_GETFLAGS.
READ_ONLY_IOCTLS = frozenset({0xC0046686, 0x80086601})
# Audit events that read nothing and change nothing the output could depend on.
HARMLESS = frozenset(
    {
        "exec", "compile", "import", "marshal.loads", "marshal.load", "marshal.dumps",
        "builtins.id", "object.__getattr__", "object.__setattr__", "object.__delattr__",
        "sys._getframe", "sys._current_frames", "code.__new__", "function.__new__",
        "pathlib.Path.glob", "pathlib.Path.rglob", "glob.glob", "glob.glob/2", "os.walk",
        "os.putenv", "os.unsetenv", "fcntl.flock", "fcntl.lockf", "fcntl.fcntl",
        "os.lockf", "time.sleep", "locale.setlocale", "array.__new__", "sys.excepthook",
        "_thread.start_new_thread", "gc.get_referrers", "gc.get_referents", "gc.get_objects",
        "cpython.run_command", "cpython.run_module", "cpython._PySys_ClearAuditHooks",
    }
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def cache_file(run_dir: str | None, key: bytes) -> str:
    """Where the record of a key lives: under --run-dir when given, else /run/cfsboot,
    named by the user and a hash of the key (monitoring may run several commands)."""
    base = os.path.join(run_dir, "cfsboot") if run_dir else "/run/cfsboot"
    return os.path.join(base, f"output.{os.geteuid()}.{_fnv1a(key):016x}")


def _fnv1a(data: bytes) -> int:
    """64-bit FNV-1a: a name for a key, not a check (the record holds the key itself)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def make_key(parts: Sequence[str]) -> bytes:
    """The key of a run: `parts` (the command line and the caller's version) and what
    else decides its output besides the files it reads."""
    env = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("CFSBOOT_"))
    fields = [
        *parts, "\0cwd", os.getcwd(), "\0ids", str(os.geteuid()), str(os.getegid()),
        *map(str, sorted(os.getgroups())), "\0python", sys.executable, *sys.path,
        "\0stdout", str(getattr(sys.stdout, "encoding", None)),
        str(getattr(sys.stdout, "errors", None)),
        "\0kernel", os.uname().release, "\0env", *env,
    ]  # fmt: skip
    return "\0".join(fields).encode("utf-8", "surrogateescape").hex().encode()


# -- checking a record -------------------------------------------------------------------


def lookup(path: str, key: bytes) -> bytes | None:
    """The recorded output for `key`, if the record at `path` is trustworthy and every
    path it noted is as it was; None otherwise."""
    try:
        data = _read_trusted(path)
    except OSError:
        return None
    if data is None:
        return None
    head, sep, output = data.partition(b"\n\n")
    lines = head.split(b"\n")
    if not sep or len(lines) < 2 or lines[0] != MAGIC or lines[1] != key:
        return None
    try:
        for line in lines[2:]:
            kind, hexpath, state = line.split(b" ", 2)
            if observe(kind, os.fsdecode(bytes.fromhex(hexpath.decode()))) != state:
                return None
    except ValueError:  # a damaged record
        return None
    return output


def _private_dir(base: str) -> bool:
    """Is `base` a directory (not a link) that only the user (or root) can write to?"""
    st = os.lstat(base)
    if (st.st_mode & 0o170000) != 0o040000 or st.st_mode & 0o022:
        return False
    return st.st_uid in (os.geteuid(), 0)


def _read_trusted(path: str) -> bytes | None:
    if not _private_dir(os.path.dirname(path)):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or (st.st_mode & 0o170000) != 0o100000:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def observe(kind: bytes, path: str) -> bytes:
    """A path's state as a record line holds it (kind: s stat, l lstat, c contents,
    d listing, r link target, i:REQUEST:ARG an ioctl's result)."""
    try:
        if kind == b"s" or kind == b"l":
            st = os.stat(path) if kind == b"s" else os.lstat(path)
            return _stat_state(path, st)
        if kind == b"c":
            return _contents(path).hex().encode()
        if kind == b"d":
            return b"\0".join(sorted(map(os.fsencode, os.listdir(path)))).hex().encode()
        if kind == b"r":
            return os.fsencode(os.readlink(path)).hex().encode()
        if kind.startswith(b"i:"):
            _, request, arg = kind.split(b":")
            return _ioctl(path, int(request), bytes.fromhex(arg.decode())).hex().encode()
    except OSError as e:
        return b"E%d" % (e.errno or 0)
    raise ValueError(f"unknown record kind {kind!r}")


def _stat_state(path: str, st: os.stat_result) -> bytes:
    if path.startswith(PSEUDO):  # times and inodes mean nothing there: type and size
        return b"%o.%d" % (st.st_mode & 0o170000, st.st_size)
    return b"%d.%d.%o.%d.%d.%d.%d.%d" % (
        st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_rdev, st.st_size,
        st.st_mtime_ns, st.st_ctime_ns,
    )  # fmt: skip


def _contents(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > CONTENT_LIMIT:
                raise OSError(27, "too big to keep")  # EFBIG
        return b"".join(chunks)
    finally:
        os.close(fd)


def _ioctl(path: str, request: int, arg: bytes) -> bytes:
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        buf = bytearray(arg)
        fcntl.ioctl(fd, request, buf)
        return bytes(buf)
    finally:
        os.close(fd)


# -- recording a run ---------------------------------------------------------------------


class Recorder:
    """Notes what a command reads while `run` runs it, and writes the record when the
    run could be recorded (see the module's docstring)."""

    def __init__(self, path: str, key: bytes) -> None:
        self.path, self.key = path, key
        self.notes: dict[tuple[bytes, str], bytes] = {}
        self.refused: str | None = None  # why this run is not recorded
        self.start_ns = 0
        self.racy_ns = _racy_ns()
        self._active = self._busy = False

    def run(self, func: Callable[[], int]) -> int:
        """func(), recorded; its exit status."""
        out, err = sys.stdout, sys.stderr
        tee, watch = _Tee(out, self), _Watch(err, self)
        sys.stdout, sys.stderr = tee, watch
        # Logging configured before the run holds stderr itself: watched the same way.
        handlers = _stderr_handlers(err)
        for handler in handlers:
            handler.setStream(watch)
        saved = {
            n: getattr(os, n) for n in ("stat", "lstat", "access", "readlink", "open", "statvfs")
        }
        os.stat, os.access = (
            self._wrap_stat(saved["stat"], b"s"),
            self._wrap_stat(saved["access"], b"s"),
        )
        os.lstat = self._wrap_stat(saved["lstat"], b"l")
        os.readlink, os.open = (
            self._wrap_readlink(saved["readlink"]),
            self._wrap_open(saved["open"]),
        )
        os.statvfs = self._wrap_statvfs(saved["statvfs"])
        self.start_ns = time.time_ns()
        self._active = True
        sys.addaudithook(self._hook)  # hooks cannot be removed: _active turns it off
        try:
            status = func()
        finally:
            self._active = False
            # The code that printed it: cfsboot's modules imported before the run too.
            for name, module in list(sys.modules.items()):
                if name.split(".")[0] in ("cfsboot", "setuproot"):
                    file = getattr(module, "__file__", None)
                    if file:
                        self.note("stat", file)
            for name, fn in saved.items():
                setattr(os, name, fn)
            sys.stdout, sys.stderr = out, err
            for handler in handlers:
                handler.setStream(err)
        if status == 0 and self.refused is None:
            out.flush()
            text = "".join(tee.parts)
            try:
                self.save(text.encode(out.encoding or "utf-8", out.errors or "strict"))
            except Exception:  # noqa: BLE001, S110 - the command succeeded: a record is a bonus
                pass
        return status

    # what the command does

    def refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    def note(self, op: str, path: Any, *, follow: bool = True) -> None:
        """Note `path`'s state now, before the command reads it (op: open, list, stat,
        link). Never raises: what cannot be noted makes the run unrecordable, and the
        command goes on as it would unrecorded."""
        try:
            self._note(op, path, follow)
        except Exception as e:  # noqa: BLE001 - a recorder's fault must not become the command's
            self.refuse(f"cannot note {path!r}: {e}")

    def _note(self, op: str, path: Any, follow: bool) -> None:
        if isinstance(path, int) or path is None:
            self.refuse("a path used by file descriptor")
            return
        path = os.path.abspath(os.fsdecode(path))
        if op == "stat" or not path.startswith(PSEUDO):
            kind = b"s" if follow else b"l"
        else:
            kind = {"open": b"c", "list": b"d", "link": b"r"}[op]
        if (kind, path) in self.notes:
            return
        state = self.notes[(kind, path)] = self._observe(kind, path)
        if state == b"E27":  # EFBIG: contents past CONTENT_LIMIT, not kept to compare
            self.refuse(f"{path}: too big to keep")
        if op == "open" and kind == b"s" and state[:1] != b"E" and not path.startswith(PSEUDO):
            mode = int(state.split(b".")[2], 8) & 0o170000
            if mode not in (0o100000, 0o040000):  # read: a file or a directory
                # A device's (a disk's, an ESP's) contents change without a trace in its
                # node's times; a FIFO or socket has no contents to keep. (A stat of one,
                # to learn which device it is, is noted like any other.)
                self.refuse(f"{path}: not a file or directory")

    def _observe(self, kind: bytes, path: str) -> bytes:
        self._busy = True
        try:
            return observe(kind, path)
        finally:
            self._busy = False

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self._active or self._busy or event in HARMLESS:
            return
        try:
            self._event(event, args)
        except Exception as e:  # noqa: BLE001 - an exception here would fail the command's call
            self.refuse(f"audit event {event}: {e}")

    def _event(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or flags & _WRITE_FLAGS:
                self.refuse(f"a write to {path}")
            elif not isinstance(path, int):  # int: os.fdopen of an fd opened already
                self.note("open", path, follow=not flags & os.O_NOFOLLOW)
        elif event in ("os.listdir", "os.scandir"):
            self.note("list", "." if args[0] is None else args[0])
        elif event in ("os.getxattr", "os.listxattr"):
            self.note("stat", "." if args[0] is None else args[0])
        elif event == "fcntl.ioctl":
            self._note_ioctl(*args)
        else:
            self.refuse(f"audit event {event}")

    def _note_ioctl(self, fd: int, request: int, arg: Any) -> None:
        if request not in READ_ONLY_IOCTLS or not isinstance(arg, (bytes, bytearray)):
            self.refuse(f"ioctl {request:#x}")
            return
        self._busy = True  # the readlink is this module's, not the command's
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        finally:
            self._busy = False
        if not path.startswith("/") or path.startswith(PSEUDO):
            self.refuse(f"ioctl {request:#x} on {path or fd}")
            return
        kind = b"i:%d:%s" % (request, bytes(arg).hex().encode())
        self.notes[(kind, path)] = self._observe(kind, path)

    def _wrap_stat(self, real: Callable[..., Any], kind: bytes) -> Callable[..., Any]:
        def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
            if self._active and not self._busy:
                if kwargs.get("dir_fd") is not None:
                    self.refuse("a stat by directory descriptor")
                elif not isinstance(path, int):  # an fd: fstat of a file opened already
                    follow = kind == b"s" and kwargs.get("follow_symlinks", True)
                    self.note("stat", path, follow=follow)
            return real(path, *args, **kwargs)

        return stat

    def _wrap_readlink(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def readlink(path: Any, **kwargs: Any) -> Any:
            if self._active and not self._busy:
                if kwargs.get("dir_fd") is not None:
                    self.refuse("a readlink by directory descriptor")
                else:
                    self.note("link", path, follow=False)
            return real(path, **kwargs)

        return readlink

    def _wrap_statvfs(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def statvfs(path: Any) -> Any:
            if self._active and not self._busy:
                self.refuse("free space read (it changes without a trace in any stat)")
            return real(path)

        return statvfs

    def _wrap_open(self, real: Callable[..., int]) -> Callable[..., int]:
        def open_(path: Any, *args: Any, **kwargs: Any) -> int:
            if self._active and not self._busy and kwargs.get("dir_fd") is not None:
                self.refuse("an open by directory descriptor")
            return real(path, *args, **kwargs)

        return open_

    # the record

    def save(self, output: bytes) -> bool:
        """Write the record (atomically); False when the run is racy or cannot be saved."""
        edge = self.start_ns - self.racy_ns
        for (kind, path), state in self.notes.items():
            if kind in (b"s", b"l") and not path.startswith(PSEUDO) and state[:1] != b"E":
                mtime, ctime = state.split(b".")[-2:]
                if max(int(mtime), int(ctime)) >= edge:
                    return False
        lines = [MAGIC, self.key]
        lines += [
            b"%s %s %s" % (k, os.fsencode(p).hex().encode(), s) for (k, p), s in self.notes.items()
        ]
        data = b"\n".join(lines) + b"\n\n" + output
        return _write_private(self.path, data)


def _write_private(path: str, data: bytes) -> bool:
    """Write `path` (mode 0600) by a temporary name and a rename, in a directory of the
    user's own (made 0700 if missing); False if that cannot be done safely."""
    base = os.path.dirname(path)
    try:
        try:
            os.mkdir(base, 0o700)
        except FileExistsError:
            pass
        if not _private_dir(base):
            return False
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _prune(base, os.path.basename(path).rsplit(".", 1)[0] + ".")
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
        return False
    return True


def _prune(base: str, prefix: str) -> None:
    """Keep the MAX_RECORDS newest records of a user."""
    names = [n for n in os.listdir(base) if n.startswith(prefix) and not n.endswith(".tmp")]
    if len(names) <= MAX_RECORDS:
        return
    aged = sorted(names, key=lambda n: os.lstat(os.path.join(base, n)).st_mtime_ns)
    for name in aged[: len(names) - MAX_RECORDS]:
        try:
            os.unlink(os.path.join(base, name))
        except FileNotFoundError:
            pass


def _stderr_handlers(err: Any) -> list[Any]:
    """The root logger's handlers that write to `err` (logging.basicConfig's), when logging
    is imported already; a run imports it only to log."""
    logging = sys.modules.get("logging")
    if logging is None:
        return []
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is err
    ]


def _racy_ns() -> int:
    try:
        return int(os.environ[ENV_RACY]) * 1_000_000
    except (KeyError, ValueError):
        return RACY_NS


class _Tee:
    """sys.stdout while a run is recorded: what is written is kept, and written on. A run
    that writes past it (to its buffer or descriptor) is not recorded."""

    def __init__(self, out: Any, recorder: Recorder) -> None:
        self._out, self._recorder = out, recorder
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        written: int = self._out.write(text)
        return written

    def __getattr__(self, name: str) -> Any:
        if name in ("buffer", "fileno", "detach", "raw"):
            self._recorder.refuse(f"stdout's {name} used")
        return getattr(self._out, name)


class _Watch:
    """sys.stderr while a run is recorded: a run that writes to it is not recorded."""

    def __init__(self, err: Any, recorder: Recorder) -> None:
        self._err, self._recorder = err, recorder

    def write(self, text: str) -> int:
        if text:
            self._recorder.refuse("output on stderr")
        written: int = self._err.write(text)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._err, name)
