"""Normalise an image tree the way composefs-rs does before its digest is taken.

Same OCI image in, same digest out, here and in composefs-rs/bootc:

- transform_for_oci (composefs-rs `FileSystem::transform_for_oci`): `/` takes
  `/usr`'s mode, uid, gid, mtime (sec and nsec) and xattrs; `/run` is emptied
  and takes `/usr`'s mtime (sec and nsec); only allow-listed xattrs are kept
  (`security.capability`, plus `user.*` in keep-user mode).
- transform_for_boot (composefs-boot `transform_for_boot`): after the boot
  entries were collected, `/boot` and `/sysroot` are emptied and their mtime
  seconds (only the seconds, as composefs-rs does) become `/usr`'s; then, when
  the image has an SELinux policy, every inode gets the label it gives
  (`selabel.py`). Without a policy both strip `security.selinux`, which the
  allowlist has already done.
"""

from __future__ import annotations

import logging

from cfsboot.composefs.tree import Inode
from cfsboot.errors import die
from cfsboot.image import selabel
from cfsboot.image.xattrfilter import XattrFilter as XattrFilter  # re-exported

log = logging.getLogger(__name__)

XATTR_ALLOWLIST = (b"security.capability",)
EMPTIED_FOR_BOOT = (b"boot", b"sysroot")


def _usr(root: Inode) -> Inode:
    assert root.children is not None
    usr = root.children.get(b"usr")
    if usr is None or not usr.is_dir():
        die("the image has no /usr directory, so it is not an OS image cfsboot can boot")
    return usr


def _keep(name: bytes, mode: XattrFilter) -> bool:
    return name in XATTR_ALLOWLIST or (mode is XattrFilter.KEEP_USER and name.startswith(b"user."))


def filter_xattrs(root: Inode, mode: XattrFilter) -> None:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue  # a hardlinked leaf is one inode
        seen.add(id(node))
        if node.xattrs:
            node.xattrs = {k: v for k, v in node.xattrs.items() if _keep(k, mode)}
        if node.children:
            stack.extend(node.children.values())


def transform_for_oci(root: Inode, *, xattrs: XattrFilter = XattrFilter.ALLOWLIST) -> None:
    usr = _usr(root)
    root.mode, root.uid, root.gid = usr.mode, usr.uid, usr.gid
    root.mtime, root.mtime_nsec = usr.mtime, usr.mtime_nsec
    root.xattrs = dict(usr.xattrs)
    assert root.children is not None
    run = root.children.get(b"run")
    if run is not None and run.is_dir():
        assert run.children is not None
        run.children.clear()
        run.mtime, run.mtime_nsec = usr.mtime, usr.mtime_nsec
    filter_xattrs(root, xattrs)
    fix_nlink(root)


def transform_for_boot(root: Inode, read: selabel.ContentReader = selabel.inline_only) -> None:
    """Empty /boot and /sysroot, then label from the image's SELinux policy, if any.

    Collect boot entries first (`cfsboot.image.bootscan.scan`); `read` gives the
    content of the policy's files.
    """
    usr = _usr(root)
    assert root.children is not None
    for name in EMPTIED_FOR_BOOT:
        d = root.children.get(name)
        if d is None or not d.is_dir():
            # composefs-rs refuses such images; cfsboot creates the directory so that the
            # booted system has its mount points (setup-root mounts the physical root on /sysroot).
            d = Inode.directory(0o755)
            root.children[name] = d
        assert d.children is not None
        d.children.clear()
        d.mtime = usr.mtime
    policy = selabel.load_policy(root, read)
    if policy is not None:
        stats = selabel.relabel(root, policy)
        log.info(
            "SELinux: %d inodes labelled from %d rules, %d without a label, %d hardlinks split",
            stats.labelled,
            len(policy.rules),
            stats.unlabelled,
            stats.split_hardlinks,
        )
    fix_nlink(root)


def fix_nlink(root: Inode) -> None:
    """nlink as the image will have it: 2 + subdirectories, or the number of names of a leaf."""
    counts: dict[int, int] = {}
    leaves: dict[int, Inode] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        assert d.children is not None
        subdirs = 0
        for child in d.children.values():
            if child.is_dir():
                subdirs += 1
                stack.append(child)
            else:
                counts[id(child)] = counts.get(id(child), 0) + 1
                leaves[id(child)] = child
        d.nlink = 2 + subdirs
    for key, node in leaves.items():
        node.nlink = counts[key]
