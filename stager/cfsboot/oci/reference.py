"""Image references: `TRANSPORT:DETAILS`, in the syntax skopeo and bootc use.

`registry:NAME` (ostree's and bootc's spelling) means skopeo's `docker://NAME`.
`cfsboot switch` also takes bootc's forms: a bare `NAME[:TAG]` is a registry image,
and `--transport T IMAGE` names the transport apart (`switch_reference`).
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, replace

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
        """Read from files by cfsboot itself; registries by its client or skopeo
        (registryconf.py), every other transport through skopeo."""
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
# bootc's --transport names (ostree-ext's); `registry` is skopeo's `docker://`.
REGISTRY = "registry"
SWITCH_TRANSPORTS = (
    REGISTRY,
    "oci",
    "oci-archive",
    "docker-archive",
    "containers-storage",
    "docker-daemon",
    "dir",
)
# A tag as the OCI distribution spec allows it.
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def parse(text: str) -> ImageRef:
    """Parse an IMGREF; a missing or unknown transport is a one-line error."""
    transport_s, sep, rest = text.partition(":")
    if transport_s == REGISTRY and sep:
        return parse(f"docker://{rest.removeprefix('//')}")
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


def canonical(ref: ImageRef) -> str:
    """The reference as an origin records it: a local path made absolute, so that it
    names the same image from any working directory."""
    if ref.transport.native:
        ref = replace(ref, path=os.path.abspath(ref.path))
    return str(ref)


def switch_reference(target: str, transport: str | None = None) -> ImageRef:
    """`cfsboot switch`'s IMGREF, as bootc reads it.

    With `transport` (bootc's --transport), `target` is the image without one; without,
    `TRANSPORT:DETAILS` as everywhere else, and a bare `NAME[:TAG]` is a registry image.
    """
    if transport is None:
        head, sep, _ = target.partition(":")
        if sep and (head in set(Transport) or head == REGISTRY):
            return parse(target)
        transport = REGISTRY
    elif transport not in SWITCH_TRANSPORTS:
        die(f"unknown transport {transport!r}", hint=f"use one of {', '.join(SWITCH_TRANSPORTS)}")
    elif target.startswith(tuple(f"{t}:" for t in (*Transport, REGISTRY))):
        own = target.partition(":")[0]
        # skopeo's docker:// is the registry transport (bootc's `registry`).
        if (REGISTRY if own == Transport.DOCKER else own) == transport:
            return parse(target)  # the same transport, said twice
        die(
            f"image {target!r} names transport {own} and --transport {transport} names another",
            hint="give the image without its transport, or leave out --transport",
        )
    if transport != REGISTRY:
        return parse(f"{transport}:{target}")
    if not target or target[0] in "/." or any(c.isspace() for c in target):
        die(f"{target!r} is not a registry image name", hint="e.g. registry.example/os:1")
    return parse(f"docker://{target}")


def _name_tag_split(name: str) -> tuple[str, str]:
    """(`[store]`-free name without tag or digest, store prefix) of a registry-style name."""
    prefix = ""
    if name.startswith("["):
        end = name.find("]")
        prefix, name = name[: end + 1], name[end + 1 :]
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name, prefix


def with_tag(ref: ImageRef, tag: str) -> ImageRef:
    """The same image under another tag (`upgrade --tag`): bootc's ImageReference::with_tag.

    A registry, containers-storage or docker-daemon name loses its old tag and any
    digest; an oci or oci-archive reference gets the tag as its reference name.
    """
    if not _TAG_RE.fullmatch(tag):
        die(f"invalid tag {tag!r}", hint="a tag is letters, digits, '_', '.' and '-', at most 128")
    if ref.transport in (Transport.OCI, Transport.OCI_ARCHIVE):
        return replace(ref, tag=tag)
    if ref.transport in (Transport.DOCKER, Transport.CONTAINERS_STORAGE, Transport.DOCKER_DAEMON):
        lead = "//" if ref.transport is Transport.DOCKER else ""
        name, store = _name_tag_split(ref.path.removeprefix(lead))
        return replace(ref, path=f"{lead}{store}{name}:{tag}")
    die(
        f"{ref} has no tags to choose from ({ref.transport} images are not tagged)",
        hint="use cfsboot switch to name another image",
    )
