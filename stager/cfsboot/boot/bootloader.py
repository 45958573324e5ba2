"""The boot menu and boot files on the ESP, for systemd-boot (BLS) and for GRUB (a generated menu).

A menu is the ordered list of cfsboot's entries, the default first. It is
only ever changed whole and atomically: the complete new menu is written
under a staged name, then exchanged with the live one in one step
(renameat2 RENAME_EXCHANGE on a mounted ESP, an in-place swap of two FAT
directory entries through mtools), so that a power cut at any instant leaves
the old or the new menu, never neither and never a mix.

- systemd-boot: `loader/entries/` and `loader/entries.staged/` (bootc's
  names). Entries of other operating systems in `loader/entries/` are copied
  into the staged directory just before the exchange, so they are kept.
- GRUB (Debian's, which cannot read BLS): the menu file `EFI/BOOT/grub.cfg`,
  which Debian's monolithic grubx64.efi sources from the directory it was
  started from, and `EFI/BOOT/grub.cfg.staged`.

Kernels and initrds live in `EFI/Linux/bootc_composefs-<ID>/{vmlinuz,initrd}`
(one directory per distinct pair, shared by deployments that use the same
one), UKIs in `EFI/Linux/bootc/bootc_composefs-<ID>.efi`, as bootc lays them out.

Boot counting (cfsboot.boot.counting): an entry on trial carries its tries
(`MenuEntry.tries`). `menu()` lists the entries in the order the boot loader
tries them, so an entry out of tries comes after every other one; the order
cfsboot wrote is `written_order()`. Rewriting a menu keeps every entry's
counter: only the first entry of a new menu may bring a fresh one (the
deployment just staged, or one an admin rolls back to); the others take the
live menu's state again when the new menu is made live, since the boot
loader or a blessing may have changed it meanwhile. A UKI's counter is on its
`.conf` too: systemd-boot discovers Type #2 entries only directly in
`EFI/Linux/`, and bootc's `EFI/Linux/bootc/` UKIs are reached through the
Type #1 entry (`efi` key) that names them.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cfsboot.boot import bls
from cfsboot.boot.bls import BLSEntry, EntryFile
from cfsboot.boot.boottype import BootType
from cfsboot.boot.counting import Tries, counted_name, split_name
from cfsboot.boot.esp import Esp, EspError
from cfsboot.errors import CfsbootError, die
from cfsboot.image.kargsd import split_kargs
from cfsboot.linux.lazylog import getLogger

log = getLogger(__name__)  # imports logging when it logs (lazylog)

BOOT_FILES_DIR = "EFI/Linux"
GRUB_MENU = "EFI/BOOT/grub.cfg"
STAGED_SUFFIX = ".staged"
# At most this many cfsboot entries in a menu: sort keys are `bootc-<os>-<position>`
# and compare as strings, so a position must stay one digit.
MAX_ENTRIES = 10

_BOOT_DIR_RE = re.compile(re.escape(bls.BOOT_DIR_PREFIX) + r"[0-9a-f]+")


class BootloaderKind(enum.StrEnum):
    SYSTEMD_BOOT = "systemd-boot"
    GRUB = "grub"
    NONE = "none"  # installed with --bootloader none: the user's (cfsboot.deploy.unmanaged)


class MenuError(CfsbootError):
    """A boot menu that cannot be read or written."""


@dataclass(frozen=True)
class MenuEntry:
    """One cfsboot deployment in the boot menu."""

    deployment: str
    boot_type: BootType
    title: str
    version: str
    os_id: str
    linux: str | None = None  # ESP path, with a leading '/'
    initrd: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # kernel arguments (BLS only; a UKI's are sealed)
    uki: str | None = None  # ESP path of the UKI, with a leading '/'
    tries: Tries | None = None  # on trial (boot counting); None: not counted
    # Every deployment the entry names, if several (bootc's may name one per hash algorithm):
    # `deployment` is the one setup-root boots, the first the repository has. (): just it.
    digests: tuple[str, ...] = ()

    @property
    def named(self) -> tuple[str, ...]:
        """Every deployment the entry names, the one it boots among them."""
        return self.digests or (self.deployment,)

    @property
    def artifact(self) -> str:
        """The ESP path this entry boots from: its kernel directory or its UKI (no '/')."""
        if self.uki is not None:
            return self.uki.lstrip("/")
        assert self.linux is not None
        return self.linux.lstrip("/").rsplit("/", 1)[0]

    def with_options(self, options: Sequence[str]) -> MenuEntry:
        return replace(self, options=tuple(options))

    @property
    def failed(self) -> bool:
        """Out of tries: the boot loader passes it over."""
        return self.tries is not None and self.tries.failed


def kernel_dir(name_id: str) -> str:
    """ESP directory for one kernel+initrd pair."""
    return f"{BOOT_FILES_DIR}/{bls.boot_dir_name(name_id)}"


class Bootloader(abc.ABC):
    """A boot menu plus the boot files it points at, on one ESP."""

    kind: BootloaderKind
    # Whether the repository has an image (Sysroot.attach): see MenuEntry.digests.
    has_image: Callable[[str], bool] | None = None

    def __init__(self, esp: Esp) -> None:
        self.esp = esp
        # Menus read through an ESP that cannot change (a read-only view: `cfsboot status`
        # asks for them about five times), kept as parsed.
        self._kept: dict[object, list[MenuEntry] | list[str]] = {}

    # -- the menu --------------------------------------------------------------------

    def menu(self, *, staged: bool = False) -> list[MenuEntry]:
        """cfsboot's entries in boot order (default first); the staged menu if asked."""
        if not self.esp.unchanging:
            return self._read_menu(staged)
        if ("menu", staged) not in self._kept:
            self._kept["menu", staged] = self._read_menu(staged)
        return list(self._kept["menu", staged])  # type: ignore[arg-type]

    @abc.abstractmethod
    def _read_menu(self, staged: bool) -> list[MenuEntry]: ...

    @abc.abstractmethod
    def has_staged(self) -> bool: ...

    @abc.abstractmethod
    def stage(self, entries: Sequence[MenuEntry]) -> None:
        """Write a complete new menu under the staged name; the live menu is untouched."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the staged menu the live one in one atomic step, then drop the old one."""

    @abc.abstractmethod
    def discard_staged(self) -> None: ...

    def write_menu(self, entries: Sequence[MenuEntry]) -> None:
        self.stage(entries)
        self.commit()

    def drop_entries(self, deployments: Collection[str]) -> None:
        """Remove the live menu's entries of `deployments`; every other entry stays as it is."""
        # In the order cfsboot wrote (menu() puts entries out of tries last).
        order = {d: i for i, d in enumerate(self.written_order())}
        kept = [m for m in self.menu() if m.deployment not in deployments]
        kept.sort(key=lambda m: order.get(m.deployment, len(order)))
        self.write_menu(kept)

    def written_order(self) -> list[str]:
        """The live menu's deployments in the order cfsboot wrote it (out of tries or not)."""
        if not self.esp.unchanging:
            return self._read_written_order()
        if "order" not in self._kept:
            self._kept["order"] = self._read_written_order()
        return list(self._kept["order"])  # type: ignore[arg-type]

    @abc.abstractmethod
    def _read_written_order(self) -> list[str]: ...

    @abc.abstractmethod
    def bless(self, deployment: str, *, counter_path: str | None = None) -> str | None:
        """End the trial of `deployment`'s live entry (its boot was good); what was done.

        counter_path: the entry file the boot loader reported booting (systemd-boot's
        LoaderBootCountPath), where there is one. None when nothing was on trial.
        """

    def recover(self) -> list[str]:
        """Finish or undo ESP writes a crash interrupted."""
        return self.esp.recover()

    # -- boot files ------------------------------------------------------------------

    def install_kernel(self, name_id: str, vmlinuz: Path, initrd: Path) -> tuple[str, str]:
        """Copy a kernel+initrd pair to its own directory; returns their paths for an entry.

        The directory is complete before any entry can point at it: the files are
        written under temporary names and renamed (see Esp.install).
        """
        d = kernel_dir(name_id)
        self.esp.mkdir(d)
        self.esp.install(f"{d}/{bls.KERNEL_NAME}", vmlinuz)
        self.esp.install(f"{d}/{bls.INITRD_NAME}", initrd)
        return f"/{d}/{bls.KERNEL_NAME}", f"/{d}/{bls.INITRD_NAME}"

    def install_uki(self, deployment: str, src: Path) -> str:
        from cfsboot.boot.uki import UKI_DIR, uki_file_name  # a menu reader needs no UKI

        path = f"{UKI_DIR}/{uki_file_name(deployment)}"
        self.esp.mkdir(UKI_DIR)
        self.esp.install(path, src)
        return f"/{path}"

    def has_artifact(self, path: str) -> bool:
        return self.esp.exists(path)

    def artifacts(self) -> list[str]:
        """Every kernel directory and UKI cfsboot (or bootc) put on the ESP."""
        from cfsboot.boot.uki import UKI_DIR

        out: list[str] = []
        if self.esp.is_dir(BOOT_FILES_DIR):
            for e in self.esp.listdir(BOOT_FILES_DIR):
                if e.is_dir and _BOOT_DIR_RE.fullmatch(e.name.lower()):
                    out.append(f"{BOOT_FILES_DIR}/{e.name}")
        if self.esp.is_dir(UKI_DIR):
            for e in self.esp.listdir(UKI_DIR):
                low = e.name.lower()
                if not e.is_dir and low.startswith(bls.BOOT_DIR_PREFIX) and low.endswith(".efi"):
                    out.append(f"{UKI_DIR}/{e.name}")
        return sorted(out)

    def remove_artifact(self, path: str) -> None:
        if self.esp.is_dir(path):
            self.esp.remove_tree(path)
        elif self.esp.exists(path):
            self.esp.remove(path)


# ---------------------------------------------------------------------------------------
# systemd-boot
# ---------------------------------------------------------------------------------------


class SystemdBoot(Bootloader):
    kind = BootloaderKind.SYSTEMD_BOOT

    def _dir(self, staged: bool) -> str:
        return bls.STAGED_ENTRIES_DIR if staged else bls.ENTRIES_DIR

    def _files(self, staged: bool) -> list[tuple[str, str]]:
        d = self._dir(staged)
        if not self.esp.is_dir(d):
            return []
        out = []
        for e in self.esp.listdir(d):
            if not e.is_dir and bls.is_entry_name(e.name):
                try:
                    out.append((e.name, self.esp.read_text(f"{d}/{e.name}")))
                except UnicodeDecodeError:
                    # Not an entry anyone could have written for us (`cfsboot fsck` says so).
                    log.debug("skipping %s/%s: not UTF-8 text", d, e.name)
        return out

    def _read_menu(self, staged: bool) -> list[MenuEntry]:
        entries = bls.sort_entries(bls.parse_entries(self._files(staged)))
        out: list[MenuEntry] = []
        for ef in entries:
            m = _from_bls(ef, self.has_image)
            if m is not None:
                out.append(m)
        return out

    def has_staged(self) -> bool:
        return self.esp.is_dir(bls.STAGED_ENTRIES_DIR)

    def entry_files(self, staged: bool = False) -> list[EntryFile]:
        """Every entry file of the live (or staged) directory, cfsboot's or not."""
        return bls.parse_entries(self._files(staged))

    def shown_entries(self, staged: bool = False) -> list[EntryFile]:
        """Every entry systemd-boot shows from this ESP: the Type #1 files of loader/entries
        and the Type #2 UKIs directly in EFI/Linux (not its subdirectories: bootc's UKIs in
        EFI/Linux/bootc are reached through their Type #1 entries), each UKI named as
        systemd-boot names it (`name+3.efi`: `name.efi`), as an entry without keys (sorted
        after Type #1 entries with a sort key: a UKI's own sits inside the PE file).

        staged: the menu once finalize made the staged one live (the staged cfsboot
        entries, and the live directory's entries of other systems, which commit carries
        over).
        """
        files = self.entry_files(staged)
        if staged:
            files = [f for f in files if f.ours] + [f for f in self.entry_files() if not f.ours]
        if self.esp.is_dir(BOOT_FILES_DIR):
            for e in self.esp.listdir(BOOT_FILES_DIR):
                low = e.name.lower()
                if not e.is_dir and not e.name.startswith(".") and low.endswith(".efi"):
                    files.append(EntryFile(split_name(e.name, ".efi")[0], BLSEntry()))
        return files

    def default_pattern(self) -> str | None:
        """loader.conf's `default` (bls.loader_default: folded); None without one."""
        if not self.esp.exists(bls.LOADER_CONF):
            return None
        return bls.loader_default(self.esp.read(bls.LOADER_CONF).decode(errors="ignore"))

    def _read_written_order(self) -> list[str]:
        ours = [ef for ef in bls.parse_entries(self._files(False)) if ef.ours]
        ours.sort(key=lambda ef: ef.entry.sort_key or "")
        return [d for ef in ours if (d := ef.entry.deployment(self.has_image)) is not None]

    def bless(self, deployment: str, *, counter_path: str | None = None) -> str | None:
        d = bls.ENTRIES_DIR
        for name, text in self._files(False):
            ef = EntryFile(name, BLSEntry.parse(text))
            if (
                not ef.ours
                or ef.tries_left is None
                or ef.entry.deployment(self.has_image) != deployment
            ):
                continue
            good, _ = split_name(name)
            self.esp.rename(f"{d}/{name}", f"{d}/{good}")
            return f"renamed {d}/{name} to {good}"
        return None

    def stage(self, entries: Sequence[MenuEntry]) -> None:
        _check_menu(entries)
        staged = bls.STAGED_ENTRIES_DIR
        self.discard_staged()
        self.esp.mkdir(staged)
        for i, m in enumerate(entries):
            name, text = _to_bls(m, i, len(entries), sort_os=entries[0].os_id)
            self.esp.write_text(f"{staged}/{name}", text)
        if not self.esp.exists(bls.LOADER_CONF):
            # Only when there is none: loader.conf belongs to whoever installed the loader.
            self.esp.write_text(bls.LOADER_CONF, bls.LOADER_CONF_DEFAULT)

    def commit(self) -> None:
        live, staged = bls.ENTRIES_DIR, bls.STAGED_ENTRIES_DIR
        if not self.has_staged():
            raise MenuError(f"no staged boot entries ({staged}) to make the default")
        if not self.esp.is_dir(live):
            # Created empty and then exchanged (not renamed): a rename through mtools
            # would store the 8.3-sized name "entries" as "ENTRIES".
            self.esp.mkdir(live)
        self._sync_counters()
        # Other operating systems' entries, as they are now, go along into the new menu.
        ours = {n.lower() for n, _ in self._files(True)}
        for e in self.esp.listdir(live):
            if e.is_dir or _is_ours(e.name):
                continue
            if e.name.lower() in ours:
                raise MenuError(f"{live}/{e.name} is not cfsboot's but has a cfsboot name")
            self.esp.write(f"{staged}/{e.name}", self.esp.read(f"{live}/{e.name}"))
        self.esp.exchange(live, staged)
        self.esp.remove_tree(staged)

    def discard_staged(self) -> None:
        if self.esp.exists(bls.STAGED_ENTRIES_DIR):
            self.esp.remove_tree(bls.STAGED_ENTRIES_DIR)

    def drop_entries(self, deployments: Collection[str]) -> None:
        # One file each, deleted (atomic): the other entries keep their names, which are
        # their ids (a default chosen by id, boot counting) and their sort keys.
        for ef in bls.parse_entries(self._files(False)):
            m = _from_bls(ef, self.has_image)
            if m is not None and m.deployment in deployments:
                self.esp.remove(f"{bls.ENTRIES_DIR}/{ef.name}")

    def _sync_counters(self) -> None:
        """Give every staged entry but the first the counter its live entry has now."""
        live = {}
        for name, text in self._files(False):
            ef = EntryFile(name, BLSEntry.parse(text))
            if ef.ours and (d := ef.entry.deployment(self.has_image)) is not None:
                live[d] = split_name(name)[1]
        staged = [EntryFile(n, BLSEntry.parse(t)) for n, t in self._files(True)]
        staged = [ef for ef in staged if ef.ours]
        staged.sort(key=lambda ef: ef.entry.sort_key or "")
        for ef in staged[1:]:
            d = ef.entry.deployment(self.has_image)
            if d is None or d not in live:
                continue
            base, _ = split_name(ef.name)
            want = counted_name(base, live[d])
            if want != ef.name:
                self.esp.rename(f"{bls.STAGED_ENTRIES_DIR}/{ef.name}",
                                f"{bls.STAGED_ENTRIES_DIR}/{want}")  # fmt: skip


def _is_ours(name: str) -> bool:
    low = name.lower()
    return low.startswith(bls.ENTRY_PREFIX) and low.endswith(bls.ENTRY_SUFFIX)


def _check_menu(entries: Sequence[MenuEntry]) -> None:
    ids = [m.deployment for m in entries]
    if len(set(ids)) != len(ids):
        raise MenuError("a boot menu lists a deployment twice")
    if len(entries) > MAX_ENTRIES:
        raise MenuError(f"a boot menu holds at most {MAX_ENTRIES} cfsboot entries")


def _to_bls(m: MenuEntry, position: int, total: int, *, sort_os: str) -> tuple[str, str]:
    """(file name, text) of the entry at `position` (0 = default) of a menu of `total`.

    sort_os: the os-id every sort key of the menu carries (the default entry's): the
    keys must differ by position alone, or an image with another os-release ID (a
    switch from bootc-os to debian) would sort by name instead of by position.
    """
    # bootc: primary file name ends in -1, secondary in -0 (GRUB's BLS sorts names
    # descending); sort keys bootc-<os>-0 then -1 (systemd-boot sorts ascending).
    name = bls.entry_file_name(m.os_id, m.version, primary=True)
    name = counted_name(name[: -len("-1.conf")] + f"-{total - 1 - position}.conf", m.tries)
    sort_key = bls.entry_sort_key(sort_os, primary=True)[: -len("0")] + str(position)
    if m.boot_type is BootType.UKI:
        entry = BLSEntry(title=m.title, version=m.version, efi=m.uki, sort_key=sort_key)
    else:
        entry = BLSEntry(
            title=m.title,
            version=m.version,
            linux=m.linux,
            initrd=m.initrd,
            options=(" ".join(m.options),),
            sort_key=sort_key,
        )
    try:
        return name, entry.serialise()
    except bls.BLSError as e:
        raise MenuError(f"cannot write the boot entry for {m.deployment}: {e}") from None


_SORT_KEY_RE = re.compile(r"bootc-(.+)-\d+")


def _from_bls(ef: EntryFile, has_image: Callable[[str], bool] | None) -> MenuEntry | None:
    if not ef.ours:
        return None
    e = ef.entry
    named = e.digests()
    deployment = bls.booted_digest(named, has_image)
    if deployment is None:
        return None
    m = _SORT_KEY_RE.fullmatch(e.sort_key or "")
    os_id = m.group(1) if m else bls.ENTRY_PREFIX.rstrip("_")
    uki = e.uki or e.efi
    if uki is None and e.linux is None:
        return None
    base = MenuEntry(
        deployment,
        BootType.BLS if uki is None else BootType.UKI,
        e.title or deployment,
        e.version or "",
        os_id,
        tries=split_name(ef.name)[1],
        digests=named if len(named) > 1 else (),
    )
    if uki is not None:
        return replace(base, uki=uki)
    return replace(base, linux=e.linux, initrd=e.initrd, options=tuple(split_kargs(e.cmdline)))


# ---------------------------------------------------------------------------------------


def detect(esp: Esp) -> Bootloader:
    """The bootloader cfsboot installed on this ESP."""
    try:
        if esp.exists(GRUB_MENU):
            from cfsboot.boot.grubloader import Grub  # the GRUB menu builds on this module

            return Grub(esp)
        if esp.is_dir(bls.ENTRIES_DIR) or esp.is_dir(bls.STAGED_ENTRIES_DIR):
            return SystemdBoot(esp)
        from cfsboot.linux.arch import all_efi_names  # a menu, the common case, needs none

        if any(esp.exists(names.systemd_boot) for names in all_efi_names()):
            return SystemdBoot(esp)
    except EspError as e:
        die(f"cannot read the ESP: {e}")
    die(
        "no boot menu of cfsboot's on the ESP (neither loader/entries nor EFI/BOOT/grub.cfg)",
        hint="was this system installed with cfsboot install? pass --esp to name the ESP",
    )


def for_kind(kind: BootloaderKind, esp: Esp) -> Bootloader:
    from cfsboot.boot.grubloader import Grub

    return SystemdBoot(esp) if kind is BootloaderKind.SYSTEMD_BOOT else Grub(esp)
