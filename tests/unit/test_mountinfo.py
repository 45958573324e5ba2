"""cfsboot.linux.mountinfo: the one reader of /proc/self/mountinfo.

The text below is shaped like a booted cfsboot system's (composefs / over
the physical root at /sysroot, an ESP at /boot/efi, bind mounts of /var and
/etc), with the kernel's escapes written out by hand as proc_pid_mountinfo(5)
describes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfsboot.linux import mountinfo
from cfsboot.linux.mountinfo import Mount, MountinfoError

D = "ab" * 32

MOUNTINFO = (
    f"25 1 0:22 / / ro,relatime shared:1 - overlay composefs:{D} ro,lowerdir+=/x,verity=require\n"
    "26 25 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "30 25 252:2 / /sysroot rw,relatime shared:2 - ext4 /dev/vda2 rw\n"
    # /etc and /var: bind mounts of directories of the physical root.
    f"31 25 252:2 /state/deploy/{D}/etc /etc rw,relatime shared:2 - ext4 /dev/vda2 rw\n"
    "32 25 252:2 /state/os/default/var /var rw,relatime shared:2 - ext4 /dev/vda2 rw\n"
    # No optional fields at all (a private mount).
    "40 25 252:1 / /boot/efi rw,relatime - vfat /dev/vda1 rw,fmask=0077,dmask=0077\n"
    # Several optional fields, and escapes in the mount point, root and source.
    "41 25 7:0 /dir\\040with\\011tab /mnt/a\\040b\\134c\\012d rw shared:5 master:3"
    " propagate_from:2 unbindable - ext4 /tmp/disk\\040image.img rw,data=ordered\n"
    # An empty source (mount -t tmpfs "" /run/x): two spaces in a row.
    "42 25 0:50 / /run/x rw - tmpfs  rw,size=1024k\n"
    # A fuse mount: type with its subtype.
    "43 25 0:51 / /media/remote rw,nosuid shared:9 - fuse.sshfs me@host:/srv rw,user_id=0\n"
)


@pytest.fixture
def mounts() -> tuple[Mount, ...]:
    return mountinfo.parse(MOUNTINFO.encode())


def test_fields(mounts: tuple[Mount, ...]) -> None:
    assert len(mounts) == 9
    root = mounts[0]
    assert root == Mount(
        mount_id=25,
        parent_id=1,
        major=0,
        minor=22,
        root="/",
        mount_point="/",
        options=("ro", "relatime"),
        optional=("shared:1",),
        fstype="overlay",
        source=f"composefs:{D}",
        super_options=("ro", "lowerdir+=/x", "verity=require"),
    )
    assert root.dev == os.makedev(0, 22) and root.peer_group() == 1
    esp = mounts[5]
    assert (esp.mount_point, esp.optional, esp.fstype, esp.source) == (
        "/boot/efi",
        (),
        "vfat",
        "/dev/vda1",
    )
    assert esp.peer_group() is None and not esp.is_bind
    assert mounts[8].fstype == "fuse.sshfs"


def test_octal_escapes_are_decoded(mounts: tuple[Mount, ...]) -> None:
    m = mounts[6]
    assert m.root == "/dir with\ttab"
    assert m.mount_point == "/mnt/a b\\c\nd"
    assert m.source == "/tmp/disk image.img"
    assert m.optional == ("shared:5", "master:3", "propagate_from:2", "unbindable")
    assert (m.peer_group(), m.peer_group("master"), m.peer_group("propagate_from")) == (5, 3, 2)
    assert m.super_options == ("rw", "data=ordered")
    # A backslash not followed by three octal digits is not an escape.
    assert mountinfo.unescape(b"a\\x\\04") == "a\\x\\04"
    # Bytes that are not UTF-8 survive as surrogates, as os.fsdecode gives them.
    assert mountinfo.unescape(b"/mnt/\\377") == os.fsdecode(b"/mnt/\xff")


def test_empty_source_keeps_the_fields_in_place(mounts: tuple[Mount, ...]) -> None:
    m = mounts[7]
    assert (m.fstype, m.source, m.super_options) == ("tmpfs", "", ("rw", "size=1024k"))


def test_bind_mounts(mounts: tuple[Mount, ...]) -> None:
    etc, var = mounts[3], mounts[4]
    assert etc.is_bind and etc.root == f"/state/deploy/{D}/etc"
    assert var.is_bind and var.dev == mounts[2].dev
    assert not mounts[2].is_bind


def test_mount_of_and_mounted_at(tmp_path: Path, mounts: tuple[Mount, ...]) -> None:
    by_point = {m.mount_point: m for m in mounts}
    assert mountinfo.mount_of("/boot/efi/loader/entries", mounts) is by_point["/boot/efi"]
    assert mountinfo.mount_of("/boot/efi", mounts) is by_point["/boot/efi"]
    # A name that only starts like a mount point is not under it.
    assert mountinfo.mount_of("/boot/efix", mounts) is by_point["/"]
    assert mountinfo.mount_of("/var/lib", mounts) is by_point["/var"]
    assert mountinfo.mounted_at("/sysroot", mounts) is by_point["/sysroot"]
    assert mountinfo.mounted_at("/nowhere", mounts) is None
    # Two mounts on one point: the later one is the one visible.
    over = mountinfo.parse_line(b"50 30 0:60 / /sysroot rw - tmpfs tmpfs rw")
    stacked = (*mounts, over)
    assert mountinfo.mounted_at("/sysroot", stacked) is over
    assert mountinfo.mount_of("/sysroot/composefs", stacked) is over


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"25 1 0:22 / / rw shared:1 overlay x rw", "no '-' separator"),
        (b"25 1 0:22 / / rw - overlay x", "2 fields after '-' (expected 3)"),
        (b"25 1 0:22 / / rw - overlay x rw extra", "4 fields after '-' (expected 3)"),
        (b"x 1 0:22 / / rw - overlay x rw", "bad mount ID or major:minor"),
        (b"25 1 022 / / rw - overlay x rw", "bad mount ID or major:minor"),
    ],
)
def test_malformed_lines_are_one_error(line: bytes, message: str) -> None:
    with pytest.raises(MountinfoError) as e:
        mountinfo.parse(line + b"\n", where="mi")
    assert str(e.value).startswith(f"mi: {message}")


def test_the_mount_point_may_be_a_dash() -> None:
    """The separator is looked for after the fixed fields: a mount point '-' is not it."""
    m = mountinfo.parse_line(b"60 25 0:70 / /- rw - tmpfs - rw")
    assert (m.mount_point, m.source) == ("/-", "-")
    m = mountinfo.parse_line(b"60 25 0:70 - - rw - tmpfs x rw")
    assert (m.root, m.mount_point, m.fstype) == ("-", "-", "tmpfs")


def test_reads_this_process_mount_table() -> None:
    mounts = mountinfo.read()
    root = mountinfo.mounted_at("/", mounts)
    assert root is not None and root.mount_point == "/"
    # /proc is mounted (this reader just read through it), with the kernel's st_dev.
    proc = mountinfo.mount_of("/proc/self", mounts)
    assert proc is not None and proc.fstype == "proc"
    assert proc.dev == os.stat("/proc").st_dev
