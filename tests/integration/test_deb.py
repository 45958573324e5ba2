"""The Debian package: `make deb`, lintian, and an install into the trixie test OS.

The package is installed with dpkg into an overlay of the cached trixie rootfs
(which already has a kernel, so the postinst builds its initramfs with the
cfsboot module), lsinitrd shows the module in it, and the kernel hook is run as
a kernel package runs it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cfstest.modload import load_file

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("can_mount")]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_lintian_is_clean(deb: Path) -> None:
    proc = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert (proc.returncode, tags) == (0, [])


def test_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True)
    paths = {line.split()[5].removeprefix(".") for line in listing.stdout.splitlines()}
    for path in (
        "/usr/bin/cfsboot",
        "/usr/lib/python3/dist-packages/cfsboot/cli.py",
        "/usr/lib/python3/dist-packages/cfsboot/commands/container.py",
        "/usr/lib/python3/dist-packages/setuproot/main.py",
        "/usr/lib/cfsboot/freeze.py",
        "/usr/lib/cfsboot/cfsboot-kernel-hook",
        "/usr/lib/dracut/modules.d/90cfsboot/module-setup.sh",
        "/usr/lib/dracut/modules.d/90cfsboot/cfsboot-setup-root.service",
        "/usr/lib/dracut/dracut.conf.d/50-cfsboot.conf",
        "/usr/lib/systemd/system/cfsboot-finalize-staged.service",
        "/usr/lib/systemd/system/cfsboot-check.service",
        # Boot assessment: the health checks boot-complete.target requires, acting on a
        # failed boot, blessing on GRUB and the drop-in for systemd-bless-boot.
        "/usr/lib/systemd/system/cfsboot-health-check.service",
        "/usr/lib/systemd/system/boot-complete.target.requires/cfsboot-health-check.service",
        "/usr/lib/systemd/system/cfsboot-assess-boot.service",
        "/usr/lib/systemd/system/multi-user.target.wants/cfsboot-assess-boot.service",
        "/usr/lib/systemd/system/cfsboot-bless-boot.service",
        "/usr/lib/systemd/system/systemd-bless-boot.service.d/50-cfsboot.conf",
        # Automatic updates (shipped, not enabled: no .wants link).
        "/usr/lib/systemd/system/cfsboot-fetch-apply-updates.service",
        "/usr/lib/systemd/system/cfsboot-fetch-apply-updates.timer",
        "/usr/share/man/man8/cfsboot.8.gz",
        "/etc/kernel/postinst.d/zz-cfsboot",
        "/etc/kernel/postrm.d/zz-cfsboot",
    ):
        assert path in paths, path
    # No byte code in the package (py3compile makes it at install), no setup-root in PATH.
    assert not [p for p in paths if p.endswith(".pyc")]
    # The EROFS build's modules as pure Python (debian/rules): no compiled module.
    assert "/usr/lib/python3/dist-packages/cfsboot/composefs/erofs/layout.py" in paths
    assert not [p for p in paths if p.endswith(".so")]
    assert "/usr/bin/cfsboot-setup-root" not in paths
    assert not [p for p in paths if p.endswith(".wants/cfsboot-fetch-apply-updates.timer")]
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Architecture", "Depends"], capture_output=True, text=True
    ).stdout
    assert "Architecture: all" in fields
    for dep in (
        "python3-zstandard",
        "python3-pyroute2",  # the update timer's route check
        "dracut",
        "skopeo",
        "systemd-boot-efi | grub-efi-amd64-bin | grub-efi-arm64-bin",
    ):
        assert dep in fields, dep


def test_installs_into_trixie_and_builds_the_initramfs(deb: Path, tmp_path: Path) -> None:
    testos = load_file(REPO_ROOT / "vm-tests" / "testos.py")
    rootfs = testos.ensure_base_rootfs()
    kver = testos.kernel_version(rootfs)
    modules = f"/usr/lib/modules/{kver}"
    hook = "/etc/kernel/postinst.d/zz-cfsboot"
    script = " && ".join(
        [
            "dpkg -i /var/tmp/cfsboot.deb >/dev/null",
            "echo @@list",
            shlex.join(["lsinitrd", f"{modules}/initramfs.img"]),
            "echo @@lint",
            "cfsboot container lint --skip var --skip boot-dir",
            "echo @@pyc",
            "ls /usr/lib/python3/dist-packages/cfsboot/__pycache__",
            # A kernel package's postinst: dracut's hook wrote /boot/initrd.img-KVER just
            # before, so the cfsboot hook only copies it (and the kernel).
            f"echo fresh > /boot/initrd.img-{kver}",
            f"DEB_MAINT_PARAMS=configure {hook} {kver} /boot/vmlinuz-{kver}",
            "echo @@hook",
            f"cat {modules}/initramfs.img",
            f"cmp /boot/vmlinuz-{kver} {modules}/vmlinuz",
            f"/etc/kernel/postrm.d/zz-cfsboot {kver} /boot/vmlinuz-{kver}",
            f"test ! -e {modules}/initramfs.img && test ! -e {modules}/vmlinuz",
        ]
    )
    upper = tmp_path / "upper"
    (upper / "var/tmp").mkdir(parents=True)
    shutil.copy(deb, upper / "var/tmp/cfsboot.deb")
    proc = testos.run_in_overlay(rootfs, ["sh", "-c", script], upper=upper)
    out = proc.stdout.decode()
    listing, rest = out.split("@@list\n", 1)[1].split("@@lint\n", 1)
    lint, rest = rest.split("@@pyc\n", 1)
    pyc, hooked = rest.split("@@hook\n", 1)
    # The module and setup-root, frozen with trixie's own python3 (3.13).
    for path in (
        "usr/lib/cfsboot/setup-root/cfsboot-setup-root",
        "usr/lib/cfsboot/setup-root/python",
        "usr/lib/cfsboot/setup-root/lib.zip",
        "usr/lib/systemd/system/cfsboot-setup-root.service",
        "etc/systemd/system/initrd-root-fs.target.wants/cfsboot-setup-root.service",
        "usr/lib/modules/" + kver + "/kernel/fs/erofs/erofs.ko.xz",
    ):
        assert path in listing, path
    assert "cpython-313-x86_64-linux-gnu.so" in listing
    assert lint == ""
    assert "cli.cpython-313.pyc" in pyc.split()
    assert hooked == "fresh\n"
