"""Read files of an imported image without mounting it: its tree plus the repository's objects.

What deployments need from an image: its os-release (entry titles), its
setup-root config (how /etc is mounted), its kargs.d, its kernel+initramfs or
UKI, its /etc and /var. The tree is the boot image's (read back from the
EROFS in the repository, or kept from the import).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cfsboot.composefs.tree import Inode, lookup
from cfsboot.errors import CfsbootError, die
from cfsboot.image.kargsd import parse_kargs_toml
from cfsboot.image.osrelease import OS_RELEASE_PATHS, OsRelease
from cfsboot.image.versions import compare_versions
from cfsboot.linux.arch import rust_arch
from setuproot.config import Config, ConfigError, parse_config, parse_prepare_root
from setuproot.contract import OSTREE_PREPARE_ROOT_CONFIG, SETUP_ROOT_CONFIG

if TYPE_CHECKING:
    from cfsboot.composefs.repository import Repository
    from cfsboot.image.bootscan import BootFile, BootResources, Kernel
    from cfsboot.image.installconfig import InstallConfig

# status reads deployments through this module on every run: the EROFS reader, the
# decompressors and the install config are imported by the functions that need them.
log = logging.getLogger(__name__)


def image_tree(repo: Repository, digest: str) -> Inode:
    """The tree of the boot image `digest` as stored in the repository."""
    from cfsboot.composefs.erofs.reader import read_image

    return read_image(repo.read_object(digest))


def node_bytes(repo: Repository, node: Inode) -> bytes:
    """The content of a regular file of an image tree."""
    if node.content is not None:
        return node.content
    if not node.size:
        return b""
    return repo.read_object(_object_hex(node))


def _object_hex(node: Inode) -> str:
    if node.digest is not None:
        return node.digest.hex()
    assert node.payload is not None
    return os.fsdecode(node.payload).replace("/", "")


def read_file(repo: Repository, tree: Inode, path: str) -> bytes | None:
    """A regular file's content (no symlinks followed), or None if there is none."""
    node = lookup(tree, path.encode())
    if node is None or not node.is_reg():
        return None
    return node_bytes(repo, node)


def os_release(repo: Repository, tree: Inode) -> OsRelease:
    for rel in OS_RELEASE_PATHS:
        data = read_file(repo, tree, rel)
        if data is not None:
            return OsRelease.parse(data.decode("utf-8", errors="replace"))
    return OsRelease()


def setup_root_config(repo: Repository, tree: Inode) -> Config:
    """What the image's initramfs reads: its setup-root-conf.toml, else ostree's prepare-root.conf.

    The same files as setup-root, in the same order (setuproot.config).
    """
    for path, parse in (
        (SETUP_ROOT_CONFIG, parse_config),
        (OSTREE_PREPARE_ROOT_CONFIG, parse_prepare_root),
    ):
        data = read_file(repo, tree, path.lstrip("/"))
        if data is None:
            continue
        where = f"image:{path}"
        try:
            return parse(data.decode("utf-8"), where)
        except ConfigError as e:
            die(f"the image's setup-root config is invalid: {e}")
        except UnicodeDecodeError:  # worded as setup-root words it at boot
            die(f"the image's setup-root config is invalid: {where}: config is not UTF-8")
    return Config()


def bootfile_bytes(repo: Repository, f: BootFile) -> bytes:
    if f.content is not None:
        return f.content
    if f.digest is None:
        return b""
    return repo.read_object(f.digest)


def kargs_d(repo: Repository, boot: BootResources, *, arch: str | None = None) -> list[str]:
    """The image's kargs.d arguments, files in lexical order (bootc's rules)."""
    target = arch or rust_arch()
    out: list[str] = []
    for f in sorted(boot.kargs, key=lambda b: b.path.rsplit("/", 1)[-1]):
        name = f.path.rsplit("/", 1)[-1]
        text = bootfile_bytes(repo, f).decode("utf-8", errors="replace")
        out.extend(parse_kargs_toml(text, name=name, arch=target))
    return out


def newest_kernel(boot: BootResources) -> Kernel | None:
    """The kernel with the highest version that has an initramfs next to it."""
    usable = [k for k in boot.kernels if k.initramfs is not None]
    best: Kernel | None = None
    for k in usable:
        if best is None or compare_versions(k.version, best.version) > 0:
            best = k
    return best


@contextmanager
def local_copy(repo: Repository, f: BootFile) -> Iterator[Path]:
    """A path with the file's content: the object itself, or a temp file for inline content."""
    if f.digest is not None and f.content is None:
        yield repo.object_path(f.digest)
        return
    with tempfile.NamedTemporaryFile(prefix="cfsboot-boot-") as tmp:
        tmp.write(bootfile_bytes(repo, f))
        tmp.flush()
        yield Path(tmp.name)


def install_config(repo: Repository, tree: Inode, *, arch: str | None = None) -> InstallConfig:
    """The image's bootc install configuration (usr/lib/bootc/install/*.toml)."""
    from cfsboot.image import installconfig

    files: dict[str, bytes] = {}
    for directory in installconfig.DIRS:
        node = lookup(tree, directory.encode())
        if node is None or node.children is None:
            continue
        for name, child in node.children.items():
            path = f"{directory}/{os.fsdecode(name)}"
            if child.is_reg() and installconfig.wanted(path):
                files[path] = node_bytes(repo, child)
    return installconfig.merge(files, arch=arch)


def initrd_has(repo: Repository, initramfs: BootFile, path: str) -> bool:
    """Does the initramfs hold `path` (e.g. a systemd generator)? An initramfs that
    cannot be read is said not to (with a warning): callers then take the safe way."""
    import lzma
    import zlib

    import zstandard

    from cfsboot.image import initramfs as initrd

    unreadable = (
        CfsbootError,
        OSError,
        ValueError,
        zstandard.ZstdError,
        zlib.error,
        lzma.LZMAError,
    )
    where = f"the image's {initramfs.path}"
    try:
        with local_copy(repo, initramfs) as local, open(local, "rb") as f:
            return initrd.contains(f, path, where)
    except unreadable as e:
        log.warning("cannot list %s (%s): taken as without %s", where, e, path)
        return False
