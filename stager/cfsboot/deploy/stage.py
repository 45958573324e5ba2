"""Deployments: write one's state, stage it behind the default, finalize it, roll back.

Order of writes, so that the machine boots the old or the new deployment
whatever instant the power goes (each step is durable before the next):

stage (switch/upgrade):
  1. import the image (objects and the EROFS image are published atomically);
  2. write `state/deploy/NEW/` under a temporary name, syncfs, rename;
  3. copy the boot files (kernel+initrd directory, or UKI) to the ESP;
  4. write the complete new menu as the *staged* menu (NEW first, then the
     current entries): the live menu is untouched, so the old default boots;
  5. write `/run/composefs/staged-deployment` last: from here it is staged.
finalize (at shutdown, cfsboot-finalize-staged.service):
  6. carry /etc changes from the booted deployment onto NEW, syncfs;
  7. exchange the staged menu with the live one (one atomic step);
  8. remove the marker.
rollback: write the menu with the first two cfsboot entries swapped as the
staged menu, exchange.

Boot counting (cfsboot.deploy.assessment): the new entry of a staged menu
carries a fresh trial unless counting is off; every other entry keeps its
state. A deployment that ran out of tries stays out of the boot loader's way
until an admin stages it again (`switch` to it, or `rollback` to it): that
gives it a fresh trial. `upgrade` does not retry it by itself.

A crash before 7 leaves the old menu (and, after a reboot, no marker: the
staged deployment is simply not there any more; its leftovers are collected
by the next switch or by gc). After 7 the new menu is complete. A finalize
killed without a reboot (the marker kept) can be run again: before 7 it redoes
6 onto an emptied upper dir, after 7 only the cleanup is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NoReturn

from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.boot.kargs import UKI_STYLE_SEALED, check_karg_deletes, delete_kargs, upgrade_kargs
from cfsboot.deploy.assessment import clear_record, trial_tries
from cfsboot.deploy.entries import build_entry, composefs_karg
from cfsboot.deploy.etccarry import check_etc, merge_etc
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.pins import cap_menu, pinned
from cfsboot.deploy.space import check_deploy_space
from cfsboot.deploy.state import write_state
from cfsboot.deploy.sysroot import StagedDeployment, Sysroot
from cfsboot.deploy.target import (
    Target,
    current_deployment,
    follow_etc_mode,
    target_from_repo,
)
from cfsboot.errors import CfsbootError, die
from cfsboot.image import extract, imagefiles
from cfsboot.linux.run import run
from setuproot.contract import KargStyle

log = logging.getLogger(__name__)


FINALIZE_SERVICE = "cfsboot-finalize-staged.service"


class DeployError(CfsbootError):
    """A deployment that cannot be staged, finalized or rolled back."""


@dataclass(frozen=True)
class StageResult:
    digest: str
    staged: bool  # False: nothing staged (the image is deployed already)
    message: str


def stage(
    sysroot: Sysroot,
    bl: Bootloader,
    target: Target,
    *,
    extra_kargs: Sequence[str] = (),
    karg_delete: Sequence[str] = (),
    download_only: bool = False,
    boot_tries: int | None = None,
    retry_failed: bool = True,
    switching: bool = False,
    karg_style: KargStyle | None = None,
) -> StageResult:
    """Stage `target` to boot next (see the module docstring for the order of writes).

    An image whose composefs digest is deployed already (booted, staged, or in the
    boot menu) is not staged again. `switching` (`cfsboot switch`) makes that an
    error, as bootc does; for `upgrade` it means there is nothing new, and only the
    download-only lock of an already staged deployment follows the request. A
    deployment in the menu that ran out of boot tries is the exception: with
    `retry_failed` it is staged again for a new trial.

    boot_tries: the new entry's tries (None: from the configuration files).
    karg_style: how the new entry spells its composefs karg (None: as the current entry does).
    """
    check_karg_deletes(karg_delete)
    current = current_deployment(sysroot, bl)
    d = target.digest
    live = bl.menu()
    failed = next((m for m in live if m.deployment == d and m.failed), None)
    slot = _deployed_as(sysroot, bl, d, current, live)
    if slot is not None and (failed is None or slot in ("booted", "staged")):
        if switching:
            _refuse_same_digest(sysroot, target, slot)
        return _nothing_new(sysroot, target, slot, download_only)
    if current is None or not live:
        die("no current deployment to stage an update against", hint="install with cfsboot install")
    if failed is not None and not retry_failed:
        assert failed.tries is not None
        return StageResult(
            d,
            False,
            f"{target.reference} ({d[:12]}…) failed its boot assessment ({failed.tries.done}"
            " tries): not staged again; `cfsboot switch` to it retries it",
        )
    # Leftovers of an earlier staging (a reboot drops the marker, not the files).
    sysroot.clear_staged()
    bl.discard_staged()
    old = target_from_repo(sysroot, current)
    target = follow_etc_mode(target, old)
    check_etc(sysroot, old, target)
    cur_entry = next((m for m in live if m.deployment == current), live[0])
    options = _new_options(
        sysroot, target, old, cur_entry.options, extra_kargs, karg_delete, karg_style
    )
    check_deploy_space(sysroot, bl, target, live, action=f"staging {target.reference}")
    entry, boot_digest = build_entry(sysroot, bl, target, options=options, menu=live)
    entry = replace(entry, tries=trial_tries(sysroot, sysroot.repo, target.tree, boot_tries))
    origin = Origin(target.reference, entry.boot_type, boot_digest, target.manifest_digest)
    if failed is not None and sysroot.deploy_dir(d).is_dir():
        # Staged again after it failed: its state stays (finalize merges /etc anew);
        # replacing it would leave a moment with none for an entry still in the menu.
        sysroot.write_origin(d, origin)
    else:
        write_state(sysroot, target, origin, init_var=False)
    menu = cap_menu([entry, *(m for m in live if m.deployment != d)], {current, *pinned(sysroot)})
    bl.stage(menu)
    sysroot.write_staged(StagedDeployment(d, finalization_locked=download_only))
    if sysroot.live:
        # Its ExecStop runs `cfsboot finalize-staged` at shutdown.
        run(["systemctl", "start", FINALIZE_SERVICE], check=False)
    return StageResult(d, True, f"staged {target.reference} ({d[:12]}…); it boots next")


def _new_options(
    sysroot: Sysroot,
    target: Target,
    old: Target,
    current: Sequence[str],
    extra_kargs: Sequence[str],
    karg_delete: Sequence[str],
    karg_style: KargStyle | None,
) -> list[str]:
    """The new entry's kernel arguments, from the current entry's (`current`)."""
    if target.boot.ukis and (extra_kargs or karg_delete):
        die(
            "kernel arguments cannot be added to or deleted from a UKI (its command line is sealed)"
        )
    if target.boot.ukis and karg_style is not None:
        die(f"--karg-style {karg_style}: {UKI_STYLE_SEALED}")
    options = upgrade_kargs(
        [*current, *extra_kargs],
        old_kargs_d=imagefiles.kargs_d(sysroot.repo, old.boot),
        new_kargs_d=imagefiles.kargs_d(sysroot.repo, target.boot),
        composefs=composefs_karg(sysroot, target.digest),
        style=karg_style,
    )
    options, unmatched = delete_kargs(options, karg_delete)
    for arg in unmatched:
        log.warning("--karg-delete %s: the new entry has no such kernel argument", arg)
    return options


def _deployed_as(
    sysroot: Sysroot, bl: Bootloader, d: str, current: str | None, live: Sequence[MenuEntry]
) -> str | None:
    """Which deployment `d` is already, as bootc names them: booted, staged, rollback, other."""
    if d == current:
        return "booted"
    staged = sysroot.staged()
    if staged is not None and staged.depl_id == d and bl.has_staged():
        return "staged"
    others = [m.deployment for m in live if m.deployment != current]
    if d in others:
        return "rollback" if others[0] == d else "other"
    return None


def _refuse_same_digest(sysroot: Sysroot, target: Target, slot: str) -> NoReturn:
    """bootc's rule for switch: an image another deployment already is cannot be switched to."""
    d = target.digest
    what = f"{target.reference} has the same composefs digest ({d[:12]}…) as the {slot} deployment"
    if slot == "booted":
        hint = "it is running now; `cfsboot upgrade` fetches what the booted deployment follows"
    elif slot == "staged":
        staged = sysroot.staged()
        if staged is not None and staged.finalization_locked:
            hint = (
                "it is staged download-only; `cfsboot upgrade --from-downloaded` lets it boot next"
            )
        else:
            hint = "it boots next already"
    elif slot == "rollback":
        hint = (
            "it is in the boot menu; `cfsboot rollback` makes the previous deployment the default"
        )
    else:  # an older one: rollback would bring back another
        hint = (
            "it is in the boot menu behind the rollback one, the only one `cfsboot rollback`"
            " brings back; `cfsboot gc` removes it (`cfsboot unpin` it first if pinned), then"
            " switch deploys it anew"
        )
    die(f"{what}: nothing to switch to", hint=hint)


def _nothing_new(sysroot: Sysroot, target: Target, slot: str, download_only: bool) -> StageResult:
    """`upgrade` to an image that is deployed already: only a staged one's lock may change.

    As `bootc upgrade` on its ostree backend: with --download-only a staged
    deployment becomes download-only, without it a download-only one is unlocked.
    """
    d = target.digest
    ref = f"{target.reference} ({d[:12]}…)"
    if slot == "booted":
        return StageResult(d, False, f"no changes: {ref} is the booted deployment")
    if slot != "staged":
        return StageResult(
            d,
            False,
            f"no changes: {ref} is the {slot} deployment in the boot menu"
            " (`cfsboot rollback` makes the previous deployment the default)",
        )
    staged = sysroot.staged()
    assert staged is not None
    if staged.finalization_locked == download_only:
        how = "download-only" if download_only else "it boots next"
        return StageResult(d, False, f"update already staged: {ref} ({how})")
    sysroot.write_staged(StagedDeployment(d, finalization_locked=download_only))
    if download_only:
        return StageResult(
            d, False, f"{ref} is staged, now download-only: not finalized at shutdown"
        )
    if sysroot.live:
        run(["systemctl", "start", FINALIZE_SERVICE], check=False)
    return StageResult(d, False, f"{ref} is staged, unlocked; it boots next")


def unlock_staged(sysroot: Sysroot, bl: Bootloader) -> str:
    """Let a download-only staged deployment be finalized at shutdown (`--from-downloaded`)."""
    staged = sysroot.staged()
    if staged is None or not bl.has_staged() or not sysroot.deploy_dir(staged.depl_id).is_dir():
        die(
            "no staged deployment to apply",
            hint="stage one with `cfsboot upgrade --download-only` (or switch) first",
        )
    d = staged.depl_id
    if not staged.finalization_locked:
        return f"staged deployment {d[:12]}… is not download-only: it boots next already"
    sysroot.write_staged(StagedDeployment(d, finalization_locked=False))
    if sysroot.live:
        run(["systemctl", "start", FINALIZE_SERVICE], check=False)
    return f"staged deployment {d[:12]}… unlocked; it boots next"


def finalize(sysroot: Sysroot, bl: Bootloader) -> str:
    """Make the staged deployment the default (at shutdown); returns what was done."""
    staged = sysroot.staged()
    if staged is None:
        return "no staged deployment"
    if staged.finalization_locked:
        return f"staged deployment {staged.depl_id[:12]}… is download-only: not finalized"
    d = staged.depl_id
    live = bl.menu()
    if live and live[0].deployment == d:
        # An earlier finalize was killed after the exchange (7) and before the marker went
        # (8): the staged deployment is the default already; finish what it left.
        bl.discard_staged()
        sysroot.clear_staged()
        return f"deployment {d[:12]}… is now the default"
    menu = bl.menu(staged=True)
    if not menu or menu[0].deployment != d or not sysroot.deploy_dir(d).is_dir():
        raise DeployError(
            f"staged deployment {d[:12]}… is incomplete (no staged menu or state); the current"
            " default stays",
            hint="run the switch or upgrade again",
        )
    current = current_deployment(sysroot, bl)
    if current is not None and current != d and sysroot.deploy_dir(current).is_dir():
        report = merge_etc(
            sysroot, target_from_repo(sysroot, current), target_from_repo(sysroot, d)
        )
        if report is not None:
            log.info("/etc: %s", report)
    extract.sync_filesystem(sysroot.path)
    bl.commit()
    sysroot.clear_staged()
    clear_record(sysroot, d)
    return f"deployment {d[:12]}… is now the default"


def rollback(sysroot: Sysroot, bl: Bootloader) -> str:
    """Make the previous deployment the default; drops a staged one.

    Refused before anything changes (the staged deployment stays) when there is no
    previous deployment or it cannot boot."""
    menu = bl.menu()
    if len(menu) < 2:
        die("there is no rollback deployment (the boot menu has only one cfsboot entry)")
    back = menu[1]
    _refuse_unbootable(sysroot, bl, back)
    dropped = sysroot.staged()
    sysroot.clear_staged()
    bl.discard_staged()
    retried = ""
    if back.failed:
        # The admin asks for it: a fresh trial, as if it were staged again.
        tree = target_from_repo(sysroot, back.deployment).tree
        back = replace(back, tries=trial_tries(sysroot, sysroot.repo, tree, None))
        clear_record(sysroot, back.deployment)
        retried = "; it had failed its boot assessment and gets a new trial"
    new = [back, menu[0], *menu[2:]]
    bl.write_menu(new)
    msg = f"deployment {back.deployment[:12]}… ({back.title}) is now the default{retried}"
    if dropped is not None:
        msg += f"; dropped the staged deployment {dropped.depl_id[:12]}…"
    return msg


def _refuse_unbootable(sysroot: Sysroot, bl: Bootloader, m: MenuEntry) -> None:
    """Die if the entry `m` could not boot: no state, no image, or boot files gone."""
    d = m.deployment
    why = None
    if not sysroot.deploy_dir(d).is_dir():
        why = f"its state directory state/deploy/{d[:12]}… is gone"
    elif not sysroot.repo.has_image(d):
        why = "its image is not in the repository"
    else:
        files = [m.uki] if m.uki is not None else [m.linux, *m.initrd]
        gone = [f for f in files if f is not None and not bl.esp.exists(f.lstrip("/"))]
        if gone:
            why = f"its boot file {gone[0]} is missing from the ESP"
    if why is not None:
        die(
            f"cannot roll back to deployment {d[:12]}… ({m.title}): {why}; nothing was changed",
            hint="`cfsboot fsck --repair` fetches or copies again what it can",
        )
