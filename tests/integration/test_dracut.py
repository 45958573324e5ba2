"""The dracut module in a real initramfs, built by dracut in the Debian trixie test OS.

The module and a freshly frozen setup-root are installed with
`make -C dracut-module install DESTDIR=...` into the upper layer of an overlay
of the cached trixie rootfs (which stays pristine), dracut builds the
initramfs there, and lsinitrd shows what is inside. The frozen program is then
run inside the unpacked initramfs (chrooted: the initramfs's own libc), where
its dry run must read the config file the module put there.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from cfstest.modload import load_file

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("can_mount")]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "usr/lib/cfsboot/setup-root/cfsboot-setup-root"
UNIT = "usr/lib/systemd/system/cfsboot-setup-root.service"
WANTS = "etc/systemd/system/initrd-root-fs.target.wants/cfsboot-setup-root.service"
CONFIG = "usr/lib/composefs/setup-root-conf.toml"
OSTREE_CONFIG = "usr/lib/ostree/prepare-root.conf"
DIGEST = "5e" * 64


@pytest.fixture(scope="module")
def testos() -> ModuleType:
    return load_file(REPO_ROOT / "vm-tests" / "testos.py")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make install-dracut-module` output (with a freshly frozen setup-root) plus a config."""
    tmp = tmp_path_factory.mktemp("dracut")
    freeze = load_file(REPO_ROOT / "setup-root" / "freeze.py")
    assert freeze.main(["--out", str(tmp / "frozen")]) == 0
    dest = tmp / "dest"
    subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO_ROOT / "dracut-module"),
            "install",
            f"DESTDIR={dest}",
            f"FROZEN={tmp / 'frozen' / 'cfsboot-setup-root'}",
        ],
        check=True,
        capture_output=True,
    )
    (dest / CONFIG).parent.mkdir(parents=True)
    (dest / CONFIG).write_text('[etc]\nmount = "bind"\n')
    # An image made for ostree-era bootc has ostree's too: installed, and ours wins.
    (dest / OSTREE_CONFIG).parent.mkdir(parents=True)
    (dest / OSTREE_CONFIG).write_text("[etc]\ntransient = true\n")
    return dest


def test_initramfs_contains_the_module(testos: ModuleType, staged: Path, tmp_path: Path) -> None:
    rootfs = testos.ensure_base_rootfs()
    kver = testos.kernel_version(rootfs)
    img = "/var/tmp/cfsboot-test-initrd.img"
    unpacked = "/var/tmp/unpacked"
    dry_run = [
        f"/{PROGRAM}",
        "--dry-run",
        "--cmdline",
        f"root=/dev/vda2 composefs={DIGEST}",
    ]
    script = " && ".join(
        [
            shlex.join(testos.dracut_argv(kver, img)),
            "echo @@list",
            shlex.join(["lsinitrd", img]),
            "echo @@unit",
            shlex.join(["lsinitrd", "-f", UNIT, img]),
            f"mkdir {unpacked}",
            f"cd {unpacked}",
            shlex.join(["lsinitrd", "--unpack", img]),
            "echo @@dry-run",
            shlex.join(["chroot", unpacked, *dry_run]),
        ]
    )
    upper = tmp_path / "upper"
    subprocess.run(["cp", "-a", f"{staged}/.", str(upper)], check=True)
    proc = testos.run_in_overlay(rootfs, ["sh", "-c", script], upper=upper)
    out = proc.stdout.decode()
    listing, rest = out.split("@@list\n", 1)[1].split("@@unit\n", 1)
    unit, plan = rest.split("@@dry-run\n", 1)

    names = {line.split()[-1] for line in listing.splitlines() if line.startswith(("-", "l"))}
    names |= {
        line.split()[-3] for line in listing.splitlines() if line.startswith("l") and "->" in line
    }
    for path in (PROGRAM, UNIT, WANTS, CONFIG, OSTREE_CONFIG):
        assert path in names, f"{path} not in the initramfs"
    for mod in ("fs/erofs/erofs.ko", "fs/overlayfs/overlay.ko", "drivers/block/loop.ko"):
        assert any(f"kernel/{mod}" in n for n in names), f"{mod} not in the initramfs"
    wants = next(line for line in listing.splitlines() if WANTS in line)
    assert wants.endswith(f"-> /{UNIT}")

    unit_src = (REPO_ROOT / "dracut-module/90cfsboot/cfsboot-setup-root.service").read_text()
    assert unit.strip() == unit_src.strip()

    # The frozen program ran inside the initramfs and read the config shipped there.
    lines = plan.splitlines()
    assert lines[0] == f"verify   /sysroot/composefs/images/{DIGEST} fs-verity sha512:{DIGEST}"
    assert f"clone    etc = /sysroot/state/deploy/{DIGEST}/etc" in lines
    assert lines[-2] == "rmdir    /run/cfsboot"
