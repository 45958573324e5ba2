"""The on-disk and kernel-command-line contract shared by setup-root and the stager.

Everything here is compatible with bootc's composefs backend and composefs-rs:
repository and state paths, the `composefs=` karg and its newer
`composefs.digest=` spelling, and the staged-deployment marker.
"""

from __future__ import annotations

from setuproot.choice import StrEnum
from setuproot.record import record

# Repository layout, relative to the physical root (`/sysroot` in the initramfs).
REPO_DIR = "composefs"
REPO_MODE = 0o700
REPO_META = "meta.json"
OBJECTS_DIR = "objects"
IMAGES_DIR = "images"
STREAMS_DIR = "streams"
REFS_DIR = "refs"
REPO_FORMAT_VERSION = 1

# Deployment state, relative to the physical root.
STATE_DEPLOY_DIR = "state/deploy"
SHARED_VAR_DIR = "state/os/default/var"
# The deployment's var link, relative to state/deploy/ID/.
DEPLOY_VAR_LINK_TARGET = "../../os/default/var"
ORIGIN_SUFFIX = ".origin"

# Runtime files of the booted system.
TRANSIENT_STATE_DIR = "/run/composefs"
STAGED_DEPLOYMENT_MARKER = "/run/composefs/staged-deployment"
SETUP_ROOT_CONFIG = "/usr/lib/composefs/setup-root-conf.toml"
# ostree's, in images made for ostree-era bootc; read only when SETUP_ROOT_CONFIG is absent.
OSTREE_PREPARE_ROOT_CONFIG = "/usr/lib/ostree/prepare-root.conf"
DEFAULT_SYSROOT = "/sysroot"

KARG = "composefs"
KARG_DIGEST = "composefs.digest"


class HashAlg(StrEnum):
    """fs-verity hash algorithms; the value is the name hashlib knows."""

    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def kernel_id(self) -> int:
        """FS_VERITY_HASH_ALG_* from <linux/fsverity.h>."""
        return 1 if self is HashAlg.SHA256 else 2

    @property
    def digest_size(self) -> int:
        return 32 if self is HashAlg.SHA256 else 64

    @property
    def hex_len(self) -> int:
        return 2 * self.digest_size

    @property
    def repo_name(self) -> str:
        """The `algorithm` string in meta.json (composefs-rs spelling)."""
        return f"fsverity-{self.value}-12"

    @classmethod
    def from_hex_len(cls, n: int) -> HashAlg | None:
        return {64: cls.SHA256, 128: cls.SHA512}.get(n)

    @classmethod
    def from_repo_name(cls, name: str) -> HashAlg | None:
        return {alg.repo_name: alg for alg in cls}.get(name)


class KargStyle(StrEnum):
    """How the stager spells the composefs karg it writes (setup-root reads both)."""

    COMPOSEFS = "composefs"  # composefs=[?]HEX, what bootc writes
    DIGEST = "digest"  # composefs.digest=[?]v1-ALG-12:HEX, composefs-rs's self-describing form


class KargError(ValueError):
    """A composefs karg that is present but malformed."""


@record
class ComposefsKarg:
    """What the kernel command line asks setup-root to mount."""

    digest: str  # lowercase hex fs-verity digest of the EROFS image
    algorithm: HashAlg
    insecure: bool  # "?" prefix: fs-verity not required

    def to_karg(self, style: KargStyle = KargStyle.COMPOSEFS) -> str:
        q = "?" if self.insecure else ""
        if style is KargStyle.DIGEST:
            # v1: the EROFS format of mkcomposefs --min-version=1, which cfsboot writes.
            return f"{KARG_DIGEST}={q}v1-{self.algorithm}-12:{self.digest}"
        return f"{KARG}={q}{self.digest}"


_HEX_DIGITS = "0123456789abcdefABCDEF"
# composefs.digest= prefixes (v1 and v2 of the spelling), and their algorithms
_DIGEST_V = {f"v{v}-{alg}-12": HashAlg(alg) for v in (1, 2) for alg in ("sha256", "sha512")}


def _is_hex(text: str) -> bool:
    # (no `re` here: setup-root runs on every boot, and importing re costs start-up time)
    return bool(text) and not text.strip(_HEX_DIGITS)


def split_cmdline(cmdline: str) -> list[str]:
    """Split a kernel command line the way the kernel does: whitespace, with "double quotes"."""
    if '"' not in cmdline:
        return cmdline.split()  # the same whitespace as str.isspace(), in C
    args: list[str] = []
    cur: list[str] = []
    quoted = False
    in_arg = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
            in_arg = True
        elif ch.isspace() and not quoted:
            if in_arg:
                args.append("".join(cur))
                cur = []
                in_arg = False
        else:
            cur.append(ch)
            in_arg = True
    if in_arg:
        args.append("".join(cur))
    return args


def parse_digest_value(value: str, *, arg: str = KARG) -> ComposefsKarg:
    """Parse the value of `composefs=` (`[?]HEX`)."""
    insecure = value.startswith("?")
    hexpart = value[1:] if insecure else value
    alg = HashAlg.from_hex_len(len(hexpart))
    if not _is_hex(hexpart) or alg is None:
        raise KargError(
            f"invalid kernel argument {arg}={value}: expected 64 (sha256) or 128 (sha512)"
            " hex digits, optionally prefixed with '?'"
        )
    return ComposefsKarg(hexpart.lower(), alg, insecure)


def parse_versioned_digest(value: str) -> ComposefsKarg:
    """Parse the value of `composefs.digest=` (`[?]v1-sha512-12:HEX`)."""
    insecure = value.startswith("?")
    body = value[1:] if insecure else value
    prefix, _, hexpart = body.partition(":")
    alg = _DIGEST_V.get(prefix)
    if alg is None or not _is_hex(hexpart):
        raise KargError(
            f"invalid kernel argument {KARG_DIGEST}={value}:"
            " expected [?]v1-sha256-12:HEX or [?]v1-sha512-12:HEX"
        )
    if len(hexpart) != alg.hex_len:
        raise KargError(
            f"invalid kernel argument {KARG_DIGEST}={value}:"
            f" a {alg} digest has {alg.hex_len} hex digits, not {len(hexpart)}"
        )
    return ComposefsKarg(hexpart.lower(), alg, insecure)


def parse_cmdline(cmdline: str) -> list[ComposefsKarg]:
    """All composefs kargs on a command line, `composefs.digest=` ones first, in order.

    An empty list means the command line does not ask for composefs. A malformed
    composefs karg raises KargError naming it.
    """
    versioned: list[ComposefsKarg] = []
    legacy: list[ComposefsKarg] = []
    for arg in split_cmdline(cmdline):
        key, sep, value = arg.partition("=")
        if key == KARG_DIGEST:
            versioned.append(parse_versioned_digest(value))
        elif key == KARG:
            if not sep:
                raise KargError(f"invalid kernel argument {arg}: it needs a digest ({KARG}=HEX)")
            legacy.append(parse_digest_value(value))
    return versioned + legacy


def image_path(digest: str) -> str:
    """Path of a mountable image, relative to the physical root."""
    return f"{REPO_DIR}/{IMAGES_DIR}/{digest}"


def object_relpath(digest: str) -> str:
    """Path of an object relative to objects/ (also the overlay redirect, minus the '/')."""
    return f"{digest[:2]}/{digest[2:]}"


def deploy_dir(digest: str) -> str:
    """A deployment's state directory, relative to the physical root."""
    return f"{STATE_DEPLOY_DIR}/{digest}"
