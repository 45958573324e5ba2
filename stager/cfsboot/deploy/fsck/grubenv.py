"""The ESP's GRUB environment block (`EFI/BOOT/grubenv`): boot counting's state on GRUB.

The menu counts an entry's tries in the block (cfsboot.boot.counting). When it is
missing, GRUB's menu skips counting (`[ -f ... ]`); when it is damaged, GRUB's
`load_env` and `save_env` fail ("invalid environment block") and the entry boots as
if it had all its tries: either way a deployment on trial that fails to boot is never
passed over, and nobody is told. cfsboot reads such a block as "nothing counted" too.

Missing is fine when no menu entry is counted (boot counting off: no block was ever
written). With counted entries, what the block held is lost: which entries were
blessed (`good`) and which ran out of tries. A new block would put every one of them
on trial again from 0 tries (a blessed default could then be rolled back by a boot
that does not reach boot-complete.target), so that is left to a person. A damaged
block that no entry counts in holds nothing cfsboot needs: --repair writes an
empty one.
"""

from __future__ import annotations

import enum

from cfsboot.boot.counting import GrubEnv, GrubEnvError
from cfsboot.boot.grubloader import Grub
from cfsboot.composefs.repocheck import Problem
from cfsboot.deploy.fsck.context import Context


class GrubEnvCode(enum.StrEnum):
    MISSING = "grubenv-missing"
    DAMAGED = "grubenv-damaged"


def _counted(n: int) -> str:
    return f"{n} counted entr{'y' if n == 1 else 'ies'}"


def check_grubenv(ctx: Context) -> list[Problem]:
    """What is wrong with the environment block of a GRUB menu (nothing for systemd-boot)."""
    bl = ctx.bl
    if not isinstance(bl, Grub):
        return []
    keys = bl.counter_keys()
    path = bl.env_path
    lost = (
        f": GRUB counts no boot tries, so a deployment on trial that fails is not passed over"
        f" ({_counted(len(keys))}; which were blessed or out of tries is lost: `grub-editenv"
        f" ESP/{path} create`, or the next staging, starts counting again, every one from 0"
        " tries)"
    )
    if not bl.esp.exists(path):
        if not keys:
            return []  # boot counting is off: no block was ever written
        return [Problem(GrubEnvCode.MISSING, path, "missing" + lost, path)]
    try:
        GrubEnv.parse(bl.esp.read(path))
    except GrubEnvError as e:
        why = lost if keys else ": GRUB cannot use it (no entry counts tries in it yet)"
        return [Problem(GrubEnvCode.DAMAGED, path, f"damaged ({e}){why}", path)]
    return []


def can_rewrite(ctx: Context) -> bool:
    """Whether an empty block loses nothing: no menu entry counts tries in the block."""
    return isinstance(ctx.bl, Grub) and not ctx.bl.counter_keys()
