"""The names in an initramfs: "newc" cpio archives one after another, each plain or compressed.

The kernel's buffer format (Documentation/driver-api/early-userspace/
buffer-format.rst): a header of magic 070701/070702 and 13 fields of 8 hex
digits, the name, the data, each padded to 4 bytes; an archive ends with
`TRAILER!!!`, zeros may follow; the next archive may be compressed (dracut:
an early uncompressed microcode archive, then the main one, zstd on trixie).
install reads it to tell whether the initrd can find the root by itself
(systemd-gpt-auto-generator). Only names are kept; data is skipped.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO, Protocol, cast

import zstandard

from cfsboot.errors import die

NEWC = struct.Struct("6s8s8s8s8s8s8s8s8s8s8s8s8s8s")
MAGICS = (b"070701", b"070702")
TRAILER = b"TRAILER!!!"
_CHUNK = 1 << 20


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Stream:
    """read() over a decompressor of the standard library, with bytes put back in front."""

    def __init__(self, raw: _Reader, decompress: Callable[[bytes], bytes], head: bytes) -> None:
        self.raw, self.decompress, self.buf = raw, decompress, decompress(head)

    def read(self, n: int = -1, /) -> bytes:
        while n < 0 or len(self.buf) < n:
            chunk = self.raw.read(_CHUNK)
            if not chunk:
                break
            self.buf += self.decompress(chunk)
        n = len(self.buf) if n < 0 else n
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _Prefixed:
    """A reader with bytes already read put back in front of it."""

    def __init__(self, head: bytes, raw: _Reader) -> None:
        self.head, self.raw = head, raw

    def read(self, n: int = -1, /) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n < 0:
            out, self.head = self.head + self.raw.read(), b""
        else:
            out, self.head = self.head[:n], self.head[n:]
        return out


def _exact(f: _Reader, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = f.read(n - len(out))
        if not got:
            break
        out += got
    return out


def _skip(f: _Reader, n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, _CHUNK)))
        if not got:
            return
        n -= got


def _decompressed(head: bytes, f: _Reader, where: str) -> _Reader:
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        # zstandard reads the source through read() alone (its stub asks for IO[bytes]).
        source = cast(IO[bytes], _Prefixed(head, f))
        reader: _Reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True
        )
        return reader
    if head.startswith((b"\x1f\x8b", b"\x1f\x9e")):
        return _Stream(f, zlib.decompressobj(wbits=47).decompress, head)
    if head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00")):
        return _Stream(f, lzma.LZMADecompressor().decompress, head)
    if head.startswith(b"BZh"):
        return _Stream(f, bz2.BZ2Decompressor().decompress, head)
    die(f"{where}: neither a cpio archive nor a compression cfsboot reads ({head[:6]!r})")


def names(f: BinaryIO | _Reader, where: str) -> Iterator[str]:
    """Every entry's name (as stored: usually without a leading '/'), all archives."""
    src: _Reader = f
    compressed = False
    while True:
        head = _exact(src, 4)
        while head == b"\0\0\0\0":
            head = _exact(src, 4)
        if not head.strip(b"\0"):
            return
        head += _exact(src, 2)
        if head not in MAGICS:
            if compressed:
                die(f"{where}: not a cpio archive inside its compressed part")
            src, compressed = _decompressed(head, src, where), True
            continue
        while True:
            fields = NEWC.unpack(head + _exact(src, NEWC.size - 6))
            size, namesize = int(fields[7], 16), int(fields[12], 16)
            name = _exact(src, namesize + (4 - (NEWC.size + namesize) % 4) % 4)[: namesize - 1]
            _skip(src, size + (4 - size % 4) % 4)
            if name == TRAILER:
                break
            yield name.decode(errors="surrogateescape")
            head = _exact(src, 6)
            if head not in MAGICS:
                die(f"{where}: damaged cpio archive after {name.decode(errors='replace')}")


def contains(f: BinaryIO, wanted: str, where: str) -> bool:
    """Does the initramfs hold `wanted` (an absolute path)?"""
    target = wanted.lstrip("/")
    return any(n.removeprefix("./").lstrip("/") == target for n in names(f, where))
