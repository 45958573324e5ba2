"""Read OCI image layouts, OCI archives and docker-archive tarballs.

Every blob is checked against its digest (and its declared size) while it is
read; layers are checked twice, the compressed blob against the manifest and
the uncompressed tar against the config's `diff_ids`, because the diff_id is
what names a layer record in the repository.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from cfsboot.errors import CfsbootError, die
from cfsboot.linux.arch import oci_arch
from cfsboot.oci.reference import ImageRef, Transport

MAX_MANIFEST = 4 << 20  # OCI distribution spec: registries may refuse larger manifests
MAX_CONFIG = 32 << 20
MAX_LAYER = 1 << 42
MAX_NESTING = 4

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
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


def check_digest(digest: object, what: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        die(f"{what} has an invalid digest {digest!r} (expected sha256:HEX)")
    return digest


class VerifyingReader(io.RawIOBase):
    """Reads a blob, hashing it; at EOF the size and digest must match or it raises."""

    def __init__(self, raw: BinaryIO, digest: str | None, size: int | None, what: str) -> None:
        self.raw = raw
        self.digest = digest
        self.expected_size = size
        self.what = what
        alg = digest.split(":", 1)[0] if digest else "sha256"
        self.hash = hashlib.new(alg)
        self.count = 0
        self.done = False
        self.on_read: Callable[[int], None] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b)
        n = self.raw.readinto(view)  # type: ignore[attr-defined]
        if not n:
            self._finish()
            return 0
        self.hash.update(view[:n])
        self.count += n
        if self.expected_size is not None and self.count > self.expected_size:
            self.done = True
            die(f"{self.what} is larger than its declared {self.expected_size} bytes")
        if self.on_read is not None:
            self.on_read(n)
        return int(n)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.expected_size is not None and self.count > self.expected_size:
            die(f"{self.what} is larger than its declared {self.expected_size} bytes")
        if self.expected_size is not None and self.count != self.expected_size:
            die(
                f"{self.what} is truncated: {self.count} bytes, "
                f"the manifest says {self.expected_size}"
            )
        if self.digest is not None:
            got = f"{self.hash.name}:{self.hash.hexdigest()}"
            if got != self.digest:
                die(f"{self.what} digest mismatch: expected {self.digest}, got {got}")

    def drain(self) -> None:
        """Read to the end so that the digest is checked."""
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


class _Prefixed(io.RawIOBase):
    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self.prefix = prefix
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        return int(self.raw.readinto(b))  # type: ignore[attr-defined]


class _Gunzip(io.RawIOBase):
    """gzip decompression across concatenated members; trailing junk is corruption.

    Output is bounded by the caller's buffer (zlib's max_length): a layer of
    highly compressible data (sparse files, zeros) never inflates in memory.
    """

    GZIP_MAGIC = b"\x1f\x8b"

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.d = zlib.decompressobj(31)
        self.pending = b""  # compressed input not yet given to (or consumed by) zlib
        self.eof = False

    def readable(self) -> bool:
        return True

    def _more(self) -> bool:
        chunk = self.raw.read(1 << 18)
        self.pending += chunk
        return bool(chunk)

    def _next_member(self) -> bool:
        """After a member's end: start the next one; False at the end of the blob."""
        while len(self.pending) < len(self.GZIP_MAGIC) and self._more():
            pass
        if not self.pending:
            return False
        if self.pending.startswith(self.GZIP_MAGIC):
            self.d = zlib.decompressobj(31)
            return True
        if self.pending.strip(b"\0"):
            die("corrupt layer: data after the gzip stream")
        self.pending = b""  # zero padding after the last member (some tools write it)
        return self._more() and self._next_member()

    def readinto(self, b: Any) -> int:
        want = len(b)
        while not self.eof and want:
            if self.d.eof and not self._next_member():
                self.eof = True
                break
            if not self.pending and not self._more():
                die("corrupt layer: gzip stream is truncated")
            try:
                out = self.d.decompress(self.pending, want)
            except zlib.error as e:
                die(f"corrupt layer: gzip: {e}")
            self.pending = self.d.unused_data if self.d.eof else self.d.unconsumed_tail
            if out:
                n = len(out)
                b[:n] = out
                return n
        return 0


class _Unzstd(io.RawIOBase):
    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        # read_across_frames: zstd:chunked layers are many frames (bootc#2408)
        self.r = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return int(self.r.readinto(b))
        except zstandard.ZstdError as e:
            die(f"corrupt layer: zstd: {e}")


def decompress(raw: BinaryIO) -> BinaryIO:
    """A reader of the tar inside a layer blob, compression detected from its magic."""
    head = raw.read(4)
    pre = _Prefixed(head, raw)
    if head[:2] == b"\x1f\x8b":
        inner: io.RawIOBase = _Gunzip(pre)  # type: ignore[arg-type]
    elif head == b"\x28\xb5\x2f\xfd":
        inner = _Unzstd(pre)  # type: ignore[arg-type]
    else:
        inner = pre
    return io.BufferedReader(inner, buffer_size=1 << 20)


# --- blob sources ---------------------------------------------------------------------------


class BlobSource:
    """Named files of a layout (a directory or an archive)."""

    where: str

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DirSource(BlobSource):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        path = self.root / name
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            return None
        return f, os.fstat(f.fileno()).st_size


class TarSource(BlobSource):
    """Random access into an uncompressed tarball (oci-archive, docker-archive)."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self.tf = tarfile.open(path, "r:")
            self.members = {
                m.name.lstrip("./").lstrip("/"): m for m in self.tf.getmembers() if m.isfile()
            }
        except FileNotFoundError:
            die(f"{path} does not exist")
        except (tarfile.TarError, EOFError) as e:
            die(f"{path} is not an uncompressed tar archive ({e})")

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        m = self.members.get(name)
        if m is None:
            return None
        f = self.tf.extractfile(m)
        assert f is not None
        return f, m.size  # type: ignore[return-value]

    def close(self) -> None:
        self.tf.close()


def _read_blob(src: BlobSource, desc: dict[str, Any], limit: int, what: str) -> bytes:
    digest = check_digest(desc.get("digest"), what)
    size = desc.get("size")
    if not isinstance(size, int) or size < 0 or size > limit:
        die(f"{what} {digest} has an absurd size {size!r} (limit {limit})")
    opened = src.open(f"blobs/{digest.replace(':', '/', 1)}")
    if opened is None:
        die(f"{what} {digest} is missing from {src.where}")
    f, _ = opened
    with f:
        r = VerifyingReader(f, digest, size, f"{what} {digest}")
        data = r.read(size + 1)
        r.drain()
    return bytes(data) if data else b""


def _read_member(src: BlobSource, name: str, limit: int, missing: str) -> bytes:
    """A small file of the layout (index.json, manifest.json, a docker-archive config)."""
    opened = src.open(name)
    if opened is None:
        die(missing)
    f, size = opened
    with f:
        if size > limit:
            die(f"{name} in {src.where} is absurdly large ({size} bytes, limit {limit})")
        return f.read()


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        die(f"{what} is not valid JSON ({e})")
    if not isinstance(obj, dict):
        die(f"{what} is not a JSON object")
    return obj


@dataclass(frozen=True)
class LayerDesc:
    digest: str | None  # blob digest (None: docker-archive, checked by diff_id only)
    size: int | None
    media_type: str
    diff_id: str
    name: str  # member name inside the source


@dataclass
class OpenedImage:
    """A selected image: verified manifest and config, layers ready to be streamed."""

    source: BlobSource
    manifest: bytes
    manifest_digest: str
    config: bytes
    config_digest: str
    layers: list[LayerDesc]

    @property
    def config_json(self) -> dict[str, Any]:
        return _json(self.config, "config")

    def open_layer(self, layer: LayerDesc) -> tuple[BinaryIO, VerifyingReader, VerifyingReader]:
        """(tar stream, blob verifier, diff_id verifier); drain both verifiers at the end."""
        opened = self.source.open(layer.name)
        what = f"layer {layer.digest or layer.diff_id}"
        if opened is None:
            die(f"{what} is missing from {self.source.where}")
        raw, _ = opened
        blob = VerifyingReader(raw, layer.digest, layer.size, what)
        tar = decompress(blob)  # type: ignore[arg-type]
        diff = VerifyingReader(tar, layer.diff_id, None, f"{what} (uncompressed, diff_id)")
        return io.BufferedReader(diff, 1 << 20), blob, diff

    def close(self) -> None:
        self.source.close()


def _platform_ok(desc: dict[str, Any], arch: str) -> bool:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return True
    return p.get("architecture") == arch and p.get("os", "linux") == "linux"


def _pick(
    src: BlobSource, descs: list[dict[str, Any]], arch: str | None, depth: int
) -> dict[str, Any]:
    if depth > MAX_NESTING:
        die(f"image indexes nested too deeply in {src.where}")
    flat: list[dict[str, Any]] = []
    for d in descs:
        if not isinstance(d, dict):
            die(f"malformed descriptor in an index of {src.where}")
        if d.get("mediaType") in INDEX_TYPES:
            nested = _json(_read_blob(src, d, MAX_MANIFEST, "image index"), "image index")
            sub = nested.get("manifests")
            if not isinstance(sub, list):
                die(f"image index {d.get('digest')} has no manifests")
            flat.append(_pick(src, sub, arch or oci_arch(), depth + 1))
        else:
            flat.append(d)
    if len(flat) == 1 and (arch is None or _platform_ok(flat[0], arch)):
        return flat[0]
    want = arch or oci_arch()
    match = [d for d in flat if isinstance(d.get("platform"), dict) and _platform_ok(d, want)]
    if not match:
        have = sorted(
            {
                str(d["platform"].get("architecture"))
                for d in flat
                if isinstance(d.get("platform"), dict)
            }
        )
        die(
            f"no image for architecture {want} in {src.where}"
            + (f" (available: {', '.join(have)})" if have else ""),
            hint="pick one with --arch" if have else None,
        )
    return match[0]


def _open_oci(src: BlobSource, tag: str | None, arch: str | None) -> OpenedImage:
    data = _read_member(
        src, "index.json", MAX_MANIFEST, f"{src.where} is not an OCI image layout (no index.json)"
    )
    index = _json(data, f"index.json in {src.where}")
    descs = index.get("manifests")
    if not isinstance(descs, list) or not descs:
        die(f"index.json in {src.where} lists no images")
    if tag is not None:
        descs = [
            d
            for d in descs
            if isinstance(d, dict) and d.get("annotations", {}).get(REF_NAME) == tag
        ]
        if not descs:
            die(f"no image tagged {tag!r} in {src.where}")
    else:
        tags = {d.get("annotations", {}).get(REF_NAME) for d in descs if isinstance(d, dict)}
        if len(tags - {None}) > 1:
            die(f"{src.where} holds several images", hint="name one as oci:DIR:TAG")
    desc = _pick(src, descs, arch, 0)
    if desc.get("mediaType", MT_OCI_MANIFEST) not in MANIFEST_TYPES:
        die(f"unsupported manifest media type {desc.get('mediaType')!r}")
    manifest = _read_blob(src, desc, MAX_MANIFEST, "manifest")
    m = _json(manifest, "manifest")
    cdesc = m.get("config")
    if not isinstance(cdesc, dict):
        die("manifest has no config")
    config = _read_blob(src, cdesc, MAX_CONFIG, "config")
    diff_ids = _diff_ids(config)
    ldescs = m.get("layers")
    if not isinstance(ldescs, list) or len(ldescs) != len(diff_ids):
        die("manifest layers do not match the config's rootfs.diff_ids")
    layers = []
    for ld, diff_id in zip(ldescs, diff_ids, strict=True):
        if not isinstance(ld, dict):
            die("malformed layer descriptor in the manifest")
        digest = check_digest(ld.get("digest"), "layer")
        lsize = ld.get("size")
        if not isinstance(lsize, int) or lsize < 0 or lsize > MAX_LAYER:
            die(f"layer {digest} has an absurd size {lsize!r}")
        mt = ld.get("mediaType", "")
        if mt not in LAYER_TYPES:
            die(f"layer {digest} has unsupported media type {mt!r}")
        name = f"blobs/{digest.replace(':', '/', 1)}"
        layers.append(LayerDesc(digest, lsize, mt, diff_id, name))
    image = OpenedImage(
        src, manifest, check_digest(desc["digest"], "manifest"), config, cdesc["digest"], layers
    )
    _check_arch(image, arch)
    return image


def _diff_ids(config: bytes) -> list[str]:
    cfg = _json(config, "config")
    rootfs = cfg.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        die("config has no rootfs.diff_ids")
    return [check_digest(d, "config diff_id") for d in ids]


def _check_arch(image: OpenedImage, arch: str | None) -> None:
    if arch is None:
        return
    have = image.config_json.get("architecture")
    if have is not None and have != arch:
        die(f"image is for architecture {have}, not {arch}")


def _open_docker_archive(src: BlobSource, tag: str | None, arch: str | None) -> OpenedImage:
    data = _read_member(
        src,
        "manifest.json",
        MAX_MANIFEST,
        f"{src.where} is not a docker-archive (no manifest.json)",
    )
    try:
        entries = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        die(f"manifest.json in {src.where} is not valid JSON ({e})")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        die(f"manifest.json in {src.where} lists no images")
    if tag is None:
        if len(entries) > 1:
            die(
                f"{src.where} holds several images", hint="name one as docker-archive:FILE:NAME:TAG"
            )
        entry = entries[0]
    elif tag.startswith("@") and tag[1:].isdigit():
        if int(tag[1:]) >= len(entries):
            die(f"{src.where} has no image {tag}")
        entry = entries[int(tag[1:])]
    else:
        found = [e for e in entries if tag in (e.get("RepoTags") or [])]
        if not found:
            die(f"no image tagged {tag!r} in {src.where}")
        entry = found[0]
    cfg_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layer_names, list):
        die(f"manifest.json in {src.where} is malformed")
    config = _read_member(
        src, cfg_name, MAX_CONFIG, f"config {cfg_name} is missing from {src.where}"
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    m = re.search(r"([0-9a-f]{64})(\.json)?$", cfg_name)
    if m and m.group(1) != config_digest[7:]:
        die(f"config {cfg_name} digest mismatch: got {config_digest}")
    diff_ids = _diff_ids(config)
    if len(layer_names) != len(diff_ids):
        die("docker-archive layers do not match the config's rootfs.diff_ids")
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        if not isinstance(name, str):
            die("malformed layer name in manifest.json")
        layers.append(
            LayerDesc(None, None, "application/vnd.oci.image.layer.v1.tar", diff_id, name)
        )
    # docker-archive has no manifest: synthesise a canonical one so the import has a digest.
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 0}
                for d in diff_ids
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    image = OpenedImage(
        src,
        manifest,
        "sha256:" + hashlib.sha256(manifest).hexdigest(),
        config,
        config_digest,
        layers,
    )
    _check_arch(image, arch)
    return image


def open_image(ref: ImageRef, *, arch: str | None = None) -> OpenedImage:
    """Open a natively readable image reference and select the manifest (host arch or `arch`)."""
    path = Path(ref.path)
    src: BlobSource
    if ref.transport is Transport.OCI:
        if not path.is_dir():
            die(f"{path} is not a directory (oci: expects an OCI image layout)")
        src = DirSource(path)
    elif ref.transport in (Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE):
        src = TarSource(path)
    else:
        raise ValueError(f"{ref.transport} is not read natively")
    try:
        if ref.transport is Transport.DOCKER_ARCHIVE:
            return _open_docker_archive(src, ref.tag, arch)
        return _open_oci(src, ref.tag, arch)
    except CfsbootError:
        src.close()
        raise
