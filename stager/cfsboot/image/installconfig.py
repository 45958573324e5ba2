"""An image's install configuration: `usr/lib/bootc/install/*.toml`, bootc's format.

Each file may hold an `[install]` table (bootc-install-config(5)): `root-fs-type`
or `[install.filesystem.root] type`, `kargs`, `block`, `match-architectures`,
`stateroot`, `root-mount-spec`, `bootloader`, `discoverable-partitions`. Files
apply in lexical order of their names (a file in `etc/bootc/install/` replaces
the one of the same name in `usr/lib/`); a later file's values replace earlier
ones, except `kargs`, which add up; a file whose `match-architectures` does not
name this machine's architecture (Rust's names) is skipped. Keys cfsboot has no
use for (ostree, bootupd, ...) are ignored; unknown ones are warned about, as
bootc does. The command line wins over all of it (cfsboot.commands.deploy).

The root filesystem type is needed before the image is imported (`install
to-disk` makes the filesystem first), so `peek()` streams the image's layers
for these files alone, whiteouts applied, without storing anything.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cfsboot.errors import die
from cfsboot.image.kargsd import karg_problem
from cfsboot.linux.arch import rust_arch

log = logging.getLogger(__name__)

DIRS = ("usr/lib/bootc/install", "etc/bootc/install")
FILESYSTEMS = ("ext4", "btrfs", "xfs")
BLOCK_SETUPS = ("direct", "tpm2-luks")
BOOTLOADERS = ("grub", "systemd", "none")
# Keys bootc knows that mean nothing to cfsboot's installs (no ostree, no bootupd).
IGNORED_KEYS = frozenset({"ostree", "bootupd", "boot-mount-spec", "enforce-container-sigpolicy"})
KNOWN_KEYS = frozenset(
    {
        "root-fs-type",
        "filesystem",
        "kargs",
        "block",
        "match-architectures",
        "stateroot",
        "root-mount-spec",
        "bootloader",
        "discoverable-partitions",
    }
)


@dataclass(frozen=True)
class InstallConfig:
    """The merged configuration; None: not set by any file."""

    root_fs_type: str | None = None
    kargs: tuple[str, ...] = ()
    block: tuple[str, ...] | None = None
    stateroot: str | None = None
    root_mount_spec: str | None = None
    bootloader: str | None = None
    discoverable_partitions: bool | None = None
    files: tuple[str, ...] = field(default=(), compare=False)  # those that applied


def check_block(cfg: InstallConfig) -> None:
    """Refuse a config that allows only block setups cfsboot cannot make (LUKS)."""
    if cfg.block is not None and "direct" not in cfg.block:
        die(f"the image's install config allows only {', '.join(cfg.block)} block setups",
            hint="cfsboot installs a plain root filesystem (direct)")  # fmt: skip


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        die(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def _choice(value: Any, key: str, where: str, choices: Iterable[str]) -> str:
    if value not in tuple(choices):
        die(f"{where}: '{key}' is {value!r}; expected one of {', '.join(choices)}")
    return str(value)


def _root_type(table: Mapping[str, Any], where: str) -> str | None:
    fs = table.get("filesystem")
    if fs is None:
        return None
    root = fs.get("root") if isinstance(fs, dict) else None
    if not isinstance(root, dict) or "type" not in root:
        die(f"{where}: [install.filesystem] needs [install.filesystem.root] with 'type'")
    return _choice(root["type"], "filesystem.root.type", where, FILESYSTEMS)


def parse_file(text: str, where: str, cfg: InstallConfig, *, arch: str) -> InstallConfig:
    """`cfg` with one file applied (unchanged if it does not match `arch`)."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        die(f"{where}: invalid TOML: nested too deeply")
    except ValueError as e:  # TOMLDecodeError, or an integer of 4300+ digits
        die(f"{where}: invalid TOML: {str(e).splitlines()[0]}")
    for key in sorted(set(doc) - {"install"}):
        log.warning("%s: unknown table or key %r (bootc knows only [install])", where, key)
    table = doc.get("install")
    if table is None:
        return cfg
    if not isinstance(table, dict):
        die(f"{where}: 'install' must be a table")
    for key in sorted(set(table) - KNOWN_KEYS - IGNORED_KEYS):
        log.warning("%s: unknown key install.%s", where, key)
    if "match-architectures" in table:
        arches = _strings(table["match-architectures"], "match-architectures", where)
        if arch not in arches:
            return cfg
    changes: dict[str, Any] = {}
    if "root-fs-type" in table:
        changes["root_fs_type"] = _choice(table["root-fs-type"], "root-fs-type", where, FILESYSTEMS)
    if (root_type := _root_type(table, where)) is not None:
        changes["root_fs_type"] = root_type  # bootc: the newer spelling wins
    if "kargs" in table:
        kargs = _strings(table["kargs"], "kargs", where)
        for arg in kargs:
            if (problem := karg_problem(arg)) is not None:
                die(f"{where}: kernel argument {arg!r} has {problem}")
        changes["kargs"] = (*cfg.kargs, *kargs)
    if "block" in table:
        block = _strings(table["block"], "block", where)
        changes["block"] = tuple(_choice(b, "block", where, BLOCK_SETUPS) for b in block)
    for key, attr in (("stateroot", "stateroot"), ("root-mount-spec", "root_mount_spec")):
        if key in table:
            if not isinstance(table[key], str):
                die(f"{where}: '{key}' must be a string")
            if key == "root-mount-spec" and table[key]:  # becomes root=SPEC
                if (problem := karg_problem(table[key])) is not None:
                    die(f"{where}: 'root-mount-spec' {table[key]!r} has {problem}")
            changes[attr] = table[key]
    if "bootloader" in table:
        changes["bootloader"] = _choice(table["bootloader"], "bootloader", where, BOOTLOADERS)
    if "discoverable-partitions" in table:
        if not isinstance(table["discoverable-partitions"], bool):
            die(f"{where}: 'discoverable-partitions' must be true or false")
        changes["discoverable_partitions"] = table["discoverable-partitions"]
    return replace(cfg, **changes, files=(*cfg.files, where))


def merge(files: Mapping[str, bytes], *, arch: str | None = None) -> InstallConfig:
    """The configuration from {image path: content} of the drop-in files found."""
    by_name: dict[str, str] = {}
    for directory in DIRS:  # etc/ after usr/lib/: its files replace those of the same name
        for path in files:
            parent, _, name = path.rpartition("/")
            if parent == directory and name.endswith(".toml"):
                by_name[name] = path
    cfg = InstallConfig()
    target = arch or rust_arch()
    for name in sorted(by_name):
        path = by_name[name]
        text = files[path].decode("utf-8", errors="replace")
        cfg = parse_file(text, f"/{path}", cfg, arch=target)
    return cfg


def wanted(path: str) -> bool:
    """Is `path` (relative, '/'-joined) one of the drop-in files?"""
    parent, _, name = path.rpartition("/")
    return parent in DIRS and name.endswith(".toml")
