"""cfsboot.boot.pe: PE/COFF headers and section tables, and truncated or damaged files.

The images come from cfstest.pe.make_pe, which lays out a PE32+ file at
the PE Format specification's offsets with struct, independently of the
construct declarations under test.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from cfsboot.boot import pe
from cfsboot.boot.pe import PEError, Section, read_sections
from cfsboot.boot.uki import UKIError, parse_uki
from cfstest.gates import missing_capability
from cfstest.pe import make_pe

PE_AT = 0x80  # make_pe's e_lfanew
COFF_AT = PE_AT + 4
OPT_AT = COFF_AT + 20
TABLE_AT = OPT_AT + 240  # make_pe's SizeOfOptionalHeader
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")

IMAGE = make_pe([(b".linux", b"K" * 700), (b".cmdline", b"quiet\0")])


def sections(data: bytes) -> tuple[int, tuple[Section, ...]]:
    return read_sections(io.BytesIO(data))


def test_sizes_are_the_specification_s() -> None:
    assert pe.DOS_HEADER.sizeof() == 64
    assert pe.COFF_HEADER.sizeof() == 20
    assert pe.SECTION_HEADER.sizeof() == 40


def test_section_table() -> None:
    machine, secs = sections(IMAGE)
    assert machine == 0x8664
    assert secs == (
        Section(".linux", 700, 0x1000, 0x400, 0x200),
        Section(".cmdline", 6, 0x2000, 0x200, 0x600),
    )


@pytest.mark.parametrize(
    ("length", "reason"),
    [
        (0, "file too short (0 bytes)"),
        (63, "file too short (63 bytes)"),
        (PE_AT, "PE signature lies past the end of the file"),
        (PE_AT + 3, "PE signature lies past the end of the file"),
        (COFF_AT, "COFF header lies past the end of the file"),
        (COFF_AT + 19, "COFF header lies past the end of the file"),
        (OPT_AT + 1, "optional header lies past the end of the file"),
        (TABLE_AT + 40 + 39, "section table lies past the end of the file"),
        (0x200 + 699, "section .linux lies past the end of the file"),
        (0x600 + 5, "section .cmdline lies past the end of the file"),
    ],
)
def test_truncated(length: int, reason: str) -> None:
    with pytest.raises(PEError) as e:
        sections(IMAGE[:length])
    assert str(e.value) == reason


def test_every_prefix_is_a_clear_error() -> None:
    """No cut of the file leaks construct's or Python's own exceptions.

    From 0x606 on the file is whole: the rest is .cmdline's padding to FileAlignment."""
    for length in range(0x600 + 6):
        with pytest.raises(UKIError, match="^cut.efi: not a valid UKI: "):
            parse_uki(IMAGE[:length], name="cut.efi")
    assert parse_uki(IMAGE[: 0x600 + 6]).cmdline == "quiet"


def test_sections_bounds_use_the_virtual_size() -> None:
    """SizeOfRawData is padded to FileAlignment; the file may end after VirtualSize."""
    cut = IMAGE[: 0x600 + 6]
    assert sections(cut)[1][1].size == 6


def test_damaged_headers() -> None:
    def with_(at: int, data: bytes) -> bytes:
        return IMAGE[:at] + data + IMAGE[at + len(data) :]

    cases = [
        (with_(0, b"MX"), "no MZ signature (not a PE/EFI binary)"),
        (with_(0x3C, struct.pack("<I", 0x40)), "no PE signature at offset 0x40"),
        (with_(COFF_AT + 2, struct.pack("<H", 200)), "200 sections (expected 1 to 96)"),
        (with_(COFF_AT + 16, struct.pack("<H", 1)), "no optional header (an object file,"),
        (with_(OPT_AT, struct.pack("<H", 0x20C)), "unknown optional header magic 0x20c"),
    ]
    for data, reason in cases:
        with pytest.raises(PEError) as e:
            sections(data)
        assert str(e.value).startswith(reason)


def test_real_stub_truncated_in_its_section_table() -> None:
    if not STUB.exists():
        missing_capability(f"{STUB} not installed (apt-get install systemd-boot-efi)")
    data = STUB.read_bytes()
    _, secs = sections(data)
    assert any(s.name == ".text" for s in secs)
    e_lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    opt_size = struct.unpack_from("<H", data, e_lfanew + 4 + 16)[0]
    table_at = e_lfanew + 4 + 20 + opt_size
    with pytest.raises(PEError, match="^section table lies past the end of the file$"):
        sections(data[: table_at + 40 * len(secs) - 1])
