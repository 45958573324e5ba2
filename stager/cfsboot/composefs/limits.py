"""composefs's limits, declared once for the dumpfile reader, the tree, and the EROFS writer
and reader (which must refuse and accept the same inputs as C mkcomposefs 1.0.8).

Sources: composefs 1.0.8 `libcomposefs/lcfs-writer.h`, `lcfs-internal.h` and
`lcfs-writer.c`; linux `fs/erofs/erofs_fs.h` and `include/uapi/linux/limits.h`.
Compiled modules (cfsboot.composefs.native) get these values inlined by mypyc, so the
module is compiled with them: an edit here makes them stale and their sources run.
"""

from __future__ import annotations

from typing import Final

# A file name (a path component): LCFS_MAX_NAME_LENGTH, EROFS_NAME_LEN.
NAME_MAX: Final = 255
# A path (symlink target, object path of an external file) is shorter than this: PATH_MAX.
PATH_MAX: Final = 4096
# An xattr name and value: XATTR_NAME_MAX, and a value fits EROFS's u16 e_value_size.
XATTR_NAME_MAX: Final = 255
XATTR_VALUE_MAX: Final = 0xFFFF
# What one inode's xattrs may take in all (LCFS_INODE_EXTERNAL_XATTR_MAX): a 12-byte
# header and 7 + name + value bytes each.
EXTERNAL_XATTR_MAX: Final = 0xFFFF // 2
# Inline content a dumpfile may give a file (LCFS_INLINE_CONTENT_MAX), and the size up to
# which files read from a directory are inlined (LCFS_RECOMMENDED_INLINE_CONTENT_MAX).
INLINE_CONTENT_MAX: Final = 5000
RECOMMENDED_INLINE_CONTENT_MAX: Final = 64
# An external file is one block of 4-byte chunk addresses (LCFS_MAX_NONINLINE_CHUNKS) of
# at most 2^(12 + 31) bytes each (4096-byte blocks, EROFS_CHUNK_FORMAT_BLKBITS_MASK).
MAX_NONINLINE_CHUNKS: Final = 1024
CHUNK_SIZE_MAX: Final = 1 << (12 + 31)
EXTERNAL_SIZE_MAX: Final = MAX_NONINLINE_CHUNKS * CHUNK_SIZE_MAX  # 2^53 bytes
