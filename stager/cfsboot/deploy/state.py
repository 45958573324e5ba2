"""Deployment state directories: `state/deploy/ID/` written whole or not at all."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import die
from cfsboot.linux import fsutil
from cfsboot.linux.fsutil import fsync_dir
from cfsboot.linux.lazylog import getLogger

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.composefs.tree import Inode
    from cfsboot.deploy.origin import Origin
    from cfsboot.deploy.target import Target

# status and fsck import this module for state_leftovers: what writing a state
# directory needs (extracting from the image, its /etc mode) is imported by write_state.

log = getLogger(__name__)  # imports logging when it logs (lazylog)


def remove_tree(path: Path) -> None:
    """Remove a file or a tree (any depth: an image's /etc may nest thousands deep)."""
    fsutil.remove_tree(path)


# Temporary names of state being written or removed (write_state, remove_state) and of
# the /etc views (_etc_views): a crash leaves them behind, gc removes them.
_STATE_TEMP_RE = re.compile(r"\.[0-9a-f]{16}\.(?:tmp|del)-[0-9]+")


ETC_VIEWS_PREFIX = ".cfsboot-etc-"
# The shared /var is seeded under this name next to it, then renamed (install).
_VAR_TEMP_PREFIX = ".var.tmp-"


def state_leftovers(sysroot: Sysroot) -> list[Path]:
    """What interrupted writes left: temporary state dirs, /etc views, a /var being seeded."""
    try:
        names = sorted(os.listdir(sysroot.deploy_root))
    except FileNotFoundError:
        names = []
    out: list[Path] = [sysroot.deploy_root / n for n in names if _STATE_TEMP_RE.fullmatch(n)]
    out += sorted(p for p in sysroot.path.glob(f"{ETC_VIEWS_PREFIX}*") if p.is_dir())
    out += sorted(sysroot.shared_var.parent.glob(f"{_VAR_TEMP_PREFIX}*"))
    return out


def write_state(
    sysroot: Sysroot,
    target: Target,
    origin: Origin,
    *,
    init_var: bool,
    etc_files: Mapping[str, bytes] | None = None,
) -> None:
    """Create `state/deploy/ID/` complete and durable (temporary name, syncfs, rename).

    etc/: a full copy of the image's /etc in bind mode; empty upper and work
    dirs in overlay mode (the booted deployment's changes are carried over at
    finalize). var -> ../../os/default/var; the shared var is seeded from the
    image's /var the first time only (install), never on upgrade. `etc_files`
    (path under /etc -> content, mode 0644) are local changes written into the
    deployment's /etc (the upper dir, or the copy): install puts root's SSH keys there.
    """
    from cfsboot.image import extract
    from setuproot.config import EtcMount

    repo = sysroot.repo
    root = sysroot.deploy_root
    root.mkdir(parents=True, exist_ok=True)
    objects = repo.path / "objects"
    if init_var and not sysroot.shared_var.exists():
        sysroot.shared_var.parent.mkdir(parents=True, exist_ok=True)
        tmp_var = sysroot.shared_var.with_name(f"{_VAR_TEMP_PREFIX}{os.getpid()}")
        remove_tree(tmp_var)
        var_node = extract.subtree(target.tree, "var")
        if var_node is not None:
            extract.extract(var_node, tmp_var, objects)
        else:
            tmp_var.mkdir(0o755)
        extract.sync_filesystem(tmp_var)
        tmp_var.rename(sysroot.shared_var)
        fsync_dir(sysroot.shared_var.parent)
    final = sysroot.deploy_dir(target.digest)
    tmp = root / f".{target.digest[:16]}.tmp-{os.getpid()}"
    remove_tree(tmp)
    tmp.mkdir(0o755)
    try:
        os.symlink(sysroot.var_link_target(), tmp / "var")
        etc_mode = target.config.etc
        if etc_mode is EtcMount.BIND:
            etc = extract.subtree(target.tree, "etc")
            if etc is None:
                die(f"image {target.digest[:12]}… has no /etc to copy (its etc.mount is bind)")
            extract.extract(etc, tmp / "etc", objects)
        elif etc_mode is EtcMount.OVERLAY:
            (tmp / "etc").mkdir(0o755)
            (tmp / "etc" / "upper").mkdir(0o755)
            (tmp / "etc" / "work").mkdir(0o700)
            _label_like(tmp / "etc" / "upper", target.tree, "etc")
        if etc_files:
            _write_etc_files(tmp / "etc" / ("upper" if etc_mode is EtcMount.OVERLAY else ""),
                             etc_files)  # fmt: skip
        (tmp / f"{target.digest}.origin").write_text(origin.serialise())
        extract.sync_filesystem(tmp)
        if final.exists() or final.is_symlink():
            remove_tree(final)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        remove_tree(tmp)
        raise


def _write_etc_files(etc: Path, files: Mapping[str, bytes]) -> None:
    for rel, content in files.items():
        path = etc / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with open(fd, "wb") as f:
            f.write(content)


def _label_like(path: Path, tree: Inode, image_path: str) -> None:
    """Give path the SELinux label of image_path in the boot image, if it has one.

    The overlay's root directory is its upper dir: unlabelled, /etc would show as
    unlabeled_t and so would every file created in it.
    """
    from cfsboot.image import extract, selabel  # not for status, which imports this module

    node = extract.subtree(tree, image_path)
    label = node.xattrs.get(selabel.XATTR) if node is not None else None
    if label is None:
        return
    try:
        os.setxattr(path, selabel.XATTR.decode(), label)
    except OSError as e:
        log.warning("cannot label %s %s: %s", path, label.decode(errors="replace"), e.strerror)


def remove_state(sysroot: Sysroot, depl: str) -> None:
    """Delete a deployment's state: renamed away first, so it is never seen half-deleted."""
    final = sysroot.deploy_dir(depl)
    if not final.exists():
        return
    doomed = sysroot.deploy_root / f".{depl[:16]}.del-{os.getpid()}"
    final.rename(doomed)
    fsync_dir(sysroot.deploy_root)
    fsutil.remove_tree(doomed)  # also enters the overlay's 0000 work dir
