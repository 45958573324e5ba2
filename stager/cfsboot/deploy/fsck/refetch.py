"""Repair damaged or missing repository content by importing the image again from where it came.

An object is named by its content, so a damaged one can only be replaced by
the same bytes: those of the image that needs it, fetched again from the
reference the deployment's origin or the image's import record names. The
image pipeline does the writing (atomic, durable, fs-verity where the
repository has it); it skips what is present, so the damaged objects are first
moved into a quarantine directory (named like a staging directory, so a crash
leaves something gc and fsck clean up), and put back if the import did not
bring them again: a failed repair leaves the repository as it was.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cfsboot.composefs.objectcheck import Verdict, verify_file
from cfsboot.composefs.objectstore import STAGING_PREFIX
from cfsboot.composefs.repocheck import RepoCheck
from cfsboot.composefs.repository import Repository
from cfsboot.errors import CfsbootError
from cfsboot.image.info import image_stream
from cfsboot.image.recordcheck import RecordCode, Records
from cfsboot.linux.fsutil import fsync_dir
from setuproot.contract import OBJECTS_DIR

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One image to import again, and what that should bring back."""

    image: str
    references: list[str]  # IMGREFs to try, in order
    tag: str  # the tag its import record names ("" for none)
    arch: str | None
    objects: set[str] = field(default_factory=set)  # what the image needs
    broken: set[str] = field(default_factory=set)  # of those, damaged or missing


@dataclass
class Plan:
    jobs: dict[str, Job] = field(default_factory=dict)
    # What a job fixes: an object hex, a stream name or an image hex -> the IMGREF.
    fixes: dict[str, str] = field(default_factory=dict)
    unfixable: set[str] = field(default_factory=set)  # images that need it but have no IMGREF


def _needs(check: RepoCheck, recs: Records, image: str) -> tuple[set[str], set[str]]:
    """(objects, stream names) the image needs."""
    layout = check.layout
    objects = {image, *check.image_refs.get(image, set())}
    streams = recs.image_streams.get(image, {image_stream(image)})
    for s in streams:
        h = layout.streams.get(s) or layout.dangling_streams.get(s)
        if h is not None:
            objects.add(h)
        objects |= recs.record_objects.get(s, set())
    return objects, streams


def plan(check: RepoCheck, recs: Records, origins: Mapping[str, str], wanted: set[str]) -> Plan:
    """Which images to import again: those needing a damaged or missing object or record.

    `origins`: deployment id -> the IMGREF its origin names; `wanted`: images
    that must be there (deployments whose image is missing).
    """
    layout = check.layout
    gone = set(check.missing) | set(layout.dangling_images.values())
    gone |= set(layout.dangling_streams.values())
    broken_objects = check.bad | gone
    broken_streams = {p.subject for p in recs.problems if p.code == RecordCode.RECORD_DAMAGED}
    missing_records = {p.subject for p in recs.problems if p.code == RecordCode.RECORD_MISSING}
    out = Plan()
    images = {*layout.images, *layout.dangling_images, *layout.dangling_tags.values(), *wanted}
    for image in sorted(images):
        objects, streams = _needs(check, recs, image)
        broken = objects & broken_objects
        damaged = streams & broken_streams
        lost = image in wanted or image in layout.dangling_tags.values()
        if not (broken or damaged or lost or image in missing_records):
            continue
        info = recs.infos.get(image)
        refs = [r for r in (origins.get(image), info.reference if info else None) if r]
        refs = list(dict.fromkeys(refs))
        if not refs:
            out.unfixable.add(image)
            continue
        tag = (info.tag or "") if info else ""
        out.jobs[image] = Job(image, refs, tag, recs.arch.get(image), objects, broken)
        for key in (*broken, *damaged, image):
            out.fixes.setdefault(key, refs[0])
    return out


def _quarantine_dir(repo: Repository) -> Path:
    path = repo.path / OBJECTS_DIR / f"{STAGING_PREFIX}fsck-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(path, 0o700)
    return path


def _sound(repo: Repository, hexdigest: str) -> bool:
    found = verify_file(
        str(repo.object_path(hexdigest)), hexdigest, repo.algorithm, secure=not repo.insecure
    )
    return found is None or found.verdict is Verdict.NO_VERITY


def _import(repo: Repository, job: Job) -> tuple[str | None, str]:
    """Import the job's image from the first reference that works: (digest, message)."""
    from cfsboot.image.importer import import_image  # the pipeline: only when repairing

    errors = []
    for ref in job.references:
        try:
            result = import_image(ref, repo, tag=job.tag, arch=job.arch)
        except (CfsbootError, OSError) as e:
            errors.append(f"{ref}: {e}")
            continue
        if result.image_digest != job.image:
            return result.image_digest, (
                f"{ref} now names image {result.image_digest[:16]}…, not {job.image[:16]}…"
            )
        return result.image_digest, f"fetched {ref} again"
    return None, "; ".join(errors)


def run(repo: Repository, check: RepoCheck, p: Plan) -> tuple[list[str], list[str]]:
    """Carry out the plan (the caller holds the repository lock): (done, failed), one line each."""
    done: list[str] = []
    failed: list[str] = []
    if not p.jobs:
        return done, failed
    quarantine = _quarantine_dir(repo)
    moved: dict[str, Path] = {}
    try:
        for h in sorted(set().union(*(j.broken for j in p.jobs.values())) & check.bad):
            src = repo.object_path(h)
            moved[h] = quarantine / h
            os.rename(src, moved[h])
            fsync_dir(src.parent)
        fsync_dir(quarantine)
        for job in p.jobs.values():
            digest, message = _import(repo, job)
            back = {h for h in job.broken if os.path.exists(repo.object_path(h))}
            if digest is None:
                failed.append(f"image {job.image[:16]}…: could not fetch it again: {message}")
            elif back == job.broken and digest == job.image:
                done.append(
                    f"image {job.image[:16]}…: {message}; {len(back)} damaged or missing"
                    " object(s) written again"
                )
            else:
                failed.append(
                    f"image {job.image[:16]}…: {message}; {len(back)} of"
                    f" {len(job.broken)} damaged or missing object(s) came back"
                )
    finally:
        _put_back(repo, moved)
        shutil.rmtree(quarantine, ignore_errors=True)
    return done, failed


def _put_back(repo: Repository, moved: Mapping[str, Path]) -> None:
    """A quarantined object goes back under its name unless a sound copy replaced it."""
    for h, q in sorted(moved.items()):
        dst = repo.object_path(h)
        if os.path.exists(dst) and _sound(repo, h):
            continue
        if os.path.exists(dst):
            os.unlink(dst)
        os.rename(q, dst)
        fsync_dir(dst.parent)
        log.info("object %s was not fetched again: the damaged copy is back", h[:16])
