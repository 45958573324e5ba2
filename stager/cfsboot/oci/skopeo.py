"""Every transport cfsboot does not read itself goes through `skopeo copy` into an OCI layout."""

from __future__ import annotations

from pathlib import Path

from cfsboot.oci.reference import ImageRef, Transport
from cfsboot.run import run

LOCAL_TAG = "image"


def source_spec(ref: ImageRef) -> str:
    """The reference in skopeo's own syntax."""
    if ref.transport is Transport.DOCKER:
        return f"docker:{ref.path}"  # path keeps its leading "//"
    return f"{ref.transport}:{ref.path}"


def copy_to_oci(ref: ImageRef, dest: Path, *, arch: str | None = None) -> ImageRef:
    """Copy `ref` into the OCI layout `dest` and return a reference to the copy.

    skopeo picks the host's architecture from a multi-arch image unless told
    otherwise (--override-arch is a global option, so it precedes `copy`).
    """
    argv = ["skopeo"]
    if arch is not None:
        argv += ["--override-arch", arch]
    argv += [
        "copy",
        "--quiet",
        source_spec(ref),
        f"oci:{dest}:{LOCAL_TAG}",
    ]
    run(argv)
    return ImageRef(Transport.OCI, str(dest), LOCAL_TAG)
