"""`cfsboot status`: the deployments, as bootc's `BootcHost` (apiVersion org.containers.bootc/v1).

The boot menu is the source of truth (as in bootc): a deployment is one that
a cfsboot boot entry (live or staged) points at. Its state directory and
origin add the image reference and boot digest; the repository's copy of the
image's manifest and config adds version, timestamp and architecture.

- booted: the running deployment (from the `/` mount, confirmed by the
  `composefs=` karg); on a physical root that is not running (--sysroot on a
  disk image) the deployment its menu boots by default stands in for it;
- staged: named by /run/composefs/staged-deployment, first in the staged menu;
- rollback: the first other deployment in the live menu; the rest are
  otherDeployments.

`softRebootCapable` is true on the staged (unless download-only) and the
rollback entry of a running system when that deployment boots the booted
kernel with the same kernel arguments (cfsboot.deploy.softreboot.capable).

Boot assessment is reported in a `cfsboot` object of each BootEntry and of the
HostStatus: bootc's schema lists no such property and forbids none, so the
document stays valid, and cfsboot's own fields stay apart from bootc's. An
entry on trial shows its tries (`state` pending, or failed once they ran
out, with the last failure recorded by `cfsboot assess-boot`); the host says
whether the booted deployment runs as the fallback of one that failed.

`cfsboot.nextBoot` of the HostStatus names what boots next (the staged deployment
once finalized, else the live menu's default). On systemd-boot that is its own
choice: on the running system the EFI variables LoaderEntryOneShot and
LoaderEntryDefault (`bootctl set-oneshot|set-default`) come before cfsboot's menu
order, and `override` says so when one of them picks another entry
(cfsboot.boot.loadervars). bootc's fields (`rollbackQueued`, `spec.bootOrder`) keep
their meaning: cfsboot's menu order.

`status.type` is `bootcHost` when the booted deployment came from a container
image (bootc's rule), and `usrOverlay` describes an overlay `cfsboot
usr-overlay` put on /usr of the running system. bootc's schema has no
`readOnly` property on the host status (host-v1.schema.json, spec.rs): none is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cfsboot.boot.bootloader import BootloaderKind
from cfsboot.boot.boottype import BootType
from cfsboot.deploy.assessrecord import read_record
from cfsboot.deploy.pins import pinned
from cfsboot.deploy.target import VERSION_LABEL, current_deployment
from cfsboot.deploy.updatecache import read_cached_update
from cfsboot.errors import CfsbootError
from cfsboot.image.info import ImageInfo, read_config, read_image_info, read_manifest
from setuproot.contract import KargError, parse_cmdline

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Literal

    from cfsboot.boot.bootloader import Bootloader, MenuEntry
    from cfsboot.composefs.repository import Repository
    from cfsboot.deploy.origin import Origin
    from cfsboot.deploy.statusdoc import (
        BootcHost,
        BootEntry,
        EntryAssessment,
        FailureRecord,
        FilesystemOverlay,
        HostAssessment,
        HostStatus,
        HostStatusCfsboot,
        ImageReference,
        ImageStatus,
        NextBoot,
        Others,
    )
    from cfsboot.deploy.sysroot import Sysroot

# `status` is what people and monitoring run most: what only some runs need (soft-reboot
# checks on a running system, UKIs, the /usr overlay, logging on a damaged UKI) is
# imported where it is used (tests/unit/test_startup.py pins what a run imports).

API_VERSION = "org.containers.bootc/v1"
KIND = "BootcHost"


def image_reference(imgref: str) -> ImageReference:
    """bootc's ImageReference: `docker://x` -> {image: x, transport: registry}."""
    transport, _, rest = imgref.partition(":")
    if transport == "docker":
        return {"image": rest.removeprefix("//"), "transport": "registry"}
    return {"image": rest, "transport": transport}


@dataclass(frozen=True)
class Deployment:
    digest: str
    entry: MenuEntry
    origin: Origin | None
    verity_required: bool
    info: ImageInfo | None


def _verity_required(sysroot: Sysroot, entry: MenuEntry, info: ImageInfo | None) -> bool:
    cmdline = " ".join(entry.options)
    if entry.boot_type is BootType.UKI and info is not None:
        # The command line is sealed in the UKI: read it from the repository's copy.
        from cfsboot.boot.uki import parse_uki
        from cfsboot.image.imagefiles import bootfile_bytes

        for uki_file in info.boot.ukis:
            try:
                cmdline = parse_uki(bootfile_bytes(sysroot.repo, uki_file)).cmdline or ""
            except Exception as e:  # a damaged UKI must not break status
                import logging

                logging.getLogger(__name__).warning("cannot read %s: %s", uki_file.path, e)
            break
    try:
        kargs = parse_cmdline(cmdline)
    except KargError:
        return False
    # The first karg naming the deployment is the one setup-root mounts it by.
    mine = next((k for k in kargs if k.digest == entry.deployment), None)
    return mine is not None and not mine.insecure


def _repo(sysroot: Sysroot) -> Repository | None:
    """The repository; None when it cannot be opened (a damaged meta.json: status's quick
    check warned). The deployments are then shown from the state and the ESP, without
    what only the repository knows (the image's version, date and architecture)."""
    try:
        return sysroot.repo
    except CfsbootError:
        return None


def _deployment(sysroot: Sysroot, entry: MenuEntry) -> Deployment:
    d = entry.deployment
    origin = sysroot.origin(d) if sysroot.deploy_dir(d).is_dir() else None
    repo = _repo(sysroot)
    info = read_image_info(repo, d) if repo is not None else None
    return Deployment(d, entry, origin, _verity_required(sysroot, entry, info), info)


def _image_status(sysroot: Sysroot, dep: Deployment) -> ImageStatus | None:
    info = dep.info
    ref = dep.origin.image if dep.origin is not None else info.reference if info else None
    if not ref:
        return None
    manifest_digest = (dep.origin.manifest_digest if dep.origin else None) or (
        info.manifest_digest if info else None
    )
    repo = _repo(sysroot)
    manifest = read_manifest(repo, manifest_digest) if manifest_digest and repo else None
    config = read_config(repo, info.config_digest) if info and repo else None
    version = (manifest.annotations.get(VERSION_LABEL) if manifest else None) or (
        config.labels.get(VERSION_LABEL) if config else None
    )
    return {
        "image": image_reference(ref),
        "version": version,
        "timestamp": config.created if config else None,
        "imageDigest": manifest_digest or "",
        "architecture": (config.architecture if config else None) or "",
    }


# bootc's names (its composefs Bootloader enum; `none`: installed with --bootloader none).
_LOADER_NAMES: dict[BootloaderKind, Literal["systemd", "grub", "none"]] = {
    BootloaderKind.SYSTEMD_BOOT: "systemd",
    BootloaderKind.GRUB: "grub",
    BootloaderKind.NONE: "none",
}


def _boot_entry(
    sysroot: Sysroot,
    dep: Deployment,
    bootloader: BootloaderKind,
    *,
    download_only: bool = False,
    pinned: bool = False,
    cached_update: ImageStatus | None = None,
) -> BootEntry:
    boot_type = dep.origin.boot_type if dep.origin else dep.entry.boot_type
    return {
        "image": _image_status(sysroot, dep),
        "cachedUpdate": cached_update,
        "incompatible": False,
        "pinned": pinned,
        "softRebootCapable": False,
        "downloadOnly": download_only,
        "store": None,
        "ostree": None,
        "composefs": {
            "verity": dep.digest,
            "bootType": "Uki" if boot_type is BootType.UKI else "Bls",
            "bootloader": _LOADER_NAMES[bootloader],
            "bootDigest": dep.origin.boot_digest if dep.origin else None,
            "missingVerityAllowed": not dep.verity_required,
        },
        "cfsboot": {"bootAssessment": _entry_assessment(sysroot, dep.entry)},
    }


def _entry_assessment(sysroot: Sysroot, m: MenuEntry) -> EntryAssessment | None:
    if m.tries is None:
        return None
    record = read_record(sysroot, m.deployment)
    last: FailureRecord | None = None
    if record is not None:
        failed = record.get("failed")
        time = record.get("time")
        last = {
            "time": time if isinstance(time, str) else None,
            "failed": [str(x) for x in failed] if isinstance(failed, list) else [],
        }
    return {
        "state": "failed" if m.failed else "pending",
        "triesLeft": max(m.tries.left, 0),
        "triesDone": m.tries.done,
        "lastFailure": last,
    }


def _host_assessment(sysroot: Sysroot, bl: Bootloader, current: str | None) -> HostAssessment:
    """Whether `current` boots because a deployment written ahead of it ran out of tries."""
    live = {m.deployment: m for m in bl.menu()}
    order = bl.written_order()
    ahead = order[: order.index(current)] if current in order else []
    failed = next((live[d] for d in ahead if d in live and live[d].failed), None)
    if failed is None or failed.tries is None or current is None:
        return {"fallback": False, "failedDeployment": None, "triesUsed": None, "message": None}
    record = read_record(sysroot, failed.deployment) or {}
    why = record.get("failed")
    reason = f" ({'; '.join(map(str, why))})" if isinstance(why, list) and why else ""
    version = f" ({failed.version})" if failed.version else ""
    message = (
        f"deployment {failed.deployment[:12]}…{version} failed its boot assessment: "
        f"{failed.tries.done} tries did not reach boot-complete.target{reason}; "
        f"{current[:12]}… booted instead. It is not tried again until it is staged again "
        "(cfsboot switch, or cfsboot rollback to it)"
    )
    return {
        "fallback": True,
        "failedDeployment": failed.deployment,
        "triesUsed": failed.tries.done,
        "message": message,
    }


def next_boot(sysroot: Sysroot, bl: Bootloader, *, staged: MenuEntry | None) -> NextBoot:
    """What boots next: on systemd-boot, as it decides with the running system's EFI
    variables (cfsboot.boot.loadervars); on GRUB, the first entry of cfsboot's menu.

    staged: the staged entry finalize makes the default before the next boot, if any.
    """
    if bl.kind is BootloaderKind.NONE:  # the user's boot loader decides
        return {"deployment": None, "entry": None, "override": None}
    if bl.kind is not BootloaderKind.SYSTEMD_BOOT:
        first = staged or next(iter(bl.menu()), None)
        depl = first.deployment if first is not None else None
        return {"deployment": depl, "entry": None, "override": None}
    from cfsboot.boot.loadervars import next_boot as loader_next_boot

    nb = loader_next_boot(bl, sysroot.loader_vars(bl), staged=staged is not None)
    chosen = nb.chosen
    message = nb.warning()
    return {
        "deployment": chosen.deployment,
        "entry": chosen.entry.id if chosen.entry is not None else None,
        "override": {
            "variable": chosen.variable or "",
            "value": chosen.value or "",
            "cfsbootDeployment": nb.cfsboot.deployment,
            "message": message,
        }
        if message is not None
        else None,
    }


def _host_cfsboot(
    sysroot: Sysroot, bl: Bootloader, current: str | None, staged: MenuEntry | None
) -> HostStatusCfsboot:
    return {
        "bootAssessment": _host_assessment(sysroot, bl, current),
        "nextBoot": next_boot(sysroot, bl, staged=staged),
    }


def _usr_overlay(usr: Path) -> FilesystemOverlay | None:
    from cfsboot.deploy.usroverlay import usr_overlay_status

    return usr_overlay_status(usr)


def host_status(sysroot: Sysroot, bl: Bootloader, *, usr: Path | None = None) -> BootcHost:
    """The BootcHost document for this physical root.

    usr: the /usr whose overlay `usrOverlay` reports (default: /usr when the
    physical root is the running system's, else none).
    """
    if usr is None and sysroot.live:
        usr = Path("/usr")
    live = bl.menu()
    current = current_deployment(sysroot, bl)
    marker = sysroot.staged()
    staged_menu = bl.menu(staged=True) if marker is not None else []
    staged_entry = sysroot.staged_entry(bl)
    by_id = {m.deployment: m for m in live}

    booted = by_id.get(current) if current else None
    if booted is None and current is not None:
        # Booted from an entry that is gone (e.g. removed by hand): still report it.
        booted = next((m for m in staged_menu if m.deployment == current), None)
    others = [
        m for m in live if m.deployment not in (current, staged_entry and staged_entry.deployment)
    ]
    # Without a boot loader of cfsboot's, no deployment is the one `rollback` would boot.
    rollback = others[0] if others and bl.kind is not BootloaderKind.NONE else None

    pins = pinned(sysroot)
    cached = read_cached_update(sysroot)

    def entry(m: MenuEntry, *, download_only: bool = False, soft: bool = False) -> BootEntry:
        dep = _deployment(sysroot, m)
        update = cached.image if cached is not None and cached.deployment == m.deployment else None
        doc = _boot_entry(
            sysroot,
            dep,
            bl.kind,
            download_only=download_only,
            pinned=m.deployment in pins,
            cached_update=update,  # type: ignore[arg-type]
        )
        if soft and sysroot.live:
            from cfsboot.deploy import softreboot

            doc["softRebootCapable"] = softreboot.capable(sysroot, bl, m)
        return doc

    rollback_queued = bool(live) and current is not None and live[0].deployment != current
    spec_source = staged_entry or booted
    spec_image = None
    if spec_source is not None:
        origin = sysroot.origin(spec_source.deployment)
        if origin is not None:
            spec_image = image_reference(origin.image)
    locked = bool(marker and marker.finalization_locked)
    staged = entry(staged_entry, download_only=locked, soft=not locked) if staged_entry else None
    booted_doc = entry(booted) if booted is not None else None
    rollback_doc = entry(rollback, soft=True) if rollback is not None else None
    rest = [m for m in others if m is not rollback]
    more: Others = {"otherDeployments": [entry(m) for m in rest]} if rest else {}
    status: HostStatus = {
        "staged": staged,
        "booted": booted_doc,
        "rollback": rollback_doc,
        **more,
        "rollbackQueued": rollback_queued,
        "type": "bootcHost" if booted_doc is not None and booted_doc["image"] else None,
        "usrOverlay": _usr_overlay(usr) if usr is not None else None,
        "cfsboot": _host_cfsboot(sysroot, bl, current, sysroot.staged_next(bl)),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "host"},
        "spec": {
            "image": spec_image,
            "bootOrder": "rollback" if rollback_queued else "default",
        },
        "status": status,
    }
