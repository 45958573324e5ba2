"""Write OCI image layouts: deterministic layer tars, config, manifest, index.

Used by the tests (which have no registry) and by vm-tests to pack the test
OS. The tar writer writes what it is given without judging it, so tests can
also craft hostile layers with it.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import json
import os
import stat
import struct
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

BLOCK = 512
# ustar header, see tar.py (POSIX.1-2001 "ustar Interchange Format").
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12s")

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_type(self) -> str:
        return MT_LAYER if self is Compression.NONE else f"{MT_LAYER}+{self.value}"


@dataclass
class Entry:
    """One tar member. `kind` is a tar typeflag name: file dir symlink hardlink char block fifo.

    `raw_name` overrides the path bytes verbatim (for hostile-input tests);
    `gnu_longname` writes long names as GNU 'L' members instead of PAX.
    """

    path: str | bytes
    kind: str = "file"
    mode: int | None = None  # default: 0755 for directories, 0644 otherwise
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes = b""
    linkname: str | bytes = b""
    major: int = 0
    minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime_nsec: int = 0
    source: Path | None = None  # read the data from this file instead of `data`
    size: int | None = None  # claimed size (defaults to the data length)
    gnu_longname: bool = False


_TYPE = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "char": b"3",
    "block": b"4",
    "dir": b"5",
    "fifo": b"6",
}


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else os.fsencode(s)


def _octal(n: int, width: int) -> bytes:
    if 0 <= n < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, n)
    # GNU base-256 for what octal cannot hold
    return bytes([0x80]) + n.to_bytes(width - 1, "big")


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _header(name: bytes, typeflag: bytes, size: int, e: Entry, link: bytes) -> bytes:
    mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
    hdr = _USTAR.pack(
        name[:100],
        _octal(mode & 0o7777, 8),
        _octal(e.uid, 8),
        _octal(e.gid, 8),
        _octal(size, 12),
        _octal(e.mtime, 12),
        b" " * 8,
        typeflag,
        link[:100],
        b"ustar\0",
        b"00",
        b"",
        b"",
        _octal(e.major, 8),
        _octal(e.minor, 8),
        b"",
        b"",
    )
    chk = sum(hdr)
    return hdr[:148] + b"%06o\0 " % chk + hdr[156:]


def _pad(n: int) -> bytes:
    return b"\0" * (-n % BLOCK)


def tar_member_chunks(e: Entry) -> Iterator[bytes]:
    """The blocks of one member (extended headers, header, data, padding)."""
    name = _b(e.path)
    if e.kind == "dir" and not name.endswith(b"/"):
        name += b"/"
    link = _b(e.linkname)
    pax: list[bytes] = []
    pre = b""
    if len(name) > 100:
        if e.gnu_longname:
            data = name + b"\0"
            pre += (
                _header(b"././@LongLink", b"L", len(data), Entry(""), b"") + data + _pad(len(data))
            )
        else:
            pax.append(_pax_record(b"path", name))
    if len(link) > 100:
        pax.append(_pax_record(b"linkpath", link))
    if e.mtime_nsec:
        pax.append(_pax_record(b"mtime", b"%d.%09d" % (e.mtime, e.mtime_nsec)))
    for k in sorted(e.xattrs):
        pax.append(_pax_record(b"SCHILY.xattr." + k.encode(), e.xattrs[k]))
    if pax:
        body = b"".join(pax)
        pre += _header(b"PaxHeaders/" + name[:80], b"x", len(body), Entry(""), b"")
        pre += body + _pad(len(body))
    if e.source is not None:
        size = e.source.stat().st_size if e.size is None else e.size
    else:
        size = len(e.data) if e.size is None else e.size
    if e.kind != "file" and e.size is None:
        size = 0
    yield pre + _header(name, _TYPE.get(e.kind, e.kind.encode()), size, e, link)
    if e.kind != "file":
        return
    if e.source is not None:
        with open(e.source, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield _pad(size)
    else:
        yield e.data + _pad(len(e.data))


def tar_chunks(entries: Iterable[Entry], *, end_marker: bool = True) -> Iterator[bytes]:
    for e in entries:
        yield from tar_member_chunks(e)
    if end_marker:
        yield b"\0" * (2 * BLOCK)


def tar_bytes(entries: Iterable[Entry], *, end_marker: bool = True) -> bytes:
    return b"".join(tar_chunks(entries, end_marker=end_marker))


def entries_from_directory(root: Path, *, nsec: bool = True) -> Iterator[Entry]:
    """Members for a directory tree, sorted by name, hardlinks and xattrs kept.

    mtimes keep their nanoseconds (as PAX records) unless `nsec` is false.
    """
    seen: dict[tuple[int, int], bytes] = {}

    def one(path: Path, rel: bytes) -> Iterator[Entry]:
        st = os.lstat(path)
        xattrs: dict[str, bytes] = {}
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            names = []
        for n in sorted(names):
            xattrs[n] = os.getxattr(path, n, follow_symlinks=False)
        common: dict[str, Any] = {
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": st.st_mtime_ns // 1_000_000_000,
            "mtime_nsec": st.st_mtime_ns % 1_000_000_000 if nsec else 0,
            "xattrs": xattrs,
        }
        if rel and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                yield Entry(rel, "hardlink", linkname=seen[key], **common)
                return
            seen[key] = rel
        m = st.st_mode
        if stat.S_ISDIR(m):
            if rel:
                yield Entry(rel, "dir", **common)
            for name in sorted(os.listdir(os.fsencode(path))):
                yield from one(path / os.fsdecode(name), (rel + b"/" if rel else b"") + name)
        elif stat.S_ISREG(m):
            yield Entry(rel, "file", source=path, **common)
        elif stat.S_ISLNK(m):
            yield Entry(rel, "symlink", linkname=os.readlink(os.fsencode(path)), **common)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            kind = "char" if stat.S_ISCHR(m) else "block"
            maj, mnr = os.major(st.st_rdev), os.minor(st.st_rdev)
            yield Entry(rel, kind, major=maj, minor=mnr, **common)
        elif stat.S_ISFIFO(m):
            yield Entry(rel, "fifo", **common)
        # sockets are not representable in tar: skipped, as tar(1) does

    yield from one(root, b"")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    diff_id: str = ""  # layers only
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform
        if self.annotations:
            d["annotations"] = self.annotations
        return d


class _Sink(io.RawIOBase):
    """A write-only file that hashes what passes through to the blob file."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.f.write(data)
        return len(data)


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.index: list[Descriptor] = []

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_layer(
        self, chunks: Iterable[bytes], compression: Compression = Compression.GZIP
    ) -> Descriptor:
        """Compress a stream of tar chunks into a blob (never all in memory)."""
        blobs = self.path / "blobs" / "sha256"
        diff = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=blobs, delete=False) as tmp:
            sink = _Sink(tmp)
            comp: Any
            if compression is Compression.GZIP:
                comp = gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=6)
            elif compression is Compression.ZSTD:
                # zstandard's stub asks for IO[bytes]; the writer only calls write().
                writer = cast(IO[bytes], sink)
                comp = zstandard.ZstdCompressor(level=3).stream_writer(writer, closefd=False)
            else:
                comp = sink
            for chunk in chunks:
                diff.update(chunk)
                comp.write(chunk)
            if comp is not sink:
                comp.close()
        digest = "sha256:" + sink.sha.hexdigest()
        os.replace(tmp.name, blobs / digest[7:])
        return Descriptor(compression.media_type, digest, sink.size, "sha256:" + diff.hexdigest())

    def add_image(
        self,
        layers: Sequence[Descriptor],
        *,
        arch: str = "amd64",
        os_name: str = "linux",
        config: dict[str, Any] | None = None,
        tag: str | None = "latest",
    ) -> Descriptor:
        """Write config + manifest for these layers; index it under `tag` (None: not indexed)."""
        cfg: dict[str, Any] = {
            "architecture": arch,
            "os": os_name,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d.diff_id for d in layers]},
        }
        cfg.update(config or {})
        cdesc = self.add_blob(canonical_json(cfg), MT_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": cdesc.to_json(),
            "layers": [d.to_json() for d in layers],
        }
        mdesc = self.add_blob(canonical_json(manifest), MT_MANIFEST)
        mdesc = Descriptor(
            mdesc.media_type,
            mdesc.digest,
            mdesc.size,
            platform={"architecture": arch, "os": os_name},
        )
        if tag is not None:
            self.add_to_index(mdesc, tag)
        return mdesc

    def add_image_index(self, manifests: Sequence[Descriptor], tag: str | None) -> Descriptor:
        body = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [m.to_json() for m in manifests],
        }
        desc = self.add_blob(canonical_json(body), MT_INDEX)
        self.add_to_index(desc, tag)
        return desc

    def add_to_index(self, desc: Descriptor, tag: str | None) -> None:
        ann = {REF_NAME: tag} if tag else {}
        self.index.append(
            Descriptor(
                desc.media_type, desc.digest, desc.size, annotations=ann, platform=desc.platform
            )
        )
        self.write_index()

    def write_index(self) -> None:
        body = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [d.to_json() for d in self.index],
        }
        (self.path / "index.json").write_bytes(canonical_json(body))


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_layout(
    path: Path,
    layers: Sequence[Iterable[Entry] | Path],
    *,
    compression: Compression = Compression.GZIP,
    tag: str | None = "latest",
    arch: str = "amd64",
) -> Layout:
    """A one-image layout: each layer is a list of entries or a directory to pack."""
    out = Layout(path)
    descs = []
    for layer in layers:
        members = entries_from_directory(layer) if isinstance(layer, Path) else layer
        descs.append(out.add_layer(tar_chunks(members), compression))
    out.add_image(descs, arch=arch, tag=tag)
    return out


def write_oci_archive(layout: Path, out: Path) -> None:
    """A tar of the layout directory (what `oci-archive:` reads)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(layout.rglob("*")):
            info = tf.gettarinfo(str(p), arcname=str(p.relative_to(layout)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if p.is_file():
                with open(p, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)


def write_docker_archive(
    out: Path, layers: Sequence[Iterable[Entry]], *, repo_tag: str = "test:latest"
) -> None:
    """A `docker save` style tarball: manifest.json, config, uncompressed layer.tar files."""
    files: list[tuple[str, bytes]] = []
    diff_ids, layer_names = [], []
    for layer in layers:
        data = tar_bytes(layer)
        hexd = hashlib.sha256(data).hexdigest()
        diff_ids.append("sha256:" + hexd)
        layer_names.append(f"{hexd}/layer.tar")
        files.append((f"{hexd}/layer.tar", data))
    cfg = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    files.append((cfg_name, cfg))
    manifest = [{"Config": cfg_name, "RepoTags": [repo_tag], "Layers": layer_names}]
    files.append(("manifest.json", canonical_json(manifest)))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


__all__ = [
    "Compression",
    "Descriptor",
    "Entry",
    "Layout",
    "build_layout",
    "canonical_json",
    "entries_from_directory",
    "tar_bytes",
    "tar_chunks",
    "write_docker_archive",
    "write_oci_archive",
]
