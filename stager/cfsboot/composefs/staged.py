"""Moving a batch's staged objects (ObjectStore.batch) to their names in `objects/`.

A batch stages each object as `STAGING/XX/REST`, the layout of `objects/` itself,
and moves them once their data is durable (the caller's syncfs before, and after
for the names). Where `objects/` has no `XX/` yet, as in a new repository, the
whole staged `XX/` is renamed there in one step (RENAME_NOREPLACE: an `XX/` made
meanwhile is never replaced): 256 renames for a first import instead of one per
object (13,700 for the test OS image, 0.18 s). Elsewhere, and whenever a staged
directory holds anything but the batch's objects (a write that failed halfway
leaves its file), objects are moved one by one.
"""

from __future__ import annotations

import errno
import os

DIR_MODE = 0o755  # as objectstore's: objects are read by overlayfs for every user


def make_dir(path: str) -> bool:
    """mkdir `path` with DIR_MODE, whatever the umask; False if it exists already."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, DIR_MODE)
    return True


def move_staged(
    root: str,
    pending: dict[str, str],
    known_dirs: set[str],
    *,
    whole_dirs: bool,
    exact: bool = False,
) -> None:
    """Rename every staged object (`pending`: hex digest -> staged path) to `root`/XX/REST.

    `known_dirs`: the XX/ of `root` known to exist; those this call makes are added.
    `whole_dirs`: the batch has ended (nothing is staged any more), so a staged XX/ may go
    as a whole. `exact`: no staged write failed, so a staged XX/ holds nothing but its
    objects (not listed to make sure: 256 directories of a first import, 0.01 s).
    """
    by_dir: dict[str, list[str]] = {}
    for hexdigest in sorted(pending):
        by_dir.setdefault(hexdigest[:2], []).append(hexdigest)
    for sub, digests in by_dir.items():
        if whole_dirs and sub not in known_dirs and _move_dir(root, sub, digests, pending, exact):
            known_dirs.add(sub)
            continue
        if sub not in known_dirs:
            make_dir(f"{root}/{sub}")
            known_dirs.add(sub)
        for hexdigest in digests:
            # Same content under the same name: replacing a racing copy is harmless.
            os.rename(pending[hexdigest], f"{root}/{sub}/{hexdigest[2:]}")


def _move_dir(
    root: str, sub: str, digests: list[str], pending: dict[str, str], exact: bool
) -> bool:
    """Rename the staged XX/ holding exactly `digests` to `root`/XX if that does not exist."""
    staged_dir = os.path.dirname(pending[digests[0]])
    if any(os.path.dirname(pending[h]) != staged_dir for h in digests):
        return False
    if os.path.lexists(f"{root}/{sub}"):
        return False
    if not exact and sorted(os.listdir(staged_dir)) != [h[2:] for h in digests]:
        return False
    from cfsboot.linux.syscalls import RENAME_NOREPLACE, renameat2  # ctypes: imports only

    try:  # (the staged XX/ has its final mode since its mkdir: durable with its files)
        renameat2(staged_dir, f"{root}/{sub}", RENAME_NOREPLACE)
    except OSError as e:
        # Made meanwhile, or no renameat2 (kernel, filesystem or C library): one by one.
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EINVAL, errno.ENOSYS):
            raise
        return False
    return True
