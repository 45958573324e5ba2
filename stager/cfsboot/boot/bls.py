"""Boot Loader Specification Type #1 entries (`loader/entries/*.conf`) and systemd-boot's order.

Entry files are `key value` lines; `#` starts a comment line. Keys cfsboot
does not know are kept, in order, and written back after the known ones, so
rewriting an entry (rollback, sort-key changes) never drops a field. The order
of the known keys follows bootc's serialiser.

Names and sort keys follow bootc's composefs backend so that its tools and ours
read each other's ESP: `bootc_<os-id>-<version>-<1|0>.conf` (GRUB's BLS code
sorts file names descending, so the primary entry ends in 1) and
`sort-key bootc-<os-id>-<0|1>` (systemd-boot sorts sort keys ascending).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cfsboot.image.versions import cmp3, compare_versions
from setuproot.contract import KargError, parse_cmdline

# Paths on the ESP (or /boot), relative to its root.
ENTRIES_DIR = "loader/entries"
STAGED_ENTRIES_DIR = "loader/entries.staged"
LOADER_CONF = "loader/loader.conf"
# What bootc writes when the ESP has no loader.conf yet (it never rewrites an existing one).
LOADER_CONF_DEFAULT = "timeout 5\n"
ENTRY_SUFFIX = ".conf"
# Entry files cfsboot/bootc own start with this; anything else belongs to someone else.
ENTRY_PREFIX = "bootc_"
# Directories holding a deployment's vmlinuz and initrd, and UKI file names, start with this.
BOOT_DIR_PREFIX = "bootc_composefs-"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd"


class BLSError(ValueError):
    """An entry that cannot be written as a BLS file."""


# ---------------------------------------------------------------------------
# The entry file
# ---------------------------------------------------------------------------

_KNOWN = ("title", "version", "machine-id", "sort-key", "linux", "initrd", "efi", "uki", "options")
_KEY_RE = re.compile(r"[^\s#][^\s]*")


@dataclass(frozen=True)
class BLSEntry:
    """One Type #1 entry. `options` keeps each `options` line; the kernel gets them joined."""

    title: str | None = None
    version: str | None = None
    machine_id: str | None = None
    sort_key: str | None = None
    linux: str | None = None
    initrd: tuple[str, ...] = ()
    efi: str | None = None
    uki: str | None = None
    options: tuple[str, ...] = ()
    # Keys cfsboot does not interpret (devicetree, architecture, ...), in file order.
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> BLSEntry:
        """Parse an entry file; a repeated single-valued key: the last wins (as in systemd-boot)."""
        single: dict[str, str] = {}
        initrd: list[str] = []
        options: list[str] = []
        extra: list[tuple[str, str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
            if key == "initrd":
                initrd.append(value)
            elif key == "options":
                options.append(value)
            elif key in _KNOWN:
                single[key] = value
            else:
                extra.append((key, value))
        return cls(
            title=single.get("title"),
            version=single.get("version"),
            machine_id=single.get("machine-id"),
            sort_key=single.get("sort-key"),
            linux=single.get("linux"),
            initrd=tuple(initrd),
            efi=single.get("efi"),
            uki=single.get("uki"),
            options=tuple(options),
            extra=tuple(extra),
        )

    def lines(self) -> list[tuple[str, str]]:
        """(key, value) pairs in the order they are written."""
        out: list[tuple[str, str]] = []

        def put(key: str, value: str | None) -> None:
            if value is not None:
                out.append((key, value))

        put("title", self.title)
        put("version", self.version)
        put("linux", self.linux)
        for path in self.initrd:
            put("initrd", path)
        put("efi", self.efi)
        put("uki", self.uki)
        for opts in self.options:
            put("options", opts)
        put("machine-id", self.machine_id)
        put("sort-key", self.sort_key)
        out.extend(self.extra)
        return out

    def serialise(self) -> str:
        """The entry file's text; refuses values that would change meaning when read back."""
        text: list[str] = []
        for key, value in self.lines():
            if not _KEY_RE.fullmatch(key):
                raise BLSError(f"invalid BLS key {key!r}")
            if "\n" in value or "\r" in value or value != value.strip():
                raise BLSError(f"invalid value for BLS key {key!r}: {value!r}")
            text.append(f"{key} {value}" if value else key)
        return "\n".join(text) + "\n"

    @property
    def cmdline(self) -> str:
        """The kernel command line systemd-boot builds from the `options` lines."""
        return " ".join(o for o in self.options if o)

    def with_cmdline(self, cmdline: str) -> BLSEntry:
        return replace(self, options=(cmdline,) if cmdline else ())

    def deployment(self) -> str | None:
        """The deployment (composefs digest) this entry boots; None if not a composefs entry.

        BLS entries name it in `options`; UKI entries in the UKI file name, since
        the command line is sealed inside the UKI.
        """
        try:
            kargs = parse_cmdline(self.cmdline)
        except KargError:
            return None
        if kargs:
            return kargs[0].digest
        for path in (self.uki, self.efi):
            if path:
                name = path.rsplit("/", 1)[-1]
                m = re.fullmatch(re.escape(BOOT_DIR_PREFIX) + r"([0-9a-fA-F]+)\.efi", name)
                if m:
                    return m.group(1).lower()
        return None


# ---------------------------------------------------------------------------
# Entry files and systemd-boot's menu order
# ---------------------------------------------------------------------------

# ASCII digits only, as systemd-boot reads them (\d would take other scripts' digits too).
_COUNTER_RE = re.compile(r"\+([0-9]{1,9})(?:-([0-9]{1,9}))?$")


@dataclass(frozen=True)
class EntryFile:
    """An entry under its file name, which systemd-boot uses as the entry's id and tie-breaker."""

    name: str
    entry: BLSEntry

    def _counter(self) -> tuple[str, int | None, int]:
        stem = self.name[: -len(ENTRY_SUFFIX)] if self.name.endswith(ENTRY_SUFFIX) else self.name
        suffix = self.name[len(stem) :]
        m = _COUNTER_RE.search(stem)
        if m is None:
            return self.name, None, 0
        return stem[: m.start()] + suffix, int(m.group(1)), int(m.group(2) or 0)

    @property
    def id(self) -> str:
        """The name without boot counter (`foo+3-1.conf` -> `foo.conf`), as systemd-boot has it."""
        return self._counter()[0]

    @property
    def tries_left(self) -> int | None:
        """Boot-counting tries left, or None when the file name carries no counter."""
        return self._counter()[1]

    @property
    def tries_done(self) -> int:
        return self._counter()[2]

    @property
    def ours(self) -> bool:
        return self.name.startswith(ENTRY_PREFIX) and self.name.endswith(ENTRY_SUFFIX)


def _opt_cmp(a: str | None, b: str | None) -> int:
    # An unset string sorts before any set one (systemd's strcmp8 with NULL).
    return cmp3((a is not None, a or ""), (b is not None, b or ""))


def compare_entries(a: EntryFile, b: EntryFile) -> int:
    """systemd-boot's menu order: negative when `a` is shown above `b`."""
    r = cmp3(a.tries_left == 0, b.tries_left == 0)  # entries out of tries go last
    if r:
        return r
    ka, kb = a.entry.sort_key or None, b.entry.sort_key or None
    r = cmp3(ka is None, kb is None)  # entries with a sort key come first
    if r:
        return r
    if ka is not None and kb is not None:
        r = cmp3(ka, kb) or _opt_cmp(a.entry.machine_id, b.entry.machine_id)
        r = r or -compare_versions(a.entry.version, b.entry.version)  # newest version first
        if r:
            return r
    r = -compare_versions(a.id, b.id)
    if r or a.tries_left is None or b.tries_left is None:
        return r
    return -cmp3(a.tries_left, b.tries_left) or cmp3(a.tries_done, b.tries_done)


def sort_entries(entries: Iterable[EntryFile]) -> list[EntryFile]:
    """Entries in systemd-boot's menu order (the default one first)."""
    return sorted(entries, key=functools.cmp_to_key(compare_entries))


def default_entry(entries: Iterable[EntryFile], pattern: str | None = None) -> EntryFile | None:
    """The entry systemd-boot boots: the first matching loader.conf `default`, else the first."""
    ordered = sort_entries(entries)
    if pattern:
        for e in ordered:
            if fnmatch.fnmatchcase(e.id, pattern):
                return e
    return ordered[0] if ordered else None


# ---------------------------------------------------------------------------
# bootc's naming scheme
# ---------------------------------------------------------------------------

# Characters vfat refuses in names, plus path separators and controls.
_UNSAFE_NAME = re.compile(r'[\x00-\x1f"*/:<>?\\|]')


# Longest os-id and version parts of an entry's file name (vfat names end at 255).
NAME_PART_MAX = 64


def menu_text(value: str) -> str:
    """`value` as one line of menu text: each run of white space and control characters
    one blank, none at the ends. Titles and versions come from the image's os-release:
    they must not add a line to an entry (or leave one that reads back otherwise)."""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


def safe_file_name(part: str) -> str:
    """`part` of a file name on the ESP: vfat's forbidden characters, `/` and controls as
    `_`, no leading dot (no `..`), at most NAME_PART_MAX characters."""
    return _UNSAFE_NAME.sub("_", menu_text(part)).lstrip(".")[:NAME_PART_MAX] or "_"


def entry_file_name(os_id: str, version: str, *, primary: bool) -> str:
    """bootc's `bootc_<os-id with - as _>-<version>-<1 primary|0 secondary>.conf`."""
    os_part = _UNSAFE_NAME.sub("_", os_id.replace("-", "_"))[:NAME_PART_MAX]
    version_part = _UNSAFE_NAME.sub("_", version)[:NAME_PART_MAX]
    return f"{ENTRY_PREFIX}{os_part}-{version_part}-{1 if primary else 0}.conf"


def entry_sort_key(os_id: str, *, primary: bool) -> str:
    """bootc's `bootc-<os-id>-<0 primary|1 secondary>` (ascending: primary is the default)."""
    return f"bootc-{os_id}-{0 if primary else 1}"


def boot_dir_name(boot_id: str) -> str:
    """Directory (on the ESP under EFI/Linux, or in /boot for GRUB) of one kernel+initrd pair."""
    return f"{BOOT_DIR_PREFIX}{boot_id}"


def parse_entries(files: Sequence[tuple[str, str]]) -> list[EntryFile]:
    """(file name, text) pairs of `.conf` files -> EntryFile objects, other names skipped."""
    return [EntryFile(n, BLSEntry.parse(t)) for n, t in files if n.endswith(ENTRY_SUFFIX)]
