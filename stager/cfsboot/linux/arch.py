"""CPU architectures: the one table of their names in each naming scheme cfsboot meets.

`uname -m` (os.uname().machine, which is what platform.machine() returns on
Linux, without importing platform) is the key; the same machine is
`x86_64` to Rust (bootc's kargs.d `match-architectures`), `amd64` to Go and so
to OCI image indexes, and has its own Discoverable Partitions Specification
root partition type and its own system call numbers.
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


_X86_64 = Arch("x86_64", "amd64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 316)
_AARCH64 = Arch("aarch64", "arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", 276)
_X86 = Arch("x86", "386", "44479540-F297-41B2-9AF7-D131D5F0458A")
_PPC64 = Arch("powerpc64", "ppc64", "912ADE1D-A839-4913-8964-A10EEE08FBD2")

# uname -m (and the Debian/Go spellings people type for it) -> Arch
ARCHES: dict[str, Arch] = {
    "x86_64": _X86_64,
    "amd64": _X86_64,
    "aarch64": _AARCH64,
    "arm64": _AARCH64,
    "i386": _X86,
    "i686": _X86,
    "armv7l": Arch("arm", "arm", "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3"),
    "riscv64": Arch("riscv64", "riscv64", "72EC70A6-CF74-40E6-BD49-4BDA08E8F224", 276),
    "ppc64le": Arch("powerpc64", "ppc64le", "C31C45E6-3F39-412E-80FB-4809C4980599"),
    "ppc64": _PPC64,
    "s390x": Arch("s390x", "s390x", "5EEAD9A9-FE09-4A1E-A1D7-520D00531306"),
    "loongarch64": Arch("loongarch64", "loong64", "77055800-792C-4F94-B39A-98C91B762BB6", 276),
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
