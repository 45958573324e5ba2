"""The xattrs of a composefs EROFS image (lcfs-writer-erofs.c, composefs 1.0.8): which
(name, value) pairs are shared, and how each inode's xattrs are encoded.

Every (name, value) used by more than one inode is stored once after the inode table and
referred to by id; the others are inline after the inode. Names are stored as a prefix
index and a suffix, and each inode's header has a bloom filter of its names (xxh32).
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter

from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.xxhash import xxh32
from cfsboot.composefs.tree import Inode

_U16 = 0xFFFF
_ZEROS = bytes(4)
_PACK_XHDR = fmt.XATTR_IBODY_HEADER.pack
_PACK_XENTRY = fmt.XATTR_ENTRY.pack
_METACOPY = fmt.XATTR_METACOPY
_REDIRECT = fmt.XATTR_REDIRECT


def _xattr_index(key: bytes) -> tuple[int, bytes]:
    for prefix, index in fmt.WRITER_XATTR_PREFIXES:
        if key.startswith(prefix):
            return index, key[len(prefix) :]
    return 0, key


class XattrCodec:
    """Encoded entries and bloom-filter bits of xattr names, cached: names repeat a lot."""

    def __init__(self) -> None:
        self._names: dict[bytes, tuple[int, bytes, int]] = {}

    def name(self, key: bytes) -> tuple[int, bytes, int]:
        """(index, suffix, filter bit mask) of an xattr name."""
        got = self._names.get(key)
        if got is None:
            if not key or len(key) > 255:
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
            raise ValueError(f"xattr {key!r} value longer than 65535 bytes")
        return _PACK_XENTRY(len(suffix), index, value_len) + suffix

    def entry(self, key: bytes, value: bytes) -> bytes:
        """An xattr entry, padded to 4 bytes."""
        raw = self.head(key, len(value)) + value
        pad = -len(raw) & 3
        return raw + _ZEROS[:pad] if pad else raw


_Items = tuple[tuple[bytes, bytes], ...]


class XattrPlan:
    """Which (name, value) pairs are shared, and the encoded xattrs of each distinct set.

    The nodes' xattr sets are numbered (`set_of`): most nodes share their set with many
    others (the same SELinux label), so each set is encoded once. External files also
    carry their own metacopy and redirect xattrs; those are counted here, and spliced
    into the encoding of the file's set (`splice()`) unless they are shared.
    """

    def __init__(
        self,
        order: list[Inode],
        final_xattrs: dict[int, dict[bytes, bytes]],
        externals: list[Inode],
    ) -> None:
        codec = self.codec = XattrCodec()
        # Key of a node's set: its input xattrs as given (escaped later, once per set), or
        # for rewritten nodes, (None, *final items).
        set_of: dict[object, int] = {}
        number = set_of.setdefault
        self.set_ids = set_ids = [
            number(key, len(set_of)) for key in map(tuple, map(dict.items, map(_get_xattrs, order)))
        ]
        for index, xattrs in final_xattrs.items():
            set_ids[index] = number((None, *xattrs.items()), len(set_of))
        uses = Counter(set_ids)
        self.sets: list[list[tuple[bytes, bytes]]] = []
        counts: Counter[tuple[bytes, bytes]] = Counter()
        for key, sid in set_of.items():
            if isinstance(key, tuple) and key and key[0] is None:
                items = sorted(key[1:])
            else:
                items = sorted(_escaped_items(key))  # type: ignore[arg-type]
            self.sets.append(items)
            n = uses[sid]
            if n:
                for kv in items:
                    counts[kv] += n
        # The metacopy and redirect values of external files: only they have these names
        # (input `trusted.overlay.*` xattrs are escaped).
        digest_uses = Counter([x.digest or b"" for x in externals])
        payload_uses = Counter([x.payload for x in externals if x.payload])
        for length in set(map(len, digest_uses)):
            _metacopy(bytes(length))  # refuses digests of unknown sizes
        # Only values used more than once matter for sharing.
        self.shared_digests = {d for d, n in digest_uses.items() if n > 1}
        self.shared_payloads = {p for p, n in payload_uses.items() if n > 1}
        for digest in self.shared_digests:
            counts[(_METACOPY, _metacopy(digest))] += digest_uses[digest]
        for payload in self.shared_payloads:
            counts[(_REDIRECT, b"/" + payload)] += payload_uses[payload]
        self.has_acl = any(kv[0] in fmt.ACL_XATTRS for kv in counts)

        # Shared xattrs: every (name, value) used more than once, in descending order
        # (xattrs_ht_sort in lcfs-writer-erofs.c).
        shared = sorted(
            (kv for kv, count in counts.items() if count > 1),
            key=lambda kv: (kv[0], len(kv[1]), kv[1]),
            reverse=True,
        )
        self.shared_offset: dict[tuple[bytes, bytes], int] = {}
        blob: list[bytes] = []
        off = 0
        for kv in shared:
            e = codec.entry(*kv)
            self.shared_offset[kv] = off
            blob.append(e)
            off += len(e)
        self.shared_blob = b"".join(blob)
        _, _, self.metacopy_bit = codec.name(_METACOPY)
        _, _, self.redirect_bit = codec.name(_REDIRECT)

    def encode(
        self, items: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """(filter, shared pairs, (name, inline entry) pairs) of sorted xattrs."""
        shared_offset = self.shared_offset
        name_of = self.codec.name
        entry = self.codec.entry
        shared: list[tuple[bytes, bytes]] = []
        inline: list[tuple[bytes, bytes]] = []
        filt = 0
        for kv in items:
            filt |= name_of(kv[0])[2]
            # composefs shares at most 128 xattrs of an inode, the rest is inline
            if kv in shared_offset and len(shared) < fmt.XATTR_LONG_PREFIX:
                shared.append(kv)
            else:
                inline.append((kv[0], entry(*kv)))
        return fmt.XATTR_FILTER_DEFAULT & ~filt, shared, inline

    def body(self, items: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The in-inode xattrs (header, shared ids as 0, entries) and the shared pairs."""
        if not items:
            return b"", []
        filt, shared, inline = self.encode(items)
        blob = b"".join([e for _, e in inline])
        return _PACK_XHDR(filt, len(shared)) + bytes(4 * len(shared)) + blob, shared

    def splice(
        self, sid: int, digest_len: int, payload_len: int
    ) -> tuple[bytes, bytes, bytes, int]:
        """How an external file's xattrs are encoded when its metacopy and redirect are
        not shared: (before, middle, after, i_xattr_icount) such that they are
        before + digest + middle + payload + after (no redirect if payload_len is 0)."""
        filt, shared, inline = self.encode(self.sets[sid])
        # The set's inline entries around the two: the names sort as
        # ... < trusted.overlay.metacopy < (escaped trusted.overlay.overlay.*) < redirect < ...
        head = b"".join([e for name, e in inline if name < _METACOPY])
        between = b"".join([e for name, e in inline if _METACOPY < name < _REDIRECT])
        tail = b"".join([e for name, e in inline if name > _REDIRECT])
        metacopy = _metacopy(bytes(digest_len))
        before = self.codec.head(_METACOPY, len(metacopy)) + metacopy[: len(metacopy) - digest_len]
        filt &= ~self.metacopy_bit
        middle = between
        after = tail
        if payload_len:
            filt &= ~self.redirect_bit
            redirect = self.codec.head(_REDIRECT, payload_len + 1) + b"/"
            middle += redirect
            after = _ZEROS[: -(len(redirect) + payload_len) & 3] + tail
        before = _PACK_XHDR(filt, len(shared)) + bytes(4 * len(shared)) + head + before
        size = len(before) + digest_len + len(middle) + payload_len + len(after)
        return before, middle, after, size // 4 - 2

    def full_items(self, x: Inode, sid: int) -> list[tuple[bytes, bytes]]:
        """All xattrs of an external file, sorted."""
        items = [kv for kv in self.sets[sid] if kv[0] not in (_METACOPY, _REDIRECT)]
        items.append((_METACOPY, _metacopy(x.digest or b"")))
        if x.payload:
            items.append((_REDIRECT, b"/" + x.payload))
        items.sort()
        return items


_get_xattrs = attrgetter("xattrs")


def _escaped_items(items: _Items) -> list[tuple[bytes, bytes]]:
    prefix = fmt.OVERLAY_PREFIX
    escaped = fmt.OVERLAY_ESCAPED_PREFIX
    n = len(prefix)
    return [(escaped + k[n:] if k.startswith(prefix) else k, v) for k, v in items]


def _metacopy(digest: bytes) -> bytes:
    return fmt.metacopy_value(digest) if digest else b""
