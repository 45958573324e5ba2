"""Unified Kernel Images: the PE/COFF section table and the `.cmdline`, `.osrel`, `.uname` sections.

Only what cfsboot needs: find a UKI's sections, read its sealed command line
and os-release, check that its `composefs=` digest names the image it ships
with, and hash `.linux` + `.initrd` (bootc's boot digest). Section references
follow the Microsoft PE Format specification. A multi-profile UKI repeats
sections after `.profile`; the first occurrence (the base profile) is used.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cfsboot.boot.bls import BOOT_DIR_PREFIX
from cfsboot.errors import CfsbootError
from cfsboot.image.osrelease import OsRelease
from setuproot.contract import ComposefsKarg, KargError, parse_cmdline

# Where bootc installs UKIs on the ESP: not EFI/Linux itself, so systemd-boot does not list
# them twice (once from the Type #1 entry that points at them, once as a Type #2 entry).
UKI_DIR = "EFI/Linux/bootc"
# Where an image ships UKIs and where they may also live (composefs-rs looks in both).
IMAGE_UKI_DIRS = ("boot/EFI/Linux", "usr/lib/modules")

# "MS-DOS Stub (Image Only)": e_magic "MZ" at 0, e_lfanew (offset of the PE signature) at 0x3c.
DOS_HEADER = struct.Struct("<2s58xI")
DOS_MAGIC = b"MZ"
# "Signature (Image Only)".
PE_SIGNATURE = b"PE\0\0"
# "COFF File Header (Object and Image)": Machine, NumberOfSections, TimeDateStamp,
# PointerToSymbolTable, NumberOfSymbols, SizeOfOptionalHeader, Characteristics.
COFF_HEADER = struct.Struct("<HHIIIHH")
# "Optional Header Standard Fields (Image Only)": the Magic that starts it.
OPTIONAL_MAGIC = struct.Struct("<H")
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
# "Section Table (Section Headers)": Name, VirtualSize, VirtualAddress, SizeOfRawData,
# PointerToRawData, PointerToRelocations, PointerToLinenumbers, NumberOfRelocations,
# NumberOfLinenumbers, Characteristics.
SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
# "COFF File Header": "the Windows loader limits the number of sections to 96".
MAX_SECTIONS = 96

TEXT_SECTIONS = (".cmdline", ".osrel", ".uname")


class UKIError(CfsbootError):
    """A file that is not a well-formed UKI (or has the wrong composefs digest)."""


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int

    @property
    def size(self) -> int:
        """The section's real length: VirtualSize (SizeOfRawData is padded to FileAlignment)."""
        return self.virtual_size or self.raw_size


@dataclass(frozen=True)
class UKI:
    """What cfsboot reads from a UKI; text sections are None when absent."""

    path: str
    machine: int
    sections: tuple[Section, ...]
    cmdline: str | None
    osrel: str | None
    uname: str | None

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def os_release(self) -> OsRelease:
        return OsRelease.parse(self.osrel or "")

    def boot_label(self) -> str | None:
        return self.os_release().boot_label()

    def composefs(self) -> ComposefsKarg | None:
        """The composefs karg sealed in `.cmdline`, or None if there is none."""
        try:
            kargs = parse_cmdline(self.cmdline or "")
        except KargError as e:
            raise UKIError(f"{self.path}: {e}") from None
        if not kargs:
            return None
        if len({k.digest for k in kargs}) > 1:
            raise UKIError(f"{self.path}: .cmdline names several different composefs digests")
        return kargs[0]

    def check_composefs(self, expected: str) -> ComposefsKarg:
        """The UKI's composefs karg, refusing a UKI built for another image (bootc's check)."""
        karg = self.composefs()
        if karg is None:
            raise UKIError(
                f"{self.path}: the UKI's command line has no composefs= argument",
                hint=f"build it with composefs={expected}",
            )
        if karg.digest != expected.lower():
            raise UKIError(
                f"{self.path}: the UKI has the wrong composefs= digest"
                f" (is {karg.digest}, should be {expected.lower()})",
                hint="rebuild the UKI from this image (was the image changed after sealing?)",
            )
        return karg


def _bad(path: str, reason: str) -> UKIError:
    return UKIError(f"{path}: not a valid UKI: {reason}")


def _read_exact(f: BinaryIO, offset: int, size: int, path: str, what: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise _bad(path, f"{what} lies past the end of the file")
    return data


def _file_size(f: BinaryIO) -> int:
    return f.seek(0, io.SEEK_END)


def read_sections(f: BinaryIO, path: str) -> tuple[int, tuple[Section, ...]]:
    """(COFF Machine, section headers) of a PE image; UKIError if it is not one."""
    size = _file_size(f)
    if size < DOS_HEADER.size:
        raise _bad(path, f"file too short ({size} bytes)")
    magic, pe_offset = DOS_HEADER.unpack(_read_exact(f, 0, DOS_HEADER.size, path, "DOS header"))
    if magic != DOS_MAGIC:
        raise _bad(path, "no MZ signature (not a PE/EFI binary)")
    sig = _read_exact(f, pe_offset, len(PE_SIGNATURE), path, "PE signature")
    if sig != PE_SIGNATURE:
        raise _bad(path, f"no PE signature at offset {pe_offset:#x}")
    coff_at = pe_offset + len(PE_SIGNATURE)
    machine, nsections, _, _, _, opt_size, _ = COFF_HEADER.unpack(
        _read_exact(f, coff_at, COFF_HEADER.size, path, "COFF header")
    )
    if not 0 < nsections <= MAX_SECTIONS:
        raise _bad(path, f"{nsections} sections (expected 1 to {MAX_SECTIONS})")
    opt_at = coff_at + COFF_HEADER.size
    if opt_size < OPTIONAL_MAGIC.size:
        raise _bad(path, "no optional header (an object file, not an image)")
    (opt_magic,) = OPTIONAL_MAGIC.unpack(
        _read_exact(f, opt_at, OPTIONAL_MAGIC.size, path, "optional header")
    )
    if opt_magic not in (PE32_MAGIC, PE32PLUS_MAGIC):
        raise _bad(path, f"unknown optional header magic {opt_magic:#x}")
    table = _read_exact(
        f, opt_at + opt_size, nsections * SECTION_HEADER.size, path, "section table"
    )
    sections: list[Section] = []
    for name_raw, vsize, vaddr, raw_size, raw_ptr, *_ in SECTION_HEADER.iter_unpack(table):
        name = name_raw.rstrip(b"\0").decode("ascii", errors="replace")
        sec = Section(name, vsize, vaddr, raw_size, raw_ptr)
        if sec.size and raw_ptr + sec.size > size:
            raise _bad(path, f"section {name} lies past the end of the file")
        sections.append(sec)
    return machine, tuple(sections)


def _text(f: BinaryIO, sec: Section, path: str) -> str:
    data = _read_exact(f, sec.raw_offset, sec.size, path, f"section {sec.name}")
    try:
        return data.rstrip(b"\0").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _bad(path, f"section {sec.name} is not UTF-8 text") from None


def read_uki_from(f: BinaryIO, path: str, *, addon: bool = False) -> UKI:
    """Parse an open UKI (or, with addon=True, a UKI addon, which has no kernel)."""
    machine, sections = read_sections(f, path)
    first: dict[str, Section] = {}
    for s in sections:
        first.setdefault(s.name, s)
    if not addon and ".linux" not in first:
        raise _bad(path, "no .linux section (a plain EFI binary, not a UKI)")
    text = {n: _text(f, first[n], path) if n in first else None for n in TEXT_SECTIONS}
    return UKI(path, machine, sections, text[".cmdline"], text[".osrel"], text[".uname"])


def read_uki(path: Path, *, addon: bool = False) -> UKI:
    """Read a UKI's headers and text sections (the kernel and initrd are not loaded)."""
    with open(path, "rb") as f:
        return read_uki_from(f, str(path), addon=addon)


def parse_uki(data: bytes, *, name: str = "<memory>", addon: bool = False) -> UKI:
    return read_uki_from(io.BytesIO(data), name, addon=addon)


def hash_sections(path: Path, uki: UKI, names: Iterable[str]) -> str:
    """sha256 hex of the named sections' contents, concatenated in order (missing ones skipped)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for name in names:
            sec = uki.section(name)
            if sec is None:
                continue
            f.seek(sec.raw_offset)
            left = sec.size
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise _bad(str(path), f"section {name} lies past the end of the file")
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


def boot_digest(path: Path, uki: UKI) -> str:
    """bootc's `[boot] digest` for a UKI deployment: sha256 of `.linux` then `.initrd`."""
    return hash_sections(path, uki, (".linux", ".initrd"))


def uki_file_name(deployment: str) -> str:
    """bootc's name for a deployment's UKI under UKI_DIR."""
    return f"{BOOT_DIR_PREFIX}{deployment}.efi"
