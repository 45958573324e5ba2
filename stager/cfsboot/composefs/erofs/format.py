"""On-disk structures of a composefs EROFS image, declared once for the writer and the reader.

Sources of truth:
- EROFS on-disk format: linux `fs/erofs/erofs_fs.h` (the copy composefs 1.0.8 ships as
  `libcomposefs/erofs_fs.h`) and https://erofs.docs.kernel.org/en/latest/core_ondisk.html
- the composefs header: composefs 1.0.8 `libcomposefs/lcfs-erofs.h`
- the overlayfs xattrs: linux `fs/overlayfs/overlayfs.h` (`struct ovl_metacopy`)

All integers are little-endian. Offsets are bytes from the start of the image file.
"""

from __future__ import annotations

import enum
import stat
import struct
from typing import Final

# --- geometry (erofs_fs.h: EROFS_BLKSIZ is the page size composefs always uses) -------------
BLOCK_BITS: Final = 12
BLOCK_SIZE: Final = 1 << BLOCK_BITS  # 4096
SLOT_BITS: Final = 5  # EROFS_ISLOTBITS: inodes start on 32-byte slots, nid = offset / 32
SLOT_SIZE: Final = 1 << SLOT_BITS
SUPERBLOCK_OFFSET: Final = 1024  # EROFS_SUPER_OFFSET
NULL_ADDR: Final = 0xFFFFFFFF  # EROFS_NULL_ADDR (-1): a chunk that is a hole (no data)
# composefs's caps (name length, inline content, chunks...): cfsboot.composefs.limits.

# --- composefs header at offset 0 (lcfs-erofs.h: struct lcfs_erofs_header_s, 32 bytes) -----
# magic u32, version u32 (LCFS_EROFS_VERSION, the header layout version = 1),
# flags u32, composefs_version u32 (image format version 0/1), unused u32[4]
COMPOSEFS_HEADER: Final = struct.Struct("<IIII16x")
COMPOSEFS_MAGIC: Final = 0xD078629A
COMPOSEFS_HEADER_VERSION: Final = 1
COMPOSEFS_FLAG_HAS_ACL: Final = 1 << 0  # LCFS_EROFS_FLAGS_HAS_ACL: mount without "noacl"
COMPOSEFS_VERSION_MAX: Final = 1  # LCFS_VERSION_MAX (0: initial, 1: opaque=x xwhiteouts)

# --- superblock at offset 1024 (erofs_fs.h: struct erofs_super_block, 128 bytes) ----------
SUPERBLOCK: Final = struct.Struct(
    "<"
    "I"  # magic (EROFS_SUPER_MAGIC_V1)
    "I"  # checksum (crc32c; unused: SB_CHKSUM not set)
    "I"  # feature_compat
    "B"  # blkszbits
    "B"  # sb_extslots
    "H"  # root_nid
    "Q"  # inos
    "Q"  # build_time (mtime of compact inodes, seconds)
    "I"  # build_time_nsec
    "I"  # blocks
    "I"  # meta_blkaddr
    "I"  # xattr_blkaddr
    "16s"  # uuid
    "16s"  # volume_name
    "I"  # feature_incompat
    "H"  # available_compr_algs / lz4_max_distance
    "H"  # extra_devices
    "H"  # devt_slotoff
    "B"  # dirblkbits
    "B"  # xattr_prefix_count
    "I"  # xattr_prefix_start
    "Q"  # packed_nid
    "B"  # xattr_filter_reserved
    "23x"  # reserved2
)
assert SUPERBLOCK.size == 128
EROFS_MAGIC: Final = 0xE0F5E1E2  # EROFS_SUPER_MAGIC_V1
FEATURE_COMPAT_SB_CHKSUM: Final = 0x1
FEATURE_COMPAT_MTIME: Final = 0x2  # extended inodes carry mtime
FEATURE_COMPAT_XATTR_FILTER: Final = 0x4  # inode xattr headers carry a bloom filter
FEATURE_INCOMPAT_CHUNKED_FILE: Final = 0x4  # composefs does NOT set it (null chunks only)


# --- inodes (erofs_fs.h: struct erofs_inode_compact / erofs_inode_extended) ---------------
class DataLayout(enum.IntEnum):
    """EROFS_INODE_* data layouts; stored in i_format bits 1..3."""

    FLAT_PLAIN = 0  # data in consecutive blocks at i_u.raw_blkaddr (or none)
    COMPRESSED_FULL = 1
    FLAT_INLINE = 2  # whole blocks at raw_blkaddr, tail right after the inode + xattrs
    COMPRESSED_COMPACT = 3
    CHUNK_BASED = 4  # i_u.c.format = chunk bits; chunk addresses inline after xattrs


I_VERSION_BIT: Final = 0  # i_format bit 0: 0 = compact (32 B), 1 = extended (64 B)
I_VERSION_MASK: Final = 0x1
I_DATALAYOUT_BIT: Final = 1
I_DATALAYOUT_MASK: Final = 0x7
INODE_LAYOUT_COMPACT: Final = 0
INODE_LAYOUT_EXTENDED: Final = 1
CHUNK_FORMAT_BLKBITS_MASK: Final = 0x1F  # i_u.c.format low bits: log2(chunk size) - 12
CHUNK_FORMAT_INDEXES: Final = 0x20  # 8-byte chunk indexes instead of 4-byte addresses


def i_format(layout: DataLayout, extended: bool) -> int:
    """The i_format field of an inode."""
    return (layout << I_DATALAYOUT_BIT) | (int(extended) << I_VERSION_BIT)


# Compact inode, 32 bytes: i_format u16, i_xattr_icount u16, i_mode u16, i_nlink u16,
# i_size u32, i_reserved u32, i_u u32 (raw_blkaddr | rdev | chunk_info), i_ino u32,
# i_uid u16, i_gid u16, i_reserved2 u32. Its mtime is the superblock build_time.
INODE_COMPACT: Final = struct.Struct("<HHHHIIIIHH4x")
assert INODE_COMPACT.size == 32
# Extended inode, 64 bytes: i_format u16, i_xattr_icount u16, i_mode u16, i_reserved u16,
# i_size u64, i_u u32, i_ino u32, i_uid u32, i_gid u32, i_mtime u64, i_mtime_nsec u32,
# i_nlink u32, i_reserved2[16]
INODE_EXTENDED: Final = struct.Struct("<HHHxxQIIIIQII16x")
assert INODE_EXTENDED.size == 64
# Just the first field, to tell the two layouts apart when reading.
INODE_FORMAT: Final = struct.Struct("<H")
# erofs_inode_chunk_info (the i_u union member of CHUNK_BASED inodes): format u16, reserved u16
CHUNK_INFO: Final = struct.Struct("<HH")
# A 4-byte chunk address (EROFS_BLOCK_MAP_ENTRY_SIZE) as written by composefs.
CHUNK_ADDR: Final = struct.Struct("<I")

# --- xattrs (erofs_fs.h: erofs_xattr_ibody_header, erofs_xattr_entry) ---------------------
# In-inode header, 12 bytes: h_name_filter u32 (bloom filter, a 1 bit means "absent"),
# h_shared_count u8, h_reserved2[7]; followed by h_shared_count u32 shared-xattr ids
# (id = byte offset from xattr_blkaddr * 4096, divided by 4), then the inline entries.
# i_xattr_icount = (ibody size - 12) / 4 + 1, or 0 when there are no xattrs.
XATTR_IBODY_HEADER: Final = struct.Struct("<IB7x")
assert XATTR_IBODY_HEADER.size == 12
XATTR_SHARED_ID: Final = struct.Struct("<I")
# Entry, 4 bytes: e_name_len u8, e_name_index u8, e_value_size u16; then the name suffix
# and the value, the whole padded to 4 bytes. Shared xattrs use the same encoding.
XATTR_ENTRY: Final = struct.Struct("<BBH")
assert XATTR_ENTRY.size == 4
XATTR_ALIGN: Final = 4
XATTR_FILTER_BITS: Final = 32
XATTR_FILTER_DEFAULT: Final = 0xFFFFFFFF
XATTR_FILTER_SEED: Final = 0x25BBE08F  # xxh32 seed, plus the prefix index
XATTR_LONG_PREFIX: Final = 0x80  # also: composefs shares at most 127 xattrs per inode


class XattrIndex(enum.IntEnum):
    """EROFS_XATTR_INDEX_*: the short name prefixes an entry's e_name_index refers to."""

    NONE = 0
    USER = 1
    POSIX_ACL_ACCESS = 2
    POSIX_ACL_DEFAULT = 3
    TRUSTED = 4
    LUSTRE = 5
    SECURITY = 6


# Prefix of each index, for the reader (lcfs-erofs-internal.h erofs_xattr_prefixes).
XATTR_PREFIXES: Final[tuple[bytes, ...]] = (
    b"",
    b"user.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"lustre.",
    b"security.",
)
# Prefixes the composefs 1.0.8 writer uses, in match order (lustre. is never used).
WRITER_XATTR_PREFIXES: Final[tuple[tuple[bytes, int], ...]] = (
    (b"user.", XattrIndex.USER),
    (b"system.posix_acl_access", XattrIndex.POSIX_ACL_ACCESS),
    (b"system.posix_acl_default", XattrIndex.POSIX_ACL_DEFAULT),
    (b"trusted.", XattrIndex.TRUSTED),
    (b"security.", XattrIndex.SECURITY),
)
ACL_XATTRS: Final = (b"system.posix_acl_access", b"system.posix_acl_default")

# --- directories (erofs_fs.h: struct erofs_dirent, 12 bytes) ------------------------------
# nid u64, nameoff u16 (offset of the name within the block), file_type u8, reserved u8.
# A directory block is: all dirents, then all names (not NUL-terminated); the first
# dirent's nameoff / 12 is the number of entries in the block. Entries (".", ".." and the
# children) are sorted by name bytes.
DIRENT: Final = struct.Struct("<QHBx")
assert DIRENT.size == 12


class FileType(enum.IntEnum):
    """EROFS_FT_* dirent file types."""

    UNKNOWN = 0
    REG_FILE = 1
    DIR = 2
    CHRDEV = 3
    BLKDEV = 4
    FIFO = 5
    SOCK = 6
    SYMLINK = 7


FILE_TYPE_OF_MODE: Final[dict[int, FileType]] = {
    stat.S_IFREG: FileType.REG_FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFCHR: FileType.CHRDEV,
    stat.S_IFBLK: FileType.BLKDEV,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCK,
    stat.S_IFLNK: FileType.SYMLINK,
}

# --- overlayfs xattrs composefs writes (lcfs-internal.h OVERLAY_XATTR_*) ------------------
OVERLAY_PREFIX: Final = b"trusted.overlay."
OVERLAY_ESCAPED_PREFIX: Final = b"trusted.overlay.overlay."  # escaped user "trusted.overlay.*"
XATTR_METACOPY: Final = b"trusted.overlay.metacopy"
XATTR_REDIRECT: Final = b"trusted.overlay.redirect"
XATTR_OPAQUE: Final = b"trusted.overlay.opaque"
XATTR_ESCAPED_WHITEOUT: Final = b"trusted.overlay.overlay.whiteout"
XATTR_ESCAPED_WHITEOUTS: Final = b"trusted.overlay.overlay.whiteouts"
XATTR_ESCAPED_OPAQUE: Final = b"trusted.overlay.overlay.opaque"
XATTR_USER_WHITEOUT: Final = b"user.overlay.whiteout"
XATTR_USER_WHITEOUTS: Final = b"user.overlay.whiteouts"
XATTR_USER_OPAQUE: Final = b"user.overlay.opaque"
# struct ovl_metacopy header: version u8 (0), len u8 (4 + digest length), flags u8 (0),
# digest_algo u8 (FS_VERITY_HASH_ALG_*); then the fs-verity digest.
OVL_METACOPY_HEADER: Final = struct.Struct("<BBBB")
FS_VERITY_HASH_ALG_SHA256: Final = 1
FS_VERITY_HASH_ALG_SHA512: Final = 2
METACOPY_ALG_OF_DIGEST_LEN: Final[dict[int, int]] = {
    32: FS_VERITY_HASH_ALG_SHA256,
    64: FS_VERITY_HASH_ALG_SHA512,
}


def metacopy_value(digest: bytes) -> bytes:
    """The trusted.overlay.metacopy value for a file with this fs-verity digest."""
    alg = METACOPY_ALG_OF_DIGEST_LEN.get(len(digest))
    if alg is None:
        raise ValueError(f"fs-verity digest of unsupported length {len(digest)}")
    return OVL_METACOPY_HEADER.pack(0, OVL_METACOPY_HEADER.size + len(digest), 0, alg) + digest


def round_up(n: int, align: int) -> int:
    return (n + align - 1) & ~(align - 1)
