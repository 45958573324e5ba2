"""EFI variables the boot loader leaves for the OS (efivarfs), read-only."""

from __future__ import annotations

from pathlib import Path

EFIVARS = Path("/sys/firmware/efi/efivars")
# The Boot Loader Interface's vendor GUID (systemd-boot's variables).
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
# The entry file systemd-boot booted, when that entry carries a boot counter.
LOADER_BOOT_COUNT_PATH = "LoaderBootCountPath"
# The entry to boot next time only (`bootctl set-oneshot`; systemd-boot removes it as it
# reads it), the entry to boot by default (`bootctl set-default`), and the entry booted
# last (written by systemd-boot when a default is `@saved`): patterns or ids of entries.
LOADER_ENTRY_ONESHOT = "LoaderEntryOneShot"
LOADER_ENTRY_DEFAULT = "LoaderEntryDefault"
LOADER_ENTRY_LAST_BOOTED = "LoaderEntryLastBooted"
# The GPT partition UUID (upper case) of the partition systemd-boot was loaded from.
LOADER_DEVICE_PART_UUID = "LoaderDevicePartUUID"


def loader_string(name: str, efivars: Path = EFIVARS) -> str | None:
    """A Boot Loader Interface string variable (UTF-16LE after 4 attribute bytes); None if unset."""
    try:
        data = (efivars / f"{name}-{LOADER_GUID}").read_bytes()
    except OSError:
        return None
    return data[4:].decode("utf-16-le", errors="replace").split("\0", 1)[0]


def boot_count_path(efivars: Path = EFIVARS) -> str | None:
    """LoaderBootCountPath as a path with '/' (systemd-boot writes '\\')."""
    value = loader_string(LOADER_BOOT_COUNT_PATH, efivars)
    return value.replace("\\", "/") if value else None
