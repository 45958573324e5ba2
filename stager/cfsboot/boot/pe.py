"""PE/COFF images (EFI binaries, UKIs): the headers and the section table, declared as data.

The structures below follow the Microsoft "PE Format" specification and carry
its field names; each is declared once, as a `construct` struct, next to the
name of the specification's section. Only what finding sections needs is
read: the MS-DOS stub's pointer to the PE signature, the COFF file header, the
optional header's magic (PE32 or PE32+) and the section table. A malformed file
is a PEError whose message says what is wrong (cfsboot.boot.uki names the file).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, BinaryIO

import construct as cs

# "MS-DOS Stub (Image Only)": the signature "MZ" at 0 and, at 0x3c, e_lfanew: the file
# offset of the PE signature.
DOS_HEADER = cs.Struct(
    "e_magic" / cs.Bytes(2),
    cs.Padding(58),
    "e_lfanew" / cs.Int32ul,
)
DOS_MAGIC = b"MZ"
# "Signature (Image Only)".
PE_SIGNATURE = b"PE\0\0"
# "COFF File Header (Object and Image)".
COFF_HEADER = cs.Struct(
    "Machine" / cs.Int16ul,
    "NumberOfSections" / cs.Int16ul,
    "TimeDateStamp" / cs.Int32ul,
    "PointerToSymbolTable" / cs.Int32ul,
    "NumberOfSymbols" / cs.Int32ul,
    "SizeOfOptionalHeader" / cs.Int16ul,
    "Characteristics" / cs.Int16ul,
)
# "Optional Header Standard Fields (Image Only)": the Magic that starts it (PE32 or PE32+);
# the section table follows the optional header, SizeOfOptionalHeader bytes on.
OPTIONAL_MAGIC = cs.Int16ul
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
# "Section Table (Section Headers)".
SECTION_HEADER = cs.Struct(
    "Name" / cs.Bytes(8),
    "VirtualSize" / cs.Int32ul,
    "VirtualAddress" / cs.Int32ul,
    "SizeOfRawData" / cs.Int32ul,
    "PointerToRawData" / cs.Int32ul,
    "PointerToRelocations" / cs.Int32ul,
    "PointerToLinenumbers" / cs.Int32ul,
    "NumberOfRelocations" / cs.Int16ul,
    "NumberOfLinenumbers" / cs.Int16ul,
    "Characteristics" / cs.Int32ul,
)
# "COFF File Header": "the Windows loader limits the number of sections to 96".
MAX_SECTIONS = 96


class PEError(ValueError):
    """Why a file is not a PE image (without the file's name)."""


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


def _read_exact(f: BinaryIO, offset: int, size: int, what: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise PEError(f"{what} lies past the end of the file")
    return data


def _parse(f: BinaryIO, what: cs.Construct[Any, Any], offset: int, name: str) -> Any:
    return what.parse(_read_exact(f, offset, what.sizeof(), name))


def read_sections(f: BinaryIO) -> tuple[int, tuple[Section, ...]]:
    """(COFF Machine, section headers) of a PE image; PEError if it is not one."""
    size = f.seek(0, io.SEEK_END)
    if size < DOS_HEADER.sizeof():
        raise PEError(f"file too short ({size} bytes)")
    dos = _parse(f, DOS_HEADER, 0, "DOS header")
    if dos.e_magic != DOS_MAGIC:
        raise PEError("no MZ signature (not a PE/EFI binary)")
    pe_offset = dos.e_lfanew
    if _read_exact(f, pe_offset, len(PE_SIGNATURE), "PE signature") != PE_SIGNATURE:
        raise PEError(f"no PE signature at offset {pe_offset:#x}")
    coff_at = pe_offset + len(PE_SIGNATURE)
    coff = _parse(f, COFF_HEADER, coff_at, "COFF header")
    nsections, opt_size = coff.NumberOfSections, coff.SizeOfOptionalHeader
    if not 0 < nsections <= MAX_SECTIONS:
        raise PEError(f"{nsections} sections (expected 1 to {MAX_SECTIONS})")
    opt_at = coff_at + COFF_HEADER.sizeof()
    if opt_size < OPTIONAL_MAGIC.sizeof():
        raise PEError("no optional header (an object file, not an image)")
    opt_magic = _parse(f, OPTIONAL_MAGIC, opt_at, "optional header")
    if opt_magic not in (PE32_MAGIC, PE32PLUS_MAGIC):
        raise PEError(f"unknown optional header magic {opt_magic:#x}")
    table = _parse(f, cs.Array(nsections, SECTION_HEADER), opt_at + opt_size, "section table")
    sections: list[Section] = []
    for h in table:
        name = h.Name.rstrip(b"\0").decode("ascii", errors="replace")
        sec = Section(name, h.VirtualSize, h.VirtualAddress, h.SizeOfRawData, h.PointerToRawData)
        if sec.size and sec.raw_offset + sec.size > size:
            raise PEError(f"section {name} lies past the end of the file")
        sections.append(sec)
    return int(coff.Machine), tuple(sections)
