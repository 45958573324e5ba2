"""The fuzzing harness: run a parser on hostile bytes and judge what it did.

A target is a function of bytes. It passes an input when it returns, or raises one
of the exceptions it documents (our one-line CfsbootError family, or a parser's
own ValueError subclass); it fails on any other exception, on a hang (a watchdog
turns one into `Hang`), and on a write outside the temporary directory it runs in
(an audit hook sees every open for writing, mkdir, rename, unlink, ...).

The same targets run under hypothesis (tests/fuzz, bounded in `make test`, longer
in `make fuzz` through CFSBOOT_FUZZ_SCALE) and under atheris (tests/fuzz/atheris_run.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# How long one input may take before it counts as a hang: generous (a loaded 2-core
# machine), since a real hang is endless. A watchdog, not a timing assertion.
HANG_SECONDS = 60


class Hang(Exception):
    """A target ran past the watchdog on one input."""


class Escape(Exception):
    """A target wrote outside its temporary directory."""


def scale() -> int:
    """CFSBOOT_FUZZ_SCALE: how many times the `make test` examples `make fuzz` runs."""
    try:
        return max(1, int(os.environ.get("CFSBOOT_FUZZ_SCALE", "1")))
    except ValueError:
        return 1


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz target: `examples` in `make test`, scaled in `make fuzz`."""
    return settings(
        max_examples=examples * scale(),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# --------------------------------------------------------------------------- watchdog


@contextlib.contextmanager
def watchdog(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Raise Hang in the main thread if the block runs longer than `seconds`."""

    def fire(_sig: int, _frame: FrameType | None) -> None:
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- confinement

# Audit events that change the filesystem, and which of their arguments is the path.
_PATH_EVENTS = {
    "os.mkdir": 0,
    "os.remove": 0,
    "os.rmdir": 0,
    "os.truncate": 0,
    "os.chmod": 0,
    "os.chown": 0,
    "os.utime": 0,
    "os.mkfifo": 0,
    "os.mknod": 0,
    "os.setxattr": 0,
    "os.removexattr": 0,
    "shutil.rmtree": 0,
    "os.symlink": 1,
    "os.link": 1,
    "os.rename": 0,  # and os.replace: source and destination both checked below
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass
class _Confinement:
    root: str | None = None
    escapes: list[str] = field(default_factory=list)


_CONFINE = _Confinement()
_HOOKED = False


def _inside(path: object) -> bool:
    assert _CONFINE.root is not None
    if isinstance(path, int):  # an fd: what it names
        try:
            path = os.readlink(f"/proc/self/fd/{path}")
        except OSError:
            return True
    if not isinstance(path, str | bytes | os.PathLike):
        return True
    p = os.path.abspath(os.fsdecode(path))
    return p == _CONFINE.root or p.startswith(_CONFINE.root + os.sep)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _CONFINE.root is None:
        return
    paths: list[object] = []
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and path is not None:
            paths.append(path)
    elif event in _PATH_EVENTS:
        if len(args) > 2 and event in ("os.mkdir", "os.rename", "os.symlink", "os.link"):
            if any(isinstance(a, int) and a >= 0 for a in args[-2:]):
                return  # dir_fd-relative: the harness only runs targets that use paths
        paths.append(args[_PATH_EVENTS[event]])
        if event == "os.rename":
            paths.append(args[1])
    for p in paths:
        if not _inside(p):
            _CONFINE.escapes.append(f"{event} {p!r}")


@contextlib.contextmanager
def confined(root: Path) -> Iterator[list[str]]:
    """Record (in the yielded list) every filesystem change outside `root` in the block."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: one, switched by _CONFINE
        _HOOKED = True
    _CONFINE.root = os.path.realpath(root)
    _CONFINE.escapes = []
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield _CONFINE.escapes
    finally:
        _CONFINE.root = None
        os.chdir(cwd)


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A parser under fuzzing: `run(data, tmp)` and what it may raise."""

    name: str
    run: Callable[[bytes, Path], None]
    allowed: tuple[type[BaseException], ...]
    seeds: Sequence[bytes]
    tokens: Sequence[bytes] = ()
    # Crashes already pinned as strict xfail regression tests, whose fix belongs to
    # another branch: (exception type, text in its message). Tolerated here so the
    # target keeps looking for others; the xfail test fails once they are fixed.
    known: Sequence[tuple[type[BaseException], str]] = ()


def check(target: Target, data: bytes, tmp: Path) -> None:
    """Run `target` on `data` in `tmp`: documented errors pass, anything else is raised."""
    with confined(tmp) as escapes, watchdog():
        try:
            target.run(data, tmp)
        except target.allowed:
            pass
        except BaseException as e:
            if not any(isinstance(e, t) and text in str(e) for t, text in target.known):
                raise
    if escapes:
        raise Escape(f"{target.name} wrote outside {tmp}: {escapes[:3]}")


# --------------------------------------------------------------------------- mutations

# Values that have broken parsers before: huge numbers, separators, quotes, escapes.
HOSTILE = (
    b"9" * 5000,
    b"-0",
    b"18446744073709551615",
    b"0x10",
    b"\n",
    b"\r",
    b"\0",
    b"\t",
    b'"',
    b"'",
    b"\\",
    b"$",
    b";",
    b"../",
    b"/",
    b"=",
    b" ",
    b"\xff\xfe",
    b"\xc3",
    b"[",
    b"]",
    b"{",
    b"}",
    b"#",
    b"%",
    b"\x1b[2J",
    b"[" * 3000,
    b"{" * 3000,
    b'{"a":' * 3000,
)


_SEPARATORS = frozenset(b"=:, [{\n\t\"'")


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], tokens: Sequence[bytes] = ()) -> bytes:
    """One of `seeds` with a few random edits: flips, cuts, duplicates, hostile tokens."""
    data = bytearray(draw(st.sampled_from(list(seeds))))
    pool = list(HOSTILE) + list(tokens)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 6))
        at = draw(st.integers(0, len(data)))
        if op == 6:  # a hostile token where a value starts: after a separator
            seps = [i + 1 for i, c in enumerate(data) if c in _SEPARATORS]
            if seps:
                at = draw(st.sampled_from(seps))
            data[at:at] = draw(st.sampled_from(pool))
        elif op == 0 and data and at < len(data):  # flip a byte
            data[at] = draw(st.integers(0, 255))
        elif op == 1:  # cut a span
            end = draw(st.integers(at, min(len(data), at + 64)))
            del data[at:end]
        elif op == 2:  # insert a hostile token
            data[at:at] = draw(st.sampled_from(pool))
        elif op == 3:  # duplicate a span elsewhere
            end = draw(st.integers(at, min(len(data), at + 128)))
            to = draw(st.integers(0, len(data)))
            data[to:to] = data[at:end]
        elif op == 4:  # replace a span with random bytes
            end = draw(st.integers(at, min(len(data), at + 16)))
            data[at:end] = draw(st.binary(max_size=16))
        else:  # truncate
            del data[at:]
    return bytes(data)


def inputs(target: Target) -> st.SearchStrategy[bytes]:
    """What hypothesis feeds a target: mostly mutated seeds, sometimes raw bytes."""
    return st.one_of(
        mutated(target.seeds, target.tokens),
        mutated(target.seeds, target.tokens),
        mutated(target.seeds, target.tokens),
        st.binary(max_size=2048),
    )
