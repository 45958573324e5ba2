"""Small pieces of the import: references, records, whiteout names, transforms, boot scan."""

from __future__ import annotations

import stat

import pytest

from cfsboot.composefs import dumpfile
from cfsboot.composefs.tree import Inode, lookup
from cfsboot.errors import CfsbootError
from cfsboot.image.bootscan import BootResources, scan
from cfsboot.image.transform import XattrFilter, transform_for_boot, transform_for_oci
from cfsboot.oci.apply import (
    LayerError,
    LayerRecord,
    Op,
    RecordEntry,
    apply_layer,
    build_tree,
    is_aufs_meta,
    whiteout_of,
)
from cfsboot.oci.reference import ImageRef, Transport, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/srv/img", ImageRef(Transport.OCI, "/srv/img")),
        ("oci:/srv/img:v1", ImageRef(Transport.OCI, "/srv/img", "v1")),
        ("oci-archive:img.tar:latest", ImageRef(Transport.OCI_ARCHIVE, "img.tar", "latest")),
        ("docker-archive:d.tar", ImageRef(Transport.DOCKER_ARCHIVE, "d.tar")),
        ("docker-archive:d.tar:repo/x:1", ImageRef(Transport.DOCKER_ARCHIVE, "d.tar", "repo/x:1")),
        ("docker://quay.io/a/b:1", ImageRef(Transport.DOCKER, "//quay.io/a/b:1")),
        ("containers-storage:localhost/x", ImageRef(Transport.CONTAINERS_STORAGE, "localhost/x")),
        ("docker-daemon:x:1", ImageRef(Transport.DOCKER_DAEMON, "x:1")),
        ("dir:/srv/d", ImageRef(Transport.DIR, "/srv/d")),
    ],
)
def test_parse_reference(text: str, expected: ImageRef) -> None:
    assert parse(text) == expected
    assert str(parse(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quay.io/x", "has no known transport"),
        ("ftp:x", "has no known transport"),
        ("oci:", "is empty after oci:"),
        ("oci::tag", "has an empty path"),
        ("oci:/x:", "empty tag"),
        ("docker:quay.io/x", "expected docker://NAME"),
    ],
)
def test_bad_reference(text: str, message: str) -> None:
    with pytest.raises(CfsbootError, match=message):
        parse(text)


def test_whiteout_names() -> None:
    assert whiteout_of(b"etc/passwd") is None
    assert whiteout_of(b"etc/.wh.passwd") == RecordEntry(Op.WHITEOUT, b"etc/passwd")
    assert whiteout_of(b".wh.etc") == RecordEntry(Op.WHITEOUT, b"etc")
    assert whiteout_of(b"etc/.wh..wh..opq") == RecordEntry(Op.OPAQUE, b"etc")
    assert whiteout_of(b".wh..wh..opq") == RecordEntry(Op.OPAQUE, b"")
    assert is_aufs_meta(b".wh..wh.plnk") and not is_aufs_meta(b".wh..wh..opq")
    with pytest.raises(LayerError, match="whites out the root"):
        whiteout_of(b".wh.")
    with pytest.raises(LayerError, match="invalid whiteout"):
        whiteout_of(b"etc/.wh..")


def test_record_round_trip() -> None:
    rec = LayerRecord(
        "sha256:" + "a" * 64,
        "sha512",
        [
            RecordEntry(Op.DIR, b"", 0o755, mtime=5),
            RecordEntry(Op.FILE, b"f\xff\x01x", 0o644, 1, 2, 3, 4, 3, content=b"\x00\xfe\n"),
            RecordEntry(Op.FILE, b"big", size=100, digest="ab" * 64),
            RecordEntry(Op.SYMLINK, b"l", link=b"/t\xee"),
            RecordEntry(Op.CHAR, b"c", rdev=259, xattrs={b"user.\xff": b"\x00\x01"}),
            RecordEntry(Op.WHITEOUT, b"gone"),
        ],
    )
    back = LayerRecord.from_bytes(rec.to_bytes())
    assert back == rec
    assert rec.objects() == {"ab" * 64}
    with pytest.raises(LayerError, match="corrupt layer record"):
        LayerRecord.from_bytes(b"garbage")


def _rec(*entries: RecordEntry) -> LayerRecord:
    return LayerRecord("sha256:" + "0" * 64, "sha256", list(entries))


def test_whiteouts_only_touch_lower_layers() -> None:
    lower = _rec(
        RecordEntry(Op.DIR, b"d", 0o755),
        RecordEntry(Op.FILE, b"d/a", 0o644, size=1, content=b"1"),
        RecordEntry(Op.FILE, b"d/b", 0o644, size=1, content=b"2"),
    )
    # The opaque marker comes *after* d/new in tar order: d/new must survive anyway.
    upper = _rec(
        RecordEntry(Op.FILE, b"d/new", 0o644, size=1, content=b"3"),
        RecordEntry(Op.OPAQUE, b"d"),
        RecordEntry(Op.WHITEOUT, b"nothing/there"),
    )
    root = build_tree([lower, upper])
    d = lookup(root, b"/d")
    assert d is not None and d.children is not None
    assert sorted(d.children) == [b"new"]


def test_directory_replaced_by_file_and_back() -> None:
    root = build_tree(
        [
            _rec(RecordEntry(Op.DIR, b"x", 0o755), RecordEntry(Op.FILE, b"x/f", 0o644)),
            _rec(RecordEntry(Op.FILE, b"x", 0o600)),
        ]
    )
    x = lookup(root, b"/x")
    assert x is not None and stat.S_ISREG(x.mode)
    apply_layer(root, _rec(RecordEntry(Op.DIR, b"x", 0o700)))
    x = lookup(root, b"/x")
    assert x is not None and x.children == {}


def _os_tree() -> Inode:
    usr = Inode.directory(0o751, uid=3, gid=4, mtime=100, mtime_nsec=7, xattrs={b"user.u": b"1"})
    root = Inode.directory(0o700, mtime=1)
    assert root.children is not None and usr.children is not None
    root.children[b"usr"] = usr
    run = Inode.directory(0o755, mtime=2, mtime_nsec=3)
    assert run.children is not None
    run.children[b"x"] = Inode(mode=stat.S_IFREG | 0o644)
    root.children[b"run"] = run
    boot = Inode.directory(0o755, mtime=5, mtime_nsec=9)
    assert boot.children is not None
    boot.children[b"vmlinuz"] = Inode(mode=stat.S_IFREG | 0o644, size=1, content=b"k")
    root.children[b"boot"] = boot
    lib = Inode.directory(0o755)
    assert lib.children is not None
    usr.children[b"lib"] = lib
    mods = Inode.directory(0o755)
    assert mods.children is not None
    lib.children[b"modules"] = mods
    kdir = Inode.directory(0o755)
    assert kdir.children is not None
    mods.children[b"6.12"] = kdir
    kdir.children[b"vmlinuz"] = Inode(
        mode=stat.S_IFLNK | 0o777, payload=b"../../../../boot/vmlinuz"
    )
    kdir.children[b"uki.efi"] = Inode(mode=stat.S_IFREG | 0o644, size=100, digest=b"\x01" * 32)
    return root


def test_transforms() -> None:
    root = _os_tree()
    transform_for_oci(root, xattrs=XattrFilter.KEEP_USER)
    boot = scan(root)
    transform_for_boot(root)
    assert dumpfile.dumps(root).decode().splitlines()[:6] == [
        "/ 0 40751 6 3 4 0 100.7 - - - user.u=1",
        "/boot 0 40755 2 0 0 0 100.9 - - -",  # only the seconds come from /usr (composefs-rs)
        "/run 0 40755 2 0 0 0 100.7 - - -",
        "/sysroot 0 40755 2 0 0 0 100.0 - - -",  # created: cfsboot's mount point
        "/usr 0 40751 3 3 4 0 100.7 - - - user.u=1",
        "/usr/lib 0 40755 3 0 0 0 0.0 - - -",
    ]
    # The kernel symlink was followed inside the image (into /boot, before it was emptied).
    assert [(k.version, k.vmlinuz.path, k.vmlinuz.content) for k in boot.kernels] == [
        ("6.12", "/boot/vmlinuz", b"k")
    ]
    assert [(u.path, u.digest) for u in boot.ukis] == [("/usr/lib/modules/6.12/uki.efi", "01" * 32)]
    assert BootResources.from_json(boot.to_json()) == boot


def test_default_filter_drops_user_and_selinux() -> None:
    root = _os_tree()
    transform_for_oci(root)
    assert root.xattrs == {}


def test_no_usr_is_refused() -> None:
    with pytest.raises(CfsbootError, match="has no /usr directory"):
        transform_for_oci(Inode.directory(0o755))
