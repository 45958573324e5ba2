"""Import an OCI image into the repository and build its boot image.

The pipeline, top-down: open the image (natively: a layout or archive, or a
registry's blobs streamed by oci/registry.py; else through skopeo into a
temporary OCI layout), read each layer into a record (layerread.py: file
contents into the ObjectSink, objectsink.py) unless the repository already
has the record and its objects, build the image tree from the records,
normalise it and collect its boot files, write the EROFS boot image, and
publish: records, manifest, config, image, its ImageInfo (info.py) and tag.

New objects are staged in a repository batch, so a failure anywhere (bad
digest, hostile tar) publishes nothing; the objects behind the records,
manifest, config and image join the batch once every layer was verified, and
are named once it has published them all with one syncfs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cfsboot.composefs import fsverity
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.repository import Repository
from cfsboot.composefs.tree import Inode
from cfsboot.errors import die
from cfsboot.image import selabel
from cfsboot.image.bootscan import BootResources, scan
from cfsboot.image.info import (
    ImageInfo,
    LayerInfo,
    config_stream,
    image_stream,
    layer_stream,
    manifest_stream,
)
from cfsboot.image.layerread import read_layer, stored_record
from cfsboot.image.objectsink import ObjectSink
from cfsboot.image.progress import Progress
from cfsboot.image.transform import XattrFilter, transform_for_boot, transform_for_oci
from cfsboot.linux import space
from cfsboot.linux.lazylog import getLogger
from cfsboot.oci import registryconf, skopeo
from cfsboot.oci.apply import LayerRecord, build_tree
from cfsboot.oci.blobs import LayerDesc, OpenedImage
from cfsboot.oci.documents import ImageConfig
from cfsboot.oci.image import open_image
from cfsboot.oci.reference import ImageRef, parse
from cfsboot.oci.registry import open_registry
from setuproot.contract import HashAlg

# Where skopeo copies an image to: /run (memory on every systemd system) when what it
# fetches takes at most 1/RUN_SHARE of the space free there, so that an upgrade's few
# layers never reach the disk; else /var/tmp, which is on the disk.
RUN_DIR = "/run"
RUN_SHARE = 4
DISK_TMP_DIR = "/var/tmp"

log = getLogger(__name__)


def default_tag(ref: str) -> str:
    """A tag name for an image reference: one path component ('/' and '%' escaped)."""
    return ref.replace("%", "%25").replace("/", "%2F")


def check_tag(name: str) -> None:
    """Refuse a tag name the repository would refuse, before any work is done."""
    for part in name.split("/"):
        if part in ("", ".", "..") or "\0" in part:
            die(f"invalid tag name {name!r}", hint="use names like NAME or DIR/NAME")


@dataclass(frozen=True)
class ImportResult:
    image_digest: str  # fs-verity digest of the boot image (hex)
    manifest_digest: str
    config_digest: str
    reference: str
    layers: tuple[LayerDesc, ...]
    tree: Inode  # the boot image's tree (after the transforms)
    boot: BootResources
    layers_read: int
    layers_reused: int
    objects_written: int
    bytes_written: int
    bytes_read: int


@contextmanager
def opened(
    ref: ImageRef,
    arch: str | None,
    *,
    tls_verify: bool | None = None,
    skip: Collection[str] = (),
    tmp_dir: str = DISK_TMP_DIR,
) -> Iterator[OpenedImage]:
    """Open a reference natively (a registry's through cfsboot's client when
    registryconf.choose says so), or through `skopeo copy` into a temporary OCI layout.

    `tls_verify` is for skopeo's registries (None: skopeo's default and registries.conf).
    `skip`: layer blobs skopeo need not fetch (skopeo.copy_to_oci): the caller must not
    read them. `tmp_dir`: where the temporary layout goes (pull_dir).
    """
    with ExitStack() as stack:
        image = _open_registry(ref, arch, tls_verify, log_choice=True)
        if image is None:
            if not ref.transport.native:
                import tempfile  # only here: it imports shutil, bz2 and lzma (4 ms, cold)

                tmp = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="cfsboot-pull-", dir=tmp_dir)
                )
                ref = skopeo.copy_to_oci(
                    ref, Path(tmp), arch=arch, tls_verify=tls_verify, skip=skip
                )
            image = open_image(ref, arch=arch)
        stack.callback(image.close)
        yield image


def _native_registry(
    ref: ImageRef, tls_verify: bool | None, *, log_choice: bool = False
) -> registryconf.Choice | None:
    """How cfsboot's own client fetches a registry image; None: skopeo does (or no registry)."""
    if ref.transport.native:
        return None
    choice = registryconf.choose(ref, tls_verify)
    if log_choice:
        log.info("%s: %s", ref, choice.why)
    return choice if choice.native else None


def _open_registry(
    ref: ImageRef, arch: str | None, tls_verify: bool | None, *, log_choice: bool = False
) -> OpenedImage | None:
    """The image opened by cfsboot's registry client; None when skopeo is to fetch it."""
    choice = _native_registry(ref, tls_verify, log_choice=log_choice)
    if choice is None:
        return None
    return open_registry(ref, arch, tls_verify=choice.tls_verify, credentials=choice.credentials)


def fetch_config(
    reference: str, *, arch: str | None = None, tls_verify: bool | None = None
) -> tuple[str, ImageConfig]:
    """The config digest and config of `reference`, without reading any layer."""
    ref = parse(reference)
    if ref.transport.native:
        image = open_image(ref, arch=arch)
        try:
            return image.config_digest, image.image_config
        finally:
            image.close()
    fetched = _open_registry(ref, arch, tls_verify)
    if fetched is not None:
        try:
            return fetched.config_digest, fetched.image_config
        finally:
            fetched.close()
    raw = skopeo.inspect_config(ref, arch=arch, tls_verify=tls_verify)
    config = ImageConfig.parse(raw, f"{reference}: the image config skopeo returned")
    return "sha256:" + hashlib.sha256(raw).hexdigest(), config


@dataclass(frozen=True)
class KnownLayers:
    """What the repository has of an image skopeo is to copy, and what is left to fetch."""

    records: dict[str, LayerRecord]  # by diff ID
    skip: list[str]  # digests of the blobs not to fetch (their records are here)
    fetch_bytes: int | None  # the size of the blobs to fetch; None when not known


def known_layers(
    ref: ImageRef, repo: Repository, arch: str | None, tls_verify: bool | None
) -> KnownLayers:
    """The records the repository has of `ref`'s layers, and those layers' blobs, for an
    image skopeo copies: an upgrade fetches only what changed.

    Asks skopeo for the config and the layer list (no layer travels). Nothing is
    skipped when the two do not pair up, or when the repository has none of the layers.
    An image cfsboot's own client fetches needs none of this: it requests only the
    blobs of the layers the repository lacks (_read_layers looks them up).
    """
    if _native_registry(ref, tls_verify) is not None:
        return KnownLayers({}, [], None)
    raw = skopeo.inspect_config(ref, arch=arch, tls_verify=tls_verify)
    diff_ids = ImageConfig.parse(raw, f"{ref}: the image config skopeo returned").diff_ids or ()
    records = {d: r for d in dict.fromkeys(diff_ids) if (r := stored_record(repo, d)) is not None}
    if not records:
        return KnownLayers({}, [], None)
    blobs = skopeo.inspect_layers(ref, arch=arch, tls_verify=tls_verify)
    if len(blobs) != len(diff_ids):
        return KnownLayers(records, [], None)
    pairs = list(zip(blobs, diff_ids, strict=True))
    sizes = [size for (_, size), d in pairs if d not in records]
    fetch = None if None in sizes else sum(s for s in sizes if s is not None)
    return KnownLayers(records, [digest for (digest, _), d in pairs if d in records], fetch)


def pull_dir(fetch_bytes: int | None) -> str:
    """The directory a skopeo copy of `fetch_bytes` (None: unknown) goes under."""
    if fetch_bytes is None:
        return DISK_TMP_DIR
    try:
        st = os.statvfs(RUN_DIR)
    except OSError:
        return DISK_TMP_DIR
    return RUN_DIR if fetch_bytes * RUN_SHARE <= st.f_bavail * st.f_frsize else DISK_TMP_DIR


@dataclass(frozen=True)
class _Layers:
    records: list[LayerRecord]  # every layer's, bottom first
    new: list[LayerRecord]  # those read now (not found in the repository)
    reused: int


def _read_layers(
    image: OpenedImage,
    repo: Repository | None,
    sink: ObjectSink,
    progress: Progress,
    known: Mapping[str, LayerRecord],
) -> _Layers:
    """Every layer's record: the repository's when it has it (`known`: found already),
    else read from the blob."""
    records: list[LayerRecord] = []
    new: list[LayerRecord] = []
    try:
        for i, layer in enumerate(image.layers, 1):
            progress.begin_layer(i, len(image.layers), layer.diff_id[7:], layer.size)
            record = known.get(layer.diff_id)
            if record is None and repo is not None:
                record = stored_record(repo, layer.diff_id)
            if record is None:
                record = read_layer(image, layer, sink, progress)
                new.append(record)
            records.append(record)
    finally:
        # Before the batch ends (published or thrown away), no write may be pending.
        write_error = sink.wait()
    if write_error is not None:
        raise write_error
    return _Layers(records, new, len(records) - len(new))


def build_boot_tree(
    records: list[LayerRecord],
    xattrs: XattrFilter = XattrFilter.ALLOWLIST,
    read: selabel.ContentReader = selabel.inline_only,
) -> tuple[Inode, BootResources]:
    """The boot image's tree; `read` gives the file contents the transforms need."""
    tree = build_tree(records)
    transform_for_oci(tree, xattrs=xattrs)
    boot = scan(tree)
    transform_for_boot(tree, read)
    return tree, boot


def content_reader(sink: ObjectSink, repo: Repository | None) -> selabel.ContentReader:
    """Contents of the tree's files: inline, kept by the sink, or from the repository."""

    def read(inode: Inode) -> bytes:
        if inode.content is not None or inode.digest is None:
            return inode.content or b""
        hexd = inode.digest.hex()
        kept = sink.kept.get(hexd)
        if kept is not None:
            return kept
        if repo is None:
            die(f"the image's SELinux policy file (object {hexd}) was not read from its layer")
        return repo.read_object(hexd)

    return read


def _stage_streams(
    repo: Repository,
    image: OpenedImage,
    new: list[LayerRecord],
    erofs: bytearray,
    info: ImageInfo,
    image_hex: str,
) -> list[tuple[Path, str]]:
    """Stage (in the import's batch) the objects behind the names an import makes:
    records, manifest, config, boot image and its ImageInfo; the names and their objects."""
    streams = [(layer_stream(r.diff_id), r.to_bytes()) for r in new]
    streams.append((manifest_stream(image.manifest_digest), image.manifest))
    streams.append((config_stream(image.config_digest), image.config))
    links = [(repo.stream_path(name), repo.ensure_object(data)) for name, data in streams]
    links.append((repo.image_path(image_hex), repo.ensure_object(erofs, hexdigest=image_hex)))
    links.append((repo.stream_path(image_stream(image_hex)), repo.ensure_object(info.to_bytes())))
    return links


def _publish(
    repo: Repository, links: list[tuple[Path, str]], tag: str | None, image_hex: str
) -> None:
    """Name what the import's batch published (streams, then the image and its info), then
    tag the image.

    A name that fails (a full disk) takes back the names this call made: no stream or
    image of a half-published import stays (the objects under them go at gc).
    """
    made = [link for link, _ in links if not link.is_symlink()]
    try:
        repo.link_objects(links)
    except OSError:
        for path in reversed(made):
            path.unlink(missing_ok=True)
        raise
    if tag:
        repo.tag(tag, image_hex)


# What a compressed layer's files take as objects: OS images compress about 3:1 with
# gzip or zstd. A layer already in the repository takes nothing.
COMPRESSION_RATIO = 3


def import_needs(image: OpenedImage, repo: Repository) -> list[space.Need]:
    """The space importing `image` into `repo` will take, estimated from the manifest."""
    new = [ld for ld in image.layers if not repo.stream_path(layer_stream(ld.diff_id)).exists()]
    content = sum(
        (ld.size or 0) * (COMPRESSION_RATIO if ld.media_type.endswith(("gzip", "zstd")) else 1)
        for ld in new
    )
    return [
        space.Need(f"the files of {len(new)} new layer{'s' if len(new) != 1 else ''}", content),
        space.Need("the boot image", content // 32),  # EROFS metadata: ~1-2% of the files
    ]


def import_image(
    reference: str,
    repo: Repository | None,
    *,
    algorithm: HashAlg | None = None,
    arch: str | None = None,
    tag: str | None = None,
    xattrs: XattrFilter = XattrFilter.ALLOWLIST,
    progress: Progress | None = None,
    tls_verify: bool | None = None,
) -> ImportResult:
    """Import `reference` into `repo` (None: only compute the boot image digest).

    `tag` None tags the image under default_tag(reference); "" leaves it untagged.
    `tls_verify` False lets skopeo reach a registry without TLS checks (see skopeo.copy_argv).
    """
    ref = parse(reference)
    tag_name = tag if tag is not None else default_tag(reference)
    if repo is not None and tag_name:
        check_tag(tag_name)
    alg = repo.algorithm if repo is not None else (algorithm or HashAlg.SHA512)
    progress = progress or Progress(False)
    try:
        return _import(reference, ref, repo, alg, arch, tag_name, xattrs, progress, tls_verify)
    except OSError as e:
        if repo is None or not space.is_nospace(e):
            raise
        # The batch threw away the objects it staged: the repository is as it was.
        raise space.nospace_error(
            repo.path, action=f"importing {reference}", kept="nothing of it was kept"
        ) from e


def _import(
    reference: str,
    ref: ImageRef,
    repo: Repository | None,
    alg: HashAlg,
    arch: str | None,
    tag_name: str,
    xattrs: XattrFilter,
    progress: Progress,
    tls_verify: bool | None,
) -> ImportResult:
    with ExitStack() as stack:
        stack.callback(progress.done)  # clear the progress line, also before an error message
        if repo is not None:
            stack.enter_context(repo.lock())
        known = KnownLayers({}, [], None)
        if repo is not None and not ref.transport.native:
            known = known_layers(ref, repo, arch, tls_verify)  # under the lock: they stay
        image = stack.enter_context(
            opened(
                ref,
                arch,
                tls_verify=tls_verify,
                skip=known.skip,
                tmp_dir=pull_dir(known.fetch_bytes),
            )
        )
        if repo is not None:
            space.check_paths(
                [(repo.path, n) for n in import_needs(image, repo)],
                action=f"importing {reference}",
            )
        sink = ObjectSink(alg, repo)
        stack.callback(sink.close)
        links: list[tuple[Path, str]] = []
        with repo.batch() if repo is not None else ExitStack():
            layers = _read_layers(image, repo, sink, progress, known.records)
            bytes_read = progress.bytes
            # Still inside the batch: a layer that cannot be applied publishes nothing either.
            progress.message("building the boot image")
            # The staged data goes to the disk meanwhile: the batch's syncfs finds little left.
            sink.write_back()
            tree, boot = build_boot_tree(layers.records, xattrs, content_reader(sink, repo))
            erofs = build_image(tree, min_version=1)
            write_error = sink.wait()
            if write_error is not None:
                raise write_error
            image_digest = fsverity.digest_bytes(erofs, alg).hex()
            if repo is not None:
                info = ImageInfo(
                    reference=reference,
                    tag=tag_name or None,
                    manifest_digest=image.manifest_digest,
                    config_digest=image.config_digest,
                    layers=tuple(
                        LayerInfo(ld.digest, ld.size, ld.media_type, ld.diff_id)
                        for ld in image.layers
                    ),
                    xattr_filter=xattrs,
                    boot=boot,
                )
                # Their objects are published with the files' (one syncfs), named after.
                links = _stage_streams(repo, image, layers.new, erofs, info, image_digest)
        if repo is not None:
            _publish(repo, links, tag_name or None, image_digest)
        return ImportResult(
            image_digest=image_digest,
            manifest_digest=image.manifest_digest,
            config_digest=image.config_digest,
            reference=reference,
            layers=image.layers,
            tree=tree,
            boot=boot,
            layers_read=len(layers.new),
            layers_reused=layers.reused,
            objects_written=len(sink.written),
            bytes_written=sink.bytes_written,
            bytes_read=bytes_read,
        )
    raise AssertionError("unreachable")


__all__ = [
    "ImportResult",
    "Progress",
    "build_boot_tree",
    "check_tag",
    "default_tag",
    "fetch_config",
    "import_image",
]
