"""Image references: `TRANSPORT:DETAILS`, in the syntax skopeo and bootc use."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cfsboot.errors import die


class Transport(enum.StrEnum):
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DOCKER = "docker"
    CONTAINERS_STORAGE = "containers-storage"
    DOCKER_DAEMON = "docker-daemon"
    DIR = "dir"

    @property
    def native(self) -> bool:
        """Read by cfsboot itself; every other transport goes through skopeo."""
        return self in (Transport.OCI, Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE)


@dataclass(frozen=True)
class ImageRef:
    transport: Transport
    path: str  # file or directory for native transports; skopeo's details otherwise
    tag: str | None = None  # oci/oci-archive reference name, docker-archive repo:tag or @N

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            return f"docker:{self.path}"
        suffix = f":{self.tag}" if self.tag is not None else ""
        return f"{self.transport}:{self.path}{suffix}"


_HINT = "use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, docker://NAME, ..."


def parse(text: str) -> ImageRef:
    """Parse an IMGREF; a missing or unknown transport is a one-line error."""
    transport_s, sep, rest = text.partition(":")
    transport = Transport(transport_s) if transport_s in set(Transport) else None
    if not sep or transport is None:
        die(f"image reference {text!r} has no known transport", hint=_HINT)
    if not rest:
        die(f"image reference {text!r} is empty after {transport_s}:", hint=_HINT)
    if transport is Transport.DOCKER:
        if not rest.startswith("//") or len(rest) == 2:
            die(f"image reference {text!r}: expected docker://NAME[:TAG]")
        return ImageRef(transport, rest)
    if transport.native:
        # Like containers/image: the path ends at the first ':' (paths with ':' need a symlink).
        path, sep2, tag = rest.partition(":")
        if not path:
            die(f"image reference {text!r} has an empty path")
        if sep2 and not tag:
            die(f"image reference {text!r} has an empty tag after ':'")
        return ImageRef(transport, path, tag if sep2 else None)
    return ImageRef(transport, rest)
