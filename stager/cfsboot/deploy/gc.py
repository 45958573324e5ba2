"""`cfsboot gc`: remove deployments, boot files, images and objects nothing needs any more.

Kept: the booted deployment, the staged one, the rollback one, `--keep N`
more from the boot menu in menu order, the pinned ones (`cfsboot pin`, not
counted in N), and every image a tag of the user's names (`images/refs/`,
except cfsboot's own `deploy/` tags). Everything a kept image needs stays:
its EROFS, the objects it references, its manifest, config and layer records,
and the objects those records reference (so a re-import reads nothing again).

Order (each step leaves a bootable, consistent system if the power goes):
  1. the boot menu without the dropped deployments (one atomic exchange);
  2. their state directories (renamed away, then deleted);
  3. boot files no entry of the live or staged menu points at;
  4. their deployment tags;
  5. unreferenced image and stream names, then unreferenced objects.
Interrupted runs (state directories without an entry, temporary state and
/etc-view directories, staging leftovers in objects/, temporary image and
stream links that were never renamed) are collected too. The booted
deployment is never removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.composefs.objectstore import STAGING_PREFIX
from cfsboot.composefs.repocheck import file_refs
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.pins import pinned
from cfsboot.deploy.state import remove_state, remove_tree, state_leftovers
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import DEPLOY_TAG_PREFIX, current_deployment, deployment_tag
from cfsboot.errors import CfsbootError
from cfsboot.image.imagefiles import image_tree
from cfsboot.image.info import (
    config_stream,
    image_stream,
    layer_stream,
    load_image_info,
    manifest_stream,
)
from cfsboot.linux.fsutil import TEMP_MARKER
from cfsboot.oci.apply import LayerRecord
from setuproot.contract import IMAGES_DIR, OBJECTS_DIR, REFS_DIR, STREAMS_DIR

log = logging.getLogger(__name__)

OUR_STREAM_PREFIX = "cfsboot-"


@dataclass
class GcReport:
    deployments: list[str] = field(default_factory=list)
    boot_files: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    objects: int = 0
    object_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # of interrupted runs

    def summary(self, *, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        mib = self.object_bytes / (1 << 20)
        parts = [
            f"{len(self.deployments)} deployment(s)",
            f"{len(self.boot_files)} boot file set(s)",
            f"{len(self.images)} image(s)",
            f"{len(self.streams)} stream(s)",
            f"{self.objects} object(s) ({mib:.1f} MiB)",
        ]
        if self.leftovers:
            parts.append(f"{len(self.leftovers)} leftover(s) of interrupted runs")
        text = f"gc {verb} " + ", ".join(parts)
        for s in self.skipped:
            text += f"\n  note: {s}"
        return text


def choose_kept(sysroot: Sysroot, bl: Bootloader, *, keep: int) -> tuple[set[str], list[MenuEntry]]:
    """(deployments to keep, the live menu they leave)."""
    live = bl.menu()
    current = current_deployment(sysroot, bl)
    staged = sysroot.staged()
    kept: set[str] = set()
    if current is not None:
        kept.add(current)
    if staged is not None:
        kept.add(staged.depl_id)
    pins = pinned(sysroot)
    others = [m for m in live if m.deployment not in kept]
    if others:
        kept.add(others[0].deployment)  # the rollback one
    # Then --keep more; pinned ones are kept besides, not counted.
    for m in [m for m in others[1:] if m.deployment not in pins][: max(0, keep)]:
        kept.add(m.deployment)
    kept |= pins
    return kept, [m for m in live if m.deployment in kept]


def collect(sysroot: Sysroot, bl: Bootloader, *, keep: int = 0, dry_run: bool = False) -> GcReport:
    """Run the collection (the caller holds the repository lock)."""
    report = GcReport()
    repo = sysroot.repo
    booted = sysroot.booted()
    kept, new_live = choose_kept(sysroot, bl, keep=keep)
    live = bl.menu()
    staged_pending = sysroot.staged() is not None and bl.has_staged()
    if staged_pending:
        # The live menu is replaced whole at finalize: leave it, and whatever it boots, alone.
        pruned = len(new_live) < len(live)
        kept |= {d for m in live for d in m.named}
        new_live = live
        if pruned:
            report.skipped.append(
                "a deployment is staged: entries are pruned after it is finalized"
            )
    elif not dry_run and [m.deployment for m in new_live] != [m.deployment for m in live]:
        bl.write_menu(new_live)
    elif not staged_pending and bl.has_staged():
        # A staged menu without a marker: left over from a staging a reboot interrupted.
        if not dry_run:
            bl.discard_staged()
    staged_menu = bl.menu(staged=True) if staged_pending else []
    # Every deployment an entry names is kept, not only the one it boots (bootc's entries
    # may name one per hash algorithm; which boots depends on which images are there).
    referenced = {d for m in (*new_live, *staged_menu) for d in m.named} | kept
    if booted is not None:
        referenced.add(booted)

    for depl in sysroot.deployment_dirs():
        if depl not in referenced:
            report.deployments.append(depl)
            if not dry_run:
                remove_state(sysroot, depl)
    for depl in (m.deployment for m in live):
        if depl not in referenced and depl not in report.deployments:
            report.deployments.append(depl)
    for leftover in state_leftovers(sysroot):
        report.leftovers.append(leftover.name)
        if not dry_run:
            remove_tree(leftover)

    artifacts = {m.artifact.lower() for m in (*new_live, *staged_menu)}
    for path in bl.artifacts():
        if path.lower() not in artifacts:
            report.boot_files.append(path)
            if not dry_run:
                bl.remove_artifact(path)

    tags = repo.tags()
    for name in tags:
        if (
            name.startswith(DEPLOY_TAG_PREFIX)
            and name.removeprefix(DEPLOY_TAG_PREFIX) not in referenced
        ):
            report.tags.append(name)
            if not dry_run:
                repo.untag(name)
    if not dry_run:
        for depl in referenced:
            if repo.has_image(depl) and deployment_tag(depl) not in tags:
                repo.tag(deployment_tag(depl), depl)  # migration: deployments made before tags
    live_images = {img for name, img in tags.items() if name not in report.tags}
    live_images |= {d for d in referenced if repo.has_image(d)}
    _sweep_repository(repo, live_images, report, dry_run=dry_run)
    return report


class _Doubt(CfsbootError):
    """What a kept image needs cannot be told: nothing it might need may be removed."""


def _image_roots(repo: Repository, image: str) -> tuple[set[str], set[str]]:
    """(objects, stream names) that image `image` needs; _Doubt when that cannot be told."""
    objects = {image}
    streams = {image_stream(image)}
    try:
        tree = image_tree(repo, image)
        info = load_image_info(repo, image)
    except (CfsbootError, OSError) as e:
        raise _Doubt(f"image {image[:16]}… cannot be read ({e})") from None
    for _path, node in file_refs(tree):
        if node.digest is not None:
            objects.add(node.digest.hex())
    if info is None:
        return objects, streams
    streams.add(manifest_stream(info.manifest_digest))
    streams.add(config_stream(info.config_digest))
    for layer in info.layers:
        name = layer_stream(layer.diff_id)
        streams.add(name)
        data = repo.read_stream(name)
        if data is not None:
            try:
                objects |= LayerRecord.from_bytes(data).objects()
            except CfsbootError as e:
                raise _Doubt(f"the layer record {layer.diff_id[:19]}… is damaged ({e})") from None
    return objects, streams


def _stream_target(repo: Repository, name: str) -> str | None:
    try:
        target = os.readlink(repo.path / STREAMS_DIR / name)
    except OSError:
        return None
    return "".join(Path(target).parts[-2:])


def _sweep_repository(
    repo: Repository, live_images: set[str], report: GcReport, *, dry_run: bool
) -> None:
    objects: set[str] = set()
    streams: set[str] = set()
    doubts: list[str] = []
    for image in sorted(live_images):
        try:
            o, s = _image_roots(repo, image)
        except _Doubt as e:
            doubts.append(e.message)
            continue
        objects |= o
        streams |= s
    if doubts:
        report.skipped += [
            f"{d}: streams and objects were not collected (`cfsboot fsck` says more)"
            for d in doubts
        ]
        _sweep_images(repo, live_images, report, dry_run=dry_run)
        return
    stream_dir = repo.path / STREAMS_DIR
    foreign = []
    for entry in sorted(os.scandir(stream_dir), key=lambda e: e.name):
        if entry.name == REFS_DIR or not entry.is_symlink():
            continue
        if TEMP_MARKER in entry.name:
            # A link a crash left under its temporary name (Repository._symlink): no
            # stream, and not someone else's either (that would stop object collection).
            report.leftovers.append(entry.name)
            if not dry_run:
                os.unlink(entry.path)
            continue
        if not entry.name.startswith(OUR_STREAM_PREFIX):
            foreign.append(entry.name)
            continue
        target = _stream_target(repo, entry.name)
        if entry.name in streams:
            if target is not None:
                objects.add(target)
            continue
        report.streams.append(entry.name)
        if not dry_run:
            os.unlink(entry.path)
    _sweep_images(repo, live_images, report, dry_run=dry_run)
    if foreign:
        report.skipped.append(
            f"the repository holds {len(foreign)} stream(s) cfsboot did not write (e.g."
            f" {foreign[0]}): objects were not collected"
        )
        return
    _sweep_objects(repo, objects, report, dry_run=dry_run)


def _sweep_images(
    repo: Repository, live_images: set[str], report: GcReport, *, dry_run: bool
) -> None:
    for image in repo.list_images():
        if image not in live_images:
            report.images.append(image)
            if not dry_run:
                os.unlink(repo.path / IMAGES_DIR / image)
    for entry in os.scandir(repo.path / IMAGES_DIR):
        if TEMP_MARKER in entry.name and entry.is_symlink():
            report.leftovers.append(entry.name)
            if not dry_run:
                os.unlink(entry.path)


def _sweep_objects(repo: Repository, live: set[str], report: GcReport, *, dry_run: bool) -> None:
    root = repo.path / OBJECTS_DIR
    for sub in sorted(os.scandir(root), key=lambda e: e.name):
        if sub.name.startswith(STAGING_PREFIX) and sub.is_dir(follow_symlinks=False):
            if not dry_run:
                shutil.rmtree(sub.path, ignore_errors=True)  # an import that died
            continue
        if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
            continue
        for obj in os.scandir(sub.path):
            hexd = sub.name + obj.name
            if hexd in live:
                continue
            try:
                size = obj.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            report.objects += 1
            report.object_bytes += size
            if not dry_run:
                os.unlink(obj.path)
