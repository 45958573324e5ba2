"""`docker-archive:FILE[:NAME:TAG|:@N]`: the tarball `docker save` writes.

manifest.json lists the images, each with its config file, its repository
tags and its layer tars (uncompressed, in order). There is no manifest blob
and no layer digest: the config is checked against the digest in its file
name when there is one, each layer against the config's `diff_ids`, and a
canonical OCI manifest is synthesised so that the import has a manifest
digest to record.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TypeGuard

from cfsboot.errors import die
from cfsboot.oci.blobs import (
    MAX_CONFIG,
    MAX_MANIFEST,
    BlobSource,
    LayerDesc,
    OpenedImage,
    read_member,
)
from cfsboot.oci.documents import MT_OCI_CONFIG, MT_OCI_LAYER_TAR, MT_OCI_MANIFEST, ImageConfig


@dataclass(frozen=True)
class ArchiveImage:
    """One entry of manifest.json."""

    config: str  # member name of the config
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]  # member names of the layer tars, bottom first


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def parse_manifest_json(data: bytes, where: str) -> tuple[ArchiveImage, ...]:
    what = f"manifest.json in {where}"
    try:
        entries = json.loads(data)
    except RecursionError:
        die(f"{what} is not valid JSON (nested too deeply)")
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number of 4300+ digits
        die(f"{what} is not valid JSON ({str(e).splitlines()[0]})")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        die(f"{what} lists no images")
    images = []
    for entry in entries:
        config, tags, layers = entry.get("Config"), entry.get("RepoTags") or [], entry.get("Layers")
        if not isinstance(config, str) or not _strings(tags) or not _strings(layers):
            die(f"{what} is malformed")
        images.append(ArchiveImage(config, tuple(tags), tuple(layers)))
    return tuple(images)


def _choose(images: tuple[ArchiveImage, ...], tag: str | None, where: str) -> ArchiveImage:
    if tag is None:
        if len(images) > 1:
            die(f"{where} holds several images", hint="name one as docker-archive:FILE:NAME:TAG")
        return images[0]
    if tag.startswith("@") and tag[1:].isdigit():
        if int(tag[1:]) >= len(images):
            die(f"{where} has no image {tag}")
        return images[int(tag[1:])]
    found = [i for i in images if tag in i.repo_tags]
    if not found:
        die(f"no image tagged {tag!r} in {where}")
    return found[0]


def _synthetic_manifest(config: bytes, config_digest: str, diff_ids: tuple[str, ...]) -> bytes:
    """A canonical OCI manifest for an image that has none, so the import has a digest."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": MT_OCI_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": MT_OCI_LAYER_TAR, "digest": d, "size": 0} for d in diff_ids],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def open_docker_archive(src: BlobSource, tag: str | None, arch: str | None) -> OpenedImage:
    """The image `tag` names in a docker-archive, config verified."""
    data = read_member(
        src,
        "manifest.json",
        MAX_MANIFEST,
        f"{src.where} is not a docker-archive (no manifest.json)",
    )
    entry = _choose(parse_manifest_json(data, src.where), tag, src.where)
    config = read_member(
        src, entry.config, MAX_CONFIG, f"config {entry.config} is missing from {src.where}"
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    m = re.search(r"([0-9a-f]{64})(\.json)?$", entry.config)
    if m and m.group(1) != config_digest[7:]:
        die(f"config {entry.config} digest mismatch: got {config_digest}")
    config_where = f"config {entry.config} in {src.where}"
    image_config = ImageConfig.parse(config, config_where)
    diff_ids = image_config.layer_ids(config_where)
    if len(entry.layers) != len(diff_ids):
        die(f"the layers in {src.where} do not match its config's rootfs.diff_ids")
    layers = tuple(
        LayerDesc(None, None, MT_OCI_LAYER_TAR, diff_id, name)
        for name, diff_id in zip(entry.layers, diff_ids, strict=True)
    )
    manifest = _synthetic_manifest(config, config_digest, diff_ids)
    image = OpenedImage(
        src,
        manifest,
        "sha256:" + hashlib.sha256(manifest).hexdigest(),
        config,
        config_digest,
        image_config,
        layers,
    )
    image.check_arch(arch)
    return image
