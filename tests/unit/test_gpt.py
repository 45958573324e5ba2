"""cfsboot.boot.gpt: GPTs that sfdisk wrote, read back with both CRCs checked.

Damage is done by the test at the offsets UEFI spec 5.3.2 (Table 5-5) gives:
HeaderCRC32 at byte 16 of the header, DiskGUID at 56, PartitionEntryArrayCRC32
at 88; the primary header in LBA 1, the backup in the last LBA.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from cfsboot import cli
from cfsboot.boot import gpt
from cfsboot.boot.gpt import ENTRY_SIZE, HEADER, HEADER_SIZE, read_layout
from cfsboot.errors import CfsbootError
from cfstest.gates import require_tools

MiB = 1 << 20
SECTOR = 512
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
X86_ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
DISK_GUID_AT, HEADER_CRC_AT, ENTRIES_CRC_AT = 56, 16, 88


def sfdisk_image(path: Path, size: int = 8 * MiB) -> Path:
    require_tools({"sfdisk": "fdisk"})
    with open(path, "wb") as f:
        f.truncate(size)
    script = (
        "label: gpt\n"
        f'size=2MiB, type={ESP}, name="EFI-SYSTEM"\n'
        f'type={X86_ROOT}, name="root ünïcode"\n'
    )
    subprocess.run(["sfdisk", "-q", path], input=script.encode(), check=True)
    return path


def sfdisk_json(path: Path) -> dict[str, object]:
    out = subprocess.run(["sfdisk", "--json", path], capture_output=True, check=True).stdout
    table: dict[str, object] = json.loads(out)["partitiontable"]
    return table


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path: Path, offset: int) -> None:
    """Invert one byte (writing a fixed value could leave a random GUID as it was)."""
    poke(path, offset, bytes([peek(path, offset, 1)[0] ^ 0xFF]))


def peek(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def last_lba(path: Path) -> int:
    return path.stat().st_size // SECTOR - 1


def crc_of_header(raw: bytes) -> int:
    """HeaderCRC32, computed here from the spec: the 92 bytes with bytes 16..19 zero."""
    return zlib.crc32(raw[:HEADER_CRC_AT] + bytes(4) + raw[HEADER_CRC_AT + 4 : 92])


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return sfdisk_image(tmp_path / "disk.img")


def test_reads_what_sfdisk_wrote(image: Path) -> None:
    layout = read_layout(image)
    table = sfdisk_json(image)
    assert layout.disk_uuid == table["id"]
    assert layout.sector_size == SECTOR
    parts = table["partitions"]
    assert isinstance(parts, list)
    assert [
        (p.number, p.start // SECTOR, p.size // SECTOR, p.type_uuid, p.uuid, p.name)
        for p in layout.partitions
    ] == [
        (i, q["start"], q["size"], q["type"], q["uuid"], q["name"]) for i, q in enumerate(parts, 1)
    ]
    assert layout.partitions[1].name == "root ünïcode"
    assert layout.esp is layout.partitions[0]


@pytest.mark.parametrize("which", ["primary", "backup"])
def test_building_recomputes_sfdisk_bytes_and_crcs(image: Path, which: str) -> None:
    """Headers and entry arrays rebuilt from what was parsed are sfdisk's, byte for byte."""
    lba = 1 if which == "primary" else last_lba(image)
    raw = peek(image, lba * SECTOR, HEADER_SIZE)
    header = HEADER.parse(raw)
    assert crc_of_header(raw) == header.header_crc32
    count, size = header.number_of_partition_entries, header.size_of_partition_entry
    assert (count, size) == (128, ENTRY_SIZE)
    array = peek(image, header.partition_entry_lba * SECTOR, count * size)
    parsed = gpt.entry_array(count, size).parse(array)
    used = [dict(e) for e in parsed if e.partition_type_guid != gpt.UNUSED_TYPE]
    assert len(used) == 2
    entries = gpt.build_entries(used, count, size)
    assert entries == array
    fields = {
        k: header[k]
        for k in (
            "my_lba",
            "alternate_lba",
            "first_usable_lba",
            "last_usable_lba",
            "disk_guid",
            "partition_entry_lba",
            "number_of_partition_entries",
            "size_of_partition_entry",
        )
    }
    assert gpt.build_header(fields, entries) == raw


def test_primary_header_crc_mismatch_uses_the_backup(
    image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = read_layout(image)
    flip(image, SECTOR + DISK_GUID_AT)
    with caplog.at_level(logging.WARNING):
        assert read_layout(image) == good
    assert [r.getMessage() for r in caplog.records] == [
        f"{image}: the primary GPT header is damaged (GPT header CRC mismatch (stored "
        f"{peek_crc(image, 1):#010x}, computed {crc_of_header(peek(image, SECTOR, 92)):#010x}));"
        f" using the backup header at LBA {last_lba(image)}"
    ]


def peek_crc(path: Path, lba: int) -> int:
    value: int = struct.unpack("<I", peek(path, lba * SECTOR + HEADER_CRC_AT, 4))[0]
    return value


def test_primary_entry_array_crc_mismatch_uses_the_backup(
    image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = read_layout(image)
    # The ESP's name, in the primary array (LBA 2, entry 0, PartitionName at byte 56).
    poke(image, 2 * SECTOR + 56, "X".encode("utf-16-le"))
    with caplog.at_level(logging.WARNING):
        assert read_layout(image) == good
    assert "partition entry array CRC mismatch" in caplog.text


def test_wiped_primary_uses_the_backup(image: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = read_layout(image)
    poke(image, SECTOR, bytes(SECTOR))
    with caplog.at_level(logging.WARNING):
        assert read_layout(image) == good
    assert "(no GPT signature); using the backup header" in caplog.text


def test_header_at_the_wrong_lba_is_not_trusted(
    image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid header copied to LBA 1 says it is at the last LBA: MyLBA is checked."""
    good = read_layout(image)
    poke(image, SECTOR, peek(image, last_lba(image) * SECTOR, SECTOR))
    with caplog.at_level(logging.WARNING):
        assert read_layout(image) == good
    assert f"(the header says it is at LBA {last_lba(image)})" in caplog.text


def test_both_headers_bad_is_one_line_naming_the_disk(image: Path) -> None:
    last = last_lba(image)
    flip(image, SECTOR + DISK_GUID_AT)
    flip(image, last * SECTOR + DISK_GUID_AT)
    with pytest.raises(CfsbootError) as e:
        read_layout(image)
    primary = (peek_crc(image, 1), crc_of_header(peek(image, SECTOR, 92)))
    backup = (peek_crc(image, last), crc_of_header(peek(image, last * SECTOR, 92)))
    assert e.value.message == (
        f"{image}: damaged GPT: primary header (LBA 1): GPT header CRC mismatch "
        f"(stored {primary[0]:#010x}, computed {primary[1]:#010x}); backup header (LBA {last}): "
        f"GPT header CRC mismatch (stored {backup[0]:#010x}, computed {backup[1]:#010x})"
    )
    assert "\n" not in str(e.value)


def test_cli_says_it_in_one_line(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flip(image, SECTOR + DISK_GUID_AT)
    with open(image, "r+b") as f:
        f.truncate(4 * MiB)  # the backup header is gone with the end of the disk
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    argv = ["status", "--sysroot", str(sysroot), "--run-dir", str(tmp_path), "--esp", str(image)]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"cfsboot: {image}: damaged GPT: primary header (LBA 1): GPT header CRC")
    assert err.endswith(
        f"backup header (LBA {4 * MiB // SECTOR - 1}): no GPT signature; check it with "
        "`sfdisk --verify`; gdisk can rebuild one header from the other\n"
    )


def test_no_gpt(tmp_path: Path) -> None:
    img = tmp_path / "blank.img"
    img.write_bytes(bytes(MiB))
    with pytest.raises(CfsbootError, match=f"^{img} has no GPT partition table$"):
        read_layout(img)
    with pytest.raises(CfsbootError, match="cannot read the partition table of .*: No such file"):
        read_layout(tmp_path / "missing.img")


def test_absurd_entry_geometry_with_a_valid_crc(image: Path) -> None:
    """A header whose CRC is right but whose entry size is not 128 x 2^n is refused."""
    for lba in (1, last_lba(image)):
        raw = bytearray(peek(image, lba * SECTOR, 92))
        raw[84:88] = struct.pack("<I", 100)  # SizeOfPartitionEntry
        raw[HEADER_CRC_AT : HEADER_CRC_AT + 4] = struct.pack("<I", crc_of_header(bytes(raw)))
        poke(image, lba * SECTOR, bytes(raw))
    with pytest.raises(CfsbootError, match=r"damaged GPT header \(entry size 100, 128 entries\)"):
        read_layout(image)


def _spec_gpt(sector: int, disk_sectors: int) -> bytes:
    """A GPT with one ESP, written here from UEFI spec Tables 5-5 and 5-6 with struct."""
    entries_lbas = 16384 // sector  # 128 entries of 128 bytes
    disk = bytearray(disk_sectors * sector)
    entry = struct.pack(
        "<16s16sQQQ72s",
        bytes.fromhex("28732ac11ff8d211ba4b00a0c93ec93b"),  # ESP, EFI_GUID byte order
        bytes(range(16)),
        256,
        511,
        0,
        "EFI".encode("utf-16-le"),
    )
    array = entry + bytes(127 * 128)
    last = disk_sectors - 1
    for my, alt, entries_at in ((1, last, 2), (last, 1, last - entries_lbas)):
        header = struct.pack(
            "<8sIIII QQQQ 16s QIII",
            b"EFI PART",
            0x10000,
            92,
            0,
            0,
            my,
            alt,
            2 + entries_lbas,
            last - entries_lbas - 1,
            bytes(range(16, 32)),
            entries_at,
            128,
            128,
            zlib.crc32(array),
        )
        header = header[:16] + struct.pack("<I", zlib.crc32(header)) + header[20:]
        disk[my * sector : my * sector + 92] = header
        disk[entries_at * sector : entries_at * sector + len(array)] = array
    return bytes(disk)


def test_4k_sectors(tmp_path: Path) -> None:
    img = tmp_path / "4k.img"
    img.write_bytes(_spec_gpt(4096, 1024))
    layout = read_layout(img)
    assert layout.sector_size == 4096
    assert layout.disk_uuid == "13121110-1514-1716-1819-1A1B1C1D1E1F"
    assert [(p.number, p.start, p.size, p.type_uuid, p.name) for p in layout.partitions] == [
        (1, 256 * 4096, 256 * 4096, ESP, "EFI")
    ]


@pytest.mark.parametrize("entry_lba", [1 << 60, (1 << 64) - 1])
def test_entry_array_past_any_disk_with_right_crcs(image: Path, entry_lba: int) -> None:
    """Both headers rewritten (CRCs right) to put the entry array at an LBA that fits no
    off_t: the seek was a ValueError out of read_layout (an internal error)."""
    last = last_lba(image)
    for lba in (1, last):
        fields = dict(HEADER.parse(peek(image, lba * SECTOR, HEADER_SIZE)))
        fields.pop("_io", None)
        fields["partition_entry_lba"] = entry_lba
        fields["header_crc32"] = 0
        header = HEADER.build(fields)
        fields["header_crc32"] = crc_of_header(header)
        poke(image, lba * SECTOR, HEADER.build(fields))
    with pytest.raises(CfsbootError) as e:
        read_layout(image)
    past = "the partition entry array lies past the end of the disk"
    assert e.value.message == (
        f"{image}: damaged GPT: primary header (LBA 1): {past}; backup header (LBA {last}): {past}"
    )


def test_a_partition_that_ends_before_it_starts_is_damage(tmp_path: Path) -> None:
    """Its size was negative, for losetup --sizelimit and mtools to fail on later."""
    entry = {
        "partition_type_guid": gpt.ESP_TYPE,
        "unique_partition_guid": "01234567-89AB-CDEF-0123-456789ABCDEF",
        "starting_lba": 40,
        "ending_lba": 39,
        "attributes": 0,
        "partition_name": "EFI System",
    }
    table = gpt.build_entries([entry], 4, ENTRY_SIZE)
    fields = {
        "header_crc32": 0,
        "my_lba": 1,
        "alternate_lba": 63,
        "first_usable_lba": 34,
        "last_usable_lba": 62,
        "disk_guid": "21234567-89AB-CDEF-0123-456789ABCDEF",
        "partition_entry_lba": 2,
        "number_of_partition_entries": 4,
        "size_of_partition_entry": ENTRY_SIZE,
    }
    disk = tmp_path / "disk.img"
    header = gpt.build_header(fields, table)
    disk.write_bytes(
        (bytes(SECTOR) + header.ljust(SECTOR, b"\0") + table).ljust(64 * SECTOR, b"\0")
    )
    with pytest.raises(CfsbootError) as e:
        read_layout(disk)
    assert e.value.message == (
        f"{disk}: damaged GPT: primary header (LBA 1): partition 1 ends at LBA 39, before it"
        " starts (40); backup header (LBA 63): no GPT signature"
    )
