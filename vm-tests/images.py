"""Ready-to-boot test guests built from the cached base rootfs (shared by tests and bench).

Each builder returns the artefacts; ``*_config`` turns them into a ``VmConfig``
for one boot (a fresh qcow2 overlay per boot keeps the built image pristine).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import diskimage
import qemu
import testos

ROOT_LABEL = "cfsroot"
ESP_MIB = 256
ROOT_MIB = 2048
# quiet: the console at full verbosity costs seconds under TCG.
# panic=-1 + QEMU's -no-reboot: a kernel panic ends the run at once.
BASE_CMDLINE = f"root=LABEL={ROOT_LABEL} rw console=ttyS0,115200 quiet panic=-1"
# Units that only cost time in a headless guest: Debian's getty-static starts
# gettys on tty2-6 when there is no logind (minbase has no dbus), measured at
# 7 s (direct) to 49 s (UEFI) of TCG time before multi-user.target.
MASKED = {"/etc/systemd/system/getty-static.service": "/dev/null"}
# systemd-gpt-auto-generator would automount the ESP, and the fsck of it
# took 35 s of the UEFI boot under TCG; the root is found by label anyway.
NO_GPT_AUTO = "systemd.gpt_auto=0"
# QEMU fw_cfg items the guest check runner reads (guest/cfsboot_check.py): the host
# picks a boot's scenarios without touching boot entries (cfsboot writes those).
FW_CFG_CHECK = "opt/cfsboot/check"
FW_CFG_POWEROFF = "opt/cfsboot/check.poweroff"


def cmdline(checks: tuple[str, ...], extra: str = "") -> str:
    """Kernel command line that runs the named guest scenarios."""
    words = [BASE_CMDLINE]
    if checks:
        words.append(f"cfsboot.check={','.join(checks)}")
    if extra:
        words.append(extra)
    return " ".join(words)


def fw_cfg_checks(checks: tuple[str, ...], *, poweroff: bool = True) -> tuple[tuple[str, str], ...]:
    """fw_cfg items that run the named scenarios (they take precedence over cfsboot.check=)."""
    if not checks:
        return ()
    items = [(FW_CFG_CHECK, ",".join(checks))]
    if not poweroff:
        items.append((FW_CFG_POWEROFF, "0"))
    return tuple(items)


@dataclass(frozen=True)
class Ext4Guest:
    """The base rootfs on a plain ext4 root, plus a trimmed initramfs."""

    rootfs: Path
    kernel: Path
    initrd: Path
    image: Path  # raw ext4 filesystem image (the whole disk is the root fs)
    timings: dict[str, float]


def build_ext4_guest(workdir: Path, rootfs: Path | None = None) -> Ext4Guest:
    """Initramfs + ext4 root image with the check unit installed, in workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = rootfs or testos.ensure_base_rootfs()
    timings: dict[str, float] = {}
    t = time.monotonic()
    initrd = testos.build_initramfs(rootfs, workdir / "initrd.img")
    timings["dracut"] = time.monotonic() - t
    t = time.monotonic()
    files = diskimage.test_os_files(rootfs, ROOT_LABEL)
    check_files, links = diskimage.check_unit_files()
    files.update(check_files)
    links.update(MASKED)
    image = diskimage.ext4_root_image(
        rootfs, workdir / "root.ext4", files=files, symlinks=links, size_mib=ROOT_MIB,
        label=ROOT_LABEL,
    )  # fmt: skip
    timings["mkfs"] = time.monotonic() - t
    return Ext4Guest(rootfs, testos.kernel_image(rootfs), initrd, image, timings)


def direct_config(
    guest: Ext4Guest,
    overlay: Path,
    checks: tuple[str, ...],
    *,
    extra_cmdline: str = "",
    fw_cfg: tuple[str, ...] = (),
    network: bool = False,
    timeout: float = 300,
) -> qemu.VmConfig:
    """Direct kernel boot of guest through a fresh qcow2 overlay of its image.

    checks go on the kernel command line, fw_cfg scenarios through QEMU fw_cfg;
    network: a NIC on QEMU user networking.
    """
    overlay.unlink(missing_ok=True)
    disk = qemu.create_overlay(guest.image, overlay)
    return qemu.VmConfig(
        disks=(disk,),
        mode=qemu.BootMode.DIRECT,
        kernel=guest.kernel,
        initrd=guest.initrd,
        append=cmdline(checks, extra_cmdline),
        fw_cfg=fw_cfg_checks(fw_cfg),
        network=network,
        timeout=timeout,
    )


@dataclass(frozen=True)
class UefiGuest:
    """GPT disk: ESP with systemd-boot + one BLS type 1 entry, and the ext4 root."""

    disk: Path
    timings: dict[str, float]


def build_uefi_guest(
    guest: Ext4Guest,
    workdir: Path,
    checks: tuple[str, ...],
    extra_cmdline: str = "",
    *,
    gpt_auto: bool = False,
) -> UefiGuest:
    """Wrap an Ext4Guest's root into a GPT disk booted by OVMF + systemd-boot.

    gpt_auto: let systemd discover (and automount) the ESP; off by default, see NO_GPT_AUTO.
    """
    if not gpt_auto:
        extra_cmdline = f"{NO_GPT_AUTO} {extra_cmdline}".strip()
    t = time.monotonic()
    esp = diskimage.systemd_boot_esp(
        guest.rootfs,
        workdir / "esp.vfat",
        kernel=guest.kernel,
        initrd=guest.initrd,
        options=cmdline(checks, extra_cmdline),
    )
    disk = diskimage.gpt_disk(
        workdir / "disk-uefi.raw",
        [
            diskimage.Partition(esp, diskimage.ESP_TYPE, "esp", ESP_MIB),
            diskimage.Partition(guest.image, diskimage.ROOT_X86_64_TYPE, "root", ROOT_MIB),
        ],
    )
    esp.unlink()
    return UefiGuest(disk, {"esp+gpt": time.monotonic() - t})


def uefi_config(guest: UefiGuest, overlay: Path, *, timeout: float = 300) -> qemu.VmConfig:
    overlay.unlink(missing_ok=True)
    disk = qemu.create_overlay(guest.disk, overlay)
    return qemu.VmConfig(disks=(disk,), mode=qemu.BootMode.UEFI, timeout=timeout)


def disk_config(
    disk: Path,
    overlay: Path | None,
    checks: tuple[str, ...],
    *,
    poweroff: bool = True,
    network: bool = False,
    timeout: float = 300,
) -> qemu.VmConfig:
    """UEFI boot of a whole disk (e.g. from `cfsboot install to-disk`), scenarios via fw_cfg.

    overlay: a fresh qcow2 overlay to boot through (disk stays as it is), or None to
    boot disk itself, so that what the guest changes stays for the next boot.
    """
    if overlay is not None:
        overlay.unlink(missing_ok=True)
        booted = qemu.create_overlay(disk, overlay)
    else:
        booted = qemu.Disk(
            disk, qemu.DiskFormat.QCOW2 if disk.suffix == ".qcow2" else qemu.DiskFormat.RAW
        )
    return qemu.VmConfig(
        disks=(booted,),
        mode=qemu.BootMode.UEFI,
        fw_cfg=fw_cfg_checks(checks, poweroff=poweroff),
        network=network,
        timeout=timeout,
    )
