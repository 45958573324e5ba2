"""FAT images for the tests of cfsboot.boot.fat: made with mkfs.vfat, filled and read
back with mtools, checked with `fsck.vfat -n` (tests/unit/test_fat.py)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from cfsboot.boot.esp import MtoolsEsp
from cfsboot.boot.fat import DIR_ENTRY, FatFs

MiB = 1 << 20
GPT_OFFSET = MiB  # where a GPT disk image's first partition starts
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
NAME, NTRES = 0, 2  # DIR_ENTRY fields that stay with the name
FSCK_CRASH_LEFTOVERS = (
    # What a crash between the two steps may leave: b's deleted entries and its now
    # unreferenced clusters. Never a cross-link, a bad '.'/'..' or a duplicate name.
    "Orphaned long file name part",
    "Auto-deleting.",
    "Reclaimed ",
    "Free cluster summary wrong",
    "Auto-correcting.",
)


# -- helpers -----------------------------------------------------------------


def make_esp(
    tmp_path: Path,
    *,
    size_mib: int = 256,
    offset: int = 0,
    fat_bits: int = 32,
    sectors_per_cluster: int | None = None,
    name: str = "esp.img",
) -> MtoolsEsp:
    """A fresh FAT filesystem of `size_mib`, `offset` bytes into a (sparse) image file."""
    img = tmp_path / name
    with open(img, "wb") as f:
        f.truncate(offset + size_mib * MiB + (MiB if offset else 0))
    argv = ["mkfs.vfat", "-F", str(fat_bits)]
    if sectors_per_cluster:
        argv += ["-s", str(sectors_per_cluster)]
    if offset:
        argv += ["--offset", str(offset // 512)]
    subprocess.run([*argv, str(img), str(size_mib * 1024)], check=True, capture_output=True)
    return MtoolsEsp(img, offset)


def mt(esp: MtoolsEsp, tool: str, *args: str) -> str:
    proc = subprocess.run(
        [tool, "-i", esp.drive, *args], env=MTOOLS_ENV, capture_output=True, check=False
    )
    assert proc.returncode == 0, f"{tool} {args}: {proc.stderr.decode()}"
    return proc.stdout.decode()


def put(esp: MtoolsEsp, path: str, data: bytes, *, mtime: int | None = None) -> None:
    """Create a file with mcopy (as a new name, the way mtools allocates entries)."""
    src = Path(esp.image).parent / "src"
    src.write_bytes(data)
    if mtime is not None:
        os.utime(src, (mtime, mtime))
    mt(esp, "mcopy", "-m", str(src), f"::/{path}")


def mdir(esp: MtoolsEsp, path: str) -> list[str]:
    """`mdir -b`: one full path per entry, directories with a trailing '/'."""
    return sorted(mt(esp, "mdir", "-b", f"::/{path}").splitlines())


def read_tree(esp: MtoolsEsp, path: str) -> dict[str, object]:
    """Everything under `path`, read through mtools: name -> bytes, or a dict for a directory."""
    out: dict[str, object] = {}
    for e in esp.listdir(path):
        sub = f"{path}/{e.name}" if path else e.name
        out[e.name] = read_tree(esp, sub) if e.is_dir else esp.read(sub)
    return out


def partition_image(esp: MtoolsEsp) -> Path:
    """The filesystem alone (fsck.vfat has no offset option): a sparse copy of its bytes."""
    if not esp.offset:
        return esp.image
    out = esp.image.with_name(esp.image.name + ".part")
    size = esp.image.stat().st_size - esp.offset
    with open(esp.image, "rb") as src, open(out, "wb") as dst:
        dst.truncate(size)
        pos = esp.offset
        while True:
            try:
                data = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO
                break
            hole = os.lseek(src.fileno(), data, os.SEEK_HOLE)
            dst.seek(data - esp.offset)
            src.seek(data)
            dst.write(src.read(hole - data))
            pos = hole
    return out


def fsck(esp: MtoolsEsp) -> tuple[int, list[str]]:
    """`fsck.vfat -n` (check only): exit code and the lines between banner and summary."""
    proc = subprocess.run(
        ["fsck.vfat", "-n", str(partition_image(esp))], capture_output=True, check=False
    )
    lines = proc.stdout.decode().splitlines()[1:-1]
    lines = [ln.strip() for ln in lines]
    return proc.returncode, [ln for ln in lines if ln and ln != "Leaving filesystem unchanged."]


def assert_fsck_clean(esp: MtoolsEsp) -> None:
    assert fsck(esp) == (0, [])


def entry_fields(esp: MtoolsEsp, parent: str, name: str) -> tuple[object, ...]:
    """The unpacked short directory entry of `parent/name`."""
    with FatFs.open(esp.image, esp.offset) as fs:
        d = fs.directory([p for p in parent.split("/") if p])
        e = d.find(name)
        assert e is not None, name
        return DIR_ENTRY.unpack(d.slots[e.index])


def locate(esp: MtoolsEsp, parent: str, name: str) -> tuple[int, list[int]]:
    """(sector of the short entry, sectors of its LFN entries)."""
    with FatFs.open(esp.image, esp.offset) as fs:
        d = fs.directory([p for p in parent.split("/") if p])
        e = d.find(name)
        assert e is not None, name
        sector = fs.geometry.sector_of
        return sector(d.positions[e.index]), [sector(d.positions[i]) for i in e.lfn_indices]


def raw_slots(esp: MtoolsEsp, parent: str) -> tuple[bytes, ...]:
    with FatFs.open(esp.image, esp.offset) as fs:
        return fs.directory([p for p in parent.split("/") if p]).slots


def swapped(before_a: tuple[object, ...], before_b: tuple[object, ...]) -> tuple[object, ...]:
    """What a's short entry must hold after the exchange: its name, b's everything else."""
    return tuple(
        a if i in (NAME, NTRES) else b
        for i, (a, b) in enumerate(zip(before_a, before_b, strict=True))
    )


OLD_ENTRIES = {
    "bootc_debian-13-20250101-1.conf": b"title Debian 13 (old primary)\nlinux /a/vmlinuz\n",
    "bootc_debian-13-20241201-0.conf": b"title Debian 13 (old rollback)\n",
    "bootc_debian-12-0.conf": b"title Debian 12\n" * 100,  # several clusters
}
NEW_ENTRIES = {
    "bootc_debian-13-20250301-1.conf": b"title Debian 13 (new primary)\nlinux /b/vmlinuz\n",
    "bootc_debian-13-20250101-0.conf": b"title Debian 13 (new rollback)\n",
    "bootc_other-os-with-a-rather-long-identifier-1.conf": b"title other\n",
    "bootc_x.conf": b"",
}


def populate_loader(esp: MtoolsEsp) -> None:
    mt(esp, "mmd", "::/loader", "::/loader/entries", "::/loader/entries.staged")
    for name, data in OLD_ENTRIES.items():
        put(esp, f"loader/entries/{name}", data)
    for name, data in NEW_ENTRIES.items():
        put(esp, f"loader/entries.staged/{name}", data)
    put(esp, "loader/loader.conf", b"timeout 5\n")
