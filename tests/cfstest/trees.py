"""Hypothesis strategies for random valid composefs trees (`cfsboot.composefs.tree.Inode`).

`trees()` covers what C mkcomposefs accepts from a dumpfile: every file type, whiteouts
(chardev 0/0), inline content up to LCFS_INLINE_CONTENT_MAX, external files (payload
"xx/rest…" and a digest), hardlinks, xattrs that get shared or escaped, metadata that
forces extended inodes, long names, empty, deep and wide directories.

Left out on purpose: xattrs the C reader drops or turns into something else
(`trusted.overlay.whiteout(s)`, `user.overlay.whiteout(s)`), and `trusted.overlay.opaque` /
`user.overlay.opaque`, which C overwrites on the parent of a whiteout (and C 1.0.8 fails
with ERANGE when the old value is long: the clone of the tree loses its xattr accounting).
"""

from __future__ import annotations

import stat

from hypothesis import strategies as st

from cfsboot.composefs.tree import Inode

BASE_MTIME = 1_700_000_000  # most inodes share it, so most inodes are compact

_name_bytes = st.binary(min_size=1, max_size=24).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"~")
)
names = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).map(str.encode),
    _name_bytes,
    st.sampled_from(
        [b"-", b" ", b"a b", b"x=y", b"back\\slash", b"tab\tnl\n", b"\xff\xfe", b"00", b"ff"]
    ),
    st.integers(200, 255).map(lambda n: b"L" * n),
).filter(lambda n: n not in (b".", b".."))

_SELINUX = [
    b"system_u:object_r:usr_t:s0\0",
    b"system_u:object_r:bin_t:s0\0",
    b"unconfined_u:object_r:user_home_t:s0\0",
]
_SHARED_VALUES = [b"", b"x", b"shared-value", b"=\\ \n-", bytes(range(256))]
_ACL = bytes.fromhex("0200000001000700ffffffff04000500ffffffff20000500ffffffff10000700ffffffff")

xattr_keys = st.one_of(
    st.sampled_from(
        [
            b"security.selinux",
            b"security.capability",
            b"security.ima",
            b"user.foo",
            b"user.a=b",
            b"user.with space",
            b"user.overlay.redirect",
            b"trusted.foo",
            b"trusted.overlay.redirect",
            b"trusted.overlay.metacopy",
            b"trusted.overlay.custom",
            b"trusted.overlay.overlay.nested",
            b"system.posix_acl_access",
            b"system.posix_acl_default",
            b"system.nfs4_acl",
            b"lustre.thing",
        ]
    ),
    st.binary(min_size=1, max_size=40).map(lambda b: b"user." + b.replace(b"\0", b"0")),
    st.integers(1, 250).map(lambda n: b"user." + b"k" * n),
)


@st.composite
def xattr_dicts(draw: st.DrawFn) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key in draw(st.lists(xattr_keys, max_size=5, unique=True)):
        if key == b"security.selinux":
            value = draw(st.sampled_from(_SELINUX))
        elif key.startswith(b"system.posix_acl"):
            value = _ACL
        else:
            value = draw(
                st.one_of(
                    st.sampled_from(_SHARED_VALUES),
                    st.binary(max_size=64),
                    st.integers(100, 1500).map(lambda n: b"v" * n),
                )
            )
        out[key] = value
    return out


@st.composite
def _meta(draw: st.DrawFn) -> dict[str, int]:
    extended = draw(st.integers(0, 9)) == 0
    ids = st.integers(0, 0xFFFFFFFF) if extended else st.sampled_from([0, 0, 1000, 65534])
    if draw(st.integers(0, 5)) == 0:
        mtime = draw(
            st.one_of(
                st.integers(0, 2**40),
                st.integers(-(2**31), -1),  # before 1970: C prints them signed
                st.sampled_from([-(2**63), 2**63 - 1, 2**32]),
            )
        )
        nsec = (
            draw(st.sampled_from([0, 1, 999_999_999]))
            if draw(st.booleans())
            else draw(st.integers(0, 999_999_999))
        )
    else:
        mtime, nsec = BASE_MTIME, 0
    return {"uid": draw(ids), "gid": draw(ids), "mtime": mtime, "mtime_nsec": nsec}


_FILE_KINDS = [
    "empty",
    "inline",
    "inline",
    "external",
    "external",
    "symlink",
    "chr",
    "blk",
    "fifo",
    "sock",
    "whiteout",
]


@st.composite
def leaves(draw: st.DrawFn, digest_size: int = 32) -> Inode:
    """A random non-directory inode."""
    kind = draw(st.sampled_from(_FILE_KINDS))
    perm = (
        draw(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o1777]))
        if draw(st.booleans())
        else draw(st.integers(0, 0o7777))
    )
    node = _with_meta(Inode(mode=0), draw(_meta()))
    node.nlink = draw(st.sampled_from([1, 1, 2, 70000])) if draw(st.booleans()) else 1
    node.xattrs = draw(xattr_dicts())
    if kind == "empty":
        node.mode = stat.S_IFREG | perm
    elif kind == "inline":
        node.mode = stat.S_IFREG | perm
        size = draw(
            st.one_of(
                st.integers(1, 64),
                st.integers(65, 5000),
                # Around the EROFS block and half-block, and the maximum.
                st.sampled_from([2047, 2048, 2049, 4095, 4096, 4097, 4999, 5000]),
            )
        )
        node.content = draw(st.binary(min_size=size, max_size=size))
        node.size = size
    elif kind == "external":
        node.mode = stat.S_IFREG | perm
        node.size = draw(st.one_of(st.integers(1, 1 << 20), st.integers(1, 1 << 53)))
        digest = draw(st.binary(min_size=digest_size, max_size=digest_size))
        node.digest = digest if draw(st.integers(0, 7)) else None
        # The object path of the digest, as in real repositories. Its length (65 or 129) also
        # keeps clear of C 1.0.8's redirect over-read (lengths 3 mod 4, see the conformance tests).
        node.payload = (
            f"{digest[:1].hex()}/{digest[1:].hex()}".encode() if draw(st.integers(0, 7)) else None
        )
    elif kind == "symlink":
        node.mode = stat.S_IFLNK | 0o777
        target = draw(
            st.one_of(
                st.binary(min_size=1, max_size=80),
                st.integers(1000, 4095).map(lambda n: b"t" * n),
            ).map(lambda b: b.replace(b"\0", b"0"))
        )
        node.payload = target
        node.size = len(target)
    elif kind in ("chr", "blk"):
        node.mode = (stat.S_IFCHR if kind == "chr" else stat.S_IFBLK) | perm
        node.rdev = draw(st.integers(1, 0xFFFFFFFF))
    elif kind == "whiteout":
        node.mode = stat.S_IFCHR | perm
    elif kind == "fifo":
        node.mode = stat.S_IFIFO | perm
    else:
        node.mode = stat.S_IFSOCK | perm
    return node


def _with_meta(node: Inode, meta: dict[str, int]) -> Inode:
    node.uid, node.gid = meta["uid"], meta["gid"]
    node.mtime, node.mtime_nsec = meta["mtime"], meta["mtime_nsec"]
    return node


def _dir(meta: dict[str, int], perm: int, xattrs: dict[bytes, bytes]) -> Inode:
    node = _with_meta(Inode.directory(perm), meta)
    node.xattrs = xattrs
    return node


@st.composite
def trees(
    draw: st.DrawFn, max_depth: int = 6, max_children: int = 6, digest_size: int = 32
) -> Inode:
    """A random tree C mkcomposefs accepts (digest_size 64 for sha512 trees of our own)."""
    root = _dir(draw(_meta()), draw(st.sampled_from([0o755, 0o555, 0o700])), draw(xattr_dicts()))
    dirs = [root]
    pending = [(root, 0)]
    budget = draw(st.integers(0, 40))  # inodes in all, so examples stay small
    while pending and budget > 0:
        parent, depth = pending.pop()
        assert parent.children is not None
        for name in draw(st.lists(names, max_size=max_children, unique=True)):
            budget -= 1
            if depth < max_depth and draw(st.integers(0, 3)) == 0:
                child = _dir(draw(_meta()), draw(st.integers(0, 0o7777)), draw(xattr_dicts()))
                pending.append((child, depth + 1))
                dirs.append(child)
            else:
                child = draw(leaves(digest_size))
            parent.children[name] = child
    # Occasionally a wide directory whose entries fill several EROFS blocks.
    if draw(st.integers(0, 7)) == 0:
        wide = draw(st.sampled_from(dirs))
        assert wide.children is not None
        prefix = draw(st.sampled_from([b"w", b"wide-entry-", b"W" * 200]))
        for i in range(draw(st.integers(50, 400))):
            wide.children.setdefault(prefix + b"%d" % i, Inode(mode=stat.S_IFREG | 0o644))
    # Occasionally a deep chain of directories.
    if draw(st.integers(0, 7)) == 0:
        node = draw(st.sampled_from(dirs))
        for i in range(draw(st.integers(10, 40))):
            assert node.children is not None
            nxt = Inode.directory(0o755, mtime=BASE_MTIME)
            node = node.children.setdefault(b"deep%d" % i, nxt)
            if not node.is_dir():
                break
            dirs.append(node)
    # Hardlinks: existing non-directories under more names.
    files = [c for d in dirs for c in (d.children or {}).values() if not c.is_dir()]
    if files:
        for _ in range(draw(st.integers(0, 3))):
            target = draw(st.sampled_from(files))
            where = draw(st.sampled_from(dirs))
            assert where.children is not None
            where.children.setdefault(draw(names), target)
    for d in dirs:
        _fix_dir_nlink(d)
    return root


def _fix_dir_nlink(node: Inode) -> None:
    """Directories get the nlink an image gives them: 2 + subdirectories."""
    assert node.children is not None
    node.nlink = 2 + sum(1 for c in node.children.values() if c.is_dir())
