"""CPU architectures: the one table of their names in each naming scheme cfsboot meets.

`uname -m` (os.uname().machine, which is what platform.machine() returns on
Linux, without importing platform) is the key; the same machine is
`x86_64` to Rust (bootc's kargs.d `match-architectures`), `amd64` to Go and so
to OCI image indexes, and has its own Discoverable Partitions Specification
root partition type and its own system call numbers. UEFI names it once more
(the `X64` of `BOOTX64.EFI`), and so does GRUB (`x86_64-efi`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    rust: str  # std::env::consts::ARCH
    oci: str  # GOARCH, the OCI image index's platform.architecture
    dps_root: str  # Discoverable Partitions Specification: root partition type UUID
    # renameat2(2)'s number, for C libraries without the wrapper (glibc < 2.28):
    # <asm/unistd_64.h> on x86_64, <asm-generic/unistd.h> on the architectures that use it.
    sys_renameat2: int | None = None
    # UEFI's short name of the machine type (UEFI 2.10, 3.5.1.1 "Removable Media Boot
    # Behavior": BOOTX64.EFI...), lower case as systemd writes it (systemd-bootx64.efi);
    # None: no UEFI on this architecture.
    efi: str | None = None
    grub: str | None = None  # GRUB's CPU name: /usr/lib/grub/CPU-efi
    deb: str | None = None  # Debian's architecture (its package names: grub-efi-DEB-bin)


_X86_64 = Arch(
    "x86_64", "amd64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 316,
    efi="x64", grub="x86_64", deb="amd64",
)  # fmt: skip
_AARCH64 = Arch(
    "aarch64", "arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", 276,
    efi="aa64", grub="arm64", deb="arm64",
)  # fmt: skip
# Debian's 32-bit x86 UEFI GRUB is grub-efi-ia32-bin.
_X86 = Arch(
    "x86", "386", "44479540-F297-41B2-9AF7-D131D5F0458A", efi="ia32", grub="i386", deb="ia32"
)
_PPC64 = Arch("powerpc64", "ppc64", "912ADE1D-A839-4913-8964-A10EEE08FBD2")

# uname -m (and the Debian/Go spellings people type for it) -> Arch
ARCHES: dict[str, Arch] = {
    "x86_64": _X86_64,
    "amd64": _X86_64,
    "aarch64": _AARCH64,
    "arm64": _AARCH64,
    "i386": _X86,
    "i686": _X86,
    "armv7l": Arch(
        "arm", "arm", "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", efi="arm", grub="arm", deb="arm"
    ),
    "riscv64": Arch(
        "riscv64",
        "riscv64",
        "72EC70A6-CF74-40E6-BD49-4BDA08E8F224",
        276,
        efi="riscv64",
        grub="riscv64",
        deb="riscv64",
    ),  # fmt: skip
    "ppc64le": Arch("powerpc64", "ppc64le", "C31C45E6-3F39-412E-80FB-4809C4980599"),
    "ppc64": _PPC64,
    "s390x": Arch("s390x", "s390x", "5EEAD9A9-FE09-4A1E-A1D7-520D00531306"),
    "loongarch64": Arch(
        "loongarch64",
        "loong64",
        "77055800-792C-4F94-B39A-98C91B762BB6",
        276,
        efi="loongarch64",
        grub="loongarch64",
        deb="loong64",
    ),  # fmt: skip
}


def machine(name: str | None = None) -> str:
    """`name`, or this machine's `uname -m`."""
    return name or os.uname().machine


def lookup(name: str | None = None) -> Arch | None:
    """The architecture `name` (default: this machine's), None if cfsboot does not know it."""
    return ARCHES.get(machine(name))


def rust_arch(name: str | None = None) -> str:
    """The architecture name kargs.d files match against (`x86_64`, `aarch64`, ...)."""
    found = lookup(name)
    return found.rust if found else machine(name)


def oci_arch(name: str | None = None) -> str:
    """The architecture name OCI image indexes use (`amd64`, `arm64`, ...)."""
    found = lookup(name)
    return found.oci if found else machine(name)


def lookup_any(name: str) -> Arch | None:
    """The architecture `name` in any scheme the table knows (`uname -m`, OCI `amd64`, `386`...)."""
    return ARCHES.get(name) or next((a for a in ARCHES.values() if name in (a.oci, a.rust)), None)


# ---------------------------------------------------------------------------------------
# UEFI file names
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EfiNames:
    """An architecture's boot loader file names: on the ESP, and where Debian's packages put
    them in an image (paths relative to the root, no leading `/`)."""

    efi: str  # UEFI's short name, lower case: x64, aa64, ia32, arm, riscv64, loongarch64
    removable: str  # the firmware's fallback: EFI/BOOT/BOOTX64.EFI
    systemd_boot: str  # where bootctl installs systemd-boot: EFI/systemd/systemd-bootx64.efi
    systemd_boot_in_image: str  # package systemd-boot-efi
    stub_in_image: str  # the UKI stub, package systemd-boot-efi
    grub_in_image: str  # package grub-efi-DEB-bin: its monolithic image
    grub_package: str


class NoUefi(ValueError):
    """An architecture without UEFI, or one cfsboot does not know."""


def efi_names(name: str | None = None) -> EfiNames:
    """The boot loader file names of architecture `name` (any spelling; default: this machine)."""
    a = lookup_any(machine(name))
    if a is None or a.efi is None or a.grub is None or a.deb is None:
        raise NoUefi(f"no UEFI boot loader names for architecture {machine(name)}")
    sd = "usr/lib/systemd/boot/efi"
    return EfiNames(
        efi=a.efi,
        removable=f"EFI/BOOT/BOOT{a.efi.upper()}.EFI",
        systemd_boot=f"EFI/systemd/systemd-boot{a.efi}.efi",
        systemd_boot_in_image=f"{sd}/systemd-boot{a.efi}.efi",
        stub_in_image=f"{sd}/linux{a.efi}.efi.stub",
        grub_in_image=f"usr/lib/grub/{a.grub}-efi/monolithic/grub{a.efi}.efi",
        grub_package=f"grub-efi-{a.deb}-bin",
    )


def all_efi_names() -> list[EfiNames]:
    """Every architecture's names, once each (x64 first)."""
    out: list[EfiNames] = []
    for key in ARCHES:
        try:
            names = efi_names(key)
        except NoUefi:
            continue
        if names not in out:
            out.append(names)
    return out
