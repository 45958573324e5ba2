"""Full disks, for real: a small loop-mounted ext4 root and a small tmpfs ESP (issue 15).

- an image the manifest says cannot fit is refused before it is read, with the figures;
- an image that compresses far better than the estimate assumes runs out of space in
  the middle of its import: one line saying what to free, and the repository as it
  was (same files, `cfsboot fsck` clean);
- a deployment whose kernel and initrd the ESP cannot hold is refused before its
  state or its files are written.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System
from cfstest.ocibuild import Compression, Entry, Layout, tar_chunks
from cfstest.ocirepo import snapshot
from cfstest.osimages import os_entries, os_image

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

MIB = 1 << 20
GC_HINT = "free space there; `cfsboot gc` removes the images and objects no deployment needs"


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB ext4 filesystem, loop-mounted."""
    image = tmp_path / "root.img"
    with open(image, "wb") as f:
        f.truncate(96 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    mnt = tmp_path / "root"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _install(tmp: Path, root: Path, esp: Path, imgref: str) -> System:
    esp.mkdir(exist_ok=True)
    cfsboot("install", "to-filesystem", imgref, root, "--esp", esp, "-q")
    return System(root, esp, tmp / "run")


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _image(path: Path, files: list[Entry], compression: Compression) -> str:
    out = Layout(path)
    base = out.add_layer(tar_chunks(os_entries("1")))
    out.add_image([base, out.add_layer(tar_chunks(files), compression)])
    return f"oci:{path}:latest"


def _fsck_clean(system: System) -> None:
    proc = system.cfs("fsck", "--json", check=False)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, doc


def test_image_that_cannot_fit_is_refused_before_it_is_read(
    tmp_path: Path, small_root: Path
) -> None:
    system = _install(tmp_path, small_root, tmp_path / "esp", os_image(tmp_path / "v1", "1"))
    # 40 MiB that does not compress: about 120 MiB estimated, on ~90 MiB free.
    noise = [Entry(f"usr/share/noise{i}", data=os.urandom(4 * MIB)) for i in range(10)]
    big = _image(tmp_path / "big", noise, Compression.GZIP)
    before = snapshot(small_root)
    proc = system.cfs("switch", big, check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        f"cfsboot: not enough free space on the filesystem of {small_root / 'composefs'}"
        f" for importing {big}: it needs about "
    )
    assert line.endswith(f" is free; {GC_HINT}")
    assert snapshot(small_root) == before
    _fsck_clean(system)


def test_full_disk_in_the_middle_of_an_import_keeps_the_repository(
    tmp_path: Path, small_root: Path
) -> None:
    system = _install(tmp_path, small_root, tmp_path / "esp", os_image(tmp_path / "v1", "1"))
    free = _free(small_root)
    # Files that compress ~1000:1 (each its own 16-byte pattern): the estimate from the
    # manifest is small, the objects are more than the filesystem has left.
    # Every third file is past the in-memory limit (4 MiB): written through a temp file.
    sizes = [5 * MIB if i % 3 == 0 else MIB for i in range(free // (2 * MIB) + 8)]
    files = [
        Entry(f"usr/share/f{i}", data=i.to_bytes(16, "big") * (size // 16))
        for i, size in enumerate(sizes)
    ]
    assert sum(sizes) > free
    imgref = _image(tmp_path / "packed", files, Compression.GZIP)
    before = snapshot(small_root)
    proc = system.cfs("switch", imgref, check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    [line] = proc.stderr.splitlines()
    repo = small_root / "composefs"
    assert line.startswith(f"cfsboot: no space left on the filesystem of {repo} (")
    assert line.endswith(f" free now) while importing {imgref}; nothing of it was kept; {GC_HINT}")
    assert snapshot(small_root) == before
    _fsck_clean(system)
    # And once there is room (here: a smaller image), the next import works.
    system.cfs("switch", os_image(tmp_path / "v2", "2"), "-q")
    _fsck_clean(system)


@pytest.fixture
def small_esp(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 1600 KiB as the ESP: room for one kernel+initrd pair (234 KiB) and the
    1 MiB margin after systemd-boot's two copies (195 KiB), not for a second pair."""
    mnt = tmp_path / "esp"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "esp", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_esp_without_room_for_the_new_kernel_is_refused(tmp_path: Path, small_esp: Path) -> None:
    root = tmp_path / "sysroot"
    root.mkdir()
    system = _install(tmp_path, root, small_esp, os_image(tmp_path / "v1", "1", kernel="k1"))
    before = snapshot(small_esp), snapshot(root / "state")
    same_kernel = os_image(tmp_path / "v2", "2", kernel="k1")
    other_kernel = os_image(tmp_path / "v3", "3", kernel="k2")
    proc = system.cfs("switch", other_kernel, check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        f"cfsboot: not enough free space on the ESP {small_esp} for staging {other_kernel}:"
        " it needs about 0.2 MiB (its kernel and initrd 0.2 MiB) and 1.0 MiB to spare, "
    )
    assert line.endswith(f" MiB is free; {GC_HINT}")
    assert (snapshot(small_esp), snapshot(root / "state")) == before
    # The same kernel and initrd objects as the booted deployment's: shared, no room needed.
    system.cfs("switch", same_kernel, "-q")
    assert len(list((small_esp / "EFI" / "Linux").iterdir())) == 1
