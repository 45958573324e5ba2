"""What `cfsboot fsck --repair` may do, and doing it.

Only what is safe, and never anything of the protected deployment (the booted
one; offline, the default one standing in for it), its boot entry or its boot
files:
- remove leftovers of interrupted writes (repository, state; on the ESP, the
  same recovery every writing command runs first);
- enable fs-verity on an object of a secure repository that lacks it (after
  checking its content against its name);
- fetch a damaged or missing object, image or record again from the image's
  origin (cfsboot.deploy.fsck.refetch);
- drop a staged-deployment marker that names nothing, with its staged menu,
  and a staged menu without a marker;
- drop boot entries whose deployment does not exist;
- drop pins of deployments that do not exist, names in `state/cfsboot/pinned` that
  are no pins, and a cached-update record that cannot be read
  (cfsboot.deploy.fsck.toolstate);
- write an empty GRUB environment block over a damaged one that no menu entry counts
  tries in (cfsboot.deploy.fsck.grubenv);
- copy a deployment's kernel+initrd or UKI to the ESP again from its image, when
  they are missing or wrong and the image's have the digest its origin records.
Every write goes through the same atomic helpers as the rest of cfsboot (temp
name, fsync, rename; one menu exchange). With a deployment staged, the menus
are left alone: finalize replaces the live one whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cfsboot.boot.bootloader import MenuEntry, kernel_dir
from cfsboot.boot.uki import boot_digest, read_uki
from cfsboot.composefs.objectcheck import Verdict
from cfsboot.composefs.repocheck import Code, Problem
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.entries import sha256_files
from cfsboot.deploy.fsck.context import Context
from cfsboot.deploy.fsck.esp import EspCode
from cfsboot.deploy.fsck.grubenv import GrubEnvCode, can_rewrite
from cfsboot.deploy.fsck.refetch import Plan
from cfsboot.deploy.fsck.report import Group
from cfsboot.deploy.fsck.state import StateCode
from cfsboot.deploy.state import remove_tree
from cfsboot.errors import CfsbootError, die
from cfsboot.image import imagefiles
from cfsboot.image.bootscan import BootResources, scan
from cfsboot.image.info import load_image_info
from cfsboot.linux.fsutil import fsync_dir
from setuproot.verity import VerityAlreadyEnabled, enable_verity, measure_verity

REMOVE = "remove it"
RECOVER = "finish or undo the interrupted write"
DROP_MARKER = "remove the marker and the staged menu"
DROP_STAGED_MENU = "remove the staged menu"
DROP_ENTRY = "remove the entry"
DROP_PIN = "remove the pin"
ENABLE_VERITY = "enable fs-verity"
RECOPY = "copy them again from the deployment's image"
REWRITE_ENV = "write an empty environment block"


def _protected_artifacts(ctx: Context) -> set[str]:
    menus = (*ctx.live, *ctx.staged_menu)
    return {m.artifact.lower() for m in menus if m.deployment in ctx.protected}


def _entry_of(ctx: Context, depl: str) -> MenuEntry | None:
    return next((m for m in (*ctx.live, *ctx.staged_menu) if m.deployment == depl), None)


def _shared_otherwise(ctx: Context, m: MenuEntry, boot_digest: str) -> bool:
    """Whether another deployment's entry boots from `m`'s boot files and wants other
    content in them (copying `m`'s there would break that one)."""
    for other in (*ctx.live, *ctx.staged_menu):
        if other.deployment == m.deployment or other.artifact.lower() != m.artifact.lower():
            continue
        o = ctx.good_origin(other.deployment)
        if o is None or o.boot_digest != boot_digest:
            return True
    return False


def _can_recopy(ctx: Context, p: Problem) -> bool:
    m = _entry_of(ctx, p.subject)
    origin = ctx.good_origin(p.subject)
    return (
        m is not None
        and p.subject not in ctx.protected
        and m.artifact.lower() not in _protected_artifacts(ctx)
        and origin is not None
        and origin.boot_digest is not None
        and not _shared_otherwise(ctx, m, origin.boot_digest)
        and ctx.images is not None
        and p.subject in ctx.images
    )


def repair_text(group: Group, p: Problem, ctx: Context | None, plan: Plan) -> str | None:
    """What --repair does about `p`; None when it is left for a person.

    `ctx` is None when a repository is checked alone.
    """
    if p.code == Code.LEFTOVER:
        return RECOVER if group is Group.ESP else REMOVE
    if group is Group.REPOSITORY and p.code == Verdict.NO_VERITY:
        return ENABLE_VERITY
    if group is not Group.ESP and p.subject in plan.fixes:
        return f"fetch {plan.fixes[p.subject]} again"
    if ctx is None:
        return None
    if p.code == StateCode.PIN_DANGLING:
        return DROP_PIN if p.subject not in ctx.protected else None
    if p.code in (StateCode.PIN_BAD, StateCode.PINS_NOT_DIR, StateCode.CACHED_UPDATE_DAMAGED):
        return REMOVE
    if p.code in (StateCode.MARKER_DAMAGED, StateCode.MARKER_DANGLING):
        return DROP_MARKER
    if p.code == EspCode.STAGED_MENU_ORPHAN:
        return DROP_STAGED_MENU
    if p.code == EspCode.ENTRY_DANGLING:
        where, _, depl = p.subject.partition(":")
        if where == "live" and depl not in ctx.protected and not ctx.staged_pending:
            return DROP_ENTRY
        return None
    if p.code in (EspCode.BOOT_FILE_MISSING, EspCode.BOOT_FILE_WRONG) and _can_recopy(ctx, p):
        return RECOPY
    if p.code == GrubEnvCode.DAMAGED and can_rewrite(ctx):
        return REWRITE_ENV
    return None


# -- doing it --------------------------------------------------------------------------


def remove_leftover(path: Path) -> None:
    remove_tree(path)
    fsync_dir(path.parent)


def enable_object_verity(repo: Repository, hexdigest: str) -> None:
    """FS_IOC_ENABLE_VERITY on an object whose content was checked, then measure it."""
    path = repo.object_path(hexdigest)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        try:
            enable_verity(fd, repo.algorithm, path=str(path))
        except VerityAlreadyEnabled:
            pass
        alg, digest = measure_verity(fd, path=str(path))
    finally:
        os.close(fd)
    if alg is not repo.algorithm or digest.hex() != hexdigest:
        die(f"object {path}: fs-verity measures {alg}:{digest.hex()[:16]}… after enabling it")


def _boot_resources(ctx: Context, depl: str) -> BootResources:
    """The boot files of the deployment's image: from its import record, else from the image.

    Without the record (lost, or an image cfsboot did not import), the image's own tree
    has its kernels (/usr/lib/modules); UKIs under /boot are not in it (emptied for boot).
    """
    assert ctx.repo is not None
    info = load_image_info(ctx.repo, depl)
    if info is not None:
        return info.boot
    tree = ctx.trees.get(depl)
    if tree is None:
        die(f"image {depl[:16]}… has no import record that lists its boot files")
    return scan(tree)


def recopy_boot_files(ctx: Context, depl: str) -> str:
    """Copy the deployment's boot files to where its entry points, checked against its origin."""
    assert ctx.repo is not None and ctx.bl is not None
    m, origin = _entry_of(ctx, depl), ctx.good_origin(depl)
    assert m is not None and origin is not None
    boot, bl = _boot_resources(ctx, depl), ctx.bl
    if m.uki is not None:
        if not boot.ukis:
            die(f"image {depl[:16]}… has no UKI")
        f = sorted(boot.ukis, key=lambda u: u.path)[0]
        with imagefiles.local_copy(ctx.repo, f) as path:
            uki = read_uki(path)
            uki.check_composefs(depl)
            if boot_digest(path, uki) != origin.boot_digest:
                die(f"the UKI in image {depl[:16]}… is not the one its origin records")
            if bl.install_uki(depl, path).lower() != m.uki.lower():
                die(f"the entry of {depl[:16]}… boots {m.uki}, not where cfsboot puts its UKI")
        return m.uki.lstrip("/")
    kernel = imagefiles.newest_kernel(boot)
    if kernel is None or kernel.initramfs is None:
        die(f"image {depl[:16]}… has no kernel and initramfs")
    name_id = m.artifact.rsplit("/", 1)[-1].removeprefix("bootc_composefs-")
    if m.artifact.lower() != kernel_dir(name_id).lower() or len(m.initrd) != 1:
        die(f"the entry of {depl[:16]}… does not boot from a cfsboot kernel directory")
    with (
        imagefiles.local_copy(ctx.repo, kernel.vmlinuz) as vmlinuz,
        imagefiles.local_copy(ctx.repo, kernel.initramfs) as initrd,
    ):
        if sha256_files([vmlinuz, initrd]) != origin.boot_digest:
            die(f"the kernel in image {depl[:16]}… is not the one its origin records")
        bl.install_kernel(name_id, vmlinuz, initrd)
    return m.artifact


def attempt(done: list[str], failed: list[str], what: str, action: Callable[[], object]) -> None:
    """Run one repair; a failure is one line in `failed`, and the next repair still runs."""
    try:
        result = action()
    except (CfsbootError, OSError) as e:
        failed.append(f"{what}: {e}")
        return
    done.append(f"{what}: {result}" if isinstance(result, str) else what)
