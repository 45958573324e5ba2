"""The streaming tar reader: formats it understands and hostile input it refuses."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from cfsboot.oci.tar import Kind, TarEntry, TarError, entries
from cfstest.ocibuild import Entry, tar_bytes


def read_all(data: bytes) -> list[tuple[TarEntry, bytes]]:
    out = []
    for e, body in entries(io.BytesIO(data)):
        out.append((e, body.read(1 << 30)))
    return out


def test_member_types_and_metadata() -> None:
    data = tar_bytes(
        [
            Entry("./usr/", "dir", 0o755, uid=1, gid=2, mtime=10),
            Entry("usr/f", data=b"hello", mode=0o4755, mtime=11, mtime_nsec=123456789),
            Entry("/usr/s", "symlink", linkname="../etc/x"),
            Entry("usr/h", "hardlink", linkname="./usr/f"),
            Entry("dev/c", "char", 0o600, major=1, minor=3),
            Entry("dev/b", "block", 0o600, major=8, minor=1),
            Entry("p", "fifo"),
        ]
    )
    got = read_all(data)
    kinds = [(e.path, e.kind) for e, _ in got]
    assert kinds == [
        (b"usr", Kind.DIR),
        (b"usr/f", Kind.FILE),
        (b"usr/s", Kind.SYMLINK),
        (b"usr/h", Kind.HARDLINK),
        (b"dev/c", Kind.CHAR),
        (b"dev/b", Kind.BLOCK),
        (b"p", Kind.FIFO),
    ]
    f, content = got[1]
    assert (f.mode, f.mtime, f.mtime_nsec, f.size, content) == (
        0o4755,
        11,
        123456789,
        5,
        b"hello",
    )
    assert got[0][0].uid == 1 and got[0][0].gid == 2
    assert got[2][0].linkname == b"../etc/x"
    assert got[3][0].linkname == b"usr/f"
    assert got[4][0].rdev == os.makedev(1, 3)
    assert got[5][0].rdev == os.makedev(8, 1)


def test_pax_and_gnu_long_names_and_xattrs() -> None:
    long = "d/" + "x" * 150 + "/" + "y" * 200
    data = tar_bytes(
        [
            Entry(long, data=b"p", xattrs={"user.a": b"\x00\xff", "security.capability": b"cap"}),
            Entry(long + "2", data=b"g", gnu_longname=True),
            Entry("l", "symlink", linkname="t" * 300),
        ]
    )
    got = read_all(data)
    assert got[0][0].path == long.encode()
    assert got[0][0].xattrs == {
        b"user.a": b"\x00\xff",
        b"security.capability": b"cap",
    }
    assert got[1][0].path == (long + "2").encode()
    assert got[2][0].linkname == b"t" * 300


def test_python_tarfile_output_reads() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("a/" + "n" * 120)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        big = tarfile.TarInfo("big")
        big.uid = 8**8  # base-256 uid
        tf.addfile(big, io.BytesIO(b""))
    got = read_all(buf.getvalue())
    assert got[0][0].path == b"a/" + b"n" * 120 and got[0][1] == b"abc"
    assert got[1][0].uid == 8**8


def test_ustar_prefix_names() -> None:
    buf = io.BytesIO()
    name = "p" * 90 + "/" + "n" * 90
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"z"))
    assert buf.getvalue()[345:350] == b"p" * 5  # really in the prefix field
    assert [(e.path, d) for e, d in read_all(buf.getvalue())] == [(name.encode(), b"z")]


def test_unread_data_is_skipped_and_end_marker_optional() -> None:
    data = tar_bytes([Entry("a", data=b"1" * 1000), Entry("b", data=b"2")], end_marker=False)
    names = [e.path for e, _ in entries(io.BytesIO(data))]
    assert names == [b"a", b"b"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry("../etc/passwd", data=b"x"), "contains '..'"),
        (Entry("/../../escape", data=b"x"), "contains '..'"),
        (Entry("a/../../b", "dir"), "contains '..'"),
        (Entry("h", "hardlink", linkname="../outside"), "contains '..'"),
        (Entry("h", "hardlink", linkname="/"), "points at the root"),
        (Entry(b"nul\0name" + b"x" * 200, data=b"x"), "NUL byte"),
        (Entry("d/" + "x" * 300, data=b"x"), "component of 300 bytes"),
        (Entry("file/", "file", data=b"x"), "ends with '/'"),
        (Entry("sym", "symlink", linkname=""), "invalid target"),
        (Entry("sparse", "S"), "GNU sparse"),
        (Entry("weird", "Z"), "unknown member type"),
    ],
)
def test_hostile_members(entry: Entry, message: str) -> None:
    with pytest.raises(TarError, match=message):
        read_all(tar_bytes([entry]))


def test_nul_in_gnu_long_name() -> None:
    e = Entry(b"a" * 101 + b"\0b", data=b"", gnu_longname=True)
    with pytest.raises(TarError, match="NUL"):
        read_all(tar_bytes([e]))


def test_absurd_size() -> None:
    with pytest.raises(TarError, match="absurd size"):
        read_all(tar_bytes([Entry("a", data=b"", size=1 << 50)]))


def test_absurd_pax_header() -> None:
    hdr = tar_bytes([Entry("a", data=b"x")])
    # Claim a 1 GiB PAX header: refused before anything is read into memory.
    bad = tar_bytes([Entry("PaxHeaders/a", "x", size=1 << 30)], end_marker=False) + hdr
    with pytest.raises(TarError, match="extended header"):
        read_all(bad)


def test_truncated_data_and_header() -> None:
    data = tar_bytes([Entry("a", data=b"x" * 2000)])
    with pytest.raises(TarError, match="truncated tar"):
        read_all(data[:1024])
    with pytest.raises(TarError, match="truncated tar"):
        read_all(data[:300])


def test_corrupt_checksum() -> None:
    data = bytearray(tar_bytes([Entry("a", data=b"x")]))
    data[0] ^= 0x01
    with pytest.raises(TarError, match="bad header checksum"):
        read_all(bytes(data))
