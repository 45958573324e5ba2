"""The OCI documents cfsboot reads: descriptors, image indexes, manifests and image configs.

Parsed once, where the bytes come in, into frozen dataclasses that keep only
what cfsboot uses; a malformed document is a one-line `DocumentError` (a
CfsbootError) that names it. Field names and rules are the OCI image spec's
(descriptor.md, image-index.md, manifest.md, config.md); Docker's schema 2
manifests and manifest lists use the same fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cfsboot.jsondoc import DocumentError, Fields, parse_object

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
LAYER_TYPES = (
    MT_OCI_LAYER_TAR,
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
)
REF_NAME = "org.opencontainers.image.ref.name"

_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")


def is_digest(value: object) -> bool:
    """Whether `value` is a digest cfsboot can verify: sha256 or sha512, lower-case hex."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def check_digest(digest: object, what: str) -> str:
    """`digest` if is_digest(), else a one-line error naming `what`."""
    if not isinstance(digest, str) or not is_digest(digest):
        raise DocumentError(f"{what} has an invalid digest {digest!r} (expected sha256:HEX)")
    return digest


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str = "linux"  # required by the spec; absent means linux to cfsboot
    variant: str | None = None

    @classmethod
    def parse(cls, f: Fields) -> Platform:
        return cls(f.req_str("architecture"), f.opt_str("os") or "linux", f.opt_str("variant"))

    def runs(self, arch: str) -> bool:
        """Whether a Linux machine of OCI architecture `arch` runs this image."""
        return self.architecture == arch and self.os == "linux"


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: its media type, digest and size (and, in an index, platform)."""

    media_type: str | None
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: object, what: str, limit: int) -> Descriptor:
        """A descriptor of a blob of at most `limit` bytes; `what` names the blob in errors."""
        f = Fields(obj, f"{what} descriptor")
        digest = check_digest(f.obj.get("digest"), what)
        size = f.obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= limit:
            raise DocumentError(f"{what} {digest} has an absurd size {size!r} (limit {limit})")
        platform = f.opt_obj("platform")
        return cls(
            f.opt_str("mediaType"),
            digest,
            size,
            None if platform is None else Platform.parse(platform),
            f.str_map("annotations"),
        )

    @property
    def blob_name(self) -> str:
        """Where an OCI layout keeps the blob: blobs/ALG/HEX."""
        return f"blobs/{self.digest.replace(':', '/', 1)}"

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class Index:
    """An image index (or Docker manifest list): the manifests it points at."""

    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, what: str, limit: int) -> Index:
        f = Fields(parse_object(data, what), what)
        if not isinstance(f.obj.get("manifests"), list):
            raise DocumentError(f"{what} lists no images")
        descs = []
        for d in f.req_list("manifests"):
            if not isinstance(d, dict):
                raise DocumentError(f"malformed descriptor in {what}")
            kind = "image index" if d.get("mediaType") in INDEX_TYPES else "manifest"
            try:
                descs.append(Descriptor.parse(d, kind, limit))
            except DocumentError as e:
                raise DocumentError(f"{what}: {e}") from None
        return cls(tuple(descs))


@dataclass(frozen=True)
class Manifest:
    """An image manifest: the config and the layers, bottom first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, data: bytes, *, config_limit: int, layer_limit: int, what: str = "manifest"
    ) -> Manifest:
        f = Fields(parse_object(data, what), what)
        if not isinstance(f.obj.get("config"), dict):
            raise DocumentError(f"{what} has no config")
        return cls(
            Descriptor.parse(f.obj["config"], "config", config_limit),
            tuple(Descriptor.parse(d, "layer", layer_limit) for d in f.opt_list("layers")),
            f.str_map("annotations"),
        )


@dataclass(frozen=True)
class ImageConfig:
    """What cfsboot reads of an image config: platform, build time, labels, layer diff IDs."""

    architecture: str | None = None
    os: str | None = None
    created: str | None = None  # RFC 3339, as the image builder wrote it
    labels: dict[str, str] = field(default_factory=dict)
    diff_ids: tuple[str, ...] | None = None  # rootfs.diff_ids; None when absent

    @classmethod
    def parse(cls, data: bytes, what: str = "config") -> ImageConfig:
        f = Fields(parse_object(data, what), what)
        settings = f.opt_obj("config")
        rootfs = f.opt_obj("rootfs")
        ids = rootfs.obj.get("diff_ids") if rootfs is not None else None
        return cls(
            architecture=f.opt_str("architecture"),
            os=f.opt_str("os"),
            created=f.opt_str("created"),
            labels=settings.str_map("Labels") if settings is not None else {},
            diff_ids=(
                tuple(check_digest(d, f"{what} diff_id") for d in ids)
                if isinstance(ids, list)
                else None
            ),
        )

    def layer_ids(self, what: str = "config") -> tuple[str, ...]:
        """rootfs.diff_ids, which an image to import must have (`what` names the config)."""
        if self.diff_ids is None:
            raise DocumentError(f"{what} has no rootfs.diff_ids")
        return self.diff_ids
