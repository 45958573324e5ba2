"""setuproot.verity: ioctl numbers, struct packing and the errno -> exception mapping."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfstest.gates import tmpfs_dir
from setuproot import verity
from setuproot.contract import HashAlg
from setuproot.verity import (
    NoVerity,
    VerityAlreadyEnabled,
    VerityBusy,
    VerityUnsupported,
    enable_verity,
    measure_verity,
)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    path = tmp_path / "file"
    path.write_bytes(b"content")
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, path
    finally:
        os.close(fd)


def test_ioctl_numbers() -> None:
    # The values <linux/fsverity.h> gives on every architecture with the generic ioctl layout.
    assert verity.FS_IOC_ENABLE_VERITY == 0x40806685
    assert verity.FS_IOC_MEASURE_VERITY == 0xC0046686


def test_enable_arg_packing() -> None:
    arg = verity.enable_arg(HashAlg.SHA512)
    assert len(arg) == 128
    version, alg, block_size, salt_size, salt_ptr, sig_size, res1, sig_ptr = struct.unpack_from(
        "<IIIIQIIQ", arg
    )
    assert (version, alg, block_size, salt_size) == (1, 2, 4096, 0)
    assert (salt_ptr, sig_size, res1, sig_ptr) == (0, 0, 0, 0)
    assert arg[40:] == bytes(88)
    assert struct.unpack_from("<I", verity.enable_arg(HashAlg.SHA256), 4) == (1,)


def test_host_filesystem_says_unsupported(fd: tuple[int, Path]) -> None:
    """The host kernel has no fs-verity: both ioctls raise VerityUnsupported naming the file."""
    n, path = fd
    with pytest.raises(VerityUnsupported) as exc:
        measure_verity(n)
    assert exc.value.errno in (errno.EOPNOTSUPP, errno.ENOTTY)
    assert exc.value.filename == str(path)
    assert "FS_IOC_MEASURE_VERITY" in str(exc.value)
    with pytest.raises(VerityUnsupported) as exc:
        enable_verity(n, HashAlg.SHA256, path="given/name")
    assert exc.value.filename == "given/name"
    assert isinstance(exc.value, OSError)


def test_tmpfs_says_unsupported() -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(dir=tmpfs_dir()) as f:
        with pytest.raises(VerityUnsupported) as exc:
            measure_verity(f.fileno())
        assert exc.value.errno in (errno.ENOTTY, errno.EOPNOTSUPP)


def _failing_ioctl(code: int) -> object:
    def ioctl(fd: int, request: int, arg: object, mutate: bool = True) -> int:
        raise OSError(code, os.strerror(code))

    return ioctl


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.ENOTTY, VerityUnsupported),
        (errno.EOPNOTSUPP, VerityUnsupported),
        (errno.ENODATA, NoVerity),
        (errno.EEXIST, VerityAlreadyEnabled),
        (errno.ETXTBSY, VerityBusy),
    ],
)
def test_errno_mapping(
    monkeypatch: pytest.MonkeyPatch, fd: tuple[int, Path], code: int, cls: type[OSError]
) -> None:
    monkeypatch.setattr(fcntl, "ioctl", _failing_ioctl(code))
    n, path = fd
    for call in (lambda: measure_verity(n), lambda: enable_verity(n, HashAlg.SHA512)):
        with pytest.raises(cls) as exc:
            call()
        assert type(exc.value) is cls
        assert exc.value.errno == code and exc.value.filename == str(path)


def test_other_errors_stay_plain_oserror(
    monkeypatch: pytest.MonkeyPatch, fd: tuple[int, Path]
) -> None:
    monkeypatch.setattr(fcntl, "ioctl", _failing_ioctl(errno.EIO))
    n, path = fd
    with pytest.raises(OSError) as exc:
        measure_verity(n)
    assert not isinstance(exc.value, (VerityUnsupported, NoVerity))
    assert exc.value.errno == errno.EIO and exc.value.filename == str(path)


def test_measure_decodes_the_kernel_answer(
    monkeypatch: pytest.MonkeyPatch, fd: tuple[int, Path]
) -> None:
    seen: list[tuple[int, int]] = []
    digest = bytes(range(64))

    def ioctl(fd: int, request: int, buf: bytearray, mutate: bool = True) -> int:
        seen.append((request, struct.unpack_from("<H", buf, 2)[0]))
        struct.pack_into("<HH", buf, 0, 2, 64)
        buf[4:68] = digest
        return 0

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    assert measure_verity(fd[0]) == (HashAlg.SHA512, digest)
    # The caller announces the room it has for the digest.
    assert seen == [(verity.FS_IOC_MEASURE_VERITY, 64)]


def test_parse_digest() -> None:
    buf = struct.pack("<HH", 1, 32) + bytes(range(32)) + bytes(32)
    assert verity.parse_digest(buf) == (HashAlg.SHA256, bytes(range(32)))
    with pytest.raises(OSError, match="unknown hash algorithm 3"):
        verity.parse_digest(struct.pack("<HH", 3, 32) + bytes(64), "f")
    with pytest.raises(OSError, match="digest size 64"):
        verity.parse_digest(struct.pack("<HH", 1, 64) + bytes(64), "f")


def test_fd_path(fd: tuple[int, Path]) -> None:
    assert verity.fd_path(fd[0]) == str(fd[1])
    assert verity.fd_path(987654) == "fd 987654"
