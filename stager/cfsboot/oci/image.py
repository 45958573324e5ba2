"""Open an image that cfsboot reads natively: `oci:`, `oci-archive:` or `docker-archive:`.

Registries are read by registry.py when registryconf.py allows it; every other
transport goes through skopeo into a temporary OCI layout first
(image/importer.py). Every blob is checked against its digest (and its
declared size) while it is read; see ocilayout.py and dockerarchive.py for
what each format checks.
"""

from __future__ import annotations

from pathlib import Path

from cfsboot.errors import CfsbootError, die
from cfsboot.oci.blobs import BlobSource, DirSource, LayerDesc, OpenedImage, TarSource
from cfsboot.oci.dockerarchive import open_docker_archive
from cfsboot.oci.ocilayout import open_oci
from cfsboot.oci.reference import ImageRef, Transport


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
            return open_docker_archive(src, ref.tag, arch)
        return open_oci(src, ref.tag, arch)
    except CfsbootError:
        src.close()
        raise


__all__ = ["LayerDesc", "OpenedImage", "open_image"]
