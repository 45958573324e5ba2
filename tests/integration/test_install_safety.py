"""`install` must not destroy data by accident: refusals on real loop devices and files.

Each target carries what the refusal is about, made by the real tool (mkfs.ext4,
sfdisk, mkswap + swapon, mount); cfsboot must say what it found in one line, exit 1
and leave the target's first MiB as it was. `--wipe` overrides a signature, never a use.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.gates import missing_capability
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

SIZE = 3 << 30
# No lazy inode-table or journal initialisation: the kernel would go on writing to a
# fresh filesystem after mount, and a test comparing the device's bytes would race it.
EAGER = ("-E", "lazy_itable_init=0,lazy_journal_init=0")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os_image(tmp_path_factory.mktemp("img") / "v1", "1")


def sh(*argv: str | Path) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "backing.img"
    path.write_bytes(b"")
    path.chmod(0o600)
    with open(path, "r+b") as f:
        f.truncate(SIZE)
    return path


@pytest.fixture
def loop(backing: Path) -> Iterator[Path]:
    try:
        dev = Path(sh("losetup", "--find", "--show", backing))
    except subprocess.CalledProcessError as e:
        missing_capability(f"cannot attach a loop device: {e.stderr.strip()}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(1 << 20)


def refused(image: str, target: Path, *extra: str) -> str:
    before = head(target)
    proc = cfsboot("install", "to-disk", image, target, "-q", *extra, check=False)
    line = one_line_error(proc)
    assert head(target) == before  # nothing written
    return line


def test_ext4_refused_without_wipe_and_installed_with_it(image: str, loop: Path) -> None:
    sh("mkfs.ext4", "-q", "-F", *EAGER, loop)
    line = refused(image, loop)
    assert f"refusing to install to {loop}: it has an ext4 filesystem" in line
    assert "add --wipe" in line
    cfsboot("install", "to-disk", image, loop, "-q", "--wipe")
    assert sh("blkid", "-p", "-o", "value", "-s", "PTTYPE", loop) == "gpt"


def test_partition_table_refused(image: str, loop: Path) -> None:
    subprocess.run(
        ["sfdisk", "--quiet", loop], input=b"label: gpt\nsize=8MiB, type=L\n", check=True
    )
    line = refused(image, loop)
    assert f"{loop}: it has a gpt partition table;" in line


def test_mounted_refused_even_with_wipe(image: str, loop: Path, tmp_path: Path) -> None:
    sh("mkfs.ext4", "-q", "-F", *EAGER, loop)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", loop, mnt)
    try:
        line = refused(image, loop, "--wipe")
    finally:
        sh("umount", mnt)
    assert f"it is mounted at {mnt} ({loop}), has an ext4 filesystem" in line
    assert "--wipe does not override this" in line


def test_image_file_attached_and_mounted_refused(
    image: str, backing: Path, loop: Path, tmp_path: Path
) -> None:
    """The image file itself is named: its loop device is mounted, so it is in use."""
    sh("mkfs.ext4", "-q", "-F", *EAGER, loop)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", loop, mnt)
    try:
        line = refused(image, backing, "--wipe")
    finally:
        sh("umount", mnt)
    assert f"refusing to install to {backing}: it is mounted at {mnt} ({loop})" in line


def test_swap_refused_even_with_wipe(image: str, loop: Path) -> None:
    sh("mkswap", "-q", loop)
    on = subprocess.run(["swapon", loop], capture_output=True, text=True, check=False)
    if on.returncode != 0:
        missing_capability(f"cannot swapon a loop device here: {on.stderr.strip()}")
    try:
        line = refused(image, loop, "--wipe")
    finally:
        sh("swapoff", loop)
    assert f"it holds swap ({loop}), has a swap signature" in line


def test_image_file_with_filesystem_refused(image: str, backing: Path) -> None:
    sh("mkfs.ext4", "-q", "-F", *EAGER, backing)
    line = refused(image, backing, "--size", "3G")
    assert f"refusing to install to {backing}: it has an ext4 filesystem" in line


def test_missing_target_without_size(image: str, tmp_path: Path) -> None:
    proc = cfsboot("install", "to-disk", image, tmp_path / "none.img", check=False)
    assert "does not exist; add --size SIZE" in one_line_error(proc)


@pytest.mark.parametrize("given", [(), ("--filesystem", "ext4", "--bootloader", "systemd")])
def test_missing_image_refused_before_the_disk_is_touched(
    backing: Path, given: tuple[str, ...], tmp_path: Path
) -> None:
    """A mistyped IMGREF, with the flags that skip reading the image's install config."""
    sh("mkfs.ext4", "-q", "-F", *EAGER, backing)
    missing = tmp_path / "nothing"
    line = refused(f"oci:{missing}", backing, "--wipe", *given)
    assert line == f"cfsboot: {missing} is not a directory (oci: expects an OCI image layout)"
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", backing) == "ext4"  # not wiped
    new = tmp_path / "new.img"
    proc = cfsboot("install", "to-disk", f"oci:{missing}", new, "--size", "3G", *given,
                   check=False)  # fmt: skip
    one_line_error(proc, contains="is not a directory")
    assert not new.exists()


def test_failed_install_removes_the_image_file_it_made(image: str, tmp_path: Path) -> None:
    """A file --size created and the install then failed on (here: too small for the ESP
    and a root) is removed: left partitioned, a second try would need --wipe."""
    new = tmp_path / "new.img"
    proc = cfsboot("install", "to-disk", image, new, "--size", "300M", "-q", check=False)
    assert one_line_error(proc) == (
        f"cfsboot: {new} is too small: 300 MiB, and a 1024 MiB ESP and a root of at least"
        " 64 MiB need 1090 MiB; use a larger disk or --size"
    )
    assert not new.exists()


def test_empty_ssh_keys_refused_before_the_disk_is_wiped(
    image: str, backing: Path, tmp_path: Path
) -> None:
    sh("mkfs.ext4", "-q", "-F", *EAGER, backing)
    keys = tmp_path / "authorized_keys"
    keys.write_text("\n")
    line = refused(image, backing, "--wipe", "--filesystem", "ext4",
                   "--root-ssh-authorized-keys", str(keys))  # fmt: skip
    assert line == f"cfsboot: {keys} has no keys"
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", backing) == "ext4"


def test_luks_only_image_config_refused_before_the_disk_is_wiped(
    backing: Path, tmp_path: Path
) -> None:
    config = b'[install]\nblock = ["tpm2-luks"]\n'
    ref = os_image(tmp_path / "luks", "1", extra={"usr/lib/bootc/install/00-luks.toml": config})
    sh("mkfs.ext4", "-q", "-F", *EAGER, backing)
    line = refused(ref, backing, "--wipe")
    assert line == (
        "cfsboot: the image's install config allows only tpm2-luks block setups;"
        " cfsboot installs a plain root filesystem (direct)"
    )
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", backing) == "ext4"
