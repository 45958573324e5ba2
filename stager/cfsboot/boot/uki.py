"""Unified Kernel Images: the PE/COFF section table and the `.cmdline`, `.osrel`, `.uname` sections.

Only what cfsboot needs: find a UKI's sections, read its sealed command line
and os-release, check that one of its composefs digests names the image it ships
with, and hash `.linux` + `.initrd` (bootc's boot digest). Section references
follow the Microsoft PE Format specification. A multi-profile UKI repeats
sections after `.profile`; the first occurrence (the base profile) is used.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cfsboot.boot.bls import BOOT_DIR_PREFIX
from cfsboot.errors import CfsbootError
from setuproot.contract import ComposefsKarg, KargError, parse_cmdline

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import BinaryIO

    from cfsboot.boot.pe import Section
    from cfsboot.image.osrelease import OsRelease

# Where bootc installs UKIs on the ESP: not EFI/Linux itself, so systemd-boot does not list
# them twice (once from the Type #1 entry that points at them, once as a Type #2 entry).
UKI_DIR = "EFI/Linux/bootc"
# Where an image ships UKIs and where they may also live (composefs-rs looks in both).
IMAGE_UKI_DIRS = ("boot/EFI/Linux", "usr/lib/modules")

TEXT_SECTIONS = (".cmdline", ".osrel", ".uname")


class UKIError(CfsbootError):
    """A file that is not a well-formed UKI (or has the wrong composefs digest)."""


@dataclass(frozen=True)
class UKI:
    """What cfsboot reads from a UKI; text sections are None when absent."""

    path: str
    machine: int
    sections: tuple[Section, ...]
    cmdline: str | None
    osrel: str | None
    uname: str | None

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def os_release(self) -> OsRelease:
        from cfsboot.image.osrelease import OsRelease  # not for status (UKI_DIR)

        return OsRelease.parse(self.osrel or "")

    def boot_label(self) -> str | None:
        return self.os_release().boot_label()

    def composefs_kargs(self) -> list[ComposefsKarg]:
        """Every composefs karg sealed in `.cmdline` (`composefs.digest=` ones first).

        A UKI may carry several digests (composefs-rs and bootc seal one per EROFS
        format or hash algorithm); the initramfs mounts the first its repository has.
        """
        try:
            return parse_cmdline(self.cmdline or "")
        except KargError as e:
            raise UKIError(f"{self.path}: {e}") from None

    def check_composefs(self, expected: str) -> ComposefsKarg:
        """The UKI's karg naming `expected`, refusing a UKI built for another image (bootc's check).

        The UKI is good when any of its composefs digests is the deployment's.
        """
        kargs = self.composefs_kargs()
        if not kargs:
            raise UKIError(
                f"{self.path}: the UKI's command line has no composefs= argument",
                hint=f"build it with composefs={expected}",
            )
        want = expected.lower()
        for karg in kargs:
            if karg.digest == want:
                return karg
        found = ", ".join(dict.fromkeys(k.digest for k in kargs))
        raise UKIError(
            f"{self.path}: the UKI has the wrong composefs= digest (is {found}, should be {want})",
            hint="rebuild the UKI from this image (was the image changed after sealing?)",
        )


def _bad(path: str, reason: str) -> UKIError:
    return UKIError(f"{path}: not a valid UKI: {reason}")


def _read_exact(f: BinaryIO, offset: int, size: int, path: str, what: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise _bad(path, f"{what} lies past the end of the file")
    return data


def _text(f: BinaryIO, sec: Section, path: str) -> str:
    data = _read_exact(f, sec.raw_offset, sec.size, path, f"section {sec.name}")
    try:
        return data.rstrip(b"\0").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _bad(path, f"section {sec.name} is not UTF-8 text") from None


def read_uki_from(f: BinaryIO, path: str, *, addon: bool = False) -> UKI:
    """Parse an open UKI (or, with addon=True, a UKI addon, which has no kernel)."""
    # Imported here: construct's import costs start-up time that commands reading no UKI save.
    from cfsboot.boot.pe import PEError, read_sections

    try:
        machine, sections = read_sections(f)
    except PEError as e:
        raise _bad(path, str(e)) from None
    first: dict[str, Section] = {}
    for s in sections:
        first.setdefault(s.name, s)
    if not addon and ".linux" not in first:
        raise _bad(path, "no .linux section (a plain EFI binary, not a UKI)")
    text = {n: _text(f, first[n], path) if n in first else None for n in TEXT_SECTIONS}
    return UKI(path, machine, sections, text[".cmdline"], text[".osrel"], text[".uname"])


def read_uki(path: Path, *, addon: bool = False) -> UKI:
    """Read a UKI's headers and text sections (the kernel and initrd are not loaded)."""
    with open(path, "rb") as f:
        return read_uki_from(f, str(path), addon=addon)


def parse_uki(data: bytes, *, name: str = "<memory>", addon: bool = False) -> UKI:
    return read_uki_from(io.BytesIO(data), name, addon=addon)


def hash_sections(path: Path, uki: UKI, names: Iterable[str]) -> str:
    """sha256 hex of the named sections' contents, concatenated in order (missing ones skipped)."""
    import hashlib  # status reads UKIs, and hashes none

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for name in names:
            sec = uki.section(name)
            if sec is None:
                continue
            f.seek(sec.raw_offset)
            left = sec.size
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise _bad(str(path), f"section {name} lies past the end of the file")
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


def boot_digest(path: Path, uki: UKI) -> str:
    """bootc's `[boot] digest` for a UKI deployment: sha256 of `.linux` then `.initrd`."""
    return hash_sections(path, uki, (".linux", ".initrd"))


def boot_digest_of(data: bytes, uki: UKI) -> str:
    """boot_digest of a UKI held in memory (parse_uki of `data` gave `uki`)."""
    import hashlib  # status reads UKIs, and hashes none

    h = hashlib.sha256()
    for name in (".linux", ".initrd"):
        sec = uki.section(name)
        if sec is not None:
            h.update(data[sec.raw_offset : sec.raw_offset + sec.size])
    return h.hexdigest()


def uki_file_name(deployment: str) -> str:
    """bootc's name for a deployment's UKI under UKI_DIR."""
    return f"{BOOT_DIR_PREFIX}{deployment}.efi"
