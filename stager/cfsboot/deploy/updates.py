"""`cfsboot upgrade --check`: is there an update, what would it change, and the record of it.

Exit codes a script can use (rpm-ostree's convention; bootc's `--check` exits 0
either way and has none): 0 an update is available, 77 (NO_UPDATE) there is
none, 75 (cfsboot.oci.network.OFFLINE) the registry cannot be reached now,
anything else an error.

The check reads the manifest and config first; only when they name another
image does it import that image (new layers only, untagged: nothing is staged,
a later upgrade reuses it) to print what would change (cfsboot.deploy.diff),
and it records the image found as the `cachedUpdate` status shows. An image that
is a deployment which failed its boot assessment is no update: `upgrade` does not
stage it again by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from cfsboot.boot.bootloader import Bootloader
from cfsboot.deploy.diff import Diff, deployment_side, diff, image_side
from cfsboot.deploy.status import image_reference
from cfsboot.deploy.statusdoc import ImageStatus
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import UpdateCheck, check_update
from cfsboot.deploy.updatecache import CachedUpdate, write_cached_update
from cfsboot.image.info import read_config

NO_UPDATE = 77


@dataclass(frozen=True)
class CheckResult:
    found: UpdateCheck
    diff: Diff | None  # None: no update
    image: ImageStatus | None
    # The image found is a deployment that failed its boot assessment: `upgrade` does
    # not stage it again, so it is no update (diff None); (its digest, tries it used).
    failed: tuple[str, int] | None = None


def import_untagged(
    sysroot: Sysroot, imgref: str, *, arch: str | None, quiet: bool
) -> tuple[str, str, str]:
    """Import `imgref` (new layers only, no tag): (image digest, manifest digest, config digest)."""
    from cfsboot.image.importer import Progress, import_image

    result = import_image(imgref, sysroot.repo, arch=arch, tag="", progress=Progress(not quiet))
    return result.image_digest, result.manifest_digest, result.config_digest


def check(
    sysroot: Sysroot,
    bl: Bootloader,
    depl: str,
    imgref: str,
    *,
    arch: str | None = None,
    quiet: bool = True,
) -> CheckResult:
    """Whether `imgref` names an update for deployment `depl`, and what it changes."""
    found = check_update(sysroot, depl, imgref, arch=arch)
    if not found.available:
        write_cached_update(sysroot, None)
        return CheckResult(found, None, None)
    digest, manifest_digest, config_digest = import_untagged(
        sysroot, imgref, arch=arch, quiet=quiet
    )
    failed = next((m for m in bl.menu() if m.deployment == digest and m.failed), None)
    if failed is not None and failed.tries is not None:
        write_cached_update(sysroot, None)
        return CheckResult(found, None, None, (digest, failed.tries.done))
    base = deployment_side(sysroot, bl, depl, f"deployment {depl[:12]}…")
    changes = diff(sysroot, base, image_side(sysroot, bl, digest, imgref, base))
    config = read_config(sysroot.repo, config_digest)
    image: ImageStatus = {
        "image": image_reference(imgref),
        "version": found.version,
        "timestamp": config.created if config is not None else None,
        "imageDigest": manifest_digest,
        "architecture": (config.architecture if config is not None else None) or "",
    }
    write_cached_update(sysroot, CachedUpdate(depl, dict(image)))
    return CheckResult(found, changes, image)
