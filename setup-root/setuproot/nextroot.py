"""A deployment's root built on the running system, for a soft reboot (`/run/nextroot`).

systemd's soft reboot (systemd-soft-reboot.service, systemd >= 254) stops
userspace, switches into `/run/nextroot` when it exists and starts userspace
again from there, without the firmware, the boot loader, the kernel or the
initramfs. What the initramfs would have mounted must therefore be mounted
beforehand, and exactly as setup-root mounts it at boot: this runs setup-root's
own plan (the same fs-verity check of the image, the same composefs overlay,
the same /etc and /var handling, the same config) with the new root attached
at `target` instead of in place of the physical root, which stays where it is.

The result, as at boot: `target` is the composefs overlay, `target/sysroot`
the physical root, `target/etc` and `target/var` as the config says. tmpfs
upper layers (transient /etc or /) live under NEXTROOT_RUN_DIR, in /run,
which systemd carries into the next userspace.
"""

from __future__ import annotations

import errno
import os

from setuproot import syscalls
from setuproot.config import Config
from setuproot.contract import ComposefsKarg
from setuproot.mount import ExitCode, SetupError, Tweaks, execute
from setuproot.plan import Plan, make_plan

NEXTROOT = "/run/nextroot"
# Not the initramfs's /run/cfsboot: the running system's tmpfs layers are there.
NEXTROOT_RUN_DIR = "/run/cfsboot/nextroot"
# What a plan may leave mounted under its run directory (plan._mount_root).
_RUN_MOUNTS = ("erofs", "root-transient", "etc-transient")


def release(path: str) -> int:
    """Detach everything mounted at `path` (stacked mounts too, with what is under them).

    Returns how many mounts were detached; a directory without a mount (or no
    directory at all) gives 0. A mount still in use stays alive for its users
    (an overlay that has it as a layer) and goes with the last of them.
    """
    count = 0
    while True:
        try:
            syscalls.umount2(path, syscalls.MNT_DETACH)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return count
            raise SetupError(
                f"cannot unmount {path}: {e.strerror or os.strerror(e.errno or 0)}",
                ExitCode.MOUNT_FAILED,
            ) from None
        count += 1


def mount_root_at(
    sysroot: str,
    karg: ComposefsKarg,
    config: Config,
    target: str = NEXTROOT,
    *,
    run_dir: str = NEXTROOT_RUN_DIR,
    tweaks: Tweaks | None = None,
) -> Plan:
    """Mount deployment `karg` of the physical root `sysroot` at `target`, as setup-root would.

    A root left at `target` by an earlier attempt is detached first. On failure
    nothing stays mounted at `target` and the SetupError (one line) is raised.
    `config` is the deployment's setup-root config, its /etc mode resolved
    against its state directory (setuproot.config.resolve_etc), as at boot.
    """
    release(target)
    for name in _RUN_MOUNTS:
        # Left by an earlier soft reboot: a tmpfs the running root may still use
        # (its overlay keeps it alive; only the name goes).
        release(os.path.join(run_dir, name))
    try:
        os.makedirs(os.path.dirname(run_dir), mode=0o755, exist_ok=True)
        os.makedirs(target, mode=0o755, exist_ok=True)
    except OSError as e:
        raise SetupError(
            f"cannot create {e.filename}: {e.strerror}", ExitCode.MOUNT_FAILED
        ) from None
    plan = make_plan(sysroot, karg, config, run_dir=run_dir, target=target)
    try:
        execute(plan, tweaks)
    except BaseException:
        release(target)
        release(os.path.join(run_dir, "erofs"))
        raise
    return plan
