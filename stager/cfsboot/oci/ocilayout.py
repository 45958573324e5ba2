"""The OCI image layout (`oci:DIR[:TAG]`, and `oci-archive:` once its tar is open).

index.json names the images (by the `org.opencontainers.image.ref.name`
annotation); an entry may be an image index, whose manifests are picked from
by platform (the host's architecture, or the one asked for). The manifest,
then the config, are read and verified; the layers are described for
OpenedImage to stream, each checked twice: the compressed blob against the
manifest, the uncompressed tar against the config's `diff_ids`, because the
diff_id is what names a layer record in the repository.
"""

from __future__ import annotations

from collections.abc import Sequence

from cfsboot.errors import die
from cfsboot.linux.arch import oci_arch
from cfsboot.oci.blobs import (
    MAX_CONFIG,
    MAX_LAYER,
    MAX_MANIFEST,
    BlobSource,
    LayerDesc,
    OpenedImage,
    read_blob,
    read_member,
)
from cfsboot.oci.documents import (
    LAYER_TYPES,
    MANIFEST_TYPES,
    MT_OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
)

MAX_NESTING = 4  # image indexes inside image indexes


def _pick(src: BlobSource, descs: Sequence[Descriptor], arch: str | None, depth: int) -> Descriptor:
    """The manifest for `arch` (None: the only one, or the host's) among `descs`."""
    if depth > MAX_NESTING:
        die(f"image indexes nested too deeply in {src.where}")
    flat: list[Descriptor] = []
    for d in descs:
        if d.is_index:
            nested = read_blob(src, d, "image index")
            index = Index.parse(nested, f"image index {d.digest}", MAX_MANIFEST)
            flat.append(_pick(src, index.manifests, arch or oci_arch(), depth + 1))
        else:
            flat.append(d)
    if len(flat) == 1 and (arch is None or flat[0].platform is None or flat[0].platform.runs(arch)):
        return flat[0]
    want = arch or oci_arch()
    match = [d for d in flat if d.platform is not None and d.platform.runs(want)]
    if not match:
        have = sorted({d.platform.architecture for d in flat if d.platform is not None})
        die(
            f"no image for architecture {want} in {src.where}"
            + (f" (available: {', '.join(have)})" if have else ""),
            hint="pick one with --arch" if have else None,
        )
    return match[0]


def _select(src: BlobSource, tag: str | None) -> tuple[Descriptor, ...]:
    """The index.json entries that `tag` names (None: all, which must be one image)."""
    data = read_member(
        src, "index.json", MAX_MANIFEST, f"{src.where} is not an OCI image layout (no index.json)"
    )
    descs = Index.parse(data, f"index.json in {src.where}", MAX_MANIFEST).manifests
    if not descs:
        die(f"index.json in {src.where} lists no images")
    if tag is not None:
        descs = tuple(d for d in descs if d.ref_name == tag)
        if not descs:
            die(f"no image tagged {tag!r} in {src.where}")
    elif len({d.ref_name for d in descs} - {None}) > 1:
        die(f"{src.where} holds several images", hint="name one as oci:DIR:TAG")
    return descs


def open_oci(src: BlobSource, tag: str | None, arch: str | None) -> OpenedImage:
    """The image `tag` (and `arch`) names in an OCI layout, manifest and config verified."""
    desc = _pick(src, _select(src, tag), arch, 0)
    if (desc.media_type or MT_OCI_MANIFEST) not in MANIFEST_TYPES:
        die(f"unsupported manifest media type {desc.media_type!r}")
    manifest = read_blob(src, desc, "manifest")
    where = f"manifest {desc.digest} in {src.where}"
    m = Manifest.parse(manifest, config_limit=MAX_CONFIG, layer_limit=MAX_LAYER, what=where)
    config = read_blob(src, m.config, "config")
    config_where = f"config {m.config.digest} in {src.where}"
    image_config = ImageConfig.parse(config, config_where)
    diff_ids = image_config.layer_ids(config_where)
    if len(m.layers) != len(diff_ids):
        die(f"the layers of {where} do not match its config's rootfs.diff_ids")
    layers = []
    for ld, diff_id in zip(m.layers, diff_ids, strict=True):
        mt = ld.media_type or ""
        if mt not in LAYER_TYPES:
            die(f"layer {ld.digest} has unsupported media type {mt!r}")
        layers.append(LayerDesc(ld.digest, ld.size, mt, diff_id, ld.blob_name))
    image = OpenedImage(
        src, manifest, desc.digest, config, m.config.digest, image_config, tuple(layers)
    )
    image.check_arch(arch)
    return image
