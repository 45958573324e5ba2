"""The mount plan: what setup-root mounts where, as data.

`make_plan()` turns (sysroot, karg, config) into a list of small operations;
`--dry-run` prints them and `mount.execute()` performs them, so the printed
plan is exactly what runs. The order keeps the machine recoverable as long as
possible: everything that can fail on bad input (image, digest, state
directories, the EROFS and overlay mounts) happens before the physical root
at /sysroot is touched.

Result, the same as composefs-rs's and bootc's setup-root:
  /sysroot          composefs overlay (EROFS + objects/ data-only layer), read-only
  /sysroot/sysroot  the physical root filesystem
  /sysroot/etc      overlay, bind, tmpfs or nothing (config.py)
  /sysroot/var      bind of state/deploy/ID/var -> state/os/default/var

/etc layout on the physical root, compatible with both composefs-rs and bootc:
overlay mode keeps the upper and work dirs in state/deploy/ID/etc/{upper,work}
(composefs-rs's layout; created here on first boot, upper 0755); bind mode
binds state/deploy/ID/etc itself, which is then a full copy of /etc (bootc's
layout). The stager writes whichever the image's config asks for.
"""

from __future__ import annotations

from setuproot.config import Config, EtcMount, VarMount
from setuproot.contract import (
    DEFAULT_SYSROOT,
    OBJECTS_DIR,
    REPO_DIR,
    ComposefsKarg,
    deploy_dir,
    image_path,
)
from setuproot.record import record

# Where the EROFS and any tmpfs upper layers are attached while the new root is
# built. Under /run so that systemd carries tmpfs uppers into the booted system.
RUN_DIR = "/run/cfsboot"


@record
class Verify:
    image: str
    karg: ComposefsKarg

    def describe(self) -> str:
        if self.karg.insecure:
            return f"open     {self.image} (composefs=?: fs-verity not required)"
        return f"verify   {self.image} fs-verity {self.karg.algorithm}:{self.karg.digest}"


@record
class MakeDir:
    path: str
    mode: int

    def describe(self) -> str:
        return f"mkdir    {self.path} {self.mode:04o}"


@record
class Require:
    """Fail early, with `message`, unless `path` exists (following symlinks)."""

    path: str
    message: str

    def describe(self) -> str:
        return f"require  {self.path}"


@record
class MountErofs:
    at: str

    def describe(self) -> str:
        return f"erofs    image on {self.at} ro (file-backed, or on a loop device)"


@record
class Tmpfs:
    at: str

    def describe(self) -> str:
        return f"tmpfs    on {self.at} mode=0755"


@record
class Overlay:
    handle: str
    source: str
    lowers: tuple[str, ...]
    datas: tuple[str, ...] = ()
    upper: str | None = None
    work: str | None = None
    composefs: bool = False  # metacopy=on,redirect_dir=on for the image's xattrs
    verity: bool = False
    readonly: bool = False

    def options(self) -> list[tuple[str, str]]:
        opts = [("source", self.source)]
        if self.composefs:
            opts += [("metacopy", "on"), ("redirect_dir", "on")]
        if self.verity:
            opts.append(("verity", "require"))
        return opts

    def upper_options(self) -> list[tuple[str, str]]:
        if self.upper is None or self.work is None:
            return []
        return [("upperdir", self.upper), ("workdir", self.work)]

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.options()]
        parts += [f"lowerdir+={p}" for p in self.lowers]
        parts += [f"datadir+={p}" for p in self.datas]
        parts += [f"{k}={v}" for k, v in self.upper_options()]
        parts.append("ro" if self.readonly else "rw")
        return f"overlay  {self.handle}: {' '.join(parts)}"


@record
class Clone:
    handle: str
    path: str
    recursive: bool = False

    def describe(self) -> str:
        return f"clone    {self.handle} = {self.path}{' (recursive)' if self.recursive else ''}"


@record
class Detach:
    path: str

    def describe(self) -> str:
        return f"umount   {self.path} (detach)"


@record
class Attach:
    handle: str
    at: str

    def describe(self) -> str:
        return f"attach   {self.handle} on {self.at}"


@record
class RemoveDir:
    path: str

    def describe(self) -> str:
        return f"rmdir    {self.path}"


@record
class VolatileRoot:
    """Tell systemd which block device holds the root, now that / is an overlay.

    systemd-gpt-auto-generator looks for the root disk through
    /run/systemd/volatile-root when / is not a block device (as composefs-rs and
    ostree do, see systemd#35017). Only where udev made /dev/gpt-auto-root.
    """

    link: str = "/run/systemd/volatile-root"
    device: str = "/dev/gpt-auto-root"

    def describe(self) -> str:
        return f"symlink  {self.link} -> /dev/block/MAJ:MIN of {self.device} (if it exists)"


Op = (
    Verify
    | MakeDir
    | Require
    | MountErofs
    | Tmpfs
    | Overlay
    | Clone
    | Detach
    | Attach
    | RemoveDir
    | VolatileRoot
)


@record
class Plan:
    sysroot: str
    karg: ComposefsKarg
    config: Config
    ops: tuple[Op, ...]

    def describe(self) -> str:
        return "\n".join(op.describe() for op in self.ops) + "\n"


def lowerdir_string(lowers: tuple[str, ...], datas: tuple[str, ...]) -> str:
    """The classic `lowerdir=` value: layers split by ':', data-only layers after '::'.

    overlayfs takes a backslash as the escape for ':' (and for itself) in layer paths.
    """

    def esc(p: str) -> str:
        return p.replace("\\", "\\\\").replace(":", "\\:")

    value = ":".join(esc(p) for p in lowers)
    for d in datas:
        value += "::" + esc(d)
    return value


def make_plan(
    sysroot: str,
    karg: ComposefsKarg,
    config: Config,
    *,
    run_dir: str = RUN_DIR,
    target: str | None = None,
) -> Plan:
    """What to mount, in order, for booting `karg` from the physical root at `sysroot`.

    Three phases: checks and directories on the physical root while nothing is
    mounted yet; the composefs root (EROFS, overlay) and the clones of what
    the new root needs from the physical root; then the swap, after which
    /sysroot is the new root and /etc and /var are attached to it.

    target: build the new root there instead, and leave the physical root where
    it is (a soft reboot's /run/nextroot, prepared on the running system).
    """
    sysroot = sysroot.rstrip("/") or "/"
    if target is not None:
        target = target.rstrip("/") or "/"
    state = f"{sysroot}/{deploy_dir(karg.digest)}"
    ops: list[Op] = [Verify(f"{sysroot}/{image_path(karg.digest)}", karg)]
    ops += _prepare_state(karg, config, state)
    ops += _mount_root(sysroot, karg, config, state, run_dir)
    ops += _swap_and_attach(sysroot, karg, config, run_dir, target)
    return Plan(sysroot, karg, config, tuple(ops))


def _prepare_state(karg: ComposefsKarg, config: Config, state: str) -> list[Op]:
    """Checks and directories in the deployment's state, on the physical root."""
    not_deployed = f"deployment state {state} is missing (was {karg.digest[:12]}... deployed?)"
    ops: list[Op] = []
    if config.etc is not EtcMount.NONE or config.var is VarMount.BIND:
        ops.append(Require(state, not_deployed))
    if config.etc is EtcMount.OVERLAY:
        ops += [
            MakeDir(f"{state}/etc", 0o755),
            MakeDir(f"{state}/etc/upper", 0o755),  # 0700 would hide /etc from users
            MakeDir(f"{state}/etc/work", 0o700),
        ]
    elif config.etc is EtcMount.BIND:
        ops.append(Require(f"{state}/etc", f"{state}/etc is missing (etc.mount = bind needs it)"))
    if config.var is VarMount.BIND:
        ops.append(
            Require(
                f"{state}/var",
                f"{state}/var is missing or dangling (it should lead to state/os/default/var)",
            )
        )
    return ops


def _mount_root(r: str, karg: ComposefsKarg, config: Config, state: str, run_dir: str) -> list[Op]:
    """The composefs root overlay, and clones of what the new root takes from `r`."""
    erofs_at = f"{run_dir}/erofs"
    ops: list[Op] = [MakeDir(run_dir, 0o700), MakeDir(erofs_at, 0o700), MountErofs(erofs_at)]
    upper = work = None
    if config.root_transient:
        tdir = f"{run_dir}/root-transient"
        ops += [MakeDir(tdir, 0o700), Tmpfs(tdir)]
        ops += [MakeDir(f"{tdir}/upper", 0o755), MakeDir(f"{tdir}/work", 0o700)]
        upper, work = f"{tdir}/upper", f"{tdir}/work"
    source = f"composefs:{karg.digest}"
    ops += [
        Overlay(
            "root",
            f"transient:{source}" if config.root_transient else source,
            lowers=(erofs_at,),
            datas=(f"{r}/{REPO_DIR}/{OBJECTS_DIR}",),
            upper=upper,
            work=work,
            composefs=True,
            verity=not karg.insecure,
            readonly=not config.root_transient,
        ),
        # The overlay holds the EROFS; the staging mount point is no longer needed.
        Detach(erofs_at),
        RemoveDir(erofs_at),
        Clone("physical-root", r, recursive=True),
    ]
    if config.etc is EtcMount.BIND:
        ops.append(Clone("etc", f"{state}/etc"))
    if config.var is VarMount.BIND:
        ops.append(Clone("var", f"{state}/var"))
    if config.etc is EtcMount.TRANSIENT:
        tdir = f"{run_dir}/etc-transient"
        ops += [MakeDir(tdir, 0o700), Tmpfs(tdir)]
        ops += [MakeDir(f"{tdir}/upper", 0o755), MakeDir(f"{tdir}/work", 0o700)]
    return ops


def _swap_and_attach(
    sysroot: str, karg: ComposefsKarg, config: Config, run_dir: str, target: str | None
) -> list[Op]:
    """The swap (from here on `r` is the new root), then /etc and /var on it.

    With a `target` there is no swap: the new root is attached there and the
    physical root stays mounted at `sysroot` as well.
    """
    r = sysroot if target is None else target
    # After the swap the physical root is reachable at /sysroot inside the new root.
    state_after = f"{r}/sysroot/{deploy_dir(karg.digest)}"
    ops: list[Op] = [Detach(r)] if target is None else []
    ops += [Attach("root", r), Attach("physical-root", f"{r}/sysroot")]
    if config.etc is EtcMount.OVERLAY:
        ops += [
            Overlay(
                "etc",
                "overlay",
                lowers=(f"{r}/etc",),
                upper=f"{state_after}/etc/upper",
                work=f"{state_after}/etc/work",
            ),
            Attach("etc", f"{r}/etc"),
        ]
    elif config.etc is EtcMount.TRANSIENT:
        tdir = f"{run_dir}/etc-transient"
        ops += [
            Overlay(
                "etc",
                "transient",
                lowers=(f"{r}/etc",),
                upper=f"{tdir}/upper",
                work=f"{tdir}/work",
            ),
            Attach("etc", f"{r}/etc"),
        ]
    elif config.etc is EtcMount.BIND:
        ops.append(Attach("etc", f"{r}/etc"))
    if config.var is VarMount.BIND:
        ops.append(Attach("var", f"{r}/var"))
    ops.append(RemoveDir(run_dir))
    if target is None and r == DEFAULT_SYSROOT:  # the real boot, not a test or a chroot
        ops.append(VolatileRoot())
    return ops
