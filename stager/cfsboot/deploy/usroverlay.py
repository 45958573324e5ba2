"""`cfsboot usr-overlay`: a transient writable overlay on /usr, gone at the next boot.

What `bootc usr-overlay` does on a composefs host (and `ostree admin unlock`):
an overlayfs whose lower layer is the image's /usr and whose upper and work
dirs live on a tmpfs of its own. The tmpfs is attached under /run/cfsboot only
while the overlay is made (before Linux 6.15 overlayfs refuses an upper dir on a
detached mount: "failed to clone upperpath"), then detached, so that nothing
but the overlay holds it and nothing under /run shows it. Packages
installed to debug land there and are gone at the next boot; /etc and /var
are not affected, so what a package writes there stays.

`--read-only` mounts it read-only (bootc's `readOnly` access mode); a later
`mount -o remount,rw /usr` makes it writable without losing what it holds.

Status reads it back as bootc does: /usr a mount point of its own means an
overlay, read-only or read/write by its mount flags, always transient.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, TypedDict

from cfsboot.errors import CfsbootError
from setuproot.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_RDONLY,
    fsconfig,
    fsconfig_create,
    fsmount,
    fsopen,
    move_mount_fd,
    umount2,
)

# The overlay's source, as bootc names its transient overlays.
SOURCE = "transient"


class FilesystemOverlay(TypedDict):
    """bootc's host-v1 FilesystemOverlay (status.usrOverlay)."""

    accessMode: Literal["readOnly", "readWrite"]
    persistence: Literal["transient", "persistent"]


class UsrOverlayError(CfsbootError):
    """An overlay that cannot be mounted on /usr."""


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def mounted_at(path: Path, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether a mount sits on `path` itself (a bind mount of the same filesystem too)."""
    target = os.path.realpath(path)
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return any(
        len(fields) > 4 and _unescape(fields[4]) == target
        for fields in (line.split() for line in lines)
    )


def usr_overlay_status(usr: Path) -> FilesystemOverlay | None:
    """status.usrOverlay for this /usr: None unless something is mounted on it."""
    if not mounted_at(usr):
        return None
    read_only = bool(os.statvfs(usr).f_flag & os.ST_RDONLY)
    return {"accessMode": "readOnly" if read_only else "readWrite", "persistence": "transient"}


def mount_usr_overlay(usr: Path, *, read_only: bool = False) -> str:
    """Put a transient overlay on `usr`; returns what was done, in one line."""
    if mounted_at(usr):
        state = usr_overlay_status(usr)
        mode = "read-only" if state and state["accessMode"] == "readOnly" else "read/write"
        return f"an overlay is already mounted on {usr} ({mode}); it goes at the next boot"
    try:
        _mount(usr, read_only)
    except OSError as e:
        raise UsrOverlayError(
            f"cannot mount an overlay on {usr}: {e.strerror or e}",
            hint="it needs root and a kernel with overlayfs and the new mount API (5.2)",
        ) from None
    mode = "read-only" if read_only else "read/write"
    return (
        f"a {mode} overlay is now mounted on {usr}; everything written there goes at the next boot"
    )


# Where the overlay's tmpfs is attached while the overlay is made (see the docstring).
STAGING_PARENT = "/run/cfsboot"


def _mount(usr: Path, read_only: bool) -> None:
    st = os.stat(usr)
    fds: list[int] = []
    os.makedirs(STAGING_PARENT, mode=0o700, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="usr-overlay.", dir=STAGING_PARENT)
    attached = False
    try:
        ctx = fsopen("tmpfs")
        fds.append(ctx)
        fsconfig(ctx, "mode", "0755")
        fsconfig_create(ctx)
        tmpfs = fsmount(ctx)
        fds.append(tmpfs)
        move_mount_fd(tmpfs, staging)
        attached = True
        # The merged /usr takes the upper dir's owner and mode: give it /usr's.
        upper = os.path.join(staging, "upper")
        os.mkdir(upper, 0o700)
        os.chown(upper, st.st_uid, st.st_gid)
        os.chmod(upper, st.st_mode & 0o7777)
        os.mkdir(os.path.join(staging, "work"), 0o700)
        ovl = fsopen("overlay")
        fds.append(ovl)
        fsconfig(ovl, "source", SOURCE)
        fsconfig(ovl, "lowerdir", str(usr))
        fsconfig(ovl, "upperdir", upper)
        fsconfig(ovl, "workdir", os.path.join(staging, "work"))
        fsconfig_create(ovl)
        mnt = fsmount(ovl, MOUNT_ATTR_RDONLY if read_only else 0)
        fds.append(mnt)
        move_mount_fd(mnt, str(usr))
    finally:
        for fd in fds:
            os.close(fd)
        if attached:
            # The overlay holds a private clone of the upper dir's mount: this one can go.
            umount2(staging, MNT_DETACH)
        os.rmdir(staging)
