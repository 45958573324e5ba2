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

A crash before 7 leaves the old menu (and, after a reboot, no marker: the
staged deployment is simply not there any more; its leftovers are collected
by the next switch or by gc). After 7 the new menu is complete. A finalize
killed without a reboot (the marker kept) can be run again: before 7 it redoes
6 onto an emptied upper dir, after 7 only the cleanup is left.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cfsboot.boot.bootloader import MAX_ENTRIES, Bootloader, MenuEntry
from cfsboot.boot.kargs import install_kargs, upgrade_kargs
from cfsboot.boot.uki import boot_digest as uki_boot_digest
from cfsboot.boot.uki import read_uki
from cfsboot.composefs.tree import Inode
from cfsboot.deploy import etcmerge
from cfsboot.deploy.origin import BootType, Origin
from cfsboot.deploy.sysroot import StagedDeployment, Sysroot
from cfsboot.errors import CfsbootError, die
from cfsboot.image import extract, imagefiles
from cfsboot.image.bootscan import BootResources
from cfsboot.image.importer import Progress, fetch_config, import_image, read_image_info
from cfsboot.image.osrelease import OsRelease
from cfsboot.linux.fsutil import TEMP_MARKER, fsync_dir, temp_name
from cfsboot.linux.run import run
from cfsboot.oci.reference import parse as parse_ref
from setuproot.config import Config, EtcMount
from setuproot.contract import ComposefsKarg

log = logging.getLogger(__name__)

FINALIZE_SERVICE = "cfsboot-finalize-staged.service"
# Tags (images/refs/deploy/ID) that keep deployed images alive; gc owns them.
DEPLOY_TAG_PREFIX = "deploy/"


class DeployError(CfsbootError):
    """A deployment that cannot be staged, finalized or rolled back."""


@dataclass(frozen=True)
class Target:
    """An image in the repository, with what deploying it needs."""

    digest: str
    reference: str
    manifest_digest: str | None
    tree: Inode
    boot: BootResources
    config: Config
    osrel: OsRelease


def deployment_tag(digest: str) -> str:
    return f"{DEPLOY_TAG_PREFIX}{digest}"


def target_from_repo(sysroot: Sysroot, digest: str, *, reference: str | None = None) -> Target:
    """A deployment's image as the repository holds it (its tree read from the EROFS)."""
    repo = sysroot.repo
    if not repo.has_image(digest):
        die(f"repository {repo.path} has no image {digest}")
    info = read_image_info(repo, digest) or {}
    tree = imagefiles.image_tree(repo, digest)
    return Target(
        digest=digest,
        reference=reference or str(info.get("reference") or ""),
        manifest_digest=info.get("manifest_digest"),
        tree=tree,
        boot=BootResources.from_json(info.get("boot") or {}),
        config=imagefiles.setup_root_config(repo, tree),
        osrel=imagefiles.os_release(repo, tree),
    )


def import_target(
    sysroot: Sysroot, imgref: str, *, quiet: bool = True, arch: str | None = None
) -> Target:
    """Import `imgref` into the sysroot's repository (new layers only) and describe it."""
    ref = parse_ref(imgref)
    if ref.transport.native:
        # The origin must name the same image from any working directory.
        imgref = str(replace(ref, path=os.path.abspath(ref.path)))
    repo = sysroot.repo
    # No tag of the reference's own: deployments are kept alive by deployment tags (gc).
    result = import_image(imgref, repo, arch=arch, tag="", progress=Progress(not quiet))
    assert result.tree is not None
    repo.tag(deployment_tag(result.image_digest), result.image_digest)
    return Target(
        digest=result.image_digest,
        reference=imgref,
        manifest_digest=result.manifest_digest,
        tree=result.tree,
        boot=result.boot,
        config=imagefiles.setup_root_config(repo, result.tree),
        osrel=imagefiles.os_release(repo, result.tree),
    )


@dataclass(frozen=True)
class UpdateCheck:
    """What `upgrade --check` found: the image the reference names now, against ours."""

    reference: str
    config_digest: str
    current_config_digest: str | None  # None: the deployment predates the record
    version: str | None

    @property
    def available(self) -> bool:
        return self.config_digest != self.current_config_digest


def check_update(
    sysroot: Sysroot, depl: str, imgref: str, *, arch: str | None = None
) -> UpdateCheck:
    """Whether `imgref` now names another image than deployment `depl` was made from.

    Reads the manifest and the config only (no layer, nothing written): the config
    digest covers the layers' diff IDs, so an unchanged one means an unchanged image.
    """
    digest, config = fetch_config(imgref, arch=arch)
    info = read_image_info(sysroot.repo, depl) or {}
    current = info.get("config_digest")
    settings = config.get("config")
    labels = settings.get("Labels") if isinstance(settings, dict) else None
    version = None
    if isinstance(labels, dict):
        value = labels.get("org.opencontainers.image.version")
        version = value if isinstance(value, str) else None
    return UpdateCheck(imgref, digest, current if isinstance(current, str) else None, version)


# ---------------------------------------------------------------------------------------
# State directories
# ---------------------------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


# Temporary names of state being written or removed (write_state, remove_state) and of
# the /etc views (_etc_views): a crash leaves them behind, gc removes them.
_STATE_TEMP_RE = re.compile(r"\.[0-9a-f]{16}\.(?:tmp|del)-[0-9]+")
ETC_VIEWS_PREFIX = ".cfsboot-etc-"


def state_leftovers(sysroot: Sysroot) -> list[Path]:
    """What interrupted state writes and removals left: temporary state dirs, /etc views."""
    try:
        names = sorted(os.listdir(sysroot.deploy_root))
    except FileNotFoundError:
        names = []
    out = [sysroot.deploy_root / n for n in names if _STATE_TEMP_RE.fullmatch(n)]
    out += sorted(p for p in sysroot.path.glob(f"{ETC_VIEWS_PREFIX}*") if p.is_dir())
    return out


def write_state(sysroot: Sysroot, target: Target, origin: Origin, *, init_var: bool) -> None:
    """Create `state/deploy/ID/` complete and durable (temporary name, syncfs, rename).

    etc/: a full copy of the image's /etc in bind mode; empty upper and work
    dirs in overlay mode (the booted deployment's changes are carried over at
    finalize). var -> ../../os/default/var; the shared var is seeded from the
    image's /var the first time only (install), never on upgrade.
    """
    repo = sysroot.repo
    root = sysroot.deploy_root
    root.mkdir(parents=True, exist_ok=True)
    objects = repo.path / "objects"
    if init_var and not sysroot.shared_var.exists():
        sysroot.shared_var.parent.mkdir(parents=True, exist_ok=True)
        tmp_var = sysroot.shared_var.with_name(f".var.tmp-{os.getpid()}")
        _remove_tree(tmp_var)
        var_node = extract.subtree(target.tree, "var")
        if var_node is not None:
            extract.extract(var_node, tmp_var, objects)
        else:
            tmp_var.mkdir(0o755)
        extract.sync_filesystem(tmp_var)
        tmp_var.rename(sysroot.shared_var)
        fsync_dir(sysroot.shared_var.parent)
    final = sysroot.deploy_dir(target.digest)
    tmp = root / f".{target.digest[:16]}.tmp-{os.getpid()}"
    _remove_tree(tmp)
    tmp.mkdir(0o755)
    try:
        os.symlink(sysroot.var_link_target(), tmp / "var")
        etc_mode = target.config.etc
        if etc_mode is EtcMount.BIND:
            etc = extract.subtree(target.tree, "etc")
            if etc is None:
                die(f"image {target.digest[:12]}… has no /etc to copy (its etc.mount is bind)")
            extract.extract(etc, tmp / "etc", objects)
        elif etc_mode is EtcMount.OVERLAY:
            (tmp / "etc").mkdir(0o755)
            (tmp / "etc" / "upper").mkdir(0o755)
            (tmp / "etc" / "work").mkdir(0o700)
        (tmp / f"{target.digest}.origin").write_text(origin.serialise())
        extract.sync_filesystem(tmp)
        if final.exists() or final.is_symlink():
            _remove_tree(final)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        _remove_tree(tmp)
        raise


def remove_state(sysroot: Sysroot, depl: str) -> None:
    """Delete a deployment's state: renamed away first, so it is never seen half-deleted."""
    final = sysroot.deploy_dir(depl)
    if not final.exists():
        return
    doomed = sysroot.deploy_root / f".{depl[:16]}.del-{os.getpid()}"
    final.rename(doomed)
    fsync_dir(sysroot.deploy_root)
    _make_deletable(doomed)
    shutil.rmtree(doomed)


def _make_deletable(path: Path) -> None:
    # The overlay work dir holds a 0000 "work" subdirectory owned by root: fine for root.
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)


# ---------------------------------------------------------------------------------------
# Boot entries
# ---------------------------------------------------------------------------------------


def _sha256_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def composefs_karg(sysroot: Sysroot, digest: str) -> ComposefsKarg:
    repo = sysroot.repo
    return ComposefsKarg(digest, repo.algorithm, repo.insecure)


def build_entry(
    sysroot: Sysroot,
    bl: Bootloader,
    target: Target,
    *,
    options: Sequence[str],
    menu: Sequence[MenuEntry],
) -> tuple[MenuEntry, str]:
    """Put the target's boot files on the ESP; its menu entry and bootc's boot digest.

    A kernel+initrd pair that an existing entry already uses (same boot digest)
    is shared instead of copied again.
    """
    repo = sysroot.repo
    d = target.digest
    title = target.osrel.title(d)
    version = target.osrel.version(d)
    os_id = target.osrel.os_id
    if target.boot.ukis:
        uki_file = sorted(target.boot.ukis, key=lambda u: u.path)[0]
        with imagefiles.local_copy(repo, uki_file) as path:
            uki = read_uki(path)
            karg = uki.check_composefs(d)
            if not karg.insecure and repo.insecure:
                die(
                    f"the UKI {uki_file.path} requires fs-verity (composefs={d[:12]}…) but"
                    f" repository {repo.path} has none",
                    hint="run `cfsboot fsverity enable-repo` first, or build the UKI with"
                    " composefs=?DIGEST",
                )
            digest = uki_boot_digest(path, uki)
            uki_path = bl.install_uki(d, path)
        label = uki.boot_label() or title
        return (
            MenuEntry(d, BootType.UKI, label, version, os_id, uki=uki_path),
            digest,
        )
    kernel = imagefiles.newest_kernel(target.boot)
    if kernel is None or kernel.initramfs is None:
        die(
            f"image {target.reference or d[:12]} has no kernel to boot",
            hint="it needs /usr/lib/modules/KVER/vmlinuz and initramfs.img, or a UKI in"
            " /boot/EFI/Linux",
        )
    with (
        imagefiles.local_copy(repo, kernel.vmlinuz) as vmlinuz,
        imagefiles.local_copy(repo, kernel.initramfs) as initrd,
    ):
        digest = _sha256_files([vmlinuz, initrd])
        shared = _shared_kernel(sysroot, bl, menu, digest)
        if shared is not None:
            linux, initrds = shared.linux, shared.initrd
            assert linux is not None
        else:
            linux, initrd_path = bl.install_kernel(d, vmlinuz, initrd)
            initrds = (initrd_path,)
    entry = MenuEntry(
        d, BootType.BLS, title, version, os_id, linux=linux, initrd=initrds, options=tuple(options)
    )
    return entry, digest


def _shared_kernel(
    sysroot: Sysroot, bl: Bootloader, menu: Sequence[MenuEntry], digest: str
) -> MenuEntry | None:
    for m in menu:
        if m.boot_type is not BootType.BLS:
            continue
        origin = sysroot.origin(m.deployment)
        if origin is not None and origin.boot_digest == digest and bl.has_artifact(m.artifact):
            return m
    return None


# ---------------------------------------------------------------------------------------
# Install (the first deployment)
# ---------------------------------------------------------------------------------------


def deploy_first(
    sysroot: Sysroot,
    bl: Bootloader,
    target: Target,
    *,
    install_args: Sequence[str],
) -> MenuEntry:
    """The first deployment of a new system: state, shared var, boot files, the menu."""
    karg = composefs_karg(sysroot, target.digest)
    kargs_d = imagefiles.kargs_d(sysroot.repo, target.boot)
    options = install_kargs(install=install_args, composefs=karg, kargs_d=kargs_d)
    origin = Origin(target.reference, BootType.BLS, None, target.manifest_digest)
    entry, digest = build_entry(sysroot, bl, target, options=options, menu=[])
    origin = Origin(target.reference, entry.boot_type, digest, target.manifest_digest)
    write_state(sysroot, target, origin, init_var=True)
    bl.write_menu([entry])
    return entry


# ---------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------


def current_deployment(sysroot: Sysroot, bl: Bootloader) -> str | None:
    """The booted deployment; offline, the one the live menu boots by default."""
    booted = sysroot.booted()
    if booted is not None:
        return booted
    menu = bl.menu()
    return menu[0].deployment if menu else None


@contextmanager
def _etc_views(sysroot: Sysroot, old: Target, new: Target) -> Iterator[tuple[Path, Path]]:
    """Temporary copies of the pristine /etc of the old and of the new image."""
    objects = sysroot.repo.path / "objects"
    with tempfile.TemporaryDirectory(prefix=ETC_VIEWS_PREFIX, dir=sysroot.path) as tmp:
        views = []
        for name, t in (("old", old), ("new", new)):
            dest = Path(tmp) / name
            node = extract.subtree(t.tree, "etc")
            if node is None:
                dest.mkdir()
            else:
                extract.extract(node, dest, objects)
            views.append(dest)
        yield views[0], views[1]


def _etc_mode(old: Target, new: Target) -> EtcMount:
    if old.config.etc is not new.config.etc:
        die(
            f"the new image mounts /etc as {new.config.etc}, the booted one as {old.config.etc}:"
            " carrying /etc changes between the two modes is not supported",
            hint="keep [etc] mount in /usr/lib/composefs/setup-root-conf.toml the same",
        )
    return new.config.etc


def check_etc(sysroot: Sysroot, old: Target, new: Target) -> None:
    """Refuse to stage when local /etc changes cannot be carried onto the new image."""
    mode = _etc_mode(old, new)
    state = sysroot.deploy_dir(old.digest) / "etc"
    if mode not in (EtcMount.BIND, EtcMount.OVERLAY) or not state.exists():
        return
    with _etc_views(sysroot, old, new) as (old_etc, new_etc):
        if mode is EtcMount.BIND:
            conflicts = etcmerge.find_conflicts(old_etc, state, new_etc)
        else:
            conflicts = etcmerge.find_upper_conflicts(state / "upper", old_etc, new_etc)
    if conflicts:
        shown = "; ".join(str(c) for c in conflicts[:5])
        more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        die(
            f"local changes to /etc conflict with the new image: {shown}{more}",
            hint="resolve them in /etc and run the command again; nothing was staged",
        )


def merge_etc(sysroot: Sysroot, old: Target, new: Target) -> etcmerge.MergeReport | None:
    """Carry the old deployment's /etc changes onto the new one's state (finalize)."""
    mode = _etc_mode(old, new)
    old_state = sysroot.deploy_dir(old.digest) / "etc"
    new_state = sysroot.deploy_dir(new.digest) / "etc"
    if mode not in (EtcMount.BIND, EtcMount.OVERLAY) or not old_state.exists():
        return None
    with _etc_views(sysroot, old, new) as (old_etc, new_etc):
        if mode is EtcMount.BIND:
            return etcmerge.merge(old_etc, old_state, new_state)
        _reset_upper(new_state / "upper")
        return etcmerge.carry_upper(old_state / "upper", old_etc, new_etc, new_state / "upper")


def _reset_upper(upper: Path) -> None:
    """Empty a staged deployment's upper dir that an interrupted finalize already filled.

    A staged deployment has never been booted: its upper dir holds nothing but an
    earlier carry of the booted deployment's changes, which is carried again (the
    booted /etc may have changed since). Moved aside first, so the name is never
    seen half-emptied; an interrupted carry's temporary directory goes too.
    """
    for leftover in upper.parent.glob(f".{upper.name}{TEMP_MARKER}*"):
        _remove_tree(leftover)
    if not upper.is_dir() or not any(upper.iterdir()):
        return
    doomed = upper.with_name(temp_name(upper.name))
    upper.rename(doomed)
    fsync_dir(upper.parent)
    _remove_tree(doomed)


@dataclass(frozen=True)
class StageResult:
    digest: str
    staged: bool  # False: nothing to do (already booted or already staged)
    message: str


def stage(
    sysroot: Sysroot,
    bl: Bootloader,
    target: Target,
    *,
    extra_kargs: Sequence[str] = (),
    download_only: bool = False,
) -> StageResult:
    """Stage `target` to boot next (see the module docstring for the order of writes)."""
    current = current_deployment(sysroot, bl)
    d = target.digest
    if d == current:
        return StageResult(d, False, f"{target.reference} ({d[:12]}…) is already booted")
    staged = sysroot.staged()
    if staged is not None and staged.depl_id == d and bl.has_staged():
        if staged.finalization_locked != download_only:
            # Staged before, now asked for with(out) --download-only: only the lock changes.
            sysroot.write_staged(StagedDeployment(d, finalization_locked=download_only))
            how = "download-only" if download_only else "unlocked; it boots next"
            return StageResult(d, False, f"{target.reference} ({d[:12]}…) is staged, {how}")
        return StageResult(d, False, f"{target.reference} ({d[:12]}…) is already staged")
    live = bl.menu()
    if current is None or not live:
        die("no current deployment to stage an update against", hint="install with cfsboot install")
    # Leftovers of an earlier staging (a reboot drops the marker, not the files).
    sysroot.clear_staged()
    bl.discard_staged()
    if d in (m.deployment for m in live):
        die(
            f"{target.reference} ({d[:12]}…) is already deployed (it is in the boot menu)",
            hint="`cfsboot rollback` makes the previous deployment the default",
        )
    old = target_from_repo(sysroot, current)
    check_etc(sysroot, old, target)
    karg = composefs_karg(sysroot, d)
    cur_entry = next((m for m in live if m.deployment == current), live[0])
    options = upgrade_kargs(
        [*cur_entry.options, *extra_kargs],
        old_kargs_d=imagefiles.kargs_d(sysroot.repo, old.boot),
        new_kargs_d=imagefiles.kargs_d(sysroot.repo, target.boot),
        composefs=karg,
    )
    if target.boot.ukis and extra_kargs:
        die("kernel arguments cannot be added to a UKI (its command line is sealed)")
    entry, boot_digest = build_entry(sysroot, bl, target, options=options, menu=live)
    origin = Origin(target.reference, entry.boot_type, boot_digest, target.manifest_digest)
    write_state(sysroot, target, origin, init_var=False)
    menu = [entry, *(m for m in live if m.deployment != d)][:MAX_ENTRIES]
    bl.stage(menu)
    sysroot.write_staged(StagedDeployment(d, finalization_locked=download_only))
    if sysroot.live:
        # Its ExecStop runs `cfsboot finalize-staged` at shutdown.
        run(["systemctl", "start", FINALIZE_SERVICE], check=False)
    return StageResult(d, True, f"staged {target.reference} ({d[:12]}…); it boots next")


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


# ---------------------------------------------------------------------------------------
# Finalize and rollback
# ---------------------------------------------------------------------------------------


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
    return f"deployment {d[:12]}… is now the default"


def rollback(sysroot: Sysroot, bl: Bootloader) -> str:
    """Make the previous deployment the default; drops a staged one."""
    dropped = sysroot.staged()
    sysroot.clear_staged()
    bl.discard_staged()
    menu = bl.menu()
    if len(menu) < 2:
        die("there is no rollback deployment (the boot menu has only one cfsboot entry)")
    new = [menu[1], menu[0], *menu[2:]]
    bl.write_menu(new)
    msg = f"deployment {menu[1].deployment[:12]}… ({menu[1].title}) is now the default"
    if dropped is not None:
        msg += f"; dropped the staged deployment {dropped.depl_id[:12]}…"
    return msg
