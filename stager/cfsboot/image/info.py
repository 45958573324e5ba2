"""What the repository keeps about an imported image, and the streams it is kept in.

Streams an import writes (names are cfsboot's own, so as not to be mistaken
for composefs-rs splitstreams):
  cfsboot-layer-<diff_id>      LayerRecord (zstd JSON, oci/apply.py)
  cfsboot-manifest-<digest>    the manifest, as read
  cfsboot-config-<digest>      the config, as read
  cfsboot-image-<image hex>    ImageInfo (JSON): what `image list/inspect`,
                               deploy, status and gc know of the image

ImageInfo's JSON is an on-disk format: existing repositories hold it, so its
bytes stay what they are (key order included) and a change needs a new
`format` number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cfsboot.composefs.repository import Repository
from cfsboot.image.bootscan import BootResources
from cfsboot.image.xattrfilter import XattrFilter
from cfsboot.jsondoc import DocumentError, Fields, parse_object
from cfsboot.linux.lazylog import getLogger
from cfsboot.oci.documents import ImageConfig, Manifest, check_digest

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Any

log = getLogger(__name__)  # imports logging when it logs (lazylog)

IMAGE_INFO_FORMAT = 1
EROFS_VERSION = 1  # the composefs format version of the boot image (mkcomposefs --min-version)


def layer_stream(diff_id: str) -> str:
    return f"cfsboot-layer-{diff_id}"


def manifest_stream(digest: str) -> str:
    return f"cfsboot-manifest-{digest}"


def config_stream(digest: str) -> str:
    return f"cfsboot-config-{digest}"


def image_stream(image_hex: str) -> str:
    return f"cfsboot-image-{image_hex}"


@dataclass(frozen=True)
class LayerInfo:
    digest: str | None  # the blob's digest (None: docker-archive, which has none)
    size: int | None
    media_type: str
    diff_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "media_type": self.media_type,
            "diff_id": self.diff_id,
        }

    @classmethod
    def from_json(cls, f: Fields) -> LayerInfo:
        digest = f.opt_str("digest")
        return cls(
            None if digest is None else _digest(f, "digest"),
            f.opt_int("size"),
            f.req_str("media_type"),
            _digest(f, "diff_id"),
        )


def _digest(f: Fields, key: str) -> str:
    return check_digest(f.req_str(key), f"{f.what}: {key}")


@dataclass(frozen=True)
class ImageInfo:
    """An imported image: where it came from, its layers, and its boot files."""

    reference: str  # the IMGREF it was imported from
    tag: str | None  # the tag it was imported under (None: none)
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerInfo, ...]
    xattr_filter: XattrFilter
    boot: BootResources
    erofs_version: int = EROFS_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": IMAGE_INFO_FORMAT,
            "reference": self.reference,
            "tag": self.tag,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "layers": [layer.to_json() for layer in self.layers],
            "xattr_filter": str(self.xattr_filter),
            "erofs_version": self.erofs_version,
            "boot": self.boot.to_json(),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> ImageInfo:
        """Parse and check an image info; a DocumentError (one line, naming `what`) if bad."""
        f = Fields(parse_object(data, what), what)
        fmt = f.req_int("format")
        if fmt != IMAGE_INFO_FORMAT:
            raise f.error(f"format {fmt} is unknown (this cfsboot reads {IMAGE_INFO_FORMAT})")
        return cls(
            reference=f.req_str("reference"),
            tag=f.opt_str("tag"),
            manifest_digest=_digest(f, "manifest_digest"),
            config_digest=_digest(f, "config_digest"),
            layers=tuple(
                LayerInfo.from_json(Fields(x, f"{what}: layers[{i}]"))
                for i, x in enumerate(f.req_list("layers"))
            ),
            xattr_filter=_xattr_filter(f),
            erofs_version=f.req_int("erofs_version"),
            boot=BootResources.from_json(f.req_obj("boot").obj, f"{what}: boot"),
        )


def _xattr_filter(f: Fields) -> XattrFilter:
    value = f.req_str("xattr_filter")
    try:
        return XattrFilter(value)
    except ValueError:
        raise f.error(f"unknown xattr_filter {value!r}") from None


def load_image_info(repo: Repository, image_hex: str) -> ImageInfo | None:
    """The info of an image cfsboot imported; None when there is none, DocumentError if damaged."""
    data = repo.read_stream(image_stream(image_hex))
    if data is None:
        return None
    return ImageInfo.from_bytes(data, f"the import record of image {image_hex}")


def read_image_info(repo: Repository, image_hex: str) -> ImageInfo | None:
    """As load_image_info, but a damaged record is a warning and None (status, gc, deploy)."""
    try:
        return load_image_info(repo, image_hex)
    except DocumentError as e:
        log.warning("%s", e)
        return None


def read_manifest(repo: Repository, digest: str) -> Manifest | None:
    """An imported image's manifest as the repository keeps it; None if missing or damaged."""
    data = repo.read_stream(manifest_stream(digest))
    if data is None:
        return None
    try:
        return Manifest.parse(data, config_limit=1 << 62, layer_limit=1 << 62)
    except DocumentError as e:
        log.warning("manifest %s in the repository: %s", digest, e)
        return None


def read_config(repo: Repository, digest: str) -> ImageConfig | None:
    """An imported image's config as the repository keeps it; None if missing or damaged."""
    data = repo.read_stream(config_stream(digest))
    if data is None:
        return None
    try:
        return ImageConfig.parse(data, f"config {digest} in the repository")
    except DocumentError as e:
        log.warning("%s", e)
        return None
