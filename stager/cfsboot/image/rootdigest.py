"""The boot image digest of a root directory, as `cfsboot image import` computes it.

`cfsboot container compute-digest` and `ukify` run inside an image build,
where the image is a directory, not yet an OCI image. The tree read from the
directory goes through the same normalisation as an imported image
(transform_for_oci, boot resources collected, transform_for_boot with the
SELinux labelling of an image that has a policy) and the
same EROFS writer, so the digest equals the one `cfsboot image import` gives
for the image built from that directory: hard links are kept as links (as
tar layers carry them), mtimes are read with their nanoseconds (an image
layer made from the directory carries what the directory has).

Read it from a bind mount of the finished stage (`RUN --mount=type=bind,
from=STAGE,target=/target`): the running build's own `/` has files the
image will not (/etc/hosts and /etc/resolv.conf bound in by the build tool).
On `/`, directories of other filesystems (/proc, /sys, /dev) count as empty.
Sockets are left out: a tar layer cannot carry one, and build tools skip them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cfsboot.composefs import fsverity
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.srctree import tree_from_directory
from cfsboot.composefs.tree import Inode, walk
from cfsboot.image.bootscan import BootResources, scan
from cfsboot.image.selabel import ContentReader
from cfsboot.image.transform import XattrFilter, transform_for_boot, transform_for_oci
from setuproot.contract import HashAlg


@dataclass(frozen=True)
class RootDigest:
    digest: str  # hex fs-verity digest of the boot image: the composefs= value
    tree: Inode
    boot: BootResources


def directory_reader(root: Path, tree: Inode) -> ContentReader:
    """File contents for the transforms (the SELinux policy files), read from root."""
    paths = {id(node): path for path, node in walk(tree) if node.is_reg()}

    def read(inode: Inode) -> bytes:
        if inode.content is not None:
            return inode.content
        return (root / os.fsdecode(paths[id(inode)]).lstrip("/")).read_bytes()

    return read


def drop_sockets(tree: Inode) -> None:
    """Remove every socket: a tar layer cannot carry one (build tools skip them)."""
    stack = [tree]
    while stack:
        d = stack.pop()
        assert d.children is not None
        for name, node in list(d.children.items()):
            if stat.S_ISSOCK(node.mode):
                del d.children[name]
            elif node.is_dir():
                stack.append(node)


def compute_digest(
    root: Path, *, alg: HashAlg = HashAlg.SHA512, xattrs: XattrFilter = XattrFilter.ALLOWLIST
) -> RootDigest:
    """The digest `cfsboot image import` gives the image built from root (same algorithm)."""
    tree = tree_from_directory(root, alg=alg, hardlinks=True, one_file_system=True)
    drop_sockets(tree)
    transform_for_oci(tree, xattrs=xattrs)
    boot = scan(tree)
    transform_for_boot(tree, directory_reader(root, tree))
    erofs = build_image(tree, min_version=1)
    return RootDigest(fsverity.digest_bytes(erofs, alg).hex(), tree, boot)
