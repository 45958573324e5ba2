"""Carrying out the mount plan (plan.py) with the new mount API.

EROFS is mounted file-backed, or on a loop device where the kernel says
ENOTBLK (Linux < 6.12); the overlay layers are given with lowerdir+/datadir+,
or as the classic `lowerdir=A::B` string where the kernel has no lowerdir+
(Linux < 6.7). Every failure becomes a SetupError: one line, one exit code.
"""

from __future__ import annotations

import errno
import os

from setuproot import syscalls
from setuproot.choice import IntEnum
from setuproot.contract import ComposefsKarg
from setuproot.plan import (
    Attach,
    Clone,
    Detach,
    MakeDir,
    MountErofs,
    Op,
    Overlay,
    Plan,
    RemoveDir,
    Require,
    Tmpfs,
    Verify,
    VolatileRoot,
    lowerdir_string,
)
from setuproot.record import record
from setuproot.verity import NoVerity, VerityUnsupported, measure_verity


class ExitCode(IntEnum):
    """setup-root's exit codes: one per kind of failure, so tests and logs can tell them apart."""

    OK = 0
    MOUNT_FAILED = 1
    USAGE = 2  # bad option or kernel argument
    CONFIG = 3
    IMAGE_MISSING = 4
    NO_VERITY = 5  # image or filesystem without fs-verity
    WRONG_DIGEST = 6
    KERNEL = 7  # the kernel lacks a feature we need
    STATE = 8  # deployment state missing, or the physical root is read-only


class SetupError(Exception):
    """A failure that ends setup-root with one line and an exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@record
class Tweaks:
    """Force the fallbacks for old kernels, so the host tests can run them too."""

    force_loop: bool = False  # EROFS on a loop device even where file-backed works
    force_lowerdir_string: bool = False  # `lowerdir=A::B` instead of lowerdir+/datadir+


# ---- execution --------------------------------------------------------------


class Executor:
    def __init__(self, plan: Plan, tweaks: Tweaks | None = None) -> None:
        self.plan = plan
        self.tweaks = tweaks or Tweaks()
        self.handles: dict[str, int] = {}  # detached mounts by name, until attached
        self.image_fd = -1
        self.image_path = ""  # images/HEX as the plan names it (what messages show)
        self.swapped = False  # /sysroot no longer holds the physical root

    @property
    def karg(self) -> ComposefsKarg:
        return self.plan.karg

    def run(self) -> None:
        try:
            for op in self.plan.ops:
                try:
                    self.step(op)
                except OSError as e:  # a syscall without its own message: name the step
                    raise self._fail(f"{op.describe()}: failed", e) from None
        finally:
            for fd in self.handles.values():
                os.close(fd)
            self.handles.clear()
            if self.image_fd >= 0:
                os.close(self.image_fd)
                self.image_fd = -1

    def step(self, op: Op) -> None:
        match op:
            case Verify():
                self.verify(op)
            case MakeDir():
                self.mkdir(op)
            case Require():
                if not os.path.exists(op.path):
                    raise SetupError(op.message, ExitCode.STATE)
            case MountErofs():
                self.mount_erofs(op)
            case Tmpfs():
                fs = self._fsopen("tmpfs")
                try:
                    syscalls.fsconfig(fs, "source", "tmpfs")
                    syscalls.fsconfig(fs, "mode", "0755")
                    self._create(fs, "tmpfs", op.at)
                    mfd = syscalls.fsmount(
                        fs, syscalls.MOUNT_ATTR_NODEV | syscalls.MOUNT_ATTR_NOSUID
                    )
                finally:
                    os.close(fs)
                self._attach_fd(mfd, op.at, "tmpfs")
            case Overlay():
                self.handles[op.handle] = self.mount_overlay(op)
            case Clone():
                try:
                    fd = syscalls.open_tree_clone(op.path, recursive=op.recursive)
                except OSError as e:
                    raise self._fail(f"cannot clone the mount at {op.path}", e) from None
                self.handles[op.handle] = fd
            case Detach():
                try:
                    syscalls.umount2(op.path, syscalls.MNT_DETACH)
                except OSError as e:
                    # Not a mount point (a plain directory as --sysroot): stack on top of it.
                    if e.errno != errno.EINVAL:
                        raise self._fail(f"cannot unmount {op.path}", e) from None
                if op.path == self.plan.sysroot:
                    self.swapped = True
            case Attach():
                fd = self.handles.pop(op.handle)
                self._attach_fd(fd, op.at, op.handle)
                if op.handle == "root":  # from here paths name directories of the image
                    self.swapped = True
            case RemoveDir():
                try:
                    os.rmdir(op.path)
                except OSError:
                    pass  # still holds a tmpfs upper layer: it stays in /run
            case VolatileRoot():
                link_volatile_root(op)

    def _fail(self, what: str, e: OSError, code: ExitCode = ExitCode.MOUNT_FAILED) -> SetupError:
        reason = e.strerror or os.strerror(e.errno or 0)
        where = f" ({e.filename})" if e.filename and e.filename not in what else ""
        return SetupError(f"{what}{where}: {reason}", code)

    def verify(self, op: Verify) -> None:
        repo = os.path.dirname(os.path.dirname(op.image))
        digest = self.karg.digest
        try:
            self.image_fd = os.open(op.image, os.O_RDONLY | os.O_CLOEXEC)
            self.image_path = op.image
        except FileNotFoundError:
            if not os.path.isdir(repo):
                raise SetupError(
                    f"no composefs repository at {repo}: is the right root filesystem"
                    " mounted at /sysroot?",
                    ExitCode.IMAGE_MISSING,
                ) from None
            raise SetupError(
                f"composefs image {digest} not found: {op.image} does not exist",
                ExitCode.IMAGE_MISSING,
            ) from None
        except OSError as e:
            raise self._fail(f"cannot open composefs image {op.image}", e) from None
        if self.karg.insecure:
            return
        try:
            alg, raw = measure_verity(self.image_fd, path=op.image)
        except VerityUnsupported:
            raise SetupError(
                f"cannot check composefs image {digest[:12]}...: the filesystem holding"
                f" {op.image} has no fs-verity support; boot with composefs=?{digest}"
                " to skip the check",
                ExitCode.NO_VERITY,
            ) from None
        except NoVerity:
            raise SetupError(
                f"composefs image {op.image} has no fs-verity digest;"
                f" boot with composefs=?{digest} to allow it",
                ExitCode.NO_VERITY,
            ) from None
        except OSError as e:
            raise self._fail(f"cannot measure fs-verity of {op.image}", e) from None
        if alg is not self.karg.algorithm or raw.hex() != digest:
            raise SetupError(
                f"composefs image {op.image} has the wrong fs-verity digest:"
                f" expected {self.karg.algorithm}:{digest}, found {alg}:{raw.hex()}",
                ExitCode.WRONG_DIGEST,
            )

    def mkdir(self, op: MakeDir) -> None:
        try:
            os.mkdir(op.path, op.mode)
        except FileExistsError:
            # Made by the stager already; it must still be writable (an upper dir, say).
            if os.statvfs(op.path).f_flag & os.ST_RDONLY:
                raise self._read_only(op.path) from None
            return
        except OSError as e:
            if e.errno == errno.EROFS:
                raise self._read_only(op.path) from None
            raise self._fail(f"cannot create {op.path}", e, ExitCode.STATE) from None
        os.chmod(op.path, op.mode)  # exactly this mode, whatever the umask

    @staticmethod
    def _read_only(path: str) -> SetupError:
        return SetupError(
            f"cannot use {path}: the filesystem is read-only"
            " (the physical root must be mounted rw: boot with `rw`)",
            ExitCode.STATE,
        )

    def _fsopen(self, fstype: str) -> int:
        try:
            return syscalls.fsopen(fstype)
        except OSError as e:
            if e.errno == errno.ENOSYS:
                raise SetupError(
                    "the kernel has no new mount API (fsopen); Linux >= 6.6 is needed",
                    ExitCode.KERNEL,
                ) from None
            if e.errno == errno.ENODEV:
                raise SetupError(
                    f"the kernel has no {fstype} filesystem (module missing from the initramfs?)",
                    ExitCode.KERNEL,
                ) from None
            raise self._fail(f"fsopen {fstype}", e) from None

    def _create(self, fs: int, what: str, path: str | None) -> None:
        try:
            syscalls.fsconfig_create(fs, path)
        except OSError as e:
            raise self._fail(f"cannot mount {what}", e) from None

    def _attach_fd(self, mfd: int, at: str, what: str) -> None:
        try:
            syscalls.move_mount_fd(mfd, at)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise SetupError(
                    f"cannot mount {what} on {at}: the directory does not exist"
                    + (" in the image" if self.swapped else ""),
                    ExitCode.MOUNT_FAILED,
                ) from None
            raise self._fail(f"cannot mount {what} on {at}", e) from None
        finally:
            os.close(mfd)

    def mount_erofs(self, op: MountErofs) -> None:
        image = self.image_path or os.readlink(f"/proc/self/fd/{self.image_fd}")
        loop_fd = -1
        fs = self._fsopen("erofs")
        try:
            try:
                if self.tweaks.force_loop:
                    raise OSError(errno.ENOTBLK, "forced loop device", image)
                syscalls.fsconfig(fs, "source", f"/proc/self/fd/{self.image_fd}")
                syscalls.fsconfig(fs, "ro")
                syscalls.fsconfig_create(fs, image)
            except OSError as e:
                if e.errno != errno.ENOTBLK:
                    raise self._erofs_error(image, e) from None
                # No file-backed EROFS (Linux < 6.12): put a loop device under it.
                os.close(fs)
                fs = -1
                fs = self._fsopen("erofs")
                try:
                    dev, loop_fd = syscalls.attach_loop(self.image_fd, image)
                except OSError as le:
                    raise self._fail("cannot set up a loop device for the image", le) from None
                try:
                    syscalls.fsconfig(fs, "source", dev)
                    syscalls.fsconfig(fs, "ro")
                    syscalls.fsconfig_create(fs, image)
                except OSError as le:
                    raise self._erofs_error(image, le) from None
            mfd = syscalls.fsmount(fs, syscalls.MOUNT_ATTR_RDONLY)
        finally:
            if fs >= 0:
                os.close(fs)
            if loop_fd >= 0:
                os.close(loop_fd)  # the mount holds the device now; autoclear frees it later
        self._attach_fd(mfd, op.at, "the EROFS image")

    def _erofs_error(self, image: str, e: OSError) -> SetupError:
        if e.errno == errno.EIO and not self.karg.insecure:
            # The digest matched, so the Merkle tree is the image's: its data does not.
            return SetupError(
                f"cannot mount composefs image {image}: its contents fail fs-verity"
                " verification (modified on disk?)",
                ExitCode.MOUNT_FAILED,
            )
        if e.errno == errno.EINVAL:
            return SetupError(
                f"cannot mount composefs image {image}: not a valid EROFS image ({e.strerror})",
                ExitCode.MOUNT_FAILED,
            )
        return self._fail(f"cannot mount composefs image {image}", e)

    def mount_overlay(self, op: Overlay) -> int:
        string_layers = self.tweaks.force_lowerdir_string
        try:
            fs = self._overlay_context(op, string_layers)
        except _NoLowerdirPlus:
            # Linux < 6.7 has no lowerdir+/datadir+: fall back to the classic string.
            fs = self._overlay_context(op, True)
        try:
            try:
                syscalls.fsconfig_create(fs)
            except OSError as e:
                raise self._fail(f"cannot mount the {op.handle} overlay", e) from None
            attrs = syscalls.MOUNT_ATTR_RDONLY if op.readonly else 0
            return syscalls.fsmount(fs, attrs)
        finally:
            os.close(fs)

    def _overlay_context(self, op: Overlay, string_layers: bool) -> int:
        fs = self._fsopen("overlay")
        try:
            for key, value in op.options():
                try:
                    syscalls.fsconfig(fs, key, value)
                except OSError as e:
                    if key == "verity":
                        raise SetupError(
                            "the kernel's overlayfs cannot enforce fs-verity (verity=require"
                            f" needs Linux >= 6.6 with fs-verity): {e.strerror}",
                            ExitCode.KERNEL,
                        ) from None
                    raise self._fail(f"overlay option {key}={value}", e) from None
            try:
                if string_layers:
                    syscalls.fsconfig(fs, "lowerdir", lowerdir_string(op.lowers, op.datas))
                else:
                    try:
                        syscalls.fsconfig(fs, "lowerdir+", op.lowers[0])
                    except OSError as e:
                        if e.errno == errno.EINVAL and e.filename == op.lowers[0]:
                            raise _NoLowerdirPlus() from None
                        raise
                    for p in op.lowers[1:]:
                        syscalls.fsconfig(fs, "lowerdir+", p)
                    for p in op.datas:
                        syscalls.fsconfig(fs, "datadir+", p)
                for key, value in op.upper_options():
                    syscalls.fsconfig(fs, key, value)
            except OSError as e:
                raise self._fail(f"cannot set up the {op.handle} overlay", e) from None
        except BaseException:
            os.close(fs)
            raise
        return fs


def link_volatile_root(op: VolatileRoot) -> None:
    """Best effort: without the link only gpt-auto discovery suffers, not the boot."""
    try:
        st = os.stat(op.device)
    except OSError:
        return
    target = f"/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    try:
        os.makedirs(os.path.dirname(op.link), mode=0o755, exist_ok=True)
        os.symlink(target, op.link)
    except FileExistsError:
        pass
    except OSError as e:
        print(f"cfsboot-setup-root: warning: cannot link {op.link}: {e.strerror}", flush=True)


class _NoLowerdirPlus(Exception):
    pass


def execute(plan: Plan, tweaks: Tweaks | None = None) -> None:
    """Carry out a plan; raises SetupError with a one-line message on failure."""
    Executor(plan, tweaks or Tweaks()).run()
