"""Fuzz target for image archives: `docker-archive:` and `oci-archive:` files as imported.

`archive`: the first byte picks the transport (`d` docker-archive, anything else
oci-archive), the rest is the archive file (an uncompressed tar that cfsboot opens
with Python's tarfile for random access, then reads manifest.json or index.json,
the config and the layers from). Imported without a repository.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

from cfsboot.errors import CfsbootError
from cfsboot.image.importer import import_image
from cfstest.fuzzing import Target
from cfstest.ocibuild import (
    Compression,
    Entry,
    build_layout,
    write_docker_archive,
    write_oci_archive,
)

_LAYER = [
    Entry("usr", "dir"),
    Entry("usr/lib", "dir"),
    Entry("usr/lib/os-release", data=b"ID=fuzz\n"),
    Entry("usr/lib/big", data=b"b" * 100),
]


def _archive(data: bytes, tmp: Path) -> None:
    transport = "docker-archive" if data[:1] == b"d" else "oci-archive"
    path = tmp / "image.tar"
    path.write_bytes(data[1:])
    import_image(f"{transport}:{path}", None)


@cache
def _seeds() -> tuple[bytes, ...]:
    with tempfile.TemporaryDirectory() as top:
        tmp = Path(top)
        write_docker_archive(tmp / "docker.tar", [_LAYER])
        build_layout(tmp / "layout", [_LAYER], compression=Compression.NONE)
        write_oci_archive(tmp / "layout", tmp / "oci.tar")
        return (b"d" + (tmp / "docker.tar").read_bytes(), b"o" + (tmp / "oci.tar").read_bytes())


def archive_targets() -> list[Target]:
    """The targets of this module (cfstest.fuzztargets.all_targets lists them with the rest)."""
    return [Target("archive", _archive, (CfsbootError,), _seeds(), (b"manifest.json", b"ustar"))]
