"""A command's kept output (cfsboot.linux.outputcache): printed again only while every
path the recorded run read is as it was, never when that run could not be recorded
whole, never from a record someone else could have written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot.linux import outputcache
from cfsboot.linux.outputcache import Recorder, lookup

KEY = outputcache.make_key(["test", "1"])
TICK = 0.03  # past the filesystem's timestamp granularity (a jiffy, 4-10 ms)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a").write_text("alpha\n")
    (tmp_path / "data/b").write_text("beta\n")
    (tmp_path / "link").symlink_to("data/a")
    (tmp_path / "run").mkdir()
    time.sleep(TICK)
    return tmp_path


def record(tree: Path, func: Callable[[], int], racy_ms: int = 0) -> tuple[str, bool]:
    """Run func recorded (its stdout dropped); the record's path and whether one was kept."""
    path = outputcache.cache_file(str(tree / "run"), KEY)
    rec = Recorder(path, KEY)
    rec.racy_ns = racy_ms * 1_000_000
    out = sys.stdout
    with open(os.devnull, "w") as sys.stdout:
        try:
            rec.run(func)
        finally:
            sys.stdout = out
    return path, os.path.exists(path)


def reader(tree: Path) -> Callable[[], int]:
    """A command that opens, lists, stats and follows links, and prints what it saw."""

    def command() -> int:
        print((tree / "data/a").read_text(), sorted(os.listdir(tree / "data")))
        print(os.path.exists(tree / "missing"), os.readlink(tree / "link"))
        print(Path(tree / "data/b").stat().st_size)
        return 0

    return command


def test_a_recorded_run_is_printed_again_while_nothing_changes(tree: Path) -> None:
    path, kept = record(tree, reader(tree))
    assert kept
    out = lookup(path, KEY)
    assert out is not None and out.startswith(b"alpha\n")
    assert lookup(path, KEY) == out
    assert lookup(path, outputcache.make_key(["test", "2"])) is None  # another command


def _rewrite_same_size(tree: Path) -> None:
    (tree / "data/a").write_text("ALPHA\n")


def _replace_by_rename(tree: Path) -> None:
    (tree / "new").write_text("alpha\n")
    os.rename(tree / "new", tree / "data/a")


def _relink(tree: Path) -> None:
    (tree / "link").unlink()
    (tree / "link").symlink_to("data/b")


MUTATIONS: dict[str, Callable[[Path], object]] = {
    "content of a read file, same size": _rewrite_same_size,
    "content of a read file, other size": lambda t: (t / "data/a").write_text("a\n"),
    "a file replaced by rename, same bytes": _replace_by_rename,
    "a new name in a listed directory": lambda t: (t / "data/c").write_text(""),
    "a missing path that appears": lambda t: (t / "missing").mkdir(),
    "a symlink pointed elsewhere": _relink,
    "a mode changed": lambda t: (t / "data/b").chmod(0o600),
    "a stat-only file grown": lambda t: (t / "data/b").write_text("beta, longer\n"),
    "a file's times set back": lambda t: os.utime(t / "data/b", (0, 0)),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_any_change_to_what_the_run_read_drops_the_record(
    tree: Path, mutate: Callable[[Path], object]
) -> None:
    path, kept = record(tree, reader(tree))
    assert kept and lookup(path, KEY) is not None
    time.sleep(TICK)
    mutate(tree)
    assert lookup(path, KEY) is None


def test_pseudo_files_are_compared_by_their_bytes(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc and /sys: times and inodes say nothing, the bytes and listings do."""
    pseudo = tree / "pseudo"
    (pseudo / "dir").mkdir(parents=True)
    (pseudo / "cmdline").write_text("root=x composefs=1\n")
    monkeypatch.setattr(outputcache, "PSEUDO", (f"{pseudo}/",))

    def command() -> int:
        print((pseudo / "cmdline").read_text(), os.listdir(pseudo / "dir"))
        return 0

    path, kept = record(tree, command)
    assert kept
    time.sleep(TICK)
    (pseudo / "cmdline").write_text("root=x composefs=1\n")  # new times, same bytes
    assert lookup(path, KEY) is not None
    (pseudo / "cmdline").write_text("root=x composefs=2\n")
    assert lookup(path, KEY) is None
    (pseudo / "cmdline").write_text("root=x composefs=1\n")
    (pseudo / "dir/var").write_text("")
    assert lookup(path, KEY) is None


def test_a_pseudo_file_too_big_to_keep_keeps_nothing(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "pseudo").mkdir()
    (tree / "pseudo/mountinfo").write_bytes(b"x" * 200)
    monkeypatch.setattr(outputcache, "PSEUDO", (f"{tree}/pseudo/",))
    monkeypatch.setattr(outputcache, "CONTENT_LIMIT", 100)
    _, kept = record(tree, lambda: len((tree / "pseudo/mountinfo").read_bytes()) * 0)
    assert not kept


def _stderr() -> int:
    sys.stderr.write("warning: something\n")
    return 0


def _write(tree: Path) -> int:
    (tree / "data/out").write_text("x")
    return 0


def _ioctl(tree: Path) -> int:
    import fcntl
    import termios

    with open(tree / "data/a", "rb") as f:
        try:
            fcntl.ioctl(f.fileno(), termios.FIONREAD, bytearray(4))
        except OSError:
            pass
    return 0


def _raise() -> int:
    raise RuntimeError("boom")


UNRECORDED: dict[str, Callable[[Path], int]] = {
    "it wrote to stderr": lambda t: _stderr(),
    "it failed": lambda t: 1,
    "it started a process": lambda t: subprocess.run(["true"], check=True).returncode,
    "it wrote a file": _write,
    "it renamed a file": lambda t: _then_0(os.rename, t / "data/b", t / "data/c"),
    "it changed directory": lambda t: _then_0(os.chdir, t),
    "an ioctl that is not known to only read": _ioctl,
    "it read free space": lambda t: os.statvfs(t) and 0,
    "it listed a directory by descriptor": lambda t: _list_fd(t),
    "it read a device": lambda t: len(Path("/dev/null").read_bytes()),
    "it read a FIFO": lambda t: _read_fifo(t),
    "it wrote past sys.stdout": lambda t: sys.stdout.buffer.write(b"x") * 0,
}


def _then_0(func: Callable[..., None], *args: object) -> int:
    func(*args)
    return 0


def _read_fifo(tree: Path) -> int:
    os.mkfifo(tree / "fifo")
    fd = os.open(tree / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)
    return 0


def _list_fd(tree: Path) -> int:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.listdir(fd)
    finally:
        os.close(fd)
    return 0


@pytest.mark.parametrize("command", UNRECORDED.values(), ids=UNRECORDED.keys())
def test_a_run_that_cannot_be_recorded_whole_keeps_nothing(
    tree: Path, command: Callable[[Path], int]
) -> None:
    cwd = os.getcwd()
    try:
        _, kept = record(tree, lambda: command(tree))
    finally:
        os.chdir(cwd)
    assert not kept


def test_a_warning_through_logging_configured_before_keeps_nothing(tree: Path) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        _, kept = record(tree, lambda: _then_0(logging.getLogger("cfsboot.x").warning, "w"))
    finally:
        root.removeHandler(handler)
    assert not kept
    assert handler.stream is sys.stderr


def test_what_cannot_be_noted_never_fails_the_command(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of the recorder (here: every observation raises) makes the run
    unrecordable; the command's own reads work as without it."""

    def broken(kind: bytes, path: str) -> bytes:
        raise RuntimeError("recorder bug")

    monkeypatch.setattr(outputcache, "observe", broken)
    seen: list[str] = []

    def command() -> int:
        seen.append((tree / "data/a").read_text())
        seen.append(str(sorted(os.listdir(tree / "data"))))
        seen.append(str(os.path.exists(tree / "missing")))
        return 0

    _, kept = record(tree, command)
    assert not kept
    assert seen == ["alpha\n", "['a', 'b']", "False"]


def test_an_exception_keeps_nothing_and_passes_through(tree: Path) -> None:
    with pytest.raises(RuntimeError):
        record(tree, _raise)
    assert not os.path.exists(outputcache.cache_file(str(tree / "run"), KEY))
    assert os.stat is not None and os.stat.__module__ in ("os", "posix")  # unwrapped again


def test_a_device_stat_is_noted_like_any_other(tree: Path) -> None:
    """Which device a node is (udev's /dev/disk/by-partuuid links, followed): kept."""
    (tree / "by-partuuid").mkdir()
    (tree / "by-partuuid/ABCD").symlink_to("/dev/null")

    def command() -> int:
        print(os.stat(tree / "by-partuuid/ABCD").st_rdev)
        return 0

    path, kept = record(tree, command)
    assert kept and lookup(path, KEY) is not None
    (tree / "by-partuuid/ABCD").unlink()
    (tree / "by-partuuid/ABCD").symlink_to("/dev/zero")
    assert lookup(path, KEY) is None


def test_the_code_that_printed_it_is_noted(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cfsboot's modules, also those imported before the run (cfsboot.cli): a changed
    module drops the record."""
    module = tree / "fake.py"
    module.write_text("")
    fake = type(sys)("cfsboot._fake_for_test")
    fake.__file__ = str(module)
    monkeypatch.setitem(sys.modules, "cfsboot._fake_for_test", fake)
    time.sleep(TICK)
    path, kept = record(tree, lambda: 0)
    assert kept and lookup(path, KEY) == b""
    module.write_text("X = 1\n")
    assert lookup(path, KEY) is None


def test_a_run_that_read_something_changed_just_now_keeps_nothing(tree: Path) -> None:
    """A change within a timestamp's granularity could leave every stat as it was."""
    (tree / "data/a").write_text("fresh\n")
    _, kept = record(tree, reader(tree), racy_ms=3000)
    assert not kept
    _, kept = record(tree, reader(tree), racy_ms=0)
    assert kept


def test_a_record_others_could_have_written_is_not_read(tree: Path) -> None:
    path, kept = record(tree, reader(tree))
    assert kept and lookup(path, KEY) is not None
    os.chmod(path, 0o620)
    assert lookup(path, KEY) is None
    os.chmod(path, 0o600)
    os.chmod(os.path.dirname(path), 0o777)
    assert lookup(path, KEY) is None
    os.chmod(os.path.dirname(path), 0o700)
    assert lookup(path, KEY) is not None


@pytest.mark.parametrize("cut", [0, 10, 30, -1])
def test_a_damaged_record_is_a_miss(tree: Path, cut: int) -> None:
    path, _ = record(tree, reader(tree))
    data = Path(path).read_bytes()
    head = data.split(b"\n\n")[0]
    Path(path).write_bytes(head[: cut if cut >= 0 else len(head) // 2] + b" x\nzz")
    assert lookup(path, KEY) is None


def test_no_record_where_the_run_directory_is_missing(tree: Path) -> None:
    path = outputcache.cache_file(str(tree / "absent"), KEY)
    rec = Recorder(path, KEY)
    rec.racy_ns = 0
    assert rec.run(lambda: 0) == 0
    assert not os.path.exists(tree / "absent")


def test_records_are_named_by_key_and_the_oldest_pruned(tree: Path) -> None:
    for i in range(outputcache.MAX_RECORDS + 4):
        key = outputcache.make_key(["test", str(i)])
        rec = Recorder(outputcache.cache_file(str(tree / "run"), key), key)
        rec.racy_ns = 0
        assert rec.run(lambda: 0) == 0
    names = os.listdir(tree / "run/cfsboot")
    assert len(names) == outputcache.MAX_RECORDS
    newest = outputcache.make_key(["test", str(outputcache.MAX_RECORDS + 3)])
    assert lookup(outputcache.cache_file(str(tree / "run"), newest), newest) == b""
