"""The fs-verity ioctls: enable verity on a file and measure its digest.

Stdlib only (fcntl.ioctl). Errors are told apart so callers can decide:
`VerityUnsupported` (the filesystem or kernel cannot do fs-verity),
`NoVerity` (the file has none), `VerityAlreadyEnabled`, `VerityBusy`; each
is an OSError carrying the errno and the file's path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from setuproot.contract import HashAlg

# ioctl number encoding, <asm-generic/ioctl.h>.
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, type_: str, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (ord(type_) << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


# struct fsverity_enable_arg, <linux/fsverity.h>: __u32 version, hash_algorithm,
# block_size, salt_size; __u64 salt_ptr; __u32 sig_size, __reserved1; __u64 sig_ptr,
# __reserved2[11].
ENABLE_ARG = struct.Struct("<IIIIQIIQ88x")
# struct fsverity_digest, <linux/fsverity.h>: __u16 digest_algorithm, digest_size;
# __u8 digest[] (the caller sets digest_size to the room it provides).
DIGEST_HEADER = struct.Struct("<HH")
FS_VERITY_MAX_DIGEST_SIZE = 64
FS_VERITY_BLOCK_SIZE = 4096

# <linux/fsverity.h>: _IOW('f', 133, struct fsverity_enable_arg),
# _IOWR('f', 134, struct fsverity_digest).
FS_IOC_ENABLE_VERITY = _ioc(_IOC_WRITE, "f", 133, ENABLE_ARG.size)
FS_IOC_MEASURE_VERITY = _ioc(_IOC_READ | _IOC_WRITE, "f", 134, DIGEST_HEADER.size)

assert ENABLE_ARG.size == 128
assert FS_IOC_ENABLE_VERITY == 0x40806685
assert FS_IOC_MEASURE_VERITY == 0xC0046686

# EOPNOTSUPP: the filesystem lacks the verity feature; ENOTTY: the kernel or
# filesystem does not know the ioctl at all.
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY})


class VerityUnsupported(OSError):
    """The filesystem (or kernel) cannot do fs-verity (EOPNOTSUPP / ENOTTY)."""


class NoVerity(OSError):
    """The file has no fs-verity enabled (ENODATA)."""


class VerityAlreadyEnabled(OSError):
    """FS_IOC_ENABLE_VERITY on a file that already has it (EEXIST)."""


class VerityBusy(OSError):
    """FS_IOC_ENABLE_VERITY while the file is open for writing somewhere (ETXTBSY)."""


def fd_path(fd: int) -> str:
    """A printable name for an open file: its path if /proc knows it, else `fd N`."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _error(err: OSError, fd: int, path: str | None, what: str) -> OSError:
    code = err.errno or 0
    name = path if path is not None else fd_path(fd)
    if code in _UNSUPPORTED:
        return VerityUnsupported(
            code, f"{what}: fs-verity is not supported on this filesystem", name
        )
    if code == errno.ENODATA:
        return NoVerity(code, f"{what}: the file has no fs-verity", name)
    if code == errno.EEXIST:
        return VerityAlreadyEnabled(code, f"{what}: fs-verity is already enabled", name)
    if code == errno.ETXTBSY:
        return VerityBusy(code, f"{what}: the file is open for writing", name)
    return OSError(code, f"{what}: {os.strerror(code)}", name)


def measure_verity(fd: int, *, path: str | None = None) -> tuple[HashAlg, bytes]:
    """The file's fs-verity algorithm and digest (FS_IOC_MEASURE_VERITY)."""
    buf = bytearray(DIGEST_HEADER.size + FS_VERITY_MAX_DIGEST_SIZE)
    DIGEST_HEADER.pack_into(buf, 0, 0, FS_VERITY_MAX_DIGEST_SIZE)
    try:
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf, True)
    except OSError as e:
        raise _error(e, fd, path, "FS_IOC_MEASURE_VERITY") from None
    return parse_digest(buf, fd_path(fd) if path is None else path)


def parse_digest(buf: bytes | bytearray, name: str = "") -> tuple[HashAlg, bytes]:
    """Decode a struct fsverity_digest filled in by the kernel."""
    alg_id, size = DIGEST_HEADER.unpack_from(buf, 0)
    alg = {a.kernel_id: a for a in HashAlg}.get(alg_id)
    if alg is None or size != alg.digest_size:
        raise OSError(
            errno.EINVAL,
            f"FS_IOC_MEASURE_VERITY: unknown hash algorithm {alg_id} (digest size {size})",
            name,
        )
    start = DIGEST_HEADER.size
    return alg, bytes(buf[start : start + size])


def enable_arg(alg: HashAlg) -> bytes:
    """The packed struct fsverity_enable_arg: 4096-byte blocks, no salt, no signature."""
    return ENABLE_ARG.pack(1, alg.kernel_id, FS_VERITY_BLOCK_SIZE, 0, 0, 0, 0, 0)


def enable_verity(fd: int, alg: HashAlg, *, path: str | None = None) -> None:
    """Enable fs-verity on a file (FS_IOC_ENABLE_VERITY).

    `fd` must be opened O_RDONLY and no writable descriptor may be open anywhere
    (else VerityBusy). The kernel reads the whole file to build the tree.
    """
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, enable_arg(alg))
    except OSError as e:
        raise _error(e, fd, path, "FS_IOC_ENABLE_VERITY") from None
