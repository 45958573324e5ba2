from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cfsboot.boot import disk
from cfsboot.boot.disk import DiskPlan, MiB, create_disk, create_image_file, read_layout
from cfsboot.boot.esp import MtoolsEsp
from cfsboot.errors import CfsbootError
from cfstest.gates import require_tools

X86_ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
FS_UUID = "0a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"

SFDISK_JSON: dict[str, Any] = {
    "partitiontable": {
        "label": "gpt",
        "id": "43305a92-c6a2-7742-812d-9e37e2c4ce72",
        "device": "disk.img",
        "unit": "sectors",
        "firstlba": 2048,
        "lastlba": 409566,
        "sectorsize": 512,
        "partitions": [
            {
                "node": "disk.img1",
                "start": 2048,
                "size": 131072,
                "type": ESP,
                "uuid": "321de76e-4982-924f-a08b-8c49761be9d8",
                "name": "EFI-SYSTEM",
            },
            {
                "node": "disk.img2",
                "start": 133120,
                "size": 274433,  # not a whole number of 4 KiB blocks
                "type": X86_ROOT,
                "uuid": "5e1ef794-6732-1043-8699-e87a58c145a8",
                "name": "root",
            },
        ],
    }
}


class FakeRun:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []

    def __call__(self, argv: Sequence[Any], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        args = [os.fspath(a) for a in argv]
        self.calls.append((args, kw.get("input")))
        return subprocess.CompletedProcess(args, 0, b"", b"")


def _layout_from_sfdisk(target: Path) -> disk.DiskLayout:
    t = SFDISK_JSON["partitiontable"]
    parts = tuple(
        disk.Partition(
            i, p["start"] * 512, p["size"] * 512, p["type"], p["uuid"].upper(), p["name"]
        )
        for i, p in enumerate(t["partitions"], 1)
    )
    return disk.DiskLayout(target, 512, str(t["id"]).upper(), parts)


def test_exact_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun()
    monkeypatch.setattr(disk, "run", fake)
    monkeypatch.setattr(disk, "read_layout", _layout_from_sfdisk)
    img = tmp_path / "disk.img"
    create_image_file(img, 200 * MiB)
    d = create_disk(
        img,
        DiskPlan(esp_size=64 * MiB, arch="x86_64"),
        root_fs_uuid=FS_UUID.upper(),
        esp_volume_id="ab12cd34",
    )
    target = str(img)
    assert fake.calls == [
        (
            [
                "sfdisk",
                "--quiet",
                "--wipe",
                "always",
                "--wipe-partitions",
                "always",
                target,
            ],
            (
                "label: gpt\n"
                f'size=64MiB, type={ESP}, name="EFI-SYSTEM"\n'
                f'type={X86_ROOT}, name="root"\n'
            ).encode(),
        ),
        (
            [
                "mkfs.vfat",
                "-F",
                "32",
                "-n",
                "EFI-SYSTEM",
                "-i",
                "AB12CD34",
                "--offset",
                "2048",
                target,
                "65536",
            ],
            None,
        ),
        (
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-b",
                "4096",
                "-L",
                "root",
                "-U",
                FS_UUID,
                "-O",
                "verity",
                "-E",
                f"offset={133120 * 512},nodiscard",
                target,
                f"{274433 * 512 // 4096 * 4}k",
            ],
            None,
        ),
    ]
    assert (d.esp_volume_id, d.root_fs_uuid) == ("AB12-CD34", FS_UUID)
    assert (d.esp.start, d.esp.size, d.esp.name) == (MiB, 64 * MiB, "EFI-SYSTEM")
    assert (d.root.number, d.root.uuid) == (2, "5E1EF794-6732-1043-8699-E87A58C145A8")
    assert d.layout.disk_uuid == "43305A92-C6A2-7742-812D-9E37E2C4CE72"


def test_script_options() -> None:
    plan = DiskPlan(esp_size=512 * MiB, root_size=4096 * MiB, arch="aarch64", bios_boot=True)
    assert plan.sfdisk_script() == (
        "label: gpt\n"
        'size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="BIOS-BOOT"\n'
        f'size=512MiB, type={ESP}, name="EFI-SYSTEM"\n'
        'size=4096MiB, type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, name="root"\n'
    )
    assert DiskPlan().esp_size == 1024 * MiB


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (DiskPlan(esp_size=MiB + 1, arch="x86_64"), "ESP size 1048577 is not a positive whole"),
        (DiskPlan(root_size=0, arch="x86_64"), "root size 0 is not a positive whole number"),
        (DiskPlan(arch="pdp11"), "no Discoverable Partitions root type known for architecture"),
    ],
)
def test_bad_plans_fail_before_touching_the_disk(
    plan: DiskPlan, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun()
    monkeypatch.setattr(disk, "run", fake)
    img = tmp_path / "disk.img"
    img.touch()
    with pytest.raises(CfsbootError, match=message):
        create_disk(img, plan)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"esp_volume_id": "xyz"}, "invalid FAT volume id 'xyz'"),
        ({"root_fs_uuid": "nope"}, "invalid filesystem UUID 'nope'"),
    ],
)
def test_bad_ids(kw: dict[str, str], message: str, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.touch()
    with pytest.raises(CfsbootError, match=message):
        create_disk(img, DiskPlan(arch="x86_64"), **kw)
    with pytest.raises(CfsbootError, match="does not exist"):
        create_disk(tmp_path / "none.img")


def test_real_image(tmp_path: Path) -> None:
    require_tools(
        {
            "sfdisk": "fdisk",
            "mkfs.vfat": "dosfstools",
            "mkfs.ext4": "e2fsprogs",
            "dumpe2fs": "e2fsprogs",
            "mcopy": "mtools",
        }
    )
    img = tmp_path / "disk.img"
    size = 200 * MiB
    create_image_file(img, size)
    d = create_disk(
        img,
        DiskPlan(esp_size=64 * MiB, arch="x86_64"),
        root_fs_uuid=FS_UUID,
        esp_volume_id="1234ABCD",
    )
    assert img.stat().st_size == size  # nothing written past the end (backup GPT intact)
    assert img.stat().st_blocks * 512 < 32 * MiB  # still sparse
    subprocess.run(["sfdisk", "--verify", str(img)], check=True, capture_output=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert [(p["start"], p["size"], p["type"], p["name"]) for p in parts] == [
        (2048, 64 * 2048, ESP, "EFI-SYSTEM"),
        (2048 + 64 * 2048, parts[1]["size"], X86_ROOT, "root"),
    ]
    # The GPT reader agrees with sfdisk, to the byte.
    assert read_layout(img) == d.layout
    assert [
        (p.start // 512, p.size // 512, p.type_uuid, p.name, p.uuid) for p in d.layout.partitions
    ] == [(p["start"], p["size"], p["type"], p["name"], p["uuid"].upper()) for p in parts]
    assert d.layout.disk_uuid == table["partitiontable"]["id"].upper()
    # e2fsprogs opens a filesystem at an offset with NAME?offset=BYTES.
    sb = subprocess.run(
        ["dumpe2fs", "-h", f"{img}?offset={d.root.start}"], capture_output=True, text=True
    ).stdout
    fields = dict(line.split(":", 1) for line in sb.splitlines() if ":" in line)
    assert "verity" in fields["Filesystem features"].split()
    assert fields["Filesystem UUID"].strip() == FS_UUID
    assert fields["Filesystem volume name"].strip() == "root"
    assert fields["Block size"].strip() == "4096"
    assert int(fields["Block count"]) * 4096 <= d.root.size
    assert int(fields["Block count"]) * 4096 > d.root.size - 4096
    # The ESP is FAT32 with our serial and label, and mtools can write to it in place.
    esp = MtoolsEsp(img, d.esp.start)
    info = subprocess.run(
        ["minfo", "-i", esp.drive, "::"],
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "serial number: 1234ABCD\n" in info
    assert 'disk label="EFI-SYSTEM "\n' in info
    assert 'disk type="FAT32   "\n' in info
    assert d.esp_volume_id == "1234-ABCD"
    esp.mkdir("loader/entries")
    esp.write("loader/loader.conf", b"timeout 5\n")
    assert esp.read("loader/loader.conf") == b"timeout 5\n"
    subprocess.run(["sfdisk", "--verify", str(img)], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("size", "plan", "message"),
    [
        (
            300,
            DiskPlan(arch="x86_64"),
            "300 MiB, and a 1024 MiB ESP and a root of at least 64 MiB need 1090 MiB",
        ),  # fmt: skip
        (
            1089,
            DiskPlan(arch="x86_64"),
            "1089 MiB, and a 1024 MiB ESP and a root of at least 64 MiB need 1090 MiB",
        ),  # fmt: skip
        (
            1090,
            DiskPlan(arch="x86_64", bios_boot=True),
            "1090 MiB, and a 1024 MiB ESP and a root of at least 64 MiB need 1091 MiB",
        ),  # fmt: skip
        (
            2048,
            DiskPlan(arch="x86_64", root_size=2048 * MiB),
            "2048 MiB, and a 1024 MiB ESP and a root of 2048 MiB need 3074 MiB",
        ),  # fmt: skip
    ],
)
def test_too_small_a_disk_is_refused_before_sfdisk(
    size: int, plan: DiskPlan, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sfdisk would cut the ESP or the root short to fit (a 300 MiB disk: a 297 MiB ESP
    and a 1 MiB root) and the install would fail later, with the disk partitioned."""
    fake = FakeRun()
    monkeypatch.setattr(disk, "run", fake)
    img = tmp_path / "disk.img"
    create_image_file(img, size * MiB)
    hint = "; use a larger disk or --size"
    with pytest.raises(CfsbootError, match=f"^{img} is too small: {message}{hint}$"):
        create_disk(img, plan)
    assert fake.calls == []


def test_a_disk_that_just_fits_is_partitioned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun()
    monkeypatch.setattr(disk, "run", fake)
    monkeypatch.setattr(disk, "read_layout", _layout_from_sfdisk)
    img = tmp_path / "disk.img"
    create_image_file(img, 1090 * MiB)
    create_disk(img, DiskPlan(arch="x86_64"))
    assert fake.calls[0][0][0] == "sfdisk"
