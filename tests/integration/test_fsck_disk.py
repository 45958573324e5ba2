"""`cfsboot fsck` on a disk image made by `cfsboot install to-disk`, its ESP read through mtools.

The root filesystem is loop-mounted at its offset; the ESP is found from the
disk behind the loop device, as on an offline disk an admin would check. Two
deployments (D2 the default), then damage of every kind fsck repairs, checked,
repaired, and checked again by reading the disk independently (mtools).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cfsboot.boot.disk import read_layout
from cfsboot.composefs.repository import Repository
from cfsboot.image.importer import import_image
from cfsboot.image.info import load_image_info
from cfstest.cli import run as cfsboot
from cfstest.osimages import os_image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("can_mount", "fat_tools"),
]

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass
class Disk:
    image: Path
    root: Path
    run: Path
    esp_offset: int

    def cfs(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cfsboot(*args, "--sysroot", self.root, "--run-dir", self.run, check=check)

    def fsck(self, *args: str) -> tuple[int, dict[str, Any]]:
        out = self.cfs("fsck", "--json", *args, check=False)
        doc: dict[str, Any] = json.loads(out.stdout)
        assert doc["exitCode"] == out.returncode, out.stderr
        return out.returncode, doc

    def mtools(self, tool: str, *args: str) -> bytes:
        return subprocess.run(
            [tool, "-i", f"{self.image}@@{self.esp_offset}", *args],
            capture_output=True,
            env=MTOOLS_ENV,
            check=True,
        ).stdout

    def entries(self) -> dict[str, bytes]:
        names = self.mtools("mdir", "-b", "::/loader/entries").decode().split()
        return {n.rsplit("/", 1)[-1]: self.mtools("mtype", n) for n in names if n.endswith(".conf")}


def problems(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (s["group"], p["code"], p["path"]) for s in doc["sections"] for p in s["problems"]
    )


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("images")
    return [os_image(base / "v1", "1", kernel="k1"), os_image(base / "v2", "2", kernel="k2")]


@pytest.fixture
def disk(tmp_path: Path, refs: list[str]) -> Iterator[Disk]:
    image = tmp_path / "disk.img"
    cfsboot("install", "to-disk", refs[0], image, "--size", "2G", "-q")
    layout = read_layout(image)
    root_part = layout.partitions[1]
    mnt = tmp_path / "root"
    mnt.mkdir()
    options = f"loop,offset={root_part.start},sizelimit={root_part.size}"
    subprocess.run(["mount", "-o", options, image, mnt], check=True)
    try:
        d = Disk(image, mnt, tmp_path / "run", layout.esp.start)
        d.cfs("switch", refs[1], "-q")
        d.cfs("finalize-staged")
        yield d
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_fsck_repairs_a_damaged_disk(disk: Disk, refs: list[str]) -> None:
    d1, d2 = (import_image(r, None).image_digest for r in refs)
    rc, doc = disk.fsck()
    assert rc == 0, doc
    [_, _, esp] = doc["sections"]
    assert esp["where"] == f"{disk.image}@@{disk.esp_offset}"  # found from the root's disk
    assert esp["summary"] == "systemd-boot, 2 entries"

    kernel = f"EFI/Linux/bootc_composefs-{d1}/vmlinuz"
    good_kernel = disk.mtools("mtype", f"::/{kernel}")
    disk.mtools("mdel", f"::/{kernel}")
    leftover = disk.root / "tmp-leftover"
    leftover.write_bytes(b"half")
    disk.mtools("mcopy", str(leftover), "::/loader/.entries.cfsboot-tmp-0123")
    objects = disk.root / "composefs/objects"
    (objects / ".staging-4242-abcd").mkdir()
    info = load_image_info(Repository.open(disk.root / "composefs"), d2)
    assert info is not None and info.boot.kernels[0].vmlinuz.digest is not None
    k2 = info.boot.kernels[0].vmlinuz.digest
    victim = objects / k2[:2] / k2[2:]
    good = victim.read_bytes()
    victim.write_bytes(good[:100] + b"!" + good[101:])
    rel = victim.relative_to(disk.root / "composefs").as_posix()

    rc, doc = disk.fsck()
    assert rc == 1
    assert problems(doc) == [
        ("esp", "boot-file-missing", kernel),
        ("esp", "leftover", "loader/.entries.cfsboot-tmp-0123"),
        ("repository", "leftover", "objects/.staging-4242-abcd"),
        ("repository", "object-corrupt", rel),
    ]
    entries = disk.entries()
    rc, doc = disk.fsck("--repair")
    assert rc == 0, doc
    assert sorted(doc["repaired"]) == [
        f"copied the boot files of {d1[:16]}… again: EFI/Linux/bootc_composefs-{d1}",
        f"image {d2[:16]}…: fetched {refs[1]} again; 1 damaged or missing object(s) written again",
        "recovered interrupted ESP writes: removed loader/.entries.cfsboot-tmp-0123",
        "removed objects/.staging-4242-abcd",
    ]
    assert doc["notRepaired"] == []
    assert disk.mtools("mtype", f"::/{kernel}") == good_kernel
    assert victim.read_bytes() == good
    assert disk.entries() == entries
    loader = disk.mtools("mdir", "-b", "-a", "::/loader").decode()
    assert "cfsboot-tmp" not in loader


def test_fsck_drops_an_entry_that_boots_nothing(disk: Disk, refs: list[str]) -> None:
    d1, d2 = (import_image(r, None).image_digest for r in refs)
    entries = disk.entries()
    subprocess.run(["rm", "-rf", disk.root / "state/deploy" / d1], check=True)
    rc, doc = disk.fsck("--repair")
    assert rc == 0, doc
    assert doc["repaired"] == [f"removed the boot entries of {d1[:16]}…"]
    assert disk.entries() == {n: t for n, t in entries.items() if d1.encode() not in t}
    status = json.loads(disk.cfs("status", "--json").stdout)["status"]
    assert status["booted"]["composefs"]["verity"] == d2 and status["rollback"] is None
