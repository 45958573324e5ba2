"""cfsboot.boot.fatformat: the boot sector (BPB), good and bad.

Boot sectors are written here with struct at fatgen103's offsets ("Boot
Sector and BPB Structure", "FAT32 Structure Starting at Offset 36"),
independently of the construct declarations under test. The geometry of the
FAT32 one is mkfs.vfat's for a 512 MiB ESP with 4 KiB clusters.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from cfsboot.boot import fatformat
from cfsboot.boot.fatformat import FatError, FatType, parse_boot_sector

# Offsets (fatgen103) of the fields the tests change.
BYTS_PER_SEC, SEC_PER_CLUS, RSVD_SEC_CNT, NUM_FATS, ROOT_ENT_CNT = 11, 13, 14, 16, 17
TOT_SEC16, FAT_SZ16, TOT_SEC32 = 19, 22, 32
FAT_SZ32, EXT_FLAGS, ROOT_CLUS = 36, 40, 44
SIGNATURE = 510


def boot_sector(**fields: int) -> bytes:
    """FAT32, 512 MiB: 512-byte sectors, 8 per cluster, 32 reserved, 2 FATs of 1024."""
    f: dict[str, int] = {
        "byts_per_sec": 512,
        "sec_per_clus": 8,
        "rsvd": 32,
        "num_fats": 2,
        "root_ent": 0,
        "tot16": 0,
        "fatsz16": 0,
        "tot32": 512 * 2048,
        "fatsz32": 1024,
        "ext_flags": 0,
        "root_clus": 2,
        "sig": 0xAA55,
    }
    f.update(fields)
    data = bytearray(512)
    data[0:11] = b"\xeb\x58\x90mkfs.fat"
    bpb = (f["byts_per_sec"], f["sec_per_clus"], f["rsvd"], f["num_fats"], f["root_ent"])
    struct.pack_into("<HBHBHHBH", data, BYTS_PER_SEC, *bpb, f["tot16"], 0xF8, f["fatsz16"])
    struct.pack_into("<I", data, TOT_SEC32, f["tot32"])
    struct.pack_into("<IHHI", data, FAT_SZ32, f["fatsz32"], f["ext_flags"], 0, f["root_clus"])
    struct.pack_into("<H", data, SIGNATURE, f["sig"])
    return bytes(data)


def fat16_sector(**fields: int) -> bytes:
    """FAT16: 4 sectors per cluster, 1 reserved, 2 FATs of 64 sectors, 512 root entries."""
    base: dict[str, Any] = {
        "sec_per_clus": 4,
        "rsvd": 1,
        "root_ent": 512,
        "tot16": 32768,
        "fatsz16": 64,
        "tot32": 0,
        "fatsz32": 0,
        "root_clus": 0,
    }
    return boot_sector(**{**base, **fields})


def test_fat32_geometry() -> None:
    geo = parse_boot_sector(boot_sector())
    first_data = 32 + 2 * 1024
    assert geo == fatformat.Geometry(
        fat_type=FatType.FAT32,
        bytes_per_sector=512,
        sectors_per_cluster=8,
        fat_offset=32 * 512,
        root_dir_offset=first_data * 512,
        root_dir_entries=0,
        root_cluster=2,
        data_offset=first_data * 512,
        cluster_count=(512 * 2048 - first_data) // 8,
    )
    # A longer buffer (a whole cluster read) parses the same.
    assert parse_boot_sector(boot_sector() + bytes(512)) == geo


def test_fat32_active_fat() -> None:
    geo = parse_boot_sector(boot_sector(ext_flags=0x81))
    assert geo.fat_offset == (32 + 1024) * 512


def test_fat16_geometry() -> None:
    geo = parse_boot_sector(fat16_sector())
    root_dir_sectors = 512 * 32 // 512
    assert (geo.fat_type, geo.root_dir_entries, geo.root_cluster) == (FatType.FAT16, 512, 0)
    assert geo.root_dir_offset == (1 + 2 * 64) * 512
    assert geo.data_offset == (1 + 2 * 64 + root_dir_sectors) * 512
    assert geo.cluster_count == (32768 - 1 - 128 - root_dir_sectors) // 4


@pytest.mark.parametrize(
    ("sector", "message"),
    [
        (boot_sector(sig=0x55AA), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(byts_per_sec=513), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(byts_per_sec=256), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(sec_per_clus=3), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(sec_per_clus=0), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(rsvd=0), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(num_fats=0), "not a FAT filesystem: no valid boot sector (BPB)"),
        (boot_sector(fatsz32=0), "not a FAT filesystem: the BPB's sizes do not add up"),
        (boot_sector(tot32=32 + 2048), "not a FAT filesystem: the BPB's sizes do not add up"),
        (
            boot_sector(root_ent=512),
            "not a FAT filesystem: FAT32 cluster count with a FAT16 BPB",
        ),
        (boot_sector(ext_flags=0x82), "FAT32 BPB names FAT 2 active of 2"),
        (boot_sector(root_clus=1), "FAT32 root directory at invalid cluster 1"),
        (boot_sector(root_clus=200000), "FAT32 root directory at invalid cluster 200000"),
        (fat16_sector(root_ent=0), "not a FAT filesystem: FAT16 without a root directory"),
        (boot_sector()[:511], "not a FAT filesystem: the boot sector is truncated"),
    ],
)
def test_bad_boot_sectors(sector: bytes, message: str) -> None:
    with pytest.raises(FatError) as e:
        parse_boot_sector(sector)
    assert str(e.value) == message


def test_declared_sizes_are_fatgen103_s() -> None:
    assert fatformat.BPB.sizeof() == 36
    assert fatformat.BPB32.sizeof() == 54
    assert fatformat.BOOT_SECTOR.sizeof() == 512
