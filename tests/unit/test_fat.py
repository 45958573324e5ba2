"""cfsboot.boot.fat: exchanging two names by editing the FAT directory, checked with mtools, fsck.

Images are made with mkfs.vfat (FAT32 as cfsboot creates it, FAT16 and FAT12 too),
populated and read back with mtools, and checked with `fsck.vfat -n`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from cfsboot.boot import fat
from cfsboot.boot.esp import EspError, MtoolsEsp
from cfsboot.boot.fat import DIR_ENTRY, LFN_ENTRY, FatError, FatFs
from cfstest.fatimage import (
    FSCK_CRASH_LEFTOVERS,
    GPT_OFFSET,
    NAME,
    NEW_ENTRIES,
    OLD_ENTRIES,
    assert_fsck_clean,
    entry_fields,
    fsck,
    locate,
    make_esp,
    mdir,
    mt,
    partition_image,
    populate_loader,
    put,
    raw_slots,
    read_tree,
    swapped,
)

pytestmark = pytest.mark.usefixtures("fat_tools")

# -- the exchange, end to end ----------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "size_mib"),
    [(0, 256), (GPT_OFFSET, 256), (GPT_OFFSET, 1024)],
    ids=["256MiB", "256MiB-at-1MiB", "1GiB-at-1MiB"],
)
def test_exchange_boot_entry_directories(tmp_path: Path, offset: int, size_mib: int) -> None:
    esp = make_esp(tmp_path, offset=offset, size_mib=size_mib)
    populate_loader(esp)
    assert locate(esp, "loader", "entries")[0] == locate(esp, "loader", "entries.staged")[0]
    before = {n: entry_fields(esp, "loader", n) for n in ("entries", "entries.staged")}
    slots_before = raw_slots(esp, "loader")

    esp.exchange("loader/entries", "loader/entries.staged")

    assert read_tree(esp, "loader") == {
        "entries": NEW_ENTRIES,
        "entries.staged": OLD_ENTRIES,
        "loader.conf": b"timeout 5\n",
    }
    assert mdir(esp, "loader") == [
        "::/loader/entries.staged/",
        "::/loader/entries/",
        "::/loader/loader.conf",
    ]
    assert mdir(esp, "loader/entries") == sorted(f"::/loader/entries/{n}" for n in NEW_ENTRIES)
    # Each short entry kept its name (and NT case bits) and took the other's target.
    a, b = before["entries"], before["entries.staged"]
    assert entry_fields(esp, "loader", "entries") == swapped(a, b)
    assert entry_fields(esp, "loader", "entries.staged") == swapped(b, a)
    # Only those two slots changed: LFN entries, loader.conf, `.` and `..` are as they were.
    slots_after = raw_slots(esp, "loader")
    assert sum(x != y for x, y in zip(slots_before, slots_after, strict=True)) == 2
    # Inside the directories `.` still points to the directory itself and `..` to the root (0).
    with FatFs.open(esp.image, esp.offset) as fs:
        loader = fs.directory(["loader"])
        for name in ("entries", "entries.staged"):
            e = loader.find(name)
            assert e is not None
            dot, dotdot = (
                DIR_ENTRY.unpack(s) for s in fs.read_directory(e.first_cluster).slots[:2]
            )
            assert (dot[NAME], dot[7] << 16 | dot[10]) == (b".          ", e.first_cluster)
            parent = fs.directory([]).find("loader")
            assert parent is not None
            assert (dotdot[NAME], dotdot[7] << 16 | dotdot[10]) == (
                b"..         ",
                parent.first_cluster,
            )
    assert_fsck_clean(esp)

    # Exchanging back restores every byte of the directory.
    esp.exchange("loader/entries", "loader/entries.staged")
    assert raw_slots(esp, "loader") == slots_before
    assert read_tree(esp, "loader/entries") == OLD_ENTRIES
    assert_fsck_clean(esp)


def test_exchange_two_files_keeps_each_contents_metadata(tmp_path: Path) -> None:
    esp = make_esp(tmp_path, offset=GPT_OFFSET)
    mt(esp, "mmd", "::/EFI", "::/EFI/debian")
    big = bytes(range(256)) * 40  # 10240 bytes, 20 clusters
    put(esp, "EFI/debian/grub.cfg", b"set timeout=5\n", mtime=1577959200)  # 2020-01-02 10:00
    put(esp, "EFI/debian/grub.cfg.staged", big, mtime=1614861240)  # 2021-03-04 12:34
    put(esp, "EFI/debian/empty.staged", b"", mtime=1614861240)  # no cluster at all

    esp.exchange("EFI/debian/grub.cfg", "EFI/debian/grub.cfg.staged")
    assert esp.read("EFI/debian/grub.cfg") == big
    assert esp.read("EFI/debian/grub.cfg.staged") == b"set timeout=5\n"
    listing = [ln.rstrip() for ln in mt(esp, "mdir", "::/EFI/debian").splitlines()]
    # The modification time travels with the contents; names keep their form.
    assert listing[2:4] == ["Directory for ::/EFI/debian", ""]
    assert listing[6:9] == [
        "grub     cfg     10240 2021-03-04  12:34",
        "GRUBCF~1 STA        14 2020-01-02  10:00  grub.cfg.staged",
        "EMPTY~1  STA         0 2021-03-04  12:34  empty.staged",
    ]
    assert_fsck_clean(esp)

    esp.exchange("EFI/debian/grub.cfg", "EFI/debian/empty.staged")
    assert esp.read("EFI/debian/grub.cfg") == b""
    assert esp.read("EFI/debian/empty.staged") == big
    assert_fsck_clean(esp)


def test_exchange_short_and_long_names_case_insensitively(tmp_path: Path) -> None:
    esp = make_esp(tmp_path)
    mt(esp, "mmd", "::/EFI", "::/EFI/Linux", "::/EFI/Linux/entries")
    put(esp, "EFI/Linux/KERNEL", b"8.3 upper case, no LFN")
    put(esp, "EFI/Linux/bootc_composefs-0123456789abcdef.efi", b"a long name")
    put(esp, "EFI/Linux/entries/x", b"in a directory with a lower-case 8.3 name")
    with FatFs.open(esp.image, esp.offset) as fs:
        d = fs.directory(["EFI", "Linux"])
        kernel, entries = d.find("kernel"), d.find("entries")
        assert kernel is not None and entries is not None
        assert (kernel.long_name, kernel.lfn_indices) == (None, ())
        assert (entries.short_name, entries.long_name) == ("entries", None)  # NT case bits

    # A file (long name) and a directory (8.3 name) change places.
    esp.exchange("EFI/Linux/Entries", "EFI/Linux/BOOTC_COMPOSEFS-0123456789ABCDEF.EFI")
    assert esp.read("EFI/Linux/entries") == b"a long name"
    assert esp.read("EFI/Linux/bootc_composefs-0123456789abcdef.efi/x") == (
        b"in a directory with a lower-case 8.3 name"
    )
    esp.exchange("EFI/Linux/kernel", "EFI/Linux/entries")
    assert read_tree(esp, "EFI/Linux") == {
        "KERNEL": b"a long name",
        "bootc_composefs-0123456789abcdef.efi": {
            "x": b"in a directory with a lower-case 8.3 name",
        },
        "entries": b"8.3 upper case, no LFN",
    }
    # Names are what they were: case kept, no LFN appeared or vanished.
    assert mdir(esp, "EFI/Linux") == [
        "::/EFI/Linux/KERNEL",
        "::/EFI/Linux/bootc_composefs-0123456789abcdef.efi/",
        "::/EFI/Linux/entries",
    ]
    assert_fsck_clean(esp)


def test_exchange_deep_in_a_directory_of_many_clusters(tmp_path: Path) -> None:
    esp = make_esp(tmp_path)  # 512-byte clusters: 16 slots each
    mt(esp, "mmd", "::/d")
    files = {f"a-file-with-long-name-{i:03d}.conf": f"file {i}\n".encode() for i in range(60)}
    for name, data in files.items():
        put(esp, f"d/{name}", data)
    mt(esp, "mmd", "::/d/zz-entries", "::/d/zz-entries.staged")
    put(esp, "d/zz-entries/1.conf", b"one")
    put(esp, "d/zz-entries.staged/2.conf", b"two")
    with FatFs.open(esp.image, esp.offset) as fs:
        d = fs.directory(["d"])
        assert len(d.slots) // (fs.geometry.cluster_size // DIR_ENTRY.size) >= 10  # clusters
    sector, _ = locate(esp, "d", "zz-entries")
    assert locate(esp, "d", "zz-entries.staged")[0] == sector

    esp.exchange("d/zz-entries", "d/zz-entries.staged")
    assert read_tree(esp, "d") == {
        **files,
        "zz-entries": {"2.conf": b"two"},
        "zz-entries.staged": {"1.conf": b"one"},
    }
    assert_fsck_clean(esp)


def spread_directory(esp: MtoolsEsp, *, room: bool) -> dict[str, bytes]:
    """loader/ with `entries` in its first sector and `entries.staged` many sectors later.

    With `room`, the file right after `entries` is deleted so that its first sector
    has free slots, as after a boot entry tool removed a leftover.
    """
    mt(esp, "mmd", "::/loader", "::/loader/entries")
    put(esp, "loader/entries/old.conf", b"old")
    fillers = {f"random-seed-backup-{i:02d}.bin": bytes([i]) * (i * 37) for i in range(30)}
    for name, data in fillers.items():
        put(esp, f"loader/{name}", data)
    mt(esp, "mmd", "::/loader/entries.staged")
    put(esp, "loader/entries.staged/new.conf", b"new")
    if room:
        mt(esp, "mdel", "::/loader/random-seed-backup-00.bin")
        del fillers["random-seed-backup-00.bin"]
    return fillers


@pytest.mark.parametrize("sectors_per_cluster", [1, 8])
def test_exchange_across_sectors_moves_b_next_to_a(
    tmp_path: Path, sectors_per_cluster: int
) -> None:
    esp = make_esp(tmp_path, size_mib=512, sectors_per_cluster=sectors_per_cluster)
    fillers = spread_directory(esp, room=True)
    sector_a, _ = locate(esp, "loader", "entries")
    assert locate(esp, "loader", "entries.staged")[0] > sector_a

    esp.exchange("loader/entries", "loader/entries.staged")
    assert read_tree(esp, "loader") == {
        **fillers,
        "entries": {"new.conf": b"new"},
        "entries.staged": {"old.conf": b"old"},
    }
    short, lfns = locate(esp, "loader", "entries.staged")
    assert (short, lfns) == (sector_a, [sector_a, sector_a])
    assert_fsck_clean(esp)


def test_exchange_across_sectors_with_b_straddling_two_sectors(tmp_path: Path) -> None:
    esp = make_esp(tmp_path, offset=GPT_OFFSET)
    mt(esp, "mmd", "::/d")
    # Each name takes 3 slots after `.` and `..`: the 5th file's LFN entries end sector 0
    # and its short entry starts sector 1.
    files = {f"long-name-file-{i:02d}.conf": f"{i}".encode() * (i + 1) for i in range(8)}
    for name, data in files.items():
        put(esp, f"d/{name}", data)
    mt(esp, "mdel", "::/d/long-name-file-00.conf")
    del files["long-name-file-00.conf"]
    a, b = "long-name-file-01.conf", "long-name-file-04.conf"
    sector_a, _ = locate(esp, "d", a)
    short_b, lfn_b = locate(esp, "d", b)
    assert short_b != sector_a and lfn_b == [sector_a, sector_a]  # in the directory's 2nd cluster

    esp.exchange(f"d/{a}", f"d/{b}")
    assert read_tree(esp, "d") == {**files, a: files[b], b: files[a]}
    assert locate(esp, "d", b) == (sector_a, [sector_a, sector_a])
    assert_fsck_clean(esp)


def test_exchange_across_sectors_without_room_is_refused_untouched(tmp_path: Path) -> None:
    esp = make_esp(tmp_path)
    spread_directory(esp, room=False)
    before = raw_slots(esp, "loader")
    with pytest.raises(
        EspError,
        match=r"^cannot exchange loader/entries and loader/entries.staged on the ESP "
        r"\(.*esp.img\): not atomic: the entries of entries and entries.staged are in "
        r"different sectors of loader, and entries's has no 3 free slots to take "
        r"entries.staged's; recreate entries.staged",
    ):
        esp.exchange("loader/entries", "loader/entries.staged")
    assert raw_slots(esp, "loader") == before
    assert_fsck_clean(esp)


class PowerCut(Exception):
    """The machine lost power: this write and every later one never reach the disk."""


def cut_power_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    real = FatFs._write_sector
    done = 0

    def write(self: FatFs, sector: int, changes: Mapping[int, bytes]) -> None:
        nonlocal done
        if done == writes:
            raise PowerCut
        done += 1
        real(self, sector, changes)

    monkeypatch.setattr(FatFs, "_write_sector", write)


@pytest.mark.parametrize("writes", [0, 1, 2, 3])
def test_power_cut_during_a_cross_sector_exchange_never_loses_a(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    esp = make_esp(tmp_path)
    mt(esp, "mmd", "::/d")
    files = {f"long-name-file-{i:02d}.conf": f"{i}".encode() * (i + 1) for i in range(8)}
    for name, data in files.items():
        put(esp, f"d/{name}", data)
    mt(esp, "mdel", "::/d/long-name-file-00.conf")
    del files["long-name-file-00.conf"]
    # b straddles two sectors: delete its short entry, then its LFN entries, then commit.
    a, b = "long-name-file-01.conf", "long-name-file-04.conf"
    cut_power_after(monkeypatch, writes)

    if writes < 3:
        with pytest.raises(PowerCut):
            esp.exchange(f"d/{a}", f"d/{b}")
    else:
        esp.exchange(f"d/{a}", f"d/{b}")
    monkeypatch.undo()

    others = {n: v for n, v in files.items() if n not in (a, b)}
    expected = {
        0: ({**others, a: files[a], b: files[b]}, []),
        # b is gone, its clusters unreferenced; a and every other name are intact.
        1: ({**others, a: files[a]}, ['Orphaned long file name part "' + b + '"']),
        2: ({**others, a: files[a]}, []),
        3: ({**others, a: files[b], b: files[a]}, []),
    }[writes]
    assert read_tree(esp, "d") == expected[0]
    rc, lines = fsck(esp)
    problems = [ln for ln in lines if not ln.startswith(FSCK_CRASH_LEFTOVERS)]
    assert problems == []
    assert [ln for ln in lines if ln.startswith("Orphaned")] == expected[1]
    assert (rc == 0) == (writes in (0, 3))
    if writes in (1, 2):
        assert "Reclaimed 1 unused cluster (512 bytes)." in lines
    assert esp.recover() == []


# -- FAT16 and FAT12 (fixed root directory) -------------------------------------


@pytest.mark.parametrize(("fat_bits", "size_mib"), [(16, 32), (12, 4)])
def test_exchange_on_fat16_and_fat12(tmp_path: Path, fat_bits: int, size_mib: int) -> None:
    esp = make_esp(tmp_path, size_mib=size_mib, fat_bits=fat_bits, offset=GPT_OFFSET)
    with FatFs.open(esp.image, esp.offset) as fs:
        assert fs.geometry.fat_type == f"FAT{fat_bits}"
    populate_loader(esp)
    put(esp, "grub.cfg", b"menu 1\n" * 300)
    put(esp, "grub.cfg.staged", b"menu 2\n")

    esp.exchange("grub.cfg", "grub.cfg.staged")  # in the fixed root directory
    esp.exchange("loader/entries", "loader/entries.staged")
    assert read_tree(esp, "") == {
        "grub.cfg": b"menu 2\n",
        "grub.cfg.staged": b"menu 1\n" * 300,
        "loader": {
            "entries": NEW_ENTRIES,
            "entries.staged": OLD_ENTRIES,
            "loader.conf": b"timeout 5\n",
        },
    }
    assert_fsck_clean(esp)


# -- refusals --------------------------------------------------------------------


def test_exchange_errors(tmp_path: Path) -> None:
    esp = make_esp(tmp_path)
    mt(esp, "mmd", "::/loader", "::/loader/entries", "::/other")
    put(esp, "loader/a.conf", b"a")
    with pytest.raises(EspError, match="loader/entries.staged does not exist"):
        esp.exchange("loader/entries", "loader/entries.staged")
    with pytest.raises(EspError, match="not in the same directory"):
        esp.exchange("loader/entries", "other")
    with pytest.raises(EspError, match="with itself"):
        esp.exchange("loader/a.conf", "loader//a.conf")
    # Different spellings of one FAT name.
    with pytest.raises(EspError, match=r": A.CONF and a.conf are the same entry in loader$"):
        esp.exchange("loader/A.CONF", "loader/a.conf")
    assert_fsck_clean(esp)


def test_not_a_fat_filesystem() -> None:
    with pytest.raises(FatError, match="^not a FAT filesystem: no valid boot sector"):
        fat.parse_boot_sector(bytes(512))
    with pytest.raises(FatError, match="truncated"):
        fat.parse_boot_sector(bytes(100))


def test_boot_sector_geometry(tmp_path: Path) -> None:
    esp = make_esp(tmp_path, size_mib=512, sectors_per_cluster=8, offset=GPT_OFFSET)
    with open(esp.image, "rb") as f:
        f.seek(GPT_OFFSET)
        geo = fat.parse_boot_sector(f.read(512))
    # mkfs.vfat: 32 reserved sectors, two FATs; 512 MiB in 4 KiB clusters.
    assert (geo.fat_type, geo.bytes_per_sector, geo.sectors_per_cluster) == ("FAT32", 512, 8)
    assert (geo.fat_offset, geo.root_cluster) == (32 * 512, 2)
    assert geo.data_offset == geo.root_dir_offset == geo.fat_offset + 2 * 1024 * 512
    # fsck.vfat's own count: "esp.img.part: 0 files, 1/130811 clusters".
    proc = subprocess.run(["fsck.vfat", "-n", str(partition_image(esp))], capture_output=True)
    assert proc.stdout.decode().splitlines()[-1].endswith(f"/{geo.cluster_count} clusters")
    assert geo.cluster_count == 130811


# -- directory parsing -------------------------------------------------------------


def short_entry(name11: bytes, *, attr: int = fat.ATTR_ARCHIVE, cluster: int = 0) -> bytes:
    return DIR_ENTRY.pack(name11, attr, 0, 0, 0, 0, 0, cluster >> 16, 0, 0, cluster & 0xFFFF, 0)


def lfn_entries(name: str, checksum: int) -> list[bytes]:
    """The LFN entries for `name`, in on-disk order (last part first)."""
    units = name.encode("utf-16-le") + b"\0\0"
    units += b"\xff" * (-len(units) % 26)
    parts = [units[i : i + 26] for i in range(0, len(units), 26)]
    out = []
    for n, part in enumerate(parts, 1):
        order = n | (fat.LAST_LONG_ENTRY if n == len(parts) else 0)
        out.append(
            LFN_ENTRY.pack(
                order, part[:10], fat.ATTR_LONG_NAME, 0, checksum, part[10:22], 0, part[22:]
            )
        )
    return out[::-1]


def test_short_names_and_checksum() -> None:
    assert fat.short_name_text(b"README  TXT", 0) == "README.TXT"
    assert fat.short_name_text(b"README  TXT", fat.NTRES_LOWER_BASE) == "readme.TXT"
    assert fat.short_name_text(b"ENTRIES    ", fat.NTRES_LOWER_BASE | fat.NTRES_LOWER_EXT) == (
        "entries"
    )
    assert fat.short_name_text(b"\x05BC     TXT", 0) == "\u03c3BC.TXT"  # 0xE5 in cp437
    # fatgen103's ChkSum, worked by hand for the first bytes: rotate right, then add.
    assert fat.lfn_checksum(b"\x00" * 10 + b"\x01") == 1
    # 1, then ten rotations right of an 8-bit value: 1 -> 0x80 -> 0x40 ... -> 1 -> 0x80 -> 0x40.
    assert fat.lfn_checksum(b"\x01" + b"\x00" * 10) == 0x40


def test_checksums_match_what_mtools_writes(tmp_path: Path) -> None:
    esp = make_esp(tmp_path)
    for name in ("entries.staged", "bootc_debian-13-1.conf", "x" * 200 + ".conf", "Mixed.Case"):
        put(esp, name, b"")
    with FatFs.open(esp.image, esp.offset) as fs:
        d = fs.directory([])
        assert sorted(e.name for e in d.entries) == sorted(
            ["entries.staged", "bootc_debian-13-1.conf", "x" * 200 + ".conf", "Mixed.Case"]
        )
        for e in d.entries:
            name11 = DIR_ENTRY.unpack(d.slots[e.index])[NAME]
            assert {LFN_ENTRY.unpack(d.slots[i])[4] for i in e.lfn_indices} == {
                fat.lfn_checksum(name11)
            }


def test_parse_directory_ignores_what_does_not_belong() -> None:
    good = b"ENTRIE~1STA"
    wrong = b"WRONG~1 TXT"
    slots = [
        short_entry(b".          ", attr=fat.ATTR_DIRECTORY, cluster=5),
        short_entry(b"..         ", attr=fat.ATTR_DIRECTORY),
        short_entry(b"ESP        ", attr=fat.ATTR_VOLUME_ID),
        *lfn_entries("entries.staged", fat.lfn_checksum(good)),
        short_entry(good, attr=fat.ATTR_DIRECTORY, cluster=0x12345),
        # LFN entries whose checksum is another name's: the short name stands alone.
        *lfn_entries("not-mine.txt", fat.lfn_checksum(good)),
        short_entry(wrong),
        # An orphaned LFN part, then a deleted entry.
        *lfn_entries("orphan-name-that-is-long.txt", 0)[1:],
        short_entry(b"LOADER  CON"),
        bytes([fat.SLOT_FREE]) + short_entry(b"DELETED TXT")[1:],
        short_entry(b"LAST       "),
        bytes(32),  # end of directory: nothing after counts
        short_entry(b"GHOST      "),
    ]
    d = fat.parse_directory(range(0, 32 * len(slots), 32), slots)
    assert [(e.name, e.short_name, e.lfn_indices, e.is_dir) for e in d.entries] == [
        ("entries.staged", "ENTRIE~1.STA", (3, 4), True),
        ("WRONG~1.TXT", "WRONG~1.TXT", (), False),
        ("LOADER.CON", "LOADER.CON", (), False),
        ("LAST", "LAST", (), False),
    ]
    assert d.entries[0].first_cluster == 0x12345
    assert d.end == len(slots) - 2
    assert d.find("ENTRIES.STAGED") is d.entries[0]
    assert d.find("entrie~1.sta") is d.entries[0]
    assert d.find("not-mine.txt") is None
    assert d.is_free(d.end) and d.is_free(d.end + 1) and not d.is_free(0)
