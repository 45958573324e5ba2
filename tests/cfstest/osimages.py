"""Small OS-shaped OCI images for deployment tests: "kernel", initramfs, os-release, /etc, /var.

Nothing here boots: the kernel and initramfs are files of recognisable bytes,
and the systemd-boot / GRUB binaries are stand-ins, which is all install and
the boot menu code look at.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypedDict, Unpack

from cfstest.ocibuild import Entry, build_layout

KVER = "6.12.0-test"


MTIME = 1700000000


def _blob(label: str, size: int) -> bytes:
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def os_entries(
    version: str,
    *,
    kernel: str = "k1",
    initramfs: str | None = None,
    etc: dict[str, bytes] | None = None,
    extra: dict[str, bytes] | None = None,
    kargs: str | None = 'kargs = ["console=ttyS0,115200"]\n',
    etc_mode: str | None = None,
    uki: bytes | None = None,
    os_release: bytes | None = None,
    kver: str = KVER,
) -> list[Entry]:
    """One image's entries; `kernel` names the kernel+initramfs pair (same name: same bytes).

    os_release: the whole usr/lib/os-release (default: ID=testos, NAME, VERSION_ID=version);
    kver: the kernel's directory name under usr/lib/modules;
    initramfs: names the initramfs apart (default: the kernel's name).
    """
    if os_release is None:
        os_release = f'ID=testos\nNAME="Test OS"\nVERSION_ID={version}\n'.encode()

    def d(path: str) -> Entry:
        return Entry(path, "dir", mtime=MTIME)

    def f(path: str, data: bytes) -> Entry:
        return Entry(path, "file", mode=0o644, data=data, mtime=MTIME)

    out = [
        d("usr"),
        d("usr/lib"),
        d("usr/lib/modules"),
        d(f"usr/lib/modules/{kver}"),
        f(f"usr/lib/modules/{kver}/vmlinuz", _blob(f"vmlinuz-{kernel}", 150_000)),
        f(
            f"usr/lib/modules/{kver}/initramfs.img",
            _blob(f"initramfs-{initramfs or kernel}", 90_000),
        ),
        f("usr/lib/os-release", os_release),
        d("usr/lib/systemd"),
        d("usr/lib/systemd/boot"),
        d("usr/lib/systemd/boot/efi"),
        f("usr/lib/systemd/boot/efi/systemd-bootx64.efi", _blob("systemd-boot", 100_000)),
        d("usr/lib/grub"),
        d("usr/lib/grub/x86_64-efi"),
        d("usr/lib/grub/x86_64-efi/monolithic"),
        f("usr/lib/grub/x86_64-efi/monolithic/grubx64.efi", _blob("grub", 120_000)),
        d("usr/share"),
        f("usr/share/version", (version * 40).encode()),
        d("etc"),
        f("etc/hostname", b"testos\n"),
        f("etc/os-release-version", version.encode() + b"\n"),
        d("var"),
        d("var/lib"),
        f("var/lib/seeded", b"from the image\n"),
        d("run"),
        d("boot"),
        d("sysroot"),
    ]
    if kargs is not None:
        out += [
            d("usr/lib/bootc"),
            d("usr/lib/bootc/kargs.d"),
            f("usr/lib/bootc/kargs.d/10-test.toml", kargs.encode()),
        ]
    if etc_mode is not None:
        out += [
            d("usr/lib/composefs"),
            f("usr/lib/composefs/setup-root-conf.toml", f'[etc]\nmount = "{etc_mode}"\n'.encode()),
        ]
    if uki is not None:
        out += [d("boot/EFI"), d("boot/EFI/Linux"), f("boot/EFI/Linux/test.efi", uki)]
    for path, data in (etc or {}).items():
        out.append(f(f"etc/{path}", data))
    for path, data in (extra or {}).items():
        out.append(f(path, data))
    return out


class OsOptions(TypedDict, total=False):
    """The keyword arguments of `os_entries` (and so of `os_image`)."""

    kernel: str
    initramfs: str | None
    etc: dict[str, bytes] | None
    extra: dict[str, bytes] | None
    kargs: str | None
    etc_mode: str | None
    uki: bytes | None
    os_release: bytes | None
    kver: str


def os_image(path: Path, version: str, **kw: Unpack[OsOptions]) -> str:
    """An OCI layout with one OS image; returns its IMGREF."""
    build_layout(path, [os_entries(version, **kw)])
    return f"oci:{path}:latest"
