"""Which entry systemd-boot boots next, its EFI variables taken into account (read-only).

systemd-boot picks the default entry (src/boot/boot.c: config_load_defaults reads the
variables, config_select_default_entry decides) from, in order:

1. LoaderEntryOneShot (`bootctl set-oneshot ID`; systemd-boot removes it as it reads it);
2. LoaderEntryDefault (`bootctl set-default ID`); the value `@saved` stands for the entry
   in LoaderEntryLastBooted (the entry booted last, which systemd-boot then records);
3. loader.conf's `default` (`@saved` there: LoaderEntryLastBooted too);
4. the first entry in menu order.

Each value is case-folded (A-Z only) and matched as a glob (efi_fnmatch, see
cfsboot.boot.bls.glob_match) against every entry's id (the file name without its boot
counter: `foo+1-2.conf` is `foo.conf`), the first in menu order winning; a value that
matches no entry is passed over without a word. `bootctl set-default ""` (and
`set-oneshot ""`) removes the variable.

cfsboot writes none of these variables; what it sets at staging, finalize and rollback
is its menu's order (and so what loader.conf's `default`, or menu order, picks). The
variables are the running system's firmware's: only a caller describing the running
system reads the variables (`cfsboot.deploy.sysroot.Sysroot.loader_vars`, once per run);
a disk image or another root is described without them. GRUB menus are cfsboot's own
(`grub.cfg`): these variables are systemd-boot's and do not apply there.

The entries seen are the Type #1 files of `loader/entries` (or, when a staged menu is
about to be finalized, its cfsboot entries plus the other systems' entries finalize
carries over) and the Type #2 UKIs directly in `EFI/Linux/` (sorted after Type #1
entries: their sort keys sit inside the PE file): SystemdBoot.shown_entries, which
fsck's default check reads too. systemd-boot's own `auto-*` entries (Windows, EFI
shell, firmware setup) are not on the ESP as files: a variable naming one is taken to
name an entry that exists.

On the running system the variables describe the ESP systemd-boot was loaded from
(LoaderDevicePartUUID names its partition): for another ESP (`--esp`) none are read
(`loaded_from`).
"""

from __future__ import annotations

from pathlib import Path

from cfsboot.boot import bls
from cfsboot.boot.bls import BLSEntry, EntryFile
from cfsboot.boot.bootloader import Bootloader, SystemdBoot
from cfsboot.linux import efivars
from cfsboot.linux.efivars import (
    LOADER_DEVICE_PART_UUID,
    LOADER_ENTRY_DEFAULT,
    LOADER_ENTRY_LAST_BOOTED,
    LOADER_ENTRY_ONESHOT,
)
from cfsboot.linux.lazylog import getLogger

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from collections.abc import Callable

    from cfsboot.boot.esp import Esp

log = getLogger(__name__)  # imports logging when it logs (lazylog)

# Ids of the entries systemd-boot makes up itself (never files in loader/entries).
AUTO_PREFIX = "auto-"
# What removes each variable (bootctl's set-default/set-oneshot with an empty ID).
CLEAR = {
    LOADER_ENTRY_ONESHOT: 'bootctl set-oneshot ""',
    LOADER_ENTRY_DEFAULT: 'bootctl set-default ""',
}


# Plain classes, not dataclasses: `status` imports this module on every run, and defining
# a dataclass costs about 0.3 ms (tests/unit/test_startup.py, bench/bench_startup.py).


class LoaderVars:
    """The Boot Loader Interface variables that choose an entry; None: not set."""

    __slots__ = ("oneshot", "default", "last_booted")

    def __init__(
        self,
        oneshot: str | None = None,
        default: str | None = None,
        last_booted: str | None = None,
    ) -> None:
        self.oneshot, self.default, self.last_booted = oneshot, default, last_booted

    def _key(self) -> tuple[str | None, str | None, str | None]:
        return (self.oneshot, self.default, self.last_booted)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoaderVars) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "LoaderVars(oneshot={!r}, default={!r}, last_booted={!r})".format(*self._key())


NO_VARS = LoaderVars()


def read_loader_vars(efivars_dir: Path | None, esp: Esp | None = None) -> LoaderVars:
    """The variables in efivarfs directory `efivars_dir`; none when it is None (not the
    running system), nor when `esp` is not the ESP systemd-boot was loaded from (they
    choose from another ESP's menu: `loaded_from`). An empty value is no value: it matches
    no entry."""
    if efivars_dir is None or (esp is not None and not loaded_from(esp, efivars_dir)):
        return NO_VARS

    def get(name: str) -> str | None:
        return efivars.loader_string(name, efivars_dir) or None

    return LoaderVars(
        get(LOADER_ENTRY_ONESHOT), get(LOADER_ENTRY_DEFAULT), get(LOADER_ENTRY_LAST_BOOTED)
    )


def loaded_from(esp: Esp, efivars_dir: Path) -> bool:
    """Whether systemd-boot was loaded from `esp`: LoaderDevicePartUUID, the partition the
    firmware loaded it from, is the partition `esp` is (cfsboot.boot.espfind.partition_uuid).

    True when either is unknown, and the variables are read as they always were: without
    the variable (a boot loader that sets none of these), or for an ESP whose partition
    cannot be known (a plain directory standing in for one, as in tests, or a FAT
    filesystem at an offset no GPT partition starts at).
    """
    loaded = efivars.loader_string(LOADER_DEVICE_PART_UUID, efivars_dir)
    if not loaded:
        return True
    from cfsboot.boot.espfind import partition_uuid

    mine = partition_uuid(esp)
    if mine is None or mine == loaded.strip().upper():
        return True
    log.debug(
        "%s names partition %s, the ESP is %s: its boot loader variables are not read",
        LOADER_DEVICE_PART_UUID,
        loaded,
        mine,
    )
    return False


class Choice:
    """The entry systemd-boot boots, and what chose it.

    variable: the EFI variable whose value picked it (LoaderEntryOneShot,
    LoaderEntryDefault, or LoaderEntryLastBooted through a `@saved` default); None when
    loader.conf's `default` or menu order did. `entry` is None when there is no entry;
    its id alone (an empty BLSEntry) for a systemd-boot `auto-*` entry a variable names.
    saved_by: for LoaderEntryLastBooted, the `@saved` that asked for it.
    """

    __slots__ = ("entry", "variable", "value", "saved_by", "has_image")

    def __init__(
        self,
        entry: EntryFile | None,
        variable: str | None = None,
        value: str | None = None,
        saved_by: str | None = None,
    ) -> None:
        self.entry, self.variable, self.value, self.saved_by = entry, variable, value, saved_by
        # The repository's images (Bootloader.has_image): of several digests, which boots.
        self.has_image: Callable[[str], bool] | None = None

    @property
    def deployment(self) -> str | None:
        """The cfsboot deployment it boots; None for another system's entry."""
        if self.entry is None or not self.entry.ours:
            return None
        return self.entry.entry.deployment(self.has_image)

    @property
    def clear(self) -> str:
        """What an admin does so that cfsboot's default boots again."""
        if self.variable in CLEAR:
            return f"`{CLEAR[self.variable]}` clears it"
        if self.saved_by == LOADER_ENTRY_DEFAULT:
            return f"`{CLEAR[LOADER_ENTRY_DEFAULT]}` clears the @saved default"
        return f"drop `default @saved` from {bls.LOADER_CONF}"


def _find(ordered: list[EntryFile], value: str | None) -> EntryFile | None:
    if value is None:
        return None
    folded = bls.ascii_lower(value)
    hit = next((e for e in ordered if bls.glob_match(folded, e.id)), None)
    if hit is None and folded.startswith(AUTO_PREFIX):
        return EntryFile(folded, BLSEntry())  # one of systemd-boot's own, not a file
    return hit


def choose(entries: list[EntryFile], conf_default: str | None, lv: LoaderVars) -> Choice:
    """config_select_default_entry: the entry that boots, and the variable that chose it.

    conf_default: loader.conf's `default`, as cfsboot.boot.bls.loader_default gives it.
    """
    ordered = bls.sort_entries(entries)
    hit = _find(ordered, lv.oneshot)
    if hit is not None:
        return Choice(hit, LOADER_ENTRY_ONESHOT, lv.oneshot)
    saved_efivar = lv.default is not None and bls.ascii_lower(lv.default) == bls.SAVED
    saved_conf = conf_default == bls.SAVED
    if saved_efivar:
        hit = _find(ordered, lv.last_booted)
        if hit is not None:
            return Choice(hit, LOADER_ENTRY_LAST_BOOTED, lv.last_booted, LOADER_ENTRY_DEFAULT)
    else:
        hit = _find(ordered, lv.default)
        if hit is not None:
            return Choice(hit, LOADER_ENTRY_DEFAULT, lv.default)
    if saved_conf and not saved_efivar:
        hit = _find(ordered, lv.last_booted)
        if hit is not None:
            return Choice(hit, LOADER_ENTRY_LAST_BOOTED, lv.last_booted, bls.LOADER_CONF)
    # loader.conf's own `default`, else menu order (`@saved` without a saved entry: the first).
    return Choice(bls.default_entry(ordered, conf_default))


class NextBoot:
    """What boots next: `chosen`, and `cfsboot`, what would boot without the variables.

    `overridden` when an EFI variable makes another entry boot than cfsboot's choice.
    """

    __slots__ = ("chosen", "cfsboot")

    def __init__(self, chosen: Choice, cfsboot: Choice) -> None:
        self.chosen, self.cfsboot = chosen, cfsboot

    @property
    def overridden(self) -> bool:
        a, b = self.chosen.entry, self.cfsboot.entry
        return self.chosen.variable is not None and (a.id if a else None) != (b.id if b else None)

    def warning(self) -> str | None:
        """One line naming the variable, the entry it picks, and what to run; None if no
        variable overrides cfsboot's choice."""
        if not self.overridden:
            return None
        c = self.chosen
        assert c.entry is not None and c.variable is not None
        if c.deployment is not None:
            what = f"{_shown(c.entry.id)} (deployment {c.deployment[:12]}…)"
        else:
            what = f"{_shown(c.entry.id)} (not a cfsboot entry)"
        mine, theirs = self.cfsboot.deployment, self.cfsboot.entry
        instead = (
            f"deployment {mine[:12]}…" if mine else _shown(theirs.id) if theirs else "no entry"
        )
        via = f" (by {c.saved_by}'s @saved)" if c.saved_by else ""
        when = "the next boot" if c.variable == LOADER_ENTRY_ONESHOT else "every boot"
        return (
            f"the EFI variable {c.variable}{via} names {what}: systemd-boot starts it at"
            f" {when} instead of {instead}; {c.clear}"
        )


def _shown(entry_id: str) -> str:
    """An entry id in a warning: as it is, or quoted with escapes when it would not print
    as one line (an `auto-` id is the variable's own value, which may hold anything)."""
    return entry_id if entry_id.isprintable() else repr(entry_id)


def next_boot(bl: Bootloader, lv: LoaderVars | None, *, staged: bool = False) -> NextBoot:
    """What systemd-boot boots next from `bl`'s ESP (staged: once finalize ran), with the
    variables `lv` (read_loader_vars; None: not the running system, no variables)."""
    assert isinstance(bl, SystemdBoot)
    files = bl.shown_entries(staged)
    pattern = bl.default_pattern()
    chosen = choose(files, pattern, lv or NO_VARS)
    mine = choose(files, pattern, NO_VARS)
    chosen.has_image = mine.has_image = bl.has_image
    return NextBoot(chosen, mine)


def unmatched(
    bl: Bootloader, lv: LoaderVars | None, *, staged: bool = False
) -> list[tuple[str, str]]:
    """(variable, value) of LoaderEntryOneShot and LoaderEntryDefault when set (in `lv`) to a
    value that names no entry: systemd-boot passes over them silently. A default of `@saved`
    is not one (the entry booted last may well be gone: then loader.conf decides)."""
    if lv is None or (lv.oneshot is None and lv.default is None):
        return []
    assert isinstance(bl, SystemdBoot)
    ordered = bls.sort_entries(bl.shown_entries(staged))
    out: list[tuple[str, str]] = []
    for name, value in ((LOADER_ENTRY_ONESHOT, lv.oneshot), (LOADER_ENTRY_DEFAULT, lv.default)):
        if value is None or (name == LOADER_ENTRY_DEFAULT and bls.ascii_lower(value) == bls.SAVED):
            continue
        if _find(ordered, value) is None:
            out.append((name, value))
    return out
