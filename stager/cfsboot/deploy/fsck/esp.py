"""The ESP's part of `cfsboot fsck`: entries, their boot files, the default, leftovers.

- every cfsboot entry (live and staged menu) boots a deployment that exists (one
  naming several is dangling only when none of them exists);
- its kernel and initrd, or its UKI, are on the ESP, and (deep check) their
  content is what the deployment's origin records: bootc's boot digest (sha256
  of vmlinuz then initrd, or of a UKI's .linux then .initrd), and a UKI seals
  the deployment's own composefs= digest;
- the entry the menu boots by default is one of those, complete;
- a file named like cfsboot's (`bootc_*.conf`) that boots no deployment is
  reported, other systems' entries are left alone;
- no leftovers of interrupted writes, no staged menu without its marker;
- on GRUB, an environment block boot counting can use (cfsboot.deploy.fsck.grubenv).
Boot files that no entry uses are a note: `cfsboot gc` removes them. So is, on the
running system with systemd-boot, an EFI variable LoaderEntryOneShot or
LoaderEntryDefault (`bootctl set-oneshot|set-default`) that names no entry:
systemd-boot passes over it without a word. --repair never writes EFI variables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cfsboot.boot import bls
from cfsboot.boot.bootloader import Bootloader, BootloaderKind, MenuEntry, SystemdBoot
from cfsboot.boot.esp import NEW_SUFFIX, OLD_SUFFIX, Esp, EspError
from cfsboot.composefs.repocheck import Problem
from cfsboot.deploy.fsck.context import Context
from cfsboot.linux.fsutil import TEMP_MARKER

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.boot.uki import UKI


class EspCode(enum.StrEnum):
    ENTRY_DANGLING = "entry-dangling"
    ENTRY_STRAY = "entry-stray"
    BOOT_FILE_MISSING = "boot-file-missing"
    BOOT_FILE_WRONG = "boot-file-wrong"
    DEFAULT_UNBOOTABLE = "default-unbootable"
    STAGED_MENU_ORPHAN = "staged-menu-without-marker"
    LEFTOVER = "leftover"
    UNUSED_BOOT_FILES = "boot-files-unused"
    LOADER_VARIABLE_UNMATCHED = "loader-variable-unmatched"


@dataclass(frozen=True)
class _Content:
    """What one boot file set on the ESP holds, read once however many entries use it."""

    missing: str | None = None  # the first file that is missing (an ESP path)
    digest: str | None = None  # bootc's boot digest of the files (deep check only)
    wrong: str | None = None  # why they cannot be read as what they should be
    uki: UKI | None = None  # the parsed UKI (deep check of a UKI only)


@dataclass
class EspFindings:
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    # (deployment:ESP path, lower case) of entries whose boot files are missing or wrong
    bad_artifacts: set[str] = field(default_factory=set)
    # What each boot file set holds, by ESP path (lower case): each is read once
    read: dict[str, _Content] = field(default_factory=dict)
    entries: int = 0


def _is_leftover(name: str) -> bool:
    if TEMP_MARKER in name:
        return True
    return name.startswith(".") and (name.endswith(NEW_SUFFIX) or name.endswith(OLD_SUFFIX))


def esp_leftovers(esp: Esp) -> list[str]:
    """Temporary names of interrupted writes anywhere on the ESP (no recursion)."""
    out: list[str] = []
    stack = [""]
    while stack:
        d = stack.pop()
        for e in esp.listdir(d):
            path = f"{d}/{e.name}" if d else e.name
            if e.is_dir:
                stack.append(path)
            elif _is_leftover(e.name):
                out.append(path)
    return sorted(out)


def _stray_entries(esp: Esp) -> list[Problem]:
    """Files named like cfsboot's entries that boot no deployment (systemd-boot only)."""
    out: list[Problem] = []
    for d in (bls.ENTRIES_DIR, bls.STAGED_ENTRIES_DIR):
        if not esp.is_dir(d):
            continue
        for e in esp.listdir(d):
            low = e.name.lower()
            ours = low.startswith(bls.ENTRY_PREFIX) and low.endswith(bls.ENTRY_SUFFIX)
            if e.is_dir or not ours:
                continue
            path = f"{d}/{e.name}"
            why: str | None
            try:
                entry = bls.BLSEntry.parse(esp.read(path).decode("utf-8"))
            except UnicodeDecodeError:
                why = "is not UTF-8 text"
            else:
                why = None
                if entry.deployment() is None:
                    why = "boots no composefs deployment (no composefs= argument, no bootc UKI)"
                elif entry.linux is None and entry.uki is None and entry.efi is None:
                    why = "has neither a linux nor an efi line"
            if why is not None:
                out.append(
                    Problem(
                        EspCode.ENTRY_STRAY,
                        path,
                        f"named like a cfsboot entry but {why}; it is ignored",
                        path,
                    )
                )
    return out


def _read_content(ctx: Context, m: MenuEntry) -> _Content:
    assert ctx.bl is not None
    esp = ctx.bl.esp
    paths = [m.uki] if m.uki is not None else [m.linux or "", *m.initrd]
    for p in paths:
        if not p or not esp.exists(p):
            return _Content(missing=(p or m.artifact).lstrip("/"))
    if not ctx.deep:
        return _Content()
    if m.uki is not None:
        from cfsboot.boot.uki import UKIError, boot_digest_of, parse_uki  # the deep check only

        data = esp.read(m.uki)
        try:
            uki = parse_uki(data, name=m.uki)
        except UKIError as e:
            return _Content(wrong=str(e))
        return _Content(digest=boot_digest_of(data, uki), uki=uki)
    import hashlib  # the deep check only (status imports this module)

    h = hashlib.sha256()
    for path in (m.linux or "", *m.initrd):
        h.update(esp.read(path))
    return _Content(digest=h.hexdigest())


def _artifact_problem(ctx: Context, m: MenuEntry, read: dict[str, _Content]) -> Problem | None:
    """What is wrong with the boot files of entry `m`, or None.

    `read` keeps what each boot file set holds (by lower-case ESP path): a set is read
    once, and judged against each entry's own deployment (an entry may point at another
    deployment's kernel directory, which is right for that one only).
    """
    art = m.artifact.lower()
    if art not in read:
        read[art] = _read_content(ctx, m)
    c = read[art]
    if c.missing is not None:
        return Problem(
            EspCode.BOOT_FILE_MISSING,
            c.missing,
            f"missing (the {'UKI' if m.uki else 'kernel or initrd'} of deployment"
            f" {m.deployment[:16]}…)",
            m.deployment,
        )
    if not ctx.deep:
        return None
    wrong = c.wrong
    if wrong is None and c.uki is not None:
        from cfsboot.boot.uki import UKIError  # the deep check only

        try:
            c.uki.check_composefs(m.deployment)
        except UKIError as e:
            wrong = str(e)
    origin = ctx.good_origin(m.deployment)
    if (
        wrong is None
        and origin is not None
        and origin.boot_digest
        and c.digest != origin.boot_digest
    ):
        wrong = (
            f"its content (boot digest {str(c.digest)[:16]}…) is not what deployment"
            f" {m.deployment[:16]}… records ({origin.boot_digest[:16]}…)"
        )
    if wrong is None:
        return None
    return Problem(EspCode.BOOT_FILE_WRONG, m.artifact, wrong, m.deployment)


def _check_menu(ctx: Context, menu: list[MenuEntry], staged: bool, out: EspFindings) -> None:
    which = "staged menu" if staged else "boot menu"
    for m in menu:
        out.entries += 1
        # Dangling only when none of the deployments it names exists (an entry of bootc's
        # may name one per hash algorithm: setup-root boots the first the repository has).
        if not any(ctx.has_state(d) for d in m.named):
            out.problems.append(
                Problem(
                    EspCode.ENTRY_DANGLING,
                    _menu_path(ctx, staged),
                    f"the {which} entry for deployment {m.deployment[:16]}… boots a deployment"
                    f" that does not exist (no state/deploy/{_names(m.named)})",
                    f"{'staged' if staged else 'live'}:{m.deployment}",
                )
            )
            continue
        found = _artifact_problem(ctx, m, out.read)
        if found is not None:
            out.bad_artifacts.add(_bad_key(m))
            if not any(
                (p.path, p.code, p.subject) == (found.path, found.code, found.subject)
                for p in out.problems
            ):
                out.problems.append(found)


def _names(digests: tuple[str, ...]) -> str:
    return " nor ".join(f"{d[:16]}…" for d in digests)


def _bad_key(m: MenuEntry) -> str:
    """An entry's boot files, as `bad_artifacts` holds them: right for one deployment may
    be wrong for another that shares them."""
    return f"{m.deployment}:{m.artifact.lower()}"


def _is_bls(ctx: Context) -> bool:
    return ctx.bl is not None and ctx.bl.kind is BootloaderKind.SYSTEMD_BOOT


def _menu_path(ctx: Context, staged: bool) -> str:
    assert ctx.bl is not None
    if _is_bls(ctx):
        return bls.STAGED_ENTRIES_DIR if staged else bls.ENTRIES_DIR
    menu_path: str = getattr(ctx.bl, "menu_path", "EFI/BOOT/grub.cfg")
    return menu_path + (".staged" if staged else "")


def _default_deployment(bl: Bootloader, live: list[MenuEntry]) -> tuple[str | None, bool]:
    """(the deployment the menu boots by default, whether the default is cfsboot's at all)."""
    if bl.kind is not BootloaderKind.SYSTEMD_BOOT:
        return (live[0].deployment, True) if live else (None, True)
    assert isinstance(bl, SystemdBoot)
    # Every entry systemd-boot shows, Type #2 UKIs in EFI/Linux too: loader.conf's
    # `default` may name one (as loadervars reads the menu).
    chosen = bls.default_entry(bl.shown_entries(), bl.default_pattern())
    if chosen is None:
        return None, True
    if not chosen.ours:
        return None, False
    return chosen.entry.deployment(bl.has_image), True


def _check_default(ctx: Context, out: EspFindings) -> None:
    assert ctx.bl is not None
    depl, ours = _default_deployment(ctx.bl, ctx.live)
    if not ours:
        return  # another system's entry is the default: not ours to judge
    path = _menu_path(ctx, False)
    if depl is None:
        out.problems.append(
            Problem(EspCode.DEFAULT_UNBOOTABLE, path, "the boot menu has no cfsboot entry to boot")
        )
        return
    entry = next((m for m in ctx.live if m.deployment == depl), None)
    why = None
    if entry is None or not ctx.has_state(depl):
        why = "its deployment does not exist"
    elif ctx.images is not None and depl not in ctx.images:
        why = "its image is not in the repository"
    elif _bad_key(entry) in out.bad_artifacts:
        why = "its boot files are missing or wrong"
    if why is not None:
        out.problems.append(
            Problem(
                EspCode.DEFAULT_UNBOOTABLE,
                path,
                f"the default entry (deployment {depl[:16]}…) cannot boot: {why}",
                depl,
            )
        )


def _unmatched_variables(ctx: Context) -> list[Problem]:
    """Notes for systemd-boot's variables that name no entry (running system only)."""
    assert ctx.bl is not None
    lv = ctx.sysroot.loader_vars(ctx.bl)
    if lv is None:
        return []
    from cfsboot.boot.loadervars import CLEAR, unmatched

    staged = ctx.sysroot.staged_next(ctx.bl) is not None
    return [
        Problem(
            EspCode.LOADER_VARIABLE_UNMATCHED,
            f"EFI variable {name}",
            f"{value!r} names no boot entry: systemd-boot passes over it (`{CLEAR[name]}`"
            " removes it)",
            name,
        )
        for name, value in unmatched(ctx.bl, lv, staged=staged)
    ]


def check_esp(ctx: Context) -> EspFindings:
    """Every check of the module docstring; deep ones read the boot files."""
    assert ctx.bl is not None
    bl, out = ctx.bl, EspFindings()
    if _is_bls(ctx):
        out.problems += _stray_entries(bl.esp)
    _check_menu(ctx, ctx.live, False, out)
    if bl.has_staged():
        if not ctx.sysroot.marker_path.exists():
            path = _menu_path(ctx, True)
            out.problems.append(
                Problem(
                    EspCode.STAGED_MENU_ORPHAN,
                    path,
                    "a staged menu without the staged-deployment marker: nothing will"
                    " finalize it (left by an interrupted or forgotten staging)",
                    path,
                )
            )
        else:
            _check_menu(ctx, ctx.staged_menu, True, out)
    _check_default(ctx, out)
    if bl.kind is BootloaderKind.GRUB:
        from cfsboot.deploy.fsck.grubenv import check_grubenv  # status on GRUB only

        out.problems += check_grubenv(ctx)
    used = {m.artifact.lower() for m in (*ctx.live, *ctx.staged_menu)}
    for art in bl.artifacts():
        if art.lower() not in used:
            out.notes.append(
                Problem(
                    EspCode.UNUSED_BOOT_FILES,
                    art,
                    "boot files no entry uses (cfsboot gc removes them)",
                    art,
                )
            )
    out.notes += _unmatched_variables(ctx)
    if ctx.deep:
        for path in esp_leftovers(bl.esp):
            out.problems.append(
                Problem(EspCode.LEFTOVER, path, "left by an interrupted write", path)
            )
    return out


__all__ = ["EspCode", "EspError", "EspFindings", "check_esp", "esp_leftovers"]
