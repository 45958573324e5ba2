"""SELinux labels for a boot image, from the image's own policy (composefs-rs's `selabel`).

When the image has a policy (`/etc/selinux/config` names SELINUXTYPE and
`/etc/selinux/TYPE/contexts/files/file_contexts` is a regular file), every
inode of the boot image gets the `security.selinux` label that policy gives
its path and file type (fcontexts.py: libselinux's rules), so the booted
system needs no relabelling and the digest is the one composefs-rs and bootc
compute. Images without a policy are left alone: `transform_for_oci` already
stripped every label.

A hardlinked file whose names get different labels is split into one inode
per label, as composefs-rs does: the first name in sorted depth-first order
keeps the inode, every other name with a different label gets its own copy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cfsboot.composefs.tree import Inode, lookup
from cfsboot.errors import die
from cfsboot.image.fcontexts import (
    SPEC_FILES,
    SUBS_DIST_FILE,
    SUBS_FILE,
    Policy,
    policy_from_files,
)

log = logging.getLogger(__name__)

XATTR = b"security.selinux"
CONFIG = b"etc/selinux/config"
ContentReader = Callable[[Inode], bytes]


def policy_type(config: bytes) -> str | None:
    """SELINUXTYPE from /etc/selinux/config (the first `key=value` line naming it)."""
    for line in config.splitlines():
        key, eq, value = line.partition(b"=")
        if eq and key.strip().lower() == b"selinuxtype":
            name = value.strip().decode("ascii", "replace")
            return name or None
    return None


def _regular(root: Inode, path: bytes) -> Inode | None:
    node = lookup(root, path)
    return node if node is not None and node.is_reg() else None


def inline_only(inode: Inode) -> bytes:
    """A reader for trees whose files are all inline (tests, small images)."""
    if inode.content is None and inode.size:
        die("cannot read an SELinux policy file: its content is not in the tree")
    return inode.content or b""


def load_policy(root: Inode, read: ContentReader = inline_only) -> Policy | None:
    """The image's policy, or None when it has none (a warning says why, if it nearly has one)."""
    cfg = _regular(root, CONFIG)
    if cfg is None:
        return None
    name = policy_type(read(cfg))
    if name is None:
        return None
    if "/" in name or name in (".", ".."):
        log.warning("/etc/selinux/config: SELINUXTYPE=%s is not a policy name; not labelling", name)
        return None
    files = b"etc/selinux/" + name.encode() + b"/contexts/files/"
    main = _regular(root, files + SPEC_FILES[0].encode())
    if main is None:
        log.warning(
            "/etc/selinux/config names the SELinux policy %s, but /%s is missing: not labelling",
            name,
            (files + SPEC_FILES[0].encode()).decode(errors="replace"),
        )
        return None

    def text(fname: str) -> bytes | None:
        node = _regular(root, files + fname.encode())
        return None if node is None else read(node)

    return policy_from_files(text, "/" + files.decode(errors="replace"))


@dataclass
class LabelStats:
    labelled: int = 0
    unlabelled: int = 0  # no rule, or <<none>>
    split_hardlinks: int = 0


def relabel(root: Inode, policy: Policy) -> LabelStats:
    """Give every inode under root the label policy gives its path (see the module doc)."""
    stats = LabelStats()
    first: dict[int, bytes | None] = {}  # a leaf's label at its first name

    def apply(node: Inode, label: bytes | None) -> None:
        xattrs = {k: v for k, v in node.xattrs.items() if k != XATTR}
        if label is not None:
            xattrs[XATTR] = label
            stats.labelled += 1
        else:
            stats.unlabelled += 1
        node.xattrs = xattrs

    apply(root, policy.lookup(b"/", root.mode))
    assert root.children is not None
    stack: list[tuple[bytes, Inode, Iterator[bytes]]] = [(b"", root, iter(sorted(root.children)))]
    while stack:
        prefix, parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        assert parent.children is not None
        child = parent.children[name]
        path = prefix + b"/" + name
        label = policy.lookup(path, child.mode)
        if child.children is not None:
            apply(child, label)
            stack.append((path, child, iter(sorted(child.children))))
            continue
        if id(child) in first:
            if first[id(child)] == label:
                continue  # the same inode, already labelled
            child = copy.copy(child)  # (Inode.__reduce__: a shallow copy)
            parent.children[name] = child
            stats.split_hardlinks += 1
        first[id(child)] = label
        apply(child, label)
    return stats


POLICY_FILE_NAMES = frozenset(n.encode() for n in (*SPEC_FILES, SUBS_FILE, SUBS_DIST_FILE))


def is_policy_file(path: bytes) -> bool:
    """Whether `path` (relative, as in a layer) may be a file `load_policy` reads."""
    if path == CONFIG:
        return True
    parts = path.split(b"/")
    return (
        len(parts) == 6
        and parts[:2] == [b"etc", b"selinux"]
        and parts[3:5] == [b"contexts", b"files"]
        and parts[5] in POLICY_FILE_NAMES
    )
