"""Read one layer into a LayerRecord, or find its record already in the repository.

A layer is streamed once: tar entries become record entries, small files
inline (64 bytes or less, the composefs limit), larger ones as objects
through the ObjectSink. Both of the layer's digests are checked on the way:
the compressed blob's and the uncompressed tar's (the diff_id that names the
record).
"""

from __future__ import annotations

import logging

from cfsboot.composefs.repository import Repository
from cfsboot.composefs.tree import INLINE_MAX
from cfsboot.errors import CfsbootError
from cfsboot.image import selabel
from cfsboot.image.info import layer_stream
from cfsboot.image.objectsink import CHUNK, ObjectSink
from cfsboot.image.progress import Progress
from cfsboot.oci import tar
from cfsboot.oci.apply import LayerRecord, RecordBuilder, RecordEntry, is_aufs_meta, whiteout_of
from cfsboot.oci.blobs import LayerDesc, OpenedImage

log = logging.getLogger(__name__)


def read_layer(
    image: OpenedImage, layer: LayerDesc, sink: ObjectSink, progress: Progress
) -> LayerRecord:
    """Stream one layer blob into a record, verifying both of its digests."""
    stream, blob, diff = image.open_layer(layer)
    blob.on_read = progress.read
    if blob.count:  # what open_layer read to tell the compression (its magic number)
        progress.read(blob.count)
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
        # The stream's thread (streams.ReadAhead) reads the blob too: stopped first.
        stream.close()
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
            digest = sink.store(data, entry.size, keep=selabel.is_policy_file(entry.path))
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


def stored_record(repo: Repository, diff_id: str) -> LayerRecord | None:
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
