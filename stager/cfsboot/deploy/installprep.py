"""What `install` checks and prepares on its target before it writes a system there.

- `install to-filesystem` writes only into an empty root filesystem (bootc's
  rule: `lost+found`, and directories that hold only other filesystems' mount
  points such as `boot/efi`, count as empty), unless `--replace`: `wipe` first
  removes everything on that filesystem (never the running root, never across
  mount points), `alongside` leaves the files there alone and puts the
  repository (`composefs/`) and the state (`state/`) next to them.
- `--root-ssh-authorized-keys`: like bootc, a tmpfiles.d line written into the
  new deployment's /etc writes the keys into root's home at boot when they are
  missing. The home is resolved in the image: /root a symlink into /var (bootc
  images: /var/roothome) puts them in the shared /var, kept across updates; a
  /root directory is on the read-only image and only a transient root can take
  them.
"""

from __future__ import annotations

import base64
import enum
import os
import stat
from pathlib import Path

from cfsboot.composefs.tree import Inode, lookup
from cfsboot.errors import die
from cfsboot.linux import mountinfo
from setuproot.config import Config, EtcMount
from setuproot.contract import REPO_DIR

LOST_FOUND = "lost+found"
STATE_DIR = "state"
ROOT_SSH_TMPFILES = "tmpfiles.d/cfsboot-root-ssh.conf"  # under /etc
RUNNING_ROOTS = ("/", "/sysroot")


class Replace(enum.StrEnum):
    """bootc's `install to-filesystem --replace`."""

    WIPE = "wipe"
    ALONGSIDE = "alongside"


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: e.name)


def contents(root: Path) -> list[Path]:
    """What makes `root` not empty, shallowest first: everything on its filesystem except
    a top-level lost+found, other filesystems mounted below it, and the directories
    leading to those (which are kept)."""
    top = os.path.realpath(root)
    try:
        mounts = mountinfo.read()
    except OSError:
        mounts = ()
    points = {m.mount_point for m in mounts if m.mount_point.startswith(top.rstrip("/") + "/")}
    found: list[Path] = []
    todo = [top]
    while todo:
        directory = todo.pop()
        for e in _entries(Path(directory)):
            if directory == top and e.name == LOST_FOUND or e.path in points:
                continue
            prefix = e.path + "/"
            if e.is_dir(follow_symlinks=False) and any(p.startswith(prefix) for p in points):
                todo.append(e.path)  # only the way to a mount point: kept
            else:
                found.append(root / os.path.relpath(e.path, top))
    return found


def _is_running_root(root: Path) -> bool:
    st = os.stat(root)
    for other in RUNNING_ROOTS:
        try:
            o = os.stat(other)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def remove_tree_here(path: Path, dev: int) -> None:
    """Remove `path` (a file, or a directory with nothing of another filesystem below it),
    bottom up, iteratively."""
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    stack: list[tuple[Path, bool]] = [(path, False)]
    while stack:
        d, visited = stack.pop()
        if visited:
            d.rmdir()
            continue
        stack.append((d, True))
        for e in _entries(d):
            st = e.stat(follow_symlinks=False)
            if st.st_dev != dev:
                die(f"{e.path} is another filesystem mounted inside {path}")
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(e.path), False))
            else:
                os.unlink(e.path)


def prepare_root(root: Path, replace: Replace | None) -> None:
    """Refuse a non-empty root without --replace; wipe it for --replace=wipe."""
    if not root.is_dir():
        die(f"{root} is not a directory", hint="mount the root filesystem first")
    for name, what in ((REPO_DIR, "a composefs repository"), (STATE_DIR, "deployment state")):
        if (root / name).exists():
            die(f"{root} already has {what} ({root / name})",
                hint="install onto another filesystem, or remove it first")  # fmt: skip
    if replace is Replace.ALONGSIDE:
        return
    if replace is Replace.WIPE and _is_running_root(root):
        die(f"{root} is the running system's root; --replace=wipe would delete it",
            hint="use --replace=alongside")  # fmt: skip
    found = contents(root)
    if not found:
        return
    if replace is None:
        shown = ", ".join(str(p.relative_to(root)) for p in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        die(f"{root} is not empty: it has {shown}{more}",
            hint="install onto an empty filesystem, or add --replace=alongside (keep"
            " those files) or --replace=wipe (delete them)")  # fmt: skip
    dev = os.lstat(root).st_dev
    for path in found:
        remove_tree_here(path, dev)


def root_home(tree: Inode) -> str:
    """Where root's home is in the booted system: /root, or where its symlink leads."""
    node = lookup(tree, b"root")
    if node is not None and node.is_symlink() and node.payload is not None:
        target = os.fsdecode(node.payload)
        return os.path.normpath(target if target.startswith("/") else "/" + target)
    return "/root"


def ssh_keys_tmpfiles(keys: bytes, tree: Inode, config: Config, *, where: str) -> dict[str, bytes]:
    """{path under /etc: content} that puts `keys` in root's authorized_keys at boot."""
    if not keys.strip():
        die(f"{where} has no keys")
    home = root_home(tree)
    if config.etc not in (EtcMount.OVERLAY, EtcMount.BIND):
        die(f"the image's /etc is {config.etc.value}: root's SSH keys would be lost at"
            " every boot", hint="use an image whose etc.mount is overlay or bind")  # fmt: skip
    if not home.startswith("/var/") and not config.root_transient:
        die(f"root's home {home} is on the read-only image: the SSH keys cannot be written"
            " there at boot", hint="make /root a symlink to var/roothome in the image, as"
            " bootc images do (or make its root transient)")  # fmt: skip
    data = base64.b64encode(keys if keys.endswith(b"\n") else keys + b"\n").decode()
    text = (
        "# Root's SSH keys, from `cfsboot install --root-ssh-authorized-keys`: written at\n"
        "# boot when missing (remove this file and the keys to revoke them).\n"
        f"d {home}/.ssh 0700 root root -\n"
        f"f~ {home}/.ssh/authorized_keys 0600 root root - {data}\n"
    )
    return {ROOT_SSH_TMPFILES: text.encode()}
