"""The boot loader itself, for `cfsboot fsck`: the firmware has something to start.

`cfsboot install` copies the image's systemd-boot to `EFI/systemd/` and to the
removable path `EFI/BOOT/BOOTX64.EFI` (GRUB: to the removable path only). With
neither on the ESP no entry boots, however complete the menu is. Only their
presence is checked: a bootloader update (`bootctl update`) may put another
build there. --repair leaves it to a person (`bootctl install`, or a copy from
the booted image's /usr/lib).
"""

from __future__ import annotations

import enum

from cfsboot.boot.bootloader import Bootloader, BootloaderKind
from cfsboot.composefs.repocheck import Problem
from cfsboot.linux.arch import EfiNames, all_efi_names


class LoaderCode(enum.StrEnum):
    MISSING = "bootloader-missing"


def _paths(kind: BootloaderKind, names: EfiNames) -> list[str]:
    if kind is BootloaderKind.SYSTEMD_BOOT:
        return [names.systemd_boot, names.removable]
    return [names.removable]


def check_loader_binary(bl: Bootloader) -> list[Problem]:
    """One problem when the ESP has none of the places the firmware starts `bl` from."""
    every = all_efi_names()
    if any(bl.esp.exists(p) for names in every for p in _paths(bl.kind, names)):
        return []
    expected = _paths(bl.kind, every[0])
    where = f"neither {' nor '.join(expected)}" if len(expected) > 1 else f"no {expected[0]}"
    if bl.kind is BootloaderKind.SYSTEMD_BOOT:
        fix = f"bootctl install, or copy the image's /{every[0].systemd_boot_in_image} to both"
    else:
        fix = f"copy the image's /{every[0].grub_in_image} there"
    return [
        Problem(
            LoaderCode.MISSING,
            expected[0],
            f"the {bl.kind} boot loader is missing ({where}): the firmware has nothing to"
            f" start ({fix})",
        )
    ]
