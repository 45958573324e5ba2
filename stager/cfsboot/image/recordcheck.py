"""Are an image's import records complete and sound? (the image layer's part of `cfsboot fsck`)

For every image cfsboot imported the repository keeps its ImageInfo, its
manifest and config as read, and one LayerRecord per layer (cfsboot.image.info).
Checked, on the contents composefs.repocheck has already read and verified:
- each record parses; a manifest or config has the digest its name says;
- an ImageInfo's manifest, config and layer records are all there;
- a layer record is for the diff_id its name says and the repository's
  algorithm, and every object it or the ImageInfo's boot files name exists.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

from cfsboot.composefs.repocheck import Problem, RepoCheck
from cfsboot.errors import CfsbootError
from cfsboot.image.info import (
    ImageInfo,
    config_stream,
    image_stream,
    layer_stream,
    manifest_stream,
)
from cfsboot.oci.apply import LayerRecord
from cfsboot.oci.documents import ImageConfig, Manifest
from setuproot.contract import STREAMS_DIR

STREAM_PREFIX = "cfsboot-"
_IMAGE, _MANIFEST, _CONFIG, _LAYER = (
    image_stream(""),
    manifest_stream(""),
    config_stream(""),
    layer_stream(""),
)


class RecordCode(enum.StrEnum):
    RECORD_DAMAGED = "record-damaged"  # a record that does not parse or has the wrong digest
    RECORD_MISSING = "record-missing"  # an ImageInfo names a record the repository lacks


@dataclass
class Records:
    """What the records say (for repairs) and what is wrong with them."""

    problems: list[Problem] = field(default_factory=list)
    infos: dict[str, ImageInfo] = field(default_factory=dict)  # image hex -> its ImageInfo
    arch: dict[str, str] = field(default_factory=dict)  # image hex -> its config's architecture
    # image hex -> the streams its records are kept in (ImageInfo, manifest, config, layers)
    image_streams: dict[str, set[str]] = field(default_factory=dict)
    record_objects: dict[str, set[str]] = field(default_factory=dict)  # stream -> its objects

    def damaged(self, name: str, message: str, subject: str = "") -> None:
        self.problems.append(
            Problem(RecordCode.RECORD_DAMAGED, f"{STREAMS_DIR}/{name}", message, subject or name)
        )


def keep_stream(name: str) -> bool:
    """The streams fsck reads into memory: cfsboot's own records."""
    return name.startswith(STREAM_PREFIX)


def _digest_matches(data: bytes, digest: str) -> bool:
    alg, _, hexd = digest.partition(":")
    return alg in ("sha256", "sha512") and hashlib.new(alg, data).hexdigest() == hexd


def _check_document(recs: Records, name: str, data: bytes, digest: str, config: bool) -> None:
    if not _digest_matches(data, digest):
        recs.damaged(name, f"its content does not have the digest {digest[:19]}… of its name")
        return
    try:
        if config:
            ImageConfig.parse(data, "config")
        else:
            Manifest.parse(data, config_limit=1 << 62, layer_limit=1 << 62)
    except CfsbootError as e:
        recs.damaged(name, f"does not parse: {e}")


def _check_layer(recs: Records, check: RepoCheck, name: str, data: bytes, alg: str) -> None:
    diff_id = name.removeprefix(_LAYER)
    try:
        record = LayerRecord.from_bytes(data)
    except CfsbootError as e:
        recs.damaged(name, f"does not parse: {e}")
        return
    if record.diff_id != diff_id or record.algorithm != alg:
        recs.damaged(
            name, f"is the record of {record.diff_id[:19]}… ({record.algorithm}), not of its name"
        )
        return
    objects = record.objects()
    recs.record_objects[name] = objects
    for h in sorted(objects):
        check.require(h, f"layer record {diff_id[:19]}…")


def _check_info(recs: Records, check: RepoCheck, image: str, data: bytes) -> None:
    name = image_stream(image)
    try:
        info = ImageInfo.from_bytes(data, "the import record")
    except CfsbootError as e:
        recs.damaged(name, f"does not parse: {e}", image)
        return
    recs.infos[image] = info
    needed = [manifest_stream(info.manifest_digest), config_stream(info.config_digest)]
    needed += [layer_stream(layer.diff_id) for layer in info.layers]
    recs.image_streams[image] = {name, *needed}
    present = set(check.layout.streams) | set(check.layout.dangling_streams)
    for stream in needed:
        if stream not in present:
            recs.problems.append(
                Problem(
                    RecordCode.RECORD_MISSING,
                    f"{STREAMS_DIR}/{stream}",
                    f"missing (a record of image {image[:16]}…)",
                    image,
                )
            )
    files = [*info.boot.ukis, *info.boot.kargs]
    for k in info.boot.kernels:
        files += [k.vmlinuz, *([k.initramfs] if k.initramfs else [])]
    for f in files:
        if f.digest is not None:
            check.require(f.digest, f"image {image[:16]}… for its boot file {f.path}")


def check_records(check: RepoCheck, algorithm: str) -> Records:
    """Check every cfsboot record whose content check_repository kept (see the module doc)."""
    recs = Records()
    layout = check.layout
    images = {*layout.images, *layout.dangling_images, *layout.dangling_tags.values()}
    for name, data in sorted(check.stream_data.items()):
        if name.startswith(_IMAGE):
            image = name.removeprefix(_IMAGE)
            if image in images:  # a record of an image that is gone: gc's to remove
                _check_info(recs, check, image, data)
        elif name.startswith(_MANIFEST):
            _check_document(recs, name, data, name.removeprefix(_MANIFEST), config=False)
        elif name.startswith(_CONFIG):
            _check_document(recs, name, data, name.removeprefix(_CONFIG), config=True)
        elif name.startswith(_LAYER):
            _check_layer(recs, check, name, data, algorithm)
    for image, info in recs.infos.items():
        config = check.stream_data.get(config_stream(info.config_digest))
        if config is not None:
            try:
                arch = ImageConfig.parse(config).architecture
            except CfsbootError:
                continue
            if arch:
                recs.arch[image] = arch
    return recs
