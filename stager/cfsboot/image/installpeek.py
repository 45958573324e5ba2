"""The install configuration of an image not imported yet: its layers streamed for it alone.

`install to-disk` makes the root filesystem before the image is imported into
it, so the root filesystem type an image asks for (`root-fs-type`) is read
first: every layer is decompressed and walked once, keeping only the drop-in
files of cfsboot.image.installconfig, with the OCI whiteouts applied in layer
order. Nothing is stored. A reference of another transport than oci:,
oci-archive: and docker-archive: is fetched for it (by cfsboot's registry client
or skopeo; the import fetches it again: give --filesystem to skip this).
"""

from __future__ import annotations

from cfsboot.image import installconfig
from cfsboot.image.importer import opened
from cfsboot.image.installconfig import InstallConfig
from cfsboot.oci import tar
from cfsboot.oci.apply import is_aufs_meta, whiteout_of
from cfsboot.oci.reference import parse
from cfsboot.oci.tar import Kind

CHUNK = 1 << 20


def _under(path: str, top: str) -> bool:
    return top == "" or path == top or path.startswith(top + "/")


def _drop(files: dict[str, bytes], top: str) -> None:
    for path in [p for p in files if _under(p, top)]:
        del files[path]


def peek(imgref: str, *, arch: str | None = None) -> InstallConfig:
    """The merged install configuration of `imgref`, read from its layers."""
    files: dict[str, bytes] = {}
    with opened(parse(imgref), arch) as image:
        for layer in image.layers:
            stream, blob, _ = image.open_layer(layer)
            try:
                later: dict[str, bytes] = {}
                removed: list[str] = []
                opaque: list[str] = []
                for entry, data in tar.entries(stream):
                    path = entry.path.decode(errors="surrogateescape")
                    if is_aufs_meta(entry.path):
                        continue
                    wo = whiteout_of(entry.path)
                    if wo is not None:
                        target = wo.path.decode(errors="surrogateescape")
                        (opaque if wo.op is Kind.OPAQUE else removed).append(target)
                        continue
                    if entry.kind is Kind.FILE and installconfig.wanted(path):
                        later[path] = data.read(entry.size)
                    elif entry.kind is not Kind.DIR:
                        removed.append(path)  # a non-directory replaces whatever was there
                # Whiteouts apply to the layers below only, then this layer's entries.
                for top in [*removed, *opaque]:
                    _drop(files, top)
                files.update(later)
                while stream.read(CHUNK):
                    pass
                blob.drain()
            finally:
                stream.close()
    return installconfig.merge(files)
