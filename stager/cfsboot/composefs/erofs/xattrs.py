"""The xattrs of a composefs EROFS image (lcfs-writer-erofs.c, composefs 1.0.8): which
(name, value) pairs are shared, and how each inode's xattrs are encoded.

Every (name, value) used by more than one inode is stored once after the inode table and
referred to by id; the others are inline after the inode. Names are stored as a prefix
index and a suffix, and each inode's header has a bloom filter of its names (xxh32).
"""

from __future__ import annotations

from collections import Counter
from typing import Final, cast

from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.xxhash import xxh32
from cfsboot.composefs.limits import EXTERNAL_XATTR_MAX, XATTR_NAME_MAX
from cfsboot.composefs.tree import Inode

_U16: Final = 0xFFFF
_ZEROS: Final = bytes(4)
_PACK_XHDR: Final = fmt.XATTR_IBODY_HEADER.pack
_PACK_XENTRY: Final = fmt.XATTR_ENTRY.pack
_METACOPY: Final = fmt.XATTR_METACOPY
_REDIRECT: Final = fmt.XATTR_REDIRECT


def _xattr_index(key: bytes) -> tuple[int, bytes]:
    for prefix, index in fmt.WRITER_XATTR_PREFIXES:
        if key.startswith(prefix):
            return index, key[len(prefix) :]
    return 0, key


def xattr_space(xattrs: dict[bytes, bytes]) -> int:
    """The space C's writer counts for an inode's xattrs (lcfs_node_set_xattr: a 12-byte
    header and 7 + name + value bytes each), compared with limits.EXTERNAL_XATTR_MAX."""
    return 12 + sum([7 + len(k) + len(v) for k, v in xattrs.items()])


class XattrsTooLarge(ValueError):
    """An inode's xattrs take more space than C's writer allows (Linux allows values of up
    to 65536 bytes, XATTR_SIZE_MAX, more than an EROFS entry can even say): build_image
    names the file."""


class XattrCodec:
    """Encoded entries and bloom-filter bits of xattr names, cached: names repeat a lot."""

    def __init__(self) -> None:
        self._names: dict[bytes, tuple[int, bytes, int]] = {}

    def name(self, key: bytes) -> tuple[int, bytes, int]:
        """(index, suffix, filter bit mask) of an xattr name."""
        got = self._names.get(key)
        if got is None:
            if not key or len(key) > XATTR_NAME_MAX:
                raise ValueError(f"invalid xattr name {key!r}")
            index, suffix = _xattr_index(key)
            bit = xxh32(suffix, fmt.XATTR_FILTER_SEED + index) & (fmt.XATTR_FILTER_BITS - 1)
            got = (index, suffix, 1 << bit)
            self._names[key] = got
        return got

    def head(self, key: bytes, value_len: int) -> bytes:
        """The start of an xattr entry: its header and name suffix (the value follows)."""
        index, suffix, _ = self.name(key)
        if value_len > _U16:
            raise XattrsTooLarge(f"xattr {key!r} value longer than {_U16} bytes")
        return _PACK_XENTRY(len(suffix), index, value_len) + suffix

    def entry(self, key: bytes, value: bytes) -> bytes:
        """An xattr entry, padded to 4 bytes."""
        raw = self.head(key, len(value)) + value
        pad = -len(raw) & 3
        return raw + _ZEROS[:pad] if pad else raw


_Items = tuple[tuple[bytes, bytes], ...]
_Pair = tuple[bytes, bytes]
# Stand-ins for an external file's own metacopy and redirect in a template's shared ids.
OWN_METACOPY: Final = -1
OWN_REDIRECT: Final = -2


class Template:
    """How the xattrs of external files with one shape are encoded: a file's are
    `before + digest + middle + payload + after`, its digest only if `digest_inline` and its
    payload only if `payload_inline`; its shared ids are `shared` (offsets in the shared
    blob, or OWN_METACOPY / OWN_REDIRECT for its own metacopy and redirect)."""

    __slots__ = (
        "before", "middle", "after", "digest_inline", "payload_inline", "icount", "shared", "own"
    )  # fmt: skip

    def __init__(
        self,
        before: bytes,
        middle: bytes,
        after: bytes,
        digest_inline: bool,
        payload_inline: bool,
        icount: int,
        shared: list[int],
    ) -> None:
        self.before = before
        self.middle = middle
        self.after = after
        self.digest_inline = digest_inline
        self.payload_inline = payload_inline
        self.icount = icount
        self.shared = shared
        self.own = OWN_METACOPY in shared or OWN_REDIRECT in shared


class XattrPlan:
    """Which (name, value) pairs are shared, and the encoded xattrs of each distinct set.

    The nodes' xattr sets are numbered (`set_ids`): most nodes share their set with many
    others (the same SELinux label), so each set is encoded once (`set_body`,
    `set_icount`, `set_shared`). External files also carry their own metacopy and redirect
    xattrs; those are counted here, and joined to their set's encoding by a `Template`
    per shape (`external()`).
    """

    def __init__(
        self,
        order: list[Inode],
        final_xattrs: dict[int, dict[bytes, bytes]],
        externals: list[Inode],
    ) -> None:
        self.codec = XattrCodec()
        self.set_ids = self._number_sets(order, final_xattrs)
        counts = self._count(externals)
        self.has_acl = any(kv[0] in fmt.ACL_XATTRS for kv in counts)
        self._share(counts)
        self.set_body: list[bytes] = []
        self.set_icount: list[int] = []
        self.set_shared: list[list[int]] = []
        for items in self.sets:
            body, shared = self.body(items)
            self.set_body.append(body)
            self.set_icount.append(len(body) // 4 - 2 if body else 0)
            self.set_shared.append([self.shared_offset[kv] for kv in shared])
        _, _, self.metacopy_bit = self.codec.name(_METACOPY)
        _, _, self.redirect_bit = self.codec.name(_REDIRECT)
        self.templates: dict[int, Template] = {}
        self.last_key = -1
        self.last_template = Template(b"", b"", b"", False, False, 0, [])

    def _number_sets(
        self, order: list[Inode], final_xattrs: dict[int, dict[bytes, bytes]]
    ) -> list[int]:
        """The set number of each node, and `sets` (sorted, escaped items) and `uses`."""
        # Key of a set: the input xattrs as given (escaped later, once per set), or for
        # nodes the overlay rewrite changed, (None, *final items).
        set_of: dict[tuple[object, ...], int] = {(): 0}
        set_ids = [0] * len(order)
        for i, x in enumerate(order):
            xattrs = x.xattrs
            if xattrs:
                key: tuple[object, ...] = tuple(xattrs.items())
                sid = set_of.get(key)
                if sid is None:
                    sid = set_of[key] = len(set_of)
                    if xattr_space(xattrs) > EXTERNAL_XATTR_MAX:
                        raise XattrsTooLarge(f"xattrs of inode {i} take too much space")
                set_ids[i] = sid
        for index, final in final_xattrs.items():
            fkey = (None, *final.items())
            sid = set_of.get(fkey)
            if sid is None:
                sid = set_of[fkey] = len(set_of)
            set_ids[index] = sid
        self.uses = [0] * len(set_of)  # how many nodes have each set
        for sid in set_ids:
            self.uses[sid] += 1
        self.sets: list[list[_Pair]] = []
        for skey in set_of:
            if skey and skey[0] is None:
                items = cast(list[_Pair], list(skey[1:]))
            else:
                items = _escaped_items(cast(_Items, skey))
            self.sets.append(sorted(items))
        return set_ids

    def _count(self, externals: list[Inode]) -> Counter[_Pair]:
        """How many inodes use each (name, value) of the sets; `shared_digests` and
        `shared_payloads`: the digests and payloads of more than one external file."""
        counts: Counter[_Pair] = Counter()
        for sid, items in enumerate(self.sets):
            n = self.uses[sid]
            if n:
                for kv in items:
                    counts[kv] += n
        # The metacopy and redirect values of external files: only they have these names
        # (input `trusted.overlay.*` xattrs are escaped). Only values used more than once
        # matter for sharing.
        seen_digests: set[bytes] = set()
        seen_payloads: set[bytes] = set()
        self.shared_digests: set[bytes] = set()
        self.shared_payloads: set[bytes] = set()
        for x in externals:  # (a value seen before leaves the set's size as it was)
            digest = x.digest or b""
            n = len(seen_digests)
            seen_digests.add(digest)
            if len(seen_digests) == n:
                self.shared_digests.add(digest)
            payload = x.payload
            if payload:
                n = len(seen_payloads)
                seen_payloads.add(payload)
                if len(seen_payloads) == n:
                    self.shared_payloads.add(payload)
        for length in {len(d) for d in seen_digests}:
            _metacopy(bytes(length))  # refuses digests of unknown sizes
        return counts

    def _share(self, counts: Counter[_Pair]) -> None:
        """The shared xattrs: every (name, value) used by more than one inode, in
        descending order (xattrs_ht_sort in lcfs-writer-erofs.c); `shared_blob`,
        `shared_offset`, and the offsets of external files' own metacopy and redirect
        (`digest_offset`, `payload_offset`: by digest and by payload)."""
        # (name, value) in descending order of (name, value length, value). External files'
        # metacopy values are a header that depends on the digest length, then the digest;
        # redirects are "/" + payload: both sort as their digests and payloads do.
        by_name: dict[bytes, list[_Pair]] = {}
        for kv in counts:
            if counts[kv] > 1:
                by_name.setdefault(kv[0], []).append(kv)
        names = set(by_name)
        if self.shared_digests:
            names.add(_METACOPY)
        if self.shared_payloads:
            names.add(_REDIRECT)
        self.shared_offset: dict[_Pair, int] = {}
        self.own_shapes: dict[int, tuple[bytes, bytes]] = {}
        self.digest_offset: dict[bytes, int] = {}
        self.payload_offset: dict[bytes, int] = {}
        blob: list[bytes] = []
        off = 0
        codec = self.codec
        for name in sorted(names, reverse=True):
            if name == _METACOPY and self.shared_digests:
                for digest in _descending(self.shared_digests):
                    e = self._own_entry(_METACOPY, digest)
                    self.digest_offset[digest] = off
                    blob.append(e)
                    off += len(e)
            if name == _REDIRECT and self.shared_payloads:
                for payload in _descending(self.shared_payloads):
                    e = self._own_entry(_REDIRECT, payload)
                    self.payload_offset[payload] = off
                    blob.append(e)
                    off += len(e)
            for kv in sorted(by_name.get(name, ()), key=_by_value_length, reverse=True):
                e = codec.entry(kv[0], kv[1])
                self.shared_offset[kv] = off
                blob.append(e)
                off += len(e)
        self.shared_blob = b"".join(blob)

    def _own_entry(self, name: bytes, value: bytes) -> bytes:
        """The entry of an external file's own metacopy (`value`: its digest) or redirect
        (`value`: its payload). Such entries differ only by `value`: what precedes and
        follows it is made once per name and length."""
        key = len(value) << 1 | (name == _REDIRECT)
        got = self.own_shapes.get(key)
        if got is None:
            shape = b"/" + bytes(len(value)) if name == _REDIRECT else _metacopy(bytes(len(value)))
            raw = self.codec.head(name, len(shape)) + shape
            got = self.own_shapes[key] = (
                raw[: len(raw) - len(value)],
                _ZEROS[: -len(raw) & 3],
            )
        return got[0] + value + got[1]

    def encode(self, items: list[_Pair]) -> tuple[int, list[_Pair], list[bytes]]:
        """(filter, shared pairs, inline entries) of sorted xattrs."""
        shared_offset = self.shared_offset
        codec = self.codec
        shared: list[_Pair] = []
        inline: list[bytes] = []
        filt = 0
        for kv in items:
            filt |= codec.name(kv[0])[2]
            # composefs shares at most 128 xattrs of an inode, the rest is inline
            if kv in shared_offset and len(shared) < fmt.XATTR_LONG_PREFIX:
                shared.append(kv)
            else:
                inline.append(codec.entry(kv[0], kv[1]))
        return fmt.XATTR_FILTER_DEFAULT & ~filt, shared, inline

    def body(self, items: list[_Pair]) -> tuple[bytes, list[_Pair]]:
        """The in-inode xattrs (header, shared ids as 0, entries) and the shared pairs."""
        if not items:
            return b"", []
        filt, shared, inline = self.encode(items)
        blob = b"".join(inline)
        return _PACK_XHDR(filt, len(shared)) + bytes(4 * len(shared)) + blob, shared

    def external(self, sid: int, digest: bytes, payload: bytes) -> tuple[Template, int, int]:
        """The template of an external file with xattr set `sid`, this digest (b"": none)
        and payload (b"": no redirect), and the shared offsets of its own metacopy and
        redirect (-1: not shared)."""
        mc_off = self.digest_offset.get(digest, -1)
        rd_off = self.payload_offset.get(payload, -1) if payload else -1
        key = (sid << 7 | len(digest)) << 32 | len(payload)
        key = key << 2 | (mc_off >= 0) << 1 | (rd_off >= 0)
        if key == self.last_key:  # files of one shape often come in a row
            return self.last_template, mc_off, rd_off
        template = self.templates.get(key)
        if template is None:
            template = self.templates[key] = self._template(
                sid, len(digest), len(payload), mc_off >= 0, rd_off >= 0
            )
        self.last_key = key
        self.last_template = template
        return template, mc_off, rd_off

    def _template(
        self,
        sid: int,
        digest_len: int,
        payload_len: int,
        mc_shared: bool,
        rd_shared: bool,
    ) -> Template:
        codec = self.codec
        # The file's own two join its set's items where their names sort (no input name
        # equals theirs: input `trusted.overlay.*` xattrs are escaped).
        items = [kv for kv in self.sets[sid] if kv[0] != _METACOPY and kv[0] != _REDIRECT]
        items.append((_METACOPY, b""))
        if payload_len:
            items.append((_REDIRECT, b""))
        items.sort()
        pieces: list[bytes] = []  # before, middle, after: split where digest/payload go
        current: list[bytes] = []
        shared: list[int] = []
        filt = 0
        digest_inline = payload_inline = False
        limit = fmt.XATTR_LONG_PREFIX  # composefs shares at most 128 xattrs of an inode
        for kv in items:
            name = kv[0]
            filt |= codec.name(name)[2]
            if name == _METACOPY:
                if mc_shared and len(shared) < limit:
                    shared.append(OWN_METACOPY)
                    continue
                digest_inline = True
                value = _metacopy(bytes(digest_len))
                current.append(codec.head(name, len(value)) + value[: len(value) - digest_len])
                pieces.append(b"".join(current))
                current = [_ZEROS[: -(4 + len(codec.name(name)[1]) + len(value)) & 3]]
            elif name == _REDIRECT:
                if rd_shared and len(shared) < limit:
                    shared.append(OWN_REDIRECT)
                    continue
                payload_inline = True
                current.append(codec.head(name, payload_len + 1) + b"/")
                pieces.append(b"".join(current))
                current = [_ZEROS[: -(4 + len(codec.name(name)[1]) + 1 + payload_len) & 3]]
            elif kv in self.shared_offset and len(shared) < limit:
                shared.append(self.shared_offset[kv])
            else:
                current.append(codec.entry(name, kv[1]))
        pieces.append(b"".join(current))
        if not digest_inline:
            pieces.insert(0, b"")
        if not payload_inline:
            pieces.insert(2, b"")
        header = _PACK_XHDR(fmt.XATTR_FILTER_DEFAULT & ~filt, len(shared)) + bytes(4 * len(shared))
        before, middle, after = header + pieces[0], pieces[1], pieces[2]
        size = len(before) + len(middle) + len(after)
        size += digest_len if digest_inline else 0
        size += payload_len if payload_inline else 0
        return Template(before, middle, after, digest_inline, payload_inline, size // 4 - 2, shared)


def _descending(values: set[bytes]) -> list[bytes]:
    """`values` by descending (length, value)."""
    by_length: dict[int, list[bytes]] = {}
    for v in values:
        by_length.setdefault(len(v), []).append(v)
    out: list[bytes] = []
    for length in sorted(by_length, reverse=True):
        out += sorted(by_length[length], reverse=True)
    return out


def _by_value_length(kv: _Pair) -> tuple[int, bytes]:
    return len(kv[1]), kv[1]


def _escaped_items(items: _Items) -> list[tuple[bytes, bytes]]:
    prefix = fmt.OVERLAY_PREFIX
    escaped = fmt.OVERLAY_ESCAPED_PREFIX
    n = len(prefix)
    return [(escaped + k[n:] if k.startswith(prefix) else k, v) for k, v in items]


def _metacopy(digest: bytes) -> bytes:
    return fmt.metacopy_value(digest) if digest else b""
