"""The update `cfsboot upgrade --check` last found: `state/cfsboot/cached-update.json`.

Status shows it as `cachedUpdate` (bootc's ImageStatus) of the deployment the
check started from. A check that finds no update removes it, and so does staging
the image it found (`forget_staged`): as in bootc, whose cached update lives on the
image reference's pulled commit and goes with the pull that stages the update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cfsboot.deploy.sysroot import Sysroot
from cfsboot.linux.fsutil import fsync_dir, write_file_atomic
from cfsboot.linux.lazylog import getLogger

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Any

log = getLogger(__name__)  # imports logging when it logs (lazylog)

CACHED_UPDATE = "state/cfsboot/cached-update.json"


@dataclass(frozen=True)
class CachedUpdate:
    deployment: str  # the deployment the check compared with
    image: dict[str, Any]  # bootc's ImageStatus of the image found


def cache_path(sysroot: Sysroot) -> Path:
    return sysroot.path / CACHED_UPDATE


def read_cached_update(sysroot: Sysroot) -> CachedUpdate | None:
    path = cache_path(sysroot)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: [[[[... nested
        log.warning("ignoring %s: %s", path, e)
        return None
    depl, image = doc.get("deployment") if isinstance(doc, dict) else None, None
    if isinstance(doc, dict) and isinstance(doc.get("image"), dict):
        image = doc["image"]
    if not isinstance(depl, str) or image is None:
        log.warning("ignoring %s: not a cached update", path)
        return None
    return CachedUpdate(depl, image)


def write_cached_update(sysroot: Sysroot, cached: CachedUpdate | None) -> None:
    """Record what a check found (None: that there is no update)."""
    path = cache_path(sysroot)
    if cached is None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"deployment": cached.deployment, "image": cached.image}
    write_file_atomic(path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)


def forget_staged(sysroot: Sysroot, manifest_digest: str | None) -> None:
    """The image with `manifest_digest` is staged (or deployed): it is no update to show."""
    cached = read_cached_update(sysroot)
    if (
        cached is not None
        and manifest_digest
        and cached.image.get("imageDigest") == manifest_digest
    ):
        write_cached_update(sysroot, None)
