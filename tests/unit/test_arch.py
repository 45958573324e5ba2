"""cfsboot.linux.arch: the one table of per-architecture names and numbers."""

from __future__ import annotations

from cfsboot.linux import syscalls
from cfsboot.linux.arch import ARCHES


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
