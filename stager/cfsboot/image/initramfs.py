"""List the files of an initramfs: concatenated cpio archives, each plain or compressed.

An initramfs is what the kernel unpacks at boot (Documentation/driver-api/
early-userspace/buffer-format.rst): "newc" cpio archives (magic 070701, or
070702 with checksums) one after the other, each ended by a `TRAILER!!!`
entry and padded with zeros, any of them compressed. dracut writes an
uncompressed early archive (CPU microcode) followed by the main archive,
compressed (zstd on trixie; gzip, xz, bzip2 elsewhere).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import zstandard

from cfsboot.errors import CfsbootError, die

# newc header: magic + 13 fields of 8 hex digits (ino, mode, uid, gid, nlink, mtime,
# filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check).
NEWC = struct.Struct("6s8s8s8s8s8s8s8s8s8s8s8s8s8s")
NEWC_MAGICS = (b"070701", b"070702")
TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20

# The compressions the kernel can unpack, by the magic bytes their streams start with.
COMPRESSIONS = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x1f\x8b": "gzip",
    b"\x1f\x9e": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
    b"\x02\x21\x4c\x18": "lz4",
    b"\x89LZO": "lzo",
}


class UnsupportedCompression(CfsbootError):
    """An archive compressed in a way the kernel unpacks and this module does not (lz4, lzo)."""

    def __init__(self, kind: str) -> None:
        super().__init__(
            f"{kind}-compressed initramfs archives are not supported", hint="use zstd, gzip or xz"
        )
        self.kind = kind


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Decompressing:
    """A read() over a compressed stream, for the decompressors of the standard library."""

    def __init__(self, raw: BinaryIO, decompress: Callable[[bytes], bytes]) -> None:
        self.raw = raw
        self.decompress = decompress
        self.buf = b""
        self.eof = False

    def read(self, n: int = -1, /) -> bytes:
        while not self.eof and (n < 0 or len(self.buf) < n):
            chunk = self.raw.read(_CHUNK)
            if not chunk:
                self.eof = True
                break
            self.buf += self.decompress(chunk)
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _decompressor(kind: str, raw: BinaryIO) -> _Reader:
    if kind == "zstd":
        reader: _Reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader
    if kind == "gzip":
        return _Decompressing(raw, zlib.decompressobj(wbits=47).decompress)
    if kind == "xz" or kind == "lzma":
        return _Decompressing(raw, lzma.LZMADecompressor().decompress)
    if kind == "bzip2":
        return _Decompressing(raw, bz2.BZ2Decompressor().decompress)
    raise UnsupportedCompression(kind)


def _read_exact(f: _Reader, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _skip(f: _Reader, n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, _CHUNK)))
        if got == 0:
            raise EOFError
        n -= got


def _entries(f: _Reader, first: bytes, where: str) -> Iterator[tuple[str, int]]:
    """(name, mode) of one cpio archive's entries; `first` is its already-read first 6 bytes."""
    pos = 0
    head = first + _read_exact(f, NEWC.size - len(first))
    while True:
        if len(head) < NEWC.size or head[:6] not in NEWC_MAGICS:
            die(f"{where}: not a newc cpio archive at offset {pos} of an archive")
        try:
            fields = [int(x, 16) for x in NEWC.unpack(head)[1:]]
        except ValueError:
            die(f"{where}: a cpio header at offset {pos} of an archive has a field that is not hex")
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_pad = (4 - (NEWC.size + namesize) % 4) % 4
        name = _read_exact(f, namesize + name_pad)[: max(namesize - 1, 0)]
        text = name.decode(errors="surrogateescape")
        try:
            _skip(f, filesize + (4 - filesize % 4) % 4)
        except EOFError:
            die(f"{where}: truncated cpio archive (in {text})")
        pos += NEWC.size + namesize + name_pad + filesize
        if text == TRAILER:
            return
        yield text, mode
        head = _read_exact(f, NEWC.size)


def _archives(f: _Reader, where: str, compressed: bool) -> Iterator[tuple[str, int]]:
    """Every archive in f, in order; a compressed one takes the rest of the raw stream."""
    while True:
        # Archives start 4-byte aligned, after any amount of zero padding.
        head = _read_exact(f, 4)
        while head == b"\0\0\0\0":
            head = _read_exact(f, 4)
        if not head.strip(b"\0"):
            return
        head += _read_exact(f, 2)
        if head in NEWC_MAGICS:
            yield from _entries(f, head, where)
            continue
        kind = next((k for m, k in COMPRESSIONS.items() if head.startswith(m)), None)
        if kind is None or compressed:
            die(f"{where}: neither a cpio archive nor a known compression at {head!r}")
        inner = _decompressor(kind, cast(BinaryIO, _Prefixed(head, f)))
        try:
            yield from _archives(inner, where, True)
        except (zstandard.ZstdError, zlib.error, lzma.LZMAError, OSError, EOFError) as e:
            die(f"{where}: its {kind} data is corrupt ({e or type(e).__name__})")
        return


class _Prefixed:
    """A raw file with bytes already read put back in front (BinaryIO enough for decompressors)."""

    def __init__(self, prefix: bytes, f: _Reader) -> None:
        self.prefix = prefix
        self.f = f

    def read(self, n: int = -1, /) -> bytes:
        if self.prefix:
            if n < 0:
                out, self.prefix = self.prefix + self.f.read(), b""
                return out
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            if len(out) < n:
                out += self.f.read(n - len(out))
            return out
        return self.f.read(n)


def names(f: BinaryIO | _Reader, where: str) -> Iterator[str]:
    """Every entry's name (as stored: usually without a leading '/'), all archives."""
    return (name for name, _ in _archives(f, where, False))


def contains(f: BinaryIO, wanted: str, where: str) -> bool:
    """Does the initramfs hold `wanted` (an absolute path)? (install: can the initrd find
    the root by itself, through systemd-gpt-auto-generator?)"""
    target = wanted.lstrip("/")
    return any(n.removeprefix("./").lstrip("/") == target for n in names(f, where))


def list_files(path: Path) -> list[str]:
    """Absolute paths of every entry in the initramfs at `path` (all archives)."""
    with open(path, "rb") as f:
        return ["/" + n.removeprefix(".").strip("/") for n in names(f, str(path))]
