"""Small OS-shaped OCI images for deployment tests: "kernel", initramfs, os-release, /etc, /var.

Nothing here boots: the kernel and initramfs are files of recognisable bytes,
and the systemd-boot / GRUB binaries are stand-ins, which is all install and
the boot menu code look at.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

from cfstest.ocibuild import Entry, build_layout

KVER = "6.12.0-test"
REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'stager'}:{REPO_ROOT / 'setup-root'}"}


def cfsboot(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI of this source tree in a subprocess (exit codes and stderr as users see them)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cfsboot.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cfsboot {' '.join(map(str, args))}: {proc.stderr}")
    return proc


MTIME = 1700000000


def _blob(label: str, size: int) -> bytes:
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def os_entries(
    version: str,
    *,
    kernel: str = "k1",
    etc: dict[str, bytes] | None = None,
    extra: dict[str, bytes] | None = None,
    kargs: str | None = 'kargs = ["console=ttyS0,115200"]\n',
    etc_mode: str | None = None,
    uki: bytes | None = None,
) -> list[Entry]:
    """One image's entries; `kernel` names the kernel+initramfs pair (same name: same bytes)."""
    d = lambda p: Entry(p, "dir", mtime=MTIME)  # noqa: E731
    f = lambda p, data, mode=0o644: Entry(p, "file", mode=mode, data=data, mtime=MTIME)  # noqa: E731
    out = [
        d("usr"),
        d("usr/lib"),
        d("usr/lib/modules"),
        d(f"usr/lib/modules/{KVER}"),
        f(f"usr/lib/modules/{KVER}/vmlinuz", _blob(f"vmlinuz-{kernel}", 150_000)),
        f(f"usr/lib/modules/{KVER}/initramfs.img", _blob(f"initramfs-{kernel}", 90_000)),
        f("usr/lib/os-release", f'ID=testos\nNAME="Test OS"\nVERSION_ID={version}\n'.encode()),
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


def os_image(path: Path, version: str, **kw: object) -> str:
    """An OCI layout with one OS image; returns its IMGREF."""
    build_layout(path, [os_entries(version, **kw)])  # type: ignore[arg-type]
    return f"oci:{path}:latest"


def make_pe(
    sections: list[tuple[bytes, bytes]],
    *,
    pe_offset: int = 0x80,
    opt_magic: int = 0x20B,
    opt_size: int = 240,
    pad_raw: int = 0x200,
) -> bytes:
    """A minimal PE32+ image, written independently of the parser's struct formats."""
    table_at = pe_offset + 4 + 20 + opt_size
    data_at = table_at + 40 * len(sections)
    data_at += -data_at % pad_raw
    headers = bytearray(data_at)
    headers[0:2] = b"MZ"
    headers[0x3C:0x40] = pe_offset.to_bytes(4, "little")
    headers[pe_offset : pe_offset + 4] = b"PE\0\0"
    # Machine x86-64, sections, timestamp, symtab, nsyms, optional header size, characteristics
    coff = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt_size, 0x22)
    headers[pe_offset + 4 : pe_offset + 24] = coff
    headers[pe_offset + 24 : pe_offset + 26] = opt_magic.to_bytes(2, "little")
    body = bytearray()
    for i, (name, data) in enumerate(sections):
        raw_size = len(data) + (-len(data) % pad_raw)
        ptr = data_at + len(body)
        entry = struct.pack(
            "<8sIIIIIIHHI", name, len(data), 0x1000 * (i + 1), raw_size, ptr, 0, 0, 0, 0, 0x40000040
        )
        headers[table_at + 40 * i : table_at + 40 * (i + 1)] = entry
        body += data + b"\0" * (raw_size - len(data))
    return bytes(headers + body)
