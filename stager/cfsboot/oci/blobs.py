"""Where an image's blobs come from, and the image once its manifest is chosen.

A BlobSource hands out the named files of a layout: a directory (`oci:`) or
an uncompressed tarball (`oci-archive:`, `docker-archive:`). Every blob read
from one is checked against its descriptor's digest and size while it is
read. An OpenedImage is what the formats (ocilayout.py, dockerarchive.py)
make of a source: the verified manifest and config, and the layers, ready to
be streamed.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cfsboot.errors import die
from cfsboot.oci.documents import Descriptor, ImageConfig
from cfsboot.oci.streams import ReadAhead, VerifyingReader, decompress

MAX_MANIFEST = 4 << 20  # OCI distribution spec: registries may refuse larger manifests
MAX_CONFIG = 32 << 20
MAX_LAYER = 1 << 42


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
        import tarfile  # only here: it imports shutil, bz2 and lzma (3 ms of a registry import)

        self.where = str(path)
        try:
            self.tf = tarfile.open(path, "r:")
            self.members = {
                m.name.lstrip("./").lstrip("/"): m
                for m in self.tf.getmembers()
                if m.isfile() and not m.issparse()  # no blob is a sparse file
            }
        except FileNotFoundError:
            die(f"{path} does not exist")
        # tarfile's own errors, and what its parsers let out on hostile headers (a GNU
        # sparse 1.0 map without its numbers is a ValueError from unpacking).
        except (tarfile.TarError, EOFError, ValueError, OverflowError, IndexError) as e:
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


def read_blob(src: BlobSource, desc: Descriptor, what: str) -> bytes:
    """A small blob (index, manifest, config) of an OCI layout, verified."""
    opened = src.open(desc.blob_name)
    if opened is None:
        die(f"{what} {desc.digest} is missing from {src.where}")
    f, _ = opened
    with f:
        r = VerifyingReader(f, desc.digest, desc.size, f"{what} {desc.digest}")
        data = r.read(desc.size + 1)
        r.drain()
    return bytes(data) if data else b""


def read_member(src: BlobSource, name: str, limit: int, missing: str) -> bytes:
    """A small file of the layout (index.json, manifest.json, a docker-archive config)."""
    opened = src.open(name)
    if opened is None:
        die(missing)
    f, size = opened
    with f:
        if size > limit:
            die(f"{name} in {src.where} is absurdly large ({size} bytes, limit {limit})")
        return f.read()


@dataclass(frozen=True)
class LayerDesc:
    digest: str | None  # blob digest (None: docker-archive, checked by diff_id only)
    size: int | None
    media_type: str
    diff_id: str
    name: str  # member name inside the source


@dataclass(frozen=True)
class OpenedImage:
    """A selected image: verified manifest and config, layers ready to be streamed."""

    source: BlobSource
    manifest: bytes
    manifest_digest: str
    config: bytes
    config_digest: str
    image_config: ImageConfig
    layers: tuple[LayerDesc, ...]

    def check_arch(self, arch: str | None) -> None:
        """Refuse an image whose config names another architecture than the one asked for."""
        have = self.image_config.architecture
        if arch is not None and have is not None and have != arch:
            die(f"image is for architecture {have}, not {arch}")

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
        ahead = ReadAhead(diff, getattr(raw, "abort", None))  # type: ignore[arg-type]
        return io.BufferedReader(ahead, 1 << 20), blob, diff

    def close(self) -> None:
        self.source.close()
