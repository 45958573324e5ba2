"""Pinned deployments (`cfsboot pin ID`): kept in the boot menu and by gc, whatever else goes.

A pin is an empty file `state/cfsboot/pinned/ID` on the physical root (created
and removed atomically, the directory fsynced). A pinned deployment counts
against nothing that drops entries: a new staging keeps it in the menu (the
menu's limit drops unpinned ones first), gc keeps it besides the rollback and
`--keep N` others, and status shows `pinned: true`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from cfsboot.boot.bootloader import MAX_ENTRIES, Bootloader, MenuEntry
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import current_deployment
from cfsboot.errors import die
from cfsboot.linux.fsutil import fsync_dir, write_file_atomic

PINS_DIR = "state/cfsboot/pinned"
_HEX_RE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")
# Names besides an ID (or a unique prefix of one) that pin, unpin and diff take.
SLOTS = ("booted", "staged", "rollback")


def pins_path(sysroot: Sysroot) -> Path:
    return sysroot.path / PINS_DIR


def pinned(sysroot: Sysroot) -> set[str]:
    """The pinned deployment ids (one line and exit when they cannot be read: gc must not
    take that for no pins)."""
    try:
        return {n for n in os.listdir(pins_path(sysroot)) if _HEX_RE.fullmatch(n)}
    except FileNotFoundError:
        return set()
    except OSError as e:
        die(f"cannot read the pins in {pins_path(sysroot)}: {e.strerror}", hint="cfsboot fsck")


def known_deployments(sysroot: Sysroot, bl: Bootloader) -> list[str]:
    """Deployments of the live and staged menus, then those with only a state directory."""
    out: list[str] = []
    staged = bl.menu(staged=True) if sysroot.staged() is not None else []
    for d in (*(m.deployment for m in bl.menu()), *(m.deployment for m in staged)):
        if d not in out:
            out.append(d)
    out += [d for d in sysroot.deployment_dirs() if d not in out]
    return out


def slot_deployment(sysroot: Sysroot, bl: Bootloader, slot: str) -> str | None:
    """The deployment of status's `booted`, `staged` or `rollback` slot (None: empty)."""
    current = current_deployment(sysroot, bl)
    marker = sysroot.staged()
    if slot == "booted":
        return current
    if slot == "staged":
        return marker.depl_id if marker is not None else None
    staged = marker.depl_id if marker is not None else None
    return next((m.deployment for m in bl.menu() if m.deployment not in (current, staged)), None)


def resolve(sysroot: Sysroot, bl: Bootloader, ident: str, *, also: Collection[str] = ()) -> str:
    """The deployment `ident` names: booted/staged/rollback, an ID or a unique prefix of one.

    also: further ids a prefix may name (unpin: pins of deployments that are gone).
    """
    if ident in SLOTS:
        found = slot_deployment(sysroot, bl, ident)
        if found is None:
            die(f"there is no {ident} deployment", hint="cfsboot status lists the deployments")
        return found
    ident_l = ident.lower()
    if len(ident_l) < 4 or not re.fullmatch(r"[0-9a-f]+", ident_l):
        die(
            f"{ident!r} does not name a deployment",
            hint="give booted, staged, rollback, or an ID (4 or more hex digits) from status",
        )
    ids = list(dict.fromkeys([*known_deployments(sysroot, bl), *also]))
    matches = [d for d in ids if d.startswith(ident_l)]
    if not matches:
        die(f"no deployment {ident}", hint="cfsboot status lists the deployments")
    if len(matches) > 1:
        die(f"{ident} names {len(matches)} deployments", hint="give more of the ID")
    return matches[0]


def pin(sysroot: Sysroot, bl: Bootloader, ident: str) -> str:
    """Pin a deployment of the live or staged menu; what was done."""
    depl = resolve(sysroot, bl, ident)
    staged = bl.menu(staged=True) if sysroot.staged() is not None else []
    if depl not in {m.deployment for m in (*bl.menu(), *staged)}:
        die(
            f"deployment {depl[:12]}… is not in the boot menu: a pin keeps an entry, it"
            " does not bring one back",
            hint="cfsboot switch to its image stages it again",
        )
    if depl in pinned(sysroot):
        return f"deployment {depl[:12]}… is already pinned"
    path = pins_path(sysroot)
    path.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path / depl, b"", mode=0o644)
    return f"pinned deployment {depl[:12]}…: it stays in the boot menu and gc keeps it"


def unpin(sysroot: Sysroot, bl: Bootloader, ident: str) -> str:
    pins = pinned(sysroot)
    depl = resolve(sysroot, bl, ident, also=pins)
    if depl not in pins:
        return f"deployment {depl[:12]}… is not pinned"
    os.unlink(pins_path(sysroot) / depl)
    fsync_dir(pins_path(sysroot))
    return f"unpinned deployment {depl[:12]}…: gc may remove it once it is not needed"


def cap_menu(
    menu: Sequence[MenuEntry], keep: Collection[str], limit: int = MAX_ENTRIES
) -> list[MenuEntry]:
    """`menu` cut to `limit` entries: the first and every one of `keep` stay, then menu order."""
    must = {menu[0].deployment, *keep} if menu else set(keep)
    must &= {m.deployment for m in menu}
    if len(must) > limit:
        die(
            f"the boot menu holds at most {limit} cfsboot entries and {len(must)} must stay"
            " (the new one, the booted one and the pinned ones)",
            hint="cfsboot unpin one",
        )
    room = limit - len(must)
    out: list[MenuEntry] = []
    for m in menu:
        if m.deployment in must:
            out.append(m)
        elif room > 0:
            out.append(m)
            room -= 1
    return out
