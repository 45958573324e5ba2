"""Import an OCI image into the repository and build its boot image.

Layer by layer, streaming: regular files larger than 64 bytes become objects
(hashed as they stream, deduplicated), smaller ones stay inline in the layer
record. A layer whose record is already in the repository (and whose objects
are all still there) is not read again. New objects are staged in a
repository batch, so a failure anywhere (bad digest, hostile tar) publishes
nothing; records, manifest, config, image and tag are written after every
layer was verified.

Streams written (names are cfsboot's own, so as not to be mistaken for
composefs-rs splitstreams):
  cfsboot-layer-<diff_id>      LayerRecord (zstd JSON)
  cfsboot-manifest-<digest>    the manifest, as read
  cfsboot-config-<digest>      the config, as read
  cfsboot-image-<image hex>    what `image list/inspect` show (JSON)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cfsboot.composefs import fsverity
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.repository import Repository
from cfsboot.composefs.tree import Inode
from cfsboot.errors import CfsbootError, die
from cfsboot.image.bootscan import BootResources, scan
from cfsboot.image.transform import XattrFilter, transform_for_boot, transform_for_oci
from cfsboot.oci import skopeo, tar
from cfsboot.oci.apply import (
    LayerRecord,
    RecordBuilder,
    RecordEntry,
    build_tree,
    is_aufs_meta,
    whiteout_of,
)
from cfsboot.oci.layout import LayerDesc, OpenedImage, open_image
from cfsboot.oci.reference import ImageRef, Transport, parse
from setuproot.contract import HashAlg

log = logging.getLogger(__name__)

INLINE_MAX = 64  # files of this size or less are inline (composefs format constant)
MEMORY_OBJECT_MAX = 4 << 20  # larger files go through a temp file, not memory
WRITER_THREADS = 2
MAX_IN_FLIGHT = 64 << 20
CHUNK = 1 << 20
IMAGE_INFO_FORMAT = 1


def layer_stream(diff_id: str) -> str:
    return f"cfsboot-layer-{diff_id}"


def image_stream(image_hex: str) -> str:
    return f"cfsboot-image-{image_hex}"


def default_tag(ref: str) -> str:
    """A tag name for an image reference: one path component ('/' and '%' escaped)."""
    return ref.replace("%", "%25").replace("/", "%2F")


def check_tag(name: str) -> None:
    """Refuse a tag name the repository would refuse, before any work is done."""
    for part in name.split("/"):
        if part in ("", ".", "..") or "\0" in part:
            die(f"invalid tag name {name!r}", hint="use names like NAME or DIR/NAME")


class Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, out: TextIO | None = None) -> None:
        self.enabled = enabled
        self.out = out if out is not None else sys.stderr
        self.layer = 0
        self.layers = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._last = 0.0

    def begin_layer(self, index: int, total: int, name: str, size: int | None) -> None:
        self.layer, self.layers = index, total
        self.name, self.size, self.layer_bytes = name, size, 0
        self._draw(force=True)

    def read(self, n: int) -> None:
        self.bytes += n
        self.layer_bytes += n
        self._draw()

    def message(self, text: str) -> None:
        if self.enabled:
            self.out.write(f"\r\x1b[K{text}")
            self.out.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        rate = self.bytes / max(now - self.start, 1e-6) / 1e6
        total = f"/{self.size / 1e6:.1f}" if self.size else ""
        self.message(
            f"layer {self.layer}/{self.layers} {self.name[:19]} "
            f"{self.layer_bytes / 1e6:.1f}{total} MB ({rate:.1f} MB/s)"
        )

    def done(self) -> None:
        if self.enabled:
            self.out.write("\r\x1b[K")
            self.out.flush()


class ObjectSink:
    """Where file contents go: hashed only (compute-id) or staged into a repository."""

    def __init__(self, alg: HashAlg, repo: Repository | None) -> None:
        self.alg = alg
        self.repo = repo
        self.written: set[str] = set()
        self.bytes_written = 0
        self._tmp: int = -1
        # Writing objects is mostly waiting for the filesystem: a few threads do it while
        # the main thread goes on decompressing and hashing. In-flight bytes are bounded.
        self._pool = ThreadPoolExecutor(WRITER_THREADS, "cfsboot-objects") if repo else None
        self._futures: list[Future[None]] = []
        self._cond = threading.Condition()
        self._in_flight = 0

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
        if self._tmp >= 0:
            os.close(self._tmp)
            self._tmp = -1

    def wait(self) -> BaseException | None:
        """Wait for every pending write; the first failure, if any."""
        futures, self._futures = self._futures, []
        first: BaseException | None = None
        for f in futures:
            e = f.exception()
            first = first or e
        return first

    def _write_later(self, hexd: str, buf: bytearray) -> None:
        assert self._pool is not None and self.repo is not None
        store = self.repo.objects
        with self._cond:
            while self._in_flight and self._in_flight + len(buf) > MAX_IN_FLIGHT:
                self._cond.wait()
            self._in_flight += len(buf)

        def write() -> None:
            try:
                store.add_bytes(hexd, memoryview(buf))
            finally:
                with self._cond:
                    self._in_flight -= len(buf)
                    self._cond.notify_all()

        self._futures.append(self._pool.submit(write))

    def store(self, data: tar.EntryData, size: int) -> str:
        h = fsverity.FsVerityHasher(self.alg)
        if self.repo is None:
            while chunk := data.read(CHUNK):
                h.update(chunk)
            return h.hexdigest()
        if size <= MEMORY_OBJECT_MAX:
            buf = bytearray()
            while chunk := data.read(CHUNK):
                buf += chunk
            h.update(buf)
            hexd = h.hexdigest()
            if hexd not in self.written and not self.repo.has_object(hexd):
                self._write_later(hexd, buf)
                self._count(hexd, size)
            return hexd
        fd = self._tempfile()
        os.ftruncate(fd, 0)
        off = 0
        while chunk := data.read(CHUNK):
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                n = os.pwrite(fd, view, off)
                off += n
                view = view[n:]
        raw = h.digest()
        hexd = raw.hex()
        if hexd not in self.written and not self.repo.has_object(hexd):
            self.repo.ensure_object_from_file(fd, digest=raw)
            self._count(hexd, size)
        return hexd

    def _count(self, hexd: str, size: int) -> None:
        self.written.add(hexd)
        self.bytes_written += size

    def _tempfile(self) -> int:
        if self._tmp < 0:
            assert self.repo is not None
            # An unnamed file on the repository's filesystem: copy_file_range/reflink work,
            # and nothing is left behind if we die.
            self._tmp = os.open(self.repo.path, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        return self._tmp


def read_layer(
    image: OpenedImage, layer: LayerDesc, sink: ObjectSink, progress: Progress
) -> LayerRecord:
    """Stream one layer blob into a record, verifying both of its digests."""
    stream, blob, diff = image.open_layer(layer)
    blob.on_read = progress.read
    builder = RecordBuilder(layer.diff_id, str(sink.alg))
    try:
        for entry, data in tar.entries(stream):
            if is_aufs_meta(entry.path):
                continue
            wo = whiteout_of(entry.path)
            if wo is not None:
                builder.add(wo, entry.path)
                continue
            builder.add(_record_entry(entry, data, sink), entry.path)
        while stream.read(CHUNK):  # past the end-of-archive marker: still part of the digest
            pass
        blob.drain()
    except CfsbootError as e:
        # A corrupt blob usually breaks the tar first; name the real cause if it is one.
        try:
            blob.drain()
        except CfsbootError as digest_error:
            raise digest_error from e
        raise
    finally:
        stream.close()
    return builder.record


def _record_entry(entry: tar.TarEntry, data: tar.EntryData, sink: ObjectSink) -> RecordEntry:
    content: bytes | None = None
    digest: str | None = None
    if entry.kind is tar.Kind.FILE:
        if entry.size <= INLINE_MAX:
            content = data.read(INLINE_MAX)
        else:
            digest = sink.store(data, entry.size)
    return RecordEntry(
        op=entry.kind,
        path=entry.path,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        mtime=entry.mtime,
        mtime_nsec=entry.mtime_nsec,
        size=entry.size,
        link=entry.linkname,
        rdev=entry.rdev,
        xattrs=entry.xattrs,
        content=content,
        digest=digest,
    )


def _stored_record(repo: Repository, diff_id: str) -> LayerRecord | None:
    data = repo.read_stream(layer_stream(diff_id))
    if data is None:
        return None
    try:
        record = LayerRecord.from_bytes(data)
    except CfsbootError as e:
        log.warning("ignoring layer record of %s: %s", diff_id, e)
        return None
    if record.diff_id != diff_id or record.algorithm != str(repo.algorithm):
        return None
    missing = [d for d in record.objects() if not repo.has_object(d)]
    if missing:
        log.info("layer %s: %d objects were removed since; reading it again", diff_id, len(missing))
        return None
    return record


@dataclass
class ImportResult:
    image_digest: str
    manifest_digest: str
    config_digest: str
    reference: str
    layers: list[LayerDesc]
    layers_read: int = 0
    layers_reused: int = 0
    objects_written: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    boot: BootResources = field(default_factory=BootResources)
    tree: Inode | None = None  # the boot image's tree (after the transforms)

    def info(self, xattrs: XattrFilter, tag: str | None) -> dict[str, Any]:
        return {
            "format": IMAGE_INFO_FORMAT,
            "reference": self.reference,
            "tag": tag,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "layers": [
                {
                    "digest": ld.digest,
                    "size": ld.size,
                    "media_type": ld.media_type,
                    "diff_id": ld.diff_id,
                }
                for ld in self.layers
            ],
            "xattr_filter": str(xattrs),
            "erofs_version": 1,
            "boot": self.boot.to_json(),
        }


@contextmanager
def opened(
    ref: ImageRef, arch: str | None, *, tls_verify: bool | None = None
) -> Iterator[OpenedImage]:
    """Open a reference natively, or through `skopeo copy` into a temporary OCI layout.

    `tls_verify` is for skopeo's registries (None: skopeo's default and registries.conf).
    """
    with ExitStack() as stack:
        if not ref.transport.native:
            tmp = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="cfsboot-pull-", dir="/var/tmp")
            )
            ref = skopeo.copy_to_oci(ref, Path(tmp), arch=arch, tls_verify=tls_verify)
        image = open_image(ref, arch=arch)
        stack.callback(image.close)
        yield image


def fetch_config(
    reference: str, *, arch: str | None = None, tls_verify: bool | None = None
) -> tuple[str, dict[str, Any]]:
    """The config digest and config of `reference`, without reading any layer."""
    ref = parse(reference)
    if ref.transport.native:
        image = open_image(ref, arch=arch)
        try:
            return image.config_digest, image.config_json
        finally:
            image.close()
    raw = skopeo.inspect_config(ref, arch=arch, tls_verify=tls_verify)
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        die(f"{reference}: skopeo returned an image config that is not a JSON object")
    return "sha256:" + hashlib.sha256(raw).hexdigest(), config


def build_boot_tree(
    records: list[LayerRecord], xattrs: XattrFilter = XattrFilter.ALLOWLIST
) -> tuple[Inode, BootResources]:
    tree = build_tree(records)
    transform_for_oci(tree, xattrs=xattrs)
    boot = scan(tree)
    transform_for_boot(tree)
    return tree, boot


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

    `tls_verify` False lets skopeo reach a registry without TLS checks (see skopeo.copy_argv).
    """
    ref = parse(reference)
    if repo is not None:
        if tag != "":
            check_tag(tag if tag is not None else default_tag(reference))
    alg = repo.algorithm if repo is not None else (algorithm or HashAlg.SHA512)
    progress = progress or Progress(False)
    with ExitStack() as stack:
        stack.callback(progress.done)  # clear the progress line, also before an error message
        if repo is not None:
            stack.enter_context(repo.lock())
        image = stack.enter_context(opened(ref, arch, tls_verify=tls_verify))
        result = ImportResult(
            "", image.manifest_digest, image.config_digest, reference, image.layers
        )
        sink = ObjectSink(alg, repo)
        stack.callback(sink.close)
        records: list[LayerRecord] = []
        new_records: list[LayerRecord] = []
        with repo.batch() if repo is not None else ExitStack():
            try:
                for i, layer in enumerate(image.layers, 1):
                    progress.begin_layer(i, len(image.layers), layer.diff_id[7:], layer.size)
                    record = _stored_record(repo, layer.diff_id) if repo is not None else None
                    if record is None:
                        record = read_layer(image, layer, sink, progress)
                        new_records.append(record)
                        result.layers_read += 1
                    else:
                        result.layers_reused += 1
                    records.append(record)
            finally:
                # Before the batch ends (published or thrown away), no write may be pending.
                write_error = sink.wait()
            if write_error is not None:
                raise write_error
            # Still inside the batch: a layer that cannot be applied publishes nothing either.
            result.bytes_read = progress.bytes
            progress.message("building the boot image")
            tree, result.boot = build_boot_tree(records, xattrs)
            erofs = build_image(tree, min_version=1)
        result.tree = tree
        result.objects_written = len(sink.written)
        result.bytes_written = sink.bytes_written
        if repo is None:
            result.image_digest = fsverity.digest_bytes(erofs, alg).hex()
            return result
        for record in new_records:
            repo.write_stream(layer_stream(record.diff_id), record.to_bytes())
        repo.write_stream(f"cfsboot-manifest-{image.manifest_digest}", image.manifest)
        repo.write_stream(f"cfsboot-config-{image.config_digest}", image.config)
        result.image_digest = repo.write_image(erofs)
        tag_name = tag if tag is not None else default_tag(reference)
        info = result.info(xattrs, tag_name or None)
        repo.write_stream(image_stream(result.image_digest), json.dumps(info, indent=1).encode())
        if tag_name:
            repo.tag(tag_name, result.image_digest)
        return result
    raise AssertionError("unreachable")


def read_image_info(repo: Repository, image_hex: str) -> dict[str, Any] | None:
    data = repo.read_stream(image_stream(image_hex))
    if data is None:
        return None
    try:
        info = json.loads(data)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


__all__ = [
    "ImportResult",
    "Progress",
    "Transport",
    "default_tag",
    "fetch_config",
    "import_image",
    "read_image_info",
]
