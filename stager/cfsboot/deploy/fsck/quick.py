"""What is wrong with a physical root that can be seen without reading objects or boot
files: the part of `cfsboot fsck` that status and gc run first, to warn about a broken
state instead of tripping on it. Its own module, so that `status` (run most) does not
import the full check and its repairs (cfsboot.deploy.fsck.run).
"""

from __future__ import annotations

from cfsboot.boot.bootloader import Bootloader, BootloaderKind
from cfsboot.composefs.repocheck import Code, Problem, quick_layout
from cfsboot.deploy.fsck.context import Context
from cfsboot.deploy.fsck.esp import check_esp
from cfsboot.deploy.fsck.state import StateCode, check_state
from cfsboot.deploy.fsck.toolstate import check_tool_state
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import current_deployment
from cfsboot.errors import CfsbootError
from cfsboot.linux.lazylog import getLogger

log = getLogger(__name__)  # imports logging when it logs (lazylog)


def menus(ctx: Context) -> None:
    """Read the live and staged menus and the deployments no repair may touch into `ctx`."""
    bl = ctx.bl
    if bl is None:
        return
    ctx.live = bl.menu()
    ctx.staged_menu = bl.menu(staged=True) if bl.has_staged() else []
    current = current_deployment(ctx.sysroot, bl)
    ctx.protected = frozenset(d for d in (ctx.sysroot.booted(), current) if d)


_QUIET_CODES = {Code.LEFTOVER}  # a concurrent writer's temporary names: gc's to collect


def quick_problems(sysroot: Sysroot, bl: Bootloader) -> list[Problem]:
    """What is wrong that can be seen without reading objects or boot files."""
    problems: list[Problem] = []
    ctx = Context(sysroot, None, bl, deep=False)
    try:
        repo = sysroot.repo
        layout = quick_layout(repo)
        ctx.repo, ctx.images = repo, set(layout.images)
        problems += layout.problems
    except CfsbootError as e:
        problems.append(Problem("repository", str(sysroot.repo_path), str(e)))
    menus(ctx)
    problems += check_state(ctx)[0]
    problems += check_tool_state(ctx)[0]
    if bl.kind is not BootloaderKind.NONE:  # --bootloader none: no ESP of cfsboot's
        problems += check_esp(ctx).problems
    return [p for p in problems if p.code not in _QUIET_CODES]


def warn_problems(sysroot: Sysroot, bl: Bootloader) -> list[Problem]:
    """quick_problems, each logged as a warning (one line), with one hint at the end."""
    problems = quick_problems(sysroot, bl)
    for p in problems:
        log.warning("%s", p.line())
        if p.code in (StateCode.NO_ORIGIN, StateCode.BAD_ORIGIN):
            sysroot.origin_reported.add(p.subject)
    if problems:
        log.warning("`cfsboot fsck` checks everything, `cfsboot fsck --repair` fixes what is safe")
    return problems
