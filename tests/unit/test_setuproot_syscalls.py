"""The ctypes wrappers pass exactly the kernel's arguments; errors carry errno and path."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from setuproot import syscalls

Call = tuple[int, ...]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    recorded: list[tuple[object, ...]] = []

    def fake(nr: int, *args: syscalls.Arg) -> tuple[int, int]:
        recorded.append((nr, *args))
        return 7, 0

    monkeypatch.setattr(syscalls, "_raw_syscall", fake)
    return recorded


def test_syscall_numbers_and_arguments(calls: list[tuple[object, ...]]) -> None:
    assert syscalls.fsopen("erofs") == 7
    syscalls.fsconfig(3, "source", "/proc/self/fd/4")
    syscalls.fsconfig(3, "ro")
    syscalls.fsconfig_fd(3, "lowerdir+", 9)
    syscalls.fsconfig_create(3)
    assert syscalls.fsmount(3, syscalls.MOUNT_ATTR_RDONLY) == 7
    syscalls.move_mount_fd(7, "/sysroot")
    syscalls.open_tree_clone("/sysroot", recursive=True)
    syscalls.open_tree_clone("/x")
    syscalls.mount_setattr(7, attr_set=syscalls.MOUNT_ATTR_RDONLY)
    assert calls == [
        (430, b"erofs", 1),
        (431, 3, 1, b"source", b"/proc/self/fd/4", 0),
        (431, 3, 0, b"ro", None, 0),
        (431, 3, 5, b"lowerdir+", None, 9),
        (431, 3, 6, None, None, 0),
        (432, 3, 1, 1),
        (429, 7, b"", -100, b"/sysroot", 4),
        (428, -100, b"/sysroot", 1 | os.O_CLOEXEC | 0x8000),
        (428, -100, b"/x", 1 | os.O_CLOEXEC),
        (442, 7, b"", 0x1000, struct.pack("=QQQQ", 1, 0, 0, 0), 32),
    ]


def test_errno_becomes_oserror_with_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "_raw_syscall", lambda nr, *a: (-1, errno.ENOENT))
    with pytest.raises(OSError) as e:
        syscalls.move_mount_fd(5, "/sysroot/sysroot")
    assert (e.value.errno, e.value.filename) == (errno.ENOENT, "/sysroot/sysroot")
    assert e.value.strerror == "move_mount: No such file or directory"


def test_fsconfig_error_carries_the_kernel_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "_raw_syscall", lambda nr, *a: (-1, errno.EINVAL))
    r, w = os.pipe()
    os.write(w, b"e overlay: failed to resolve '/x': -2")
    os.close(w)
    try:
        with pytest.raises(OSError) as e:
            syscalls.fsconfig(r, "lowerdir+", "/x")
    finally:
        os.close(r)
    assert e.value.errno == errno.EINVAL
    assert e.value.strerror == (
        "fsconfig lowerdir+=/x: Invalid argument (overlay: failed to resolve '/x': -2)"
    )
    assert e.value.filename == "/x"


def test_loop_config_layout() -> None:
    raw = syscalls.loop_config(9)
    assert len(raw) == 304
    fd, block_size = struct.unpack_from("=II", raw, 0)
    # lo_flags follows five __u64 and three __u32 fields of struct loop_info64.
    (flags,) = struct.unpack_from("=I", raw, 8 + 5 * 8 + 3 * 4)
    assert (fd, block_size, flags) == (9, 4096, 1 | 4 | 16)
    assert raw[8 + 5 * 8 + 4 * 4 :] == bytes(304 - 8 - 5 * 8 - 4 * 4)


def test_real_syscall_reports_errno() -> None:
    # A real call that fails the same way everywhere: move_mount of a bad fd.
    with pytest.raises(OSError) as e:
        syscalls.move_mount_fd(-1, "/nonexistent-cfsboot")
    assert e.value.errno in (errno.EBADF, errno.ENOENT, errno.EPERM, errno.ENOSYS)
