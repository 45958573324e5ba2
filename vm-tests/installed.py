"""Disks installed by `cfsboot install to-disk`, and boots of them with expectations.

Shared by the lifecycle VM tests and the boot benchmark. Expected values reach
the guest's scenarios through the fw_cfg item opt/cfsboot/expect (JSON), so
the boot entries cfsboot wrote stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import images
import osimage
import qemu
from cfstest import cli

EXPECT = "opt/cfsboot/expect"
DISK_SIZE = "6G"


def install(image: osimage.OsImage, disk: Path, *extra: str) -> float:
    """`cfsboot install to-disk` of a test OS variant onto a new image file; seconds taken."""
    return install_ref(image.ref, disk, *extra)


def install_ref(ref: str, disk: Path, *extra: str) -> float:
    """`cfsboot install to-disk` of any image onto a new image file; seconds taken.

    The path every VM test and `boot_image.py` share.
    """
    started = time.monotonic()
    cli.run(
        "install", "to-disk", ref, disk,
        "--size", DISK_SIZE,
        "--root-label", images.ROOT_LABEL,
        "--boot-timeout", "0",
        "-q",
        *extra,
    )  # fmt: skip
    return time.monotonic() - started


def new_overlay(base: Path, path: Path) -> Path:
    """A fresh qcow2 overlay of `base` (raw or qcow2) at `path`."""
    path.unlink(missing_ok=True)
    fmt = qemu.DiskFormat.QCOW2 if base.suffix == ".qcow2" else qemu.DiskFormat.RAW
    qemu.create_overlay(base, path, fmt)
    return path


def boot(
    disk: Path,
    results: Path,
    checks: tuple[str, ...],
    expect: dict[str, Any],
    *,
    network: bool = False,
    timeout: float = 420,
    **kw: Any,
) -> qemu.BootResult:
    """UEFI boot of `disk` itself (what the guest writes stays) running `checks`."""
    config = images.disk_config(disk, None, checks, network=network, timeout=timeout)
    fw = (*config.fw_cfg, (EXPECT, json.dumps(expect, separators=(",", ":"))))
    result = qemu.boot(dataclasses.replace(config, fw_cfg=fw), results, **kw)
    print(f"\n{results.name}: {checks} in {result.wall_seconds:.0f} s")
    return result


def booted_ok(
    disk: Path, results: Path, checks: tuple[str, ...], expect: dict[str, Any], **kw: Any
) -> qemu.BootResult:
    result = boot(disk, results, checks, expect, **kw)
    qemu.check_passed(result, checks)
    return result


def secure_disk(image: osimage.OsImage, workdir: Path, results: Path) -> tuple[Path, Path]:
    """(raw disk as installed, qcow2 overlay of it after `fsverity enable-repo` in the guest).

    The installing host has no fs-verity, so the installed repository is
    insecure; the provisioning boot makes it secure, as an admin would.
    """
    disk = workdir / "disk.raw"
    print(f"\ninstall to-disk: {install(image, disk):.1f} s")
    secure = new_overlay(disk, workdir / "secure.qcow2")
    booted_ok(secure, results / "provision", ("provision",), {"v1": image.image_id})
    return disk, secure
