"""The mount syscalls Python lacks, through ctypes, and the loop-device ioctls.

Every wrapper raises OSError(errno, strerror, path) so callers can say which
file or mount point failed. For the new mount API the kernel also leaves
human-readable reasons in the filesystem context ("e overlay: ..."); `fsconfig`
and `fsconfig_create` append them to the error message.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

# Syscall numbers, <asm-generic/unistd.h>: the mount API calls got the same
# number on every architecture (424 and up).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442

# <linux/fcntl.h>
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# <linux/mount.h>
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x04
FSOPEN_CLOEXEC = 0x01
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x01
MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
# struct mount_attr, <linux/mount.h>: __u64 attr_set, attr_clr, propagation, userns_fd.
MOUNT_ATTR = struct.Struct("=QQQQ")
assert MOUNT_ATTR.size == 32  # MOUNT_ATTR_SIZE_VER0

# <linux/fs.h> (mount(2) flags) and <sys/mount.h> (umount2 flags).
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# <linux/loop.h>
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32
# struct loop_info64: __u64 lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit;
# __u32 lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags;
# __u8 lo_file_name[64], lo_crypt_name[64], lo_encrypt_key[32]; __u64 lo_init[2].
LOOP_INFO64 = struct.Struct(f"=5Q4I{LO_NAME_SIZE}s{LO_NAME_SIZE}s{LO_KEY_SIZE}s2Q")
# struct loop_config: __u32 fd, block_size; struct loop_info64 info; __u64 __reserved[8].
LOOP_CONFIG = struct.Struct(f"=II{LOOP_INFO64.size}s64x")
assert LOOP_INFO64.size == 232 and LOOP_CONFIG.size == 304

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

Arg = int | bytes | None


def _to_c(arg: Arg) -> ctypes.c_long | ctypes.c_char_p:
    if arg is None or isinstance(arg, bytes):
        return ctypes.c_char_p(arg)
    return ctypes.c_long(arg)


def _raw_syscall(nr: int, *args: Arg) -> tuple[int, int]:
    """Call syscall(2); returns (result, errno). Tests replace this to check the arguments."""
    ctypes.set_errno(0)
    res = _libc.syscall(ctypes.c_long(nr), *(_to_c(a) for a in args))
    return int(res), ctypes.get_errno()


def _syscall(name: str, path: str | None, nr: int, *args: Arg) -> int:
    res, err = _raw_syscall(nr, *args)
    if res < 0:
        raise OSError(err, f"{name}: {os.strerror(err)}", path)
    return res


def _b(path: str) -> bytes:
    return os.fsencode(path)


def fs_context_log(fs_fd: int) -> str:
    """Messages the kernel queued on a filesystem context ("e overlay: ..."), joined."""
    msgs: list[str] = []
    for _ in range(16):  # the kernel keeps at most 8; stop on ENODATA
        try:
            msg = os.read(fs_fd, 1024)
        except OSError:
            break
        if not msg:
            break
        text = msg.decode(errors="replace").strip()
        msgs.append(text[2:] if text[1:2] == " " else text)
    return "; ".join(msgs)


def fsopen(fstype: str) -> int:
    """fsopen(2): a filesystem context for `fstype` (close-on-exec)."""
    return _syscall("fsopen", fstype, SYS_FSOPEN, _b(fstype), FSOPEN_CLOEXEC)


def _with_log(fs_fd: int, err: OSError, what: str, path: str | None) -> OSError:
    log = fs_context_log(fs_fd)
    code = err.errno or errno.EINVAL
    msg = f"{what}: {os.strerror(code)}" + (f" ({log})" if log else "")
    return OSError(code, msg, path)


def fsconfig(fs_fd: int, key: str, value: str | None = None) -> None:
    """fsconfig(2) SET_STRING (or SET_FLAG when value is None)."""
    what = key if value is None else f"{key}={value}"
    cmd = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
    val = None if value is None else _b(value)
    try:
        _syscall("fsconfig", None, SYS_FSCONFIG, fs_fd, cmd, _b(key), val, 0)
    except OSError as e:
        raise _with_log(fs_fd, e, f"fsconfig {what}", value) from None


def fsconfig_fd(fs_fd: int, key: str, fd: int) -> None:
    """fsconfig(2) SET_FD: pass an open file (or O_PATH directory) as `key`."""
    try:
        _syscall("fsconfig", None, SYS_FSCONFIG, fs_fd, FSCONFIG_SET_FD, _b(key), None, fd)
    except OSError as e:
        raise _with_log(fs_fd, e, f"fsconfig {key}=fd", None) from None


def fsconfig_create(fs_fd: int, path: str | None = None) -> None:
    """fsconfig(2) CMD_CREATE: make the superblock; errors carry the kernel's reason."""
    try:
        _syscall("fsconfig", path, SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0)
    except OSError as e:
        raise _with_log(fs_fd, e, "creating the filesystem", path) from None


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    """fsmount(2): a detached mount of the created superblock (close-on-exec)."""
    return _syscall("fsmount", None, SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attr_flags)


def move_mount_fd(mnt_fd: int, to_path: str) -> None:
    """move_mount(2) the mount `mnt_fd` (detached or attached) onto `to_path`."""
    _syscall(
        "move_mount",
        to_path,
        SYS_MOVE_MOUNT,
        mnt_fd,
        b"",
        AT_FDCWD,
        _b(to_path),
        MOVE_MOUNT_F_EMPTY_PATH,
    )


def open_tree_clone(path: str, *, recursive: bool = False) -> int:
    """open_tree(2) OPEN_TREE_CLONE: a detached copy of the mount(s) at `path`."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _syscall("open_tree", path, SYS_OPEN_TREE, AT_FDCWD, _b(path), flags)


def mount_setattr(mnt_fd: int, *, attr_set: int = 0, attr_clr: int = 0) -> None:
    """mount_setattr(2) on the mount `mnt_fd` itself (AT_EMPTY_PATH)."""
    attr = MOUNT_ATTR.pack(attr_set, attr_clr, 0, 0)
    _syscall(
        "mount_setattr",
        None,
        SYS_MOUNT_SETATTR,
        mnt_fd,
        b"",
        AT_EMPTY_PATH,
        attr,
        MOUNT_ATTR.size,
    )


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2), for the classic API."""
    ctypes.set_errno(0)
    res = _libc.mount(
        _b(source),
        _b(target),
        None if fstype is None else _b(fstype),
        flags,
        None if data is None else _b(data),
    )
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount: {os.strerror(err)}", target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    ctypes.set_errno(0)
    if _libc.umount2(_b(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}", target)


def loop_config(backing_fd: int, *, block_size: int = 4096) -> bytes:
    """The packed struct loop_config for a read-only, autoclear, direct-IO loop device."""
    flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO
    info = LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", 0, 0)
    return LOOP_CONFIG.pack(backing_fd, block_size, info)


def attach_loop(backing_fd: int, path: str, *, attempts: int = 8) -> tuple[str, int]:
    """Put a read-only loop device over `backing_fd`; returns (/dev/loopN, its open fd).

    The device is autoclear: it goes away when the last user closes it, so keep
    the returned fd open until the filesystem on it is mounted. LOOP_CTL_GET_FREE
    and LOOP_CONFIGURE race with other users of loop devices, so a device that
    turns out to be busy is retried with the next free one.
    """
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"no loop devices: {e.strerror}", "/dev/loop-control") from None
    try:
        for _ in range(attempts):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            lfd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(lfd, LOOP_CONFIGURE, loop_config(backing_fd))
            except OSError as e:
                os.close(lfd)
                if e.errno == errno.EBUSY:
                    continue
                raise OSError(e.errno, f"LOOP_CONFIGURE {dev}: {e.strerror}", path) from None
            return dev, lfd
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, "no free loop device", path)
