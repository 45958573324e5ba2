"""Does an object's content match its name? One object, read once, checked one of two ways.

- In a secure repository the kernel measures the object's fs-verity digest
  (FS_IOC_MEASURE_VERITY), which must equal the name, and the whole file is
  read: fs-verity checks every block as it is read, so a damaged block is EIO.
  An object without fs-verity is hashed in userspace to tell a missing
  enablement (content right: `cfsboot fsck --repair` enables it) from damage.
- In an insecure repository nothing checks reads, so the fs-verity digest is
  computed in userspace (cfsboot.composefs.fsverity, the kernel's algorithm).

Both run in worker threads: reading releases the GIL, and so does hashlib on
each 4096-byte block.
"""

from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass

from cfsboot.composefs import fsverity
from setuproot.contract import HashAlg
from setuproot.verity import NoVerity, VerityUnsupported, measure_verity

READ_CHUNK = 1 << 20


class Verdict(enum.StrEnum):
    """What is wrong with an object's content (the codes fsck reports)."""

    CORRUPT = "object-corrupt"  # the content does not match the name
    UNREADABLE = "object-unreadable"  # it cannot be opened or read (EIO: damaged blocks)
    NO_VERITY = "object-no-verity"  # right content, but no fs-verity in a secure repository


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    detail: str  # says what was found, e.g. "its fs-verity digest is sha512:1a2b…"


_local = threading.local()


def _buffer() -> memoryview:
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(READ_CHUNK)
    return memoryview(buf)


def _read_through(fd: int, size: int) -> None:
    """Read every byte (fs-verity verifies each block as it is read)."""
    mv = _buffer()
    pos = 0
    while pos < size:
        got = os.preadv(fd, [mv[: min(READ_CHUNK, size - pos)]], pos)
        if got == 0:
            raise OSError(f"file shrank while it was read (short read at offset {pos})")
        pos += got


def _read_all(fd: int, size: int) -> bytes:
    out = bytearray(size)
    mv = memoryview(out)
    pos = 0
    while pos < size:
        got = os.preadv(fd, [mv[pos:]], pos)
        if got == 0:
            raise OSError(f"file shrank while it was read (short read at offset {pos})")
        pos += got
    return bytes(out)


def _short(hexdigest: str) -> str:
    return hexdigest[:16] + "…"


def _mismatch(alg: HashAlg, got: bytes, how: str) -> Finding:
    return Finding(Verdict.CORRUPT, f"its content has the {how} digest {alg}:{_short(got.hex())}")


def _userspace(alg: HashAlg, hexdigest: str, got: bytes) -> Finding | None:
    if got.hex() == hexdigest:
        return None
    return _mismatch(alg, got, "fs-verity")


def _measured(fd: int, path: str, alg: HashAlg, hexdigest: str, size: int) -> Finding | None:
    """The secure-repository check of an open object (not read yet)."""
    try:
        measured_alg, digest = measure_verity(fd, path=path)
    except (NoVerity, VerityUnsupported):
        wrong = _userspace(alg, hexdigest, fsverity.digest_fd(fd, alg, threads=1, size=size))
        if wrong is not None:
            return wrong
        return Finding(Verdict.NO_VERITY, "it has no fs-verity (the repository is secure)")
    if measured_alg is not alg or digest.hex() != hexdigest:
        return Finding(
            Verdict.CORRUPT,
            f"the kernel measures its fs-verity digest as {measured_alg}:{_short(digest.hex())}",
        )
    return None


def _open(path: str) -> int:
    # O_NOFOLLOW: an object is a regular file, never a symlink to somewhere else.
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


def _unreadable(e: OSError, what: str) -> Finding:
    return Finding(Verdict.UNREADABLE, f"it cannot be {what}: {e.strerror or e}")


def verify_file(path: str, hexdigest: str, alg: HashAlg, *, secure: bool) -> Finding | None:
    """None when the object at `path` is sound, else what is wrong (read once, not kept)."""
    try:
        fd = _open(path)
    except OSError as e:
        return _unreadable(e, "opened")
    try:
        size = os.fstat(fd).st_size
        if secure:
            found = _measured(fd, path, alg, hexdigest, size)
            if found is None:
                _read_through(fd, size)
            return found
        return _userspace(alg, hexdigest, fsverity.digest_fd(fd, alg, threads=1, size=size))
    except OSError as e:
        return _unreadable(e, "read")
    finally:
        os.close(fd)


def read_verified(
    path: str, hexdigest: str, alg: HashAlg, *, secure: bool
) -> tuple[bytes | None, Finding | None]:
    """(content, None) when the object is sound; (content or None, what is wrong) otherwise.

    For objects that are parsed next (images, streams): read into memory once and
    checked there. The content is returned with a NO_VERITY finding (it is right).
    """
    try:
        fd = _open(path)
    except OSError as e:
        return None, _unreadable(e, "opened")
    try:
        size = os.fstat(fd).st_size
        if secure:
            found = _measured(fd, path, alg, hexdigest, size)
            if found is not None and found.verdict is not Verdict.NO_VERITY:
                return None, found
            return _read_all(fd, size), found
        data = _read_all(fd, size)
    except OSError as e:
        return None, _unreadable(e, "read")
    finally:
        os.close(fd)
    wrong = _userspace(alg, hexdigest, fsverity.digest_bytes(data, alg))
    return (None, wrong) if wrong is not None else (data, None)
