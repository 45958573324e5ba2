"""xxh32 (Yann Collet's xxHash, 32-bit variant), used for EROFS xattr name bloom filters.

The EROFS filter needs the hash of a few distinct xattr names per image, so a small
pure-Python implementation with a cache is fast enough.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

_P1: Final = 2654435761
_P2: Final = 2246822519
_P3: Final = 3266489917
_P4: Final = 668265263
_P5: Final = 374761393
_M: Final = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M
    return (_rotl(acc, 13) * _P1) & _M


@functools.cache
def xxh32(data: bytes, seed: int = 0) -> int:
    """The xxh32 hash of `data` with `seed`."""
    n = len(data)
    p = 0
    if n >= 16:
        v1 = (seed + _P1 + _P2) & _M
        v2 = (seed + _P2) & _M
        v3 = seed & _M
        v4 = (seed - _P1) & _M
        limit = n - 16
        while p <= limit:
            a, b, c, d = struct.unpack_from("<IIII", data, p)
            v1 = _round(v1, a)
            v2 = _round(v2, b)
            v3 = _round(v3, c)
            v4 = _round(v4, d)
            p += 16
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while p + 4 <= n:
        (lane,) = struct.unpack_from("<I", data, p)
        h = (h + lane * _P3) & _M
        h = (_rotl(h, 17) * _P4) & _M
        p += 4
    while p < n:
        h = (h + data[p] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        p += 1
    h ^= h >> 15
    h = (h * _P2) & _M
    h ^= h >> 13
    h = (h * _P3) & _M
    h ^= h >> 16
    return h
