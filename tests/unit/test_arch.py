"""cfsboot.linux.arch: the one table of per-architecture names and numbers."""

from __future__ import annotations

from cfsboot.linux import syscalls
from cfsboot.linux.arch import ARCHES
from cfstest import REPO_ROOT


def test_renameat2_numbers() -> None:
    """<asm/unistd_64.h> (x86_64: 316) and <asm-generic/unistd.h> (276), by every spelling."""
    numbers = {name: a.sys_renameat2 for name, a in ARCHES.items() if a.sys_renameat2}
    assert numbers == {
        "x86_64": 316,
        "amd64": 316,
        "aarch64": 276,
        "arm64": 276,
        "riscv64": 276,
        "loongarch64": 276,
    }
    assert syscalls.syscall_renameat2("amd64") is not None
    # Known architectures whose number cfsboot does not carry, and unknown ones: no fallback.
    assert syscalls.syscall_renameat2("s390x") is None
    assert syscalls.syscall_renameat2("pdp11") is None


def test_debian_package_accepts_every_uefi_architectures_boot_loader() -> None:
    """The package (Architecture: all) depends on a boot loader that exists on the target.

    dpkg has no per-architecture restriction in a binary package's Depends, so the
    one alternative list names systemd-boot-efi (built for every Debian architecture)
    and each UEFI architecture's GRUB package: none may be missing from it.
    """
    control = (REPO_ROOT / "debian" / "control").read_text()
    depends = control.split("\nDepends:", 1)[1].split("\nRecommends:", 1)[0]
    groups = [" ".join(g.split()) for g in depends.split(",")]
    (loaders,) = [g for g in groups if "systemd-boot-efi" in g]
    wanted = {"systemd-boot-efi"} | {
        f"grub-efi-{a.deb}-bin" for a in ARCHES.values() if a.efi is not None
    }
    assert set(loaders.split(" | ")) == wanted
    assert loaders.startswith("systemd-boot-efi | grub-efi-amd64-bin |")
