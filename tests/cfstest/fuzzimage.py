"""Fuzz targets for what cfsboot reads out of an image or its own repository records.

- `layer`: a layer blob imported end to end (an OCI layout on disk, `import_image`
  without a repository): compression detection and gzip/zstd decoding, the tar
  reader, whiteouts, hardlinks, building the tree and the boot image. Its first
  byte says how the harness wraps the rest: `g` gzip, `z` zstd, anything else as is
  (so hostile compressed streams are fuzzed too). The boot image it builds must
  read back as the tree it was built from.
- `oci-layout`: index.json, the manifest or the config of a layout replaced by the
  fuzzed bytes (first byte `i`, `m`, `c`), digests kept right so the parser is reached.
- `uki`: a UKI (PE/COFF) as found in an image's /boot or /usr/lib/modules.
- `layer-record` and `image-info`: the repository's records of an import, as gc,
  fsck and a re-import read them back (the record's JSON is fuzzed, then compressed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from functools import cache
from pathlib import Path

import zstandard

from cfsboot.boot.uki import boot_digest_of, parse_uki
from cfsboot.composefs.erofs.reader import read_image
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.errors import CfsbootError
from cfsboot.image.importer import import_image
from cfsboot.image.info import ImageInfo, LayerInfo
from cfsboot.image.xattrfilter import XattrFilter
from cfsboot.oci.apply import LayerRecord, RecordEntry, build_tree
from cfsboot.oci.streams import decompress
from cfsboot.oci.tar import Kind
from cfstest.fuzzing import Target
from cfstest.ocibuild import (
    MT_CONFIG,
    MT_LAYER,
    MT_MANIFEST,
    REF_NAME,
    Descriptor,
    Entry,
    Layout,
    canonical_json,
    tar_bytes,
)
from cfstest.pe import make_pe

SHA = "sha256:" + "1" * 64

# --------------------------------------------------------------------------- layer


@cache
def _base_tar() -> bytes:
    return tar_bytes(
        [
            Entry("usr", "dir"),
            Entry("usr/lib", "dir"),
            Entry("usr/lib/os-release", data=b"ID=fuzz\nVERSION_ID=1\n"),
            Entry("usr/lib/big", data=b"b" * 300),
            Entry("etc", "dir"),
            Entry("etc/old", data=b"lower"),
            Entry("opt", "dir"),
            Entry("opt/keep", data=b"k"),
        ]
    )


def _diff_id(blob: bytes) -> str:
    """The digest of the tar inside `blob` (cfsboot's own decoder: only to get past the check)."""
    h = hashlib.sha256()
    try:
        with decompress(io.BytesIO(blob)) as stream:
            total = 0
            while chunk := stream.read(1 << 20):
                h.update(chunk)
                total += len(chunk)
                if total > 1 << 28:  # a bomb: the import stops it the same way, or not at all
                    break
    except CfsbootError:
        pass  # the import fails on the same bytes, before comparing the digest
    return "sha256:" + h.hexdigest()


def _layer_blob(data: bytes) -> bytes:
    mode, body = data[:1], data[1:]
    if mode == b"g":
        return gzip.compress(body, compresslevel=1, mtime=0)
    if mode == b"z":
        return zstandard.ZstdCompressor(level=1).compress(body)
    return body


def _layer(data: bytes, tmp: Path) -> None:
    out = Layout(tmp / "img")
    base = _base_tar()
    good = out.add_blob(base, MT_LAYER)
    good = Descriptor(
        MT_LAYER, good.digest, good.size, "sha256:" + hashlib.sha256(base).hexdigest()
    )
    blob = _layer_blob(data)
    bad = out.add_blob(blob, MT_LAYER)
    out.add_image([good, Descriptor(MT_LAYER, bad.digest, bad.size, _diff_id(blob))])
    result = import_image(f"oci:{tmp}/img", None, xattrs=XattrFilter.KEEP_USER)
    # The boot image reads back as a tree that writes the same image (nothing was lost).
    image = build_image(result.tree, min_version=1)
    assert build_image(read_image(image), min_version=1) == image


def _layer_seeds() -> tuple[bytes, ...]:
    hostile = tar_bytes(
        [
            Entry("etc/.wh.old", data=b""),
            Entry("opt/.wh..wh..opq", data=b""),
            Entry("opt/new", data=b"n" * 100),
            Entry("usr/lib/h", kind="hardlink", linkname="usr/lib/big"),
            Entry("usr/lib/s", kind="symlink", linkname="../../etc/passwd"),
            Entry("usr/" + "n" * 150, data=b"long", xattrs={"user.x": b"1"}),
            Entry("usr/" + "g" * 120, data=b"gnu", gnu_longname=True),
            Entry("etc/d", "dir", mode=0o700),
            Entry("etc/d/f", data=b"x" * 70, mode=0o4755),
            Entry("usr/.wh..wh.plnk", data=b""),
        ]
    )
    plain = tar_bytes([Entry("a", data=b"hello"), Entry("b", "dir")])
    return (
        b"r" + hostile,
        b"g" + hostile,
        b"z" + plain,
        b"r" + gzip.compress(plain, mtime=0) + gzip.compress(b"", mtime=0) + b"\0" * 8,
        b"r"
        + zstandard.ZstdCompressor().compress(plain[:512])
        + zstandard.ZstdCompressor().compress(plain[512:]),
    )


# --------------------------------------------------------------------------- OCI layout


@cache
def _layout_docs() -> tuple[bytes, bytes, bytes, bytes]:
    """(layer, config, manifest, index.json) of a good one-layer layout."""
    base = _base_tar()
    layer = {"mediaType": MT_LAYER, "digest": _sha(base), "size": len(base)}
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"containers.bootc": "1"}},
            "rootfs": {"type": "layers", "diff_ids": [_sha(base)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": _sha(config), "size": len(config)},
            "layers": [layer],
        }
    )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MT_MANIFEST,
                    "digest": _sha(manifest),
                    "size": len(manifest),
                    "annotations": {REF_NAME: "latest"},
                    "platform": {"architecture": "amd64", "os": "linux"},
                },
            ],
        }
    )
    return base, config, manifest, index


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _oci_layout(data: bytes, tmp: Path) -> None:
    which, doc = data[:1], data[1:]
    base, config, manifest, index = _layout_docs()
    if which == b"c":
        config = doc
        manifest = manifest.replace(_sha(_layout_docs()[1]).encode(), _sha(doc).encode())
        manifest = manifest.replace(b'"size":%d' % len(_layout_docs()[1]), b'"size":%d' % len(doc))
    elif which == b"m":
        manifest = doc
    else:
        index = doc
    if which != b"i":
        index = index.replace(_sha(_layout_docs()[2]).encode(), _sha(manifest).encode())
        index = index.replace(b'"size":%d' % len(_layout_docs()[2]), b'"size":%d' % len(manifest))
    root = tmp / "img"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for blob in (base, config, manifest):
        (blobs / _sha(blob)[7:]).write_bytes(blob)
    (root / "index.json").write_bytes(index)
    import_image(f"oci:{root}", None)


def _oci_layout_seeds() -> tuple[bytes, ...]:
    _base, config, manifest, index = _layout_docs()
    return (b"c" + config, b"m" + manifest, b"i" + index)


# --------------------------------------------------------------------------- UKI


def _uki(data: bytes, _tmp: Path) -> None:
    uki = parse_uki(data, name="boot/EFI/Linux/x.efi")
    uki.os_release().boot_label()
    uki.composefs_kargs()
    boot_digest_of(data, uki)


def _uki_seeds() -> tuple[bytes, ...]:
    osrel = b'NAME="Debian"\nID=debian\nVERSION_ID=13\nPRETTY_NAME="Debian 13"\n'
    cmdline = b"composefs=" + b"a" * 64 + b" rw quiet\0"
    return (
        make_pe(
            [
                (b".osrel", osrel),
                (b".cmdline", cmdline),
                (b".uname", b"6.12.0\0"),
                (b".linux", b"MZkernel" * 8),
                (b".initrd", b"070701" * 10),
            ],
            pad_raw=0x40,
        ),
        make_pe(
            [(b".linux", b"k"), (b".profile", b"ID=1"), (b".cmdline", b"composefs.digest=x")],
            opt_magic=0x10B,
            pad_raw=0x20,
        ),
    )


# --------------------------------------------------------------------------- repository records


def _layer_record(data: bytes, _tmp: Path) -> None:
    record = LayerRecord.from_bytes(zstandard.ZstdCompressor(level=1).compress(data))
    record.objects(), record.content_size()
    build_image(build_tree([record]), min_version=1)


def _record_seeds() -> tuple[bytes, ...]:
    record = LayerRecord(
        SHA,
        "sha256",
        [
            RecordEntry(Kind.DIR, b"usr", mode=0o755, mtime=1700000000),
            RecordEntry(Kind.FILE, b"usr/a", mode=0o644, size=5, content=b"hello"),
            RecordEntry(Kind.FILE, b"usr/big", mode=0o644, size=4096, digest="ab" * 32),
            RecordEntry(Kind.HARDLINK, b"usr/h", link=b"usr/a"),
            RecordEntry(Kind.SYMLINK, b"usr/s", link=b"a", xattrs={b"user.x": b"\xff"}),
            RecordEntry(Kind.CHAR, b"usr/c", rdev=259),
            RecordEntry(Kind.WHITEOUT, b"etc/x"),
            RecordEntry(Kind.OPAQUE, b"opt"),
        ],
    )
    return (zstandard.ZstdDecompressor().decompress(record.to_bytes()),)


def _image_info(data: bytes, _tmp: Path) -> None:
    info = ImageInfo.from_bytes(data, "the import record of image x")
    info.to_bytes()


@cache
def _info_seeds() -> tuple[bytes, ...]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Layout(Path(tmp))
        kernel = [
            Entry("usr/lib/modules/6.12.0/vmlinuz", data=b"k" * 100),
            Entry("usr/lib/modules/6.12.0/initramfs.img", data=b"i" * 100),
        ]
        layer = out.add_layer(iter([tar_bytes([Entry("usr/", "dir"), *kernel])]))
        out.add_image([layer])
        result = import_image(f"oci:{tmp}", None)
    info = ImageInfo(
        reference="oci:/srv/img",
        tag="latest",
        manifest_digest=result.manifest_digest,
        config_digest=result.config_digest,
        layers=tuple(LayerInfo(d.digest, d.size, d.media_type, d.diff_id) for d in result.layers),
        xattr_filter=XattrFilter.ALLOWLIST,
        boot=result.boot,
    )
    return (info.to_bytes(), json.dumps(info.to_json()).encode())


def image_targets() -> list[Target]:
    """The targets of this module (cfstest.fuzztargets.all_targets lists them with the rest)."""
    tokens = (b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd", b".wh.", b"../")
    return [
        Target("layer", _layer, (CfsbootError,), _layer_seeds(), tokens),
        Target("oci-layout", _oci_layout, (CfsbootError,), _oci_layout_seeds(), (b"sha256:",)),
        Target("uki", _uki, (CfsbootError,), _uki_seeds(), (b".linux\0\0", b"composefs=")),
        Target("layer-record", _layer_record, (CfsbootError,), _record_seeds()),
        Target("image-info", _image_info, (CfsbootError,), _info_seeds(), (b"null", b"[]")),
    ]
