"""A deployment's `.origin` file: where it came from and how it boots (bootc's INI keys).

    [origin]
    container-image-reference = ostree-unverified-image:registry:quay.io/x/y:tag
    [boot]
    boot_type = bls
    digest = <sha256 hex of vmlinuz then initrd, or of a UKI's .linux then .initrd>
    [image]
    manifest_digest = sha256:<hex>

bootc spells the image reference the way ostree-ext does: `ostree-unverified-image:`
followed by the transport (`registry` for what skopeo calls `docker://`) and the
name. cfsboot writes the same spelling and reads both it and its own `IMGREF`
syntax back. Keys cfsboot does not know are kept when the file is rewritten.
"""

from __future__ import annotations

import configparser
import io
import re
from dataclasses import dataclass, field, replace

from cfsboot.boot.boottype import BootType
from cfsboot.errors import CfsbootError
from cfsboot.oci.documents import is_digest

UNVERIFIED_PREFIX = "ostree-unverified-image:"
# ostree-ext's transport names, for the ones that differ from skopeo's.
_TO_OSTREE = {"docker": "registry"}
_FROM_OSTREE = {v: k for k, v in _TO_OSTREE.items()}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class OriginError(CfsbootError):
    """An .origin file that cannot be read."""


def to_origin_reference(imgref: str) -> str:
    """`docker://q.io/x:1` -> `ostree-unverified-image:registry:q.io/x:1` (bootc's spelling)."""
    transport, sep, rest = imgref.partition(":")
    if not sep:  # no transport to translate: kept as read (a foreign file's), so it reads back
        return imgref
    if transport == "docker":
        if not rest.startswith("//"):  # not skopeo's docker://: kept as read, as above
            return imgref
        rest = rest.removeprefix("//")
    return f"{UNVERIFIED_PREFIX}{_TO_OSTREE.get(transport, transport)}:{rest}"


def from_origin_reference(value: str) -> str:
    """The inverse of to_origin_reference; a plain IMGREF passes through unchanged."""
    for prefix in (UNVERIFIED_PREFIX, "ostree-image-signed:", "ostree-remote-image:"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            if prefix == "ostree-remote-image:":
                value = value.partition(":")[2]  # drop the remote name
            break
    else:
        return value
    transport, _, rest = value.partition(":")
    transport = _FROM_OSTREE.get(transport, transport)
    if transport == "docker":  # `registry:NAME`, or containers-image's `docker://NAME`
        return f"docker://{rest.removeprefix('//')}"
    return f"{transport}:{rest}"


@dataclass(frozen=True)
class Origin:
    image: str  # the IMGREF, in cfsboot's (skopeo's) syntax
    boot_type: BootType = BootType.BLS
    boot_digest: str | None = None
    manifest_digest: str | None = None
    # Other sections and keys, as read, so a rewrite keeps them.
    extra: tuple[tuple[str, str, str], ...] = field(default=())

    def serialise(self) -> str:
        cp = configparser.ConfigParser(interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp["origin"] = {"container-image-reference": to_origin_reference(self.image)}
        cp["boot"] = {"boot_type": str(self.boot_type)}
        if self.boot_digest:
            cp["boot"]["digest"] = self.boot_digest
        if self.manifest_digest:
            cp["image"] = {"manifest_digest": self.manifest_digest}
        for section, key, value in self.extra:
            if not cp.has_section(section):
                cp.add_section(section)
            cp[section][key] = value
        out = io.StringIO()
        cp.write(out, space_around_delimiters=True)
        return out.getvalue().rstrip("\n") + "\n"

    def with_image(self, image: str) -> Origin:
        return replace(self, image=image)

    @classmethod
    def parse(cls, text: str, *, name: str = ".origin") -> Origin:
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            cp.read_string(text, source=name)
        except configparser.Error as e:
            first = str(e).splitlines()[0]
            raise OriginError(f"cannot read {name}: {first}") from None
        ref = cp.get("origin", "container-image-reference", fallback=None)
        if not ref:
            raise OriginError(f"{name} has no [origin] container-image-reference")
        boot_type_s = cp.get("boot", "boot_type", fallback=str(BootType.BLS))
        try:
            boot_type = BootType(boot_type_s.lower())
        except ValueError:
            raise OriginError(f"{name}: unknown [boot] boot_type {boot_type_s!r}") from None
        known = {
            ("origin", "container-image-reference"),
            ("boot", "boot_type"),
            ("boot", "digest"),
            ("image", "manifest_digest"),
        }
        boot_digest = cp.get("boot", "digest", fallback=None) or None
        if boot_digest is not None and not _SHA256_HEX.fullmatch(boot_digest):
            raise OriginError(f"{name}: [boot] digest {boot_digest!r} is not a sha256 hex digest")
        manifest_digest = cp.get("image", "manifest_digest", fallback=None) or None
        if manifest_digest is not None and not is_digest(manifest_digest):
            raise OriginError(
                f"{name}: [image] manifest_digest {manifest_digest!r} is not a digest"
                " (expected sha256:HEX)"
            )
        extra = tuple(
            (section, key, value)
            for section in cp.sections()
            for key, value in cp.items(section)
            if (section, key) not in known
        )
        return cls(
            image=from_origin_reference(ref),
            boot_type=boot_type,
            boot_digest=boot_digest,
            manifest_digest=manifest_digest,
            extra=extra,
        )
