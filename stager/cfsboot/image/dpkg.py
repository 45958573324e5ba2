"""Debian packages an image holds: dpkg's status file, and dpkg's version order.

`cfsboot diff` reads `/var/lib/dpkg/status` from each image (deb822 paragraphs;
a package is installed when its Status is `install ok installed`) and tells an
upgrade from a downgrade with dpkg's comparison (deb-version(7): epoch, then the
upstream version, then the Debian revision, each compared as dpkg's verrevcmp
does: non-digit runs with `~` sorting before everything and letters before other
characters, digit runs as numbers).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

STATUS_PATH = "/var/lib/dpkg/status"
INSTALLED = "install ok installed"


@dataclass(frozen=True)
class Package:
    name: str  # name, or name:arch for a foreign architecture
    version: str
    architecture: str


def parse_status(text: str) -> dict[str, Package]:
    """The installed packages of a dpkg status file, by name (name:arch when foreign)."""
    found: list[tuple[str, str, str]] = []
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if not line or line[0] in " \t":
                continue  # continuation lines belong to fields not read here
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if fields.get("status") != INSTALLED or "package" not in fields:
            continue
        found.append((fields["package"], fields.get("version", ""), fields.get("architecture", "")))
    arches = Counter(a for _, _, a in found if a != "all")
    native = arches.most_common(1)[0][0] if arches else ""
    out: dict[str, Package] = {}
    for name, version, arch in found:
        key = name if arch in ("all", native, "") else f"{name}:{arch}"
        out[key] = Package(key, version, arch)
    return out


def _order(c: str) -> int:
    """dpkg's weight of a character in a non-digit run ('~' lowest, then end, letters, rest)."""
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isascii() and c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch_s, sep, rest = version.partition(":")
    if not sep:
        epoch_s, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch_s) if epoch_s.isdigit() else 0, upstream, revision


def compare(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version `a` is older than, equal to or newer than `b`."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)
