"""The state's part of `cfsboot fsck`: deployments, the shared /var, the staged marker, leftovers.

Every deployment (`state/deploy/ID/`) needs its origin, its image in the
repository, its `var` link and the /etc directories its image's `[etc] mount`
mode uses (overlay: etc/upper and etc/work; bind: etc; transient and none:
nothing). The staged marker must name a deployment that exists, whose image
exists and that the staged menu boots first.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path

from cfsboot.composefs.repocheck import Problem
from cfsboot.deploy.fsck.context import Context
from cfsboot.deploy.origin import OriginError
from cfsboot.deploy.state import state_leftovers
from cfsboot.deploy.sysroot import StagedDeployment
from cfsboot.errors import CfsbootError
from setuproot.config import EtcMount
from setuproot.contract import DEPLOY_VAR_LINK_TARGET, STATE_DEPLOY_DIR

_HEX_RE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")


class StateCode(enum.StrEnum):
    NO_ORIGIN = "deployment-no-origin"
    BAD_ORIGIN = "deployment-bad-origin"
    NO_IMAGE = "deployment-no-image"
    NO_ETC = "deployment-no-etc"
    BAD_CONFIG = "deployment-bad-config"
    VAR_LINK = "deployment-var-link"
    NOT_IN_MENU = "deployment-not-in-menu"
    NO_SHARED_VAR = "shared-var-missing"
    MARKER_DAMAGED = "staged-marker-damaged"
    MARKER_DANGLING = "staged-marker-dangling"
    LEFTOVER = "leftover"
    UNEXPECTED = "unexpected-entry"
    # cfsboot's own records in state/cfsboot (cfsboot.deploy.fsck.toolstate)
    PIN_DANGLING = "pin-dangling"
    PIN_BAD = "pin-bad-name"
    PINS_NOT_DIR = "pins-not-a-directory"
    PINS_UNREADABLE = "pins-unreadable"
    CACHED_UPDATE_DAMAGED = "cached-update-damaged"
    CACHED_UPDATE_STALE = "cached-update-stale"


def _rel(ctx: Context, path: Path) -> str:
    try:
        return path.relative_to(ctx.sysroot.path).as_posix()
    except ValueError:
        return str(path)


def _etc_problem(ctx: Context, depl: str) -> Problem | None:
    """The /etc directories the image's mode needs (only when its tree was read)."""
    tree = ctx.trees.get(depl)
    if tree is None or ctx.repo is None:
        return None
    rel = f"{STATE_DEPLOY_DIR}/{depl}"
    from cfsboot.image.imagefiles import setup_root_config  # trees are read by the deep check

    try:
        mode = setup_root_config(ctx.repo, tree).etc
    except (CfsbootError, OSError) as e:
        return Problem(StateCode.BAD_CONFIG, rel, f"its image's setup-root config: {e}", depl)
    etc = ctx.sysroot.deploy_dir(depl) / "etc"
    need = {
        EtcMount.OVERLAY: [etc / "upper", etc / "work"],
        EtcMount.BIND: [etc],
    }.get(mode, [])
    missing = [_rel(ctx, p) for p in need if not p.is_dir()]
    if not missing:
        return None
    return Problem(
        StateCode.NO_ETC,
        rel,
        f"its /etc is mounted in {mode} mode but {', '.join(missing)} is missing",
        depl,
    )


def check_deployment(ctx: Context, depl: str) -> list[Problem]:
    rel = f"{STATE_DEPLOY_DIR}/{depl}"
    out: list[Problem] = []
    origin = ctx.origin(depl)
    if origin is None:
        out.append(
            Problem(
                StateCode.NO_ORIGIN,
                rel,
                f"no origin file ({depl[:16]}….origin): upgrade cannot tell which image it follows",
                depl,
            )
        )
    elif isinstance(origin, OriginError):
        out.append(Problem(StateCode.BAD_ORIGIN, rel, str(origin), depl))
    if ctx.images is not None and depl not in ctx.images:
        out.append(Problem(StateCode.NO_IMAGE, rel, "its image is not in the repository", depl))
    var = ctx.sysroot.deploy_dir(depl) / "var"
    try:
        target = os.readlink(var)
    except OSError:
        target = None
    if target != DEPLOY_VAR_LINK_TARGET:
        out.append(
            Problem(
                StateCode.VAR_LINK,
                rel,
                f"var is not a link to {DEPLOY_VAR_LINK_TARGET} (the shared /var)",
                depl,
            )
        )
    etc = _etc_problem(ctx, depl)
    if etc is not None:
        out.append(etc)
    return out


def _check_marker(ctx: Context) -> list[Problem]:
    path = ctx.sysroot.marker_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        return [Problem(StateCode.MARKER_DAMAGED, str(path), f"cannot be read: {e.strerror}")]
    where = str(path)
    try:
        marker = StagedDeployment.parse(data, name="the marker")
    except CfsbootError as e:
        return [Problem(StateCode.MARKER_DAMAGED, where, str(e))]
    d = marker.depl_id
    why = None
    if not ctx.has_state(d):
        why = "which has no state directory"
    elif ctx.images is not None and d not in ctx.images:
        why = "whose image is not in the repository"
    elif not ctx.staged_menu or ctx.staged_menu[0].deployment != d:
        why = "which no staged boot menu boots first"
    if why is None:
        return []
    return [Problem(StateCode.MARKER_DANGLING, where, f"names deployment {d[:16]}…, {why}", d)]


def check_state(ctx: Context) -> tuple[list[Problem], list[Problem], int]:
    """(problems, notes, number of deployments)."""
    problems: list[Problem] = []
    notes: list[Problem] = []
    try:
        names = sorted(os.listdir(ctx.sysroot.deploy_root))
    except FileNotFoundError:
        names = []
    in_menu = {m.deployment for m in (*ctx.live, *ctx.staged_menu)}
    deployments = [n for n in names if _HEX_RE.fullmatch(n)]
    for depl in deployments:
        problems += check_deployment(ctx, depl)
        if ctx.bl is not None and depl not in in_menu and depl not in ctx.protected:
            notes.append(
                Problem(
                    StateCode.NOT_IN_MENU,
                    f"{STATE_DEPLOY_DIR}/{depl}",
                    "no boot entry boots it (an interrupted staging left it; cfsboot gc"
                    " removes it)",
                    depl,
                )
            )
    leftovers = {p.name for p in state_leftovers(ctx.sysroot)}
    for n in names:
        if n not in deployments and n not in leftovers:
            problems.append(
                Problem(StateCode.UNEXPECTED, f"{STATE_DEPLOY_DIR}/{n}", "not a deployment")
            )
    for p in state_leftovers(ctx.sysroot):
        rel = _rel(ctx, p)
        problems.append(
            Problem(StateCode.LEFTOVER, rel, "left by an interrupted write or removal", rel)
        )
    if deployments and not ctx.sysroot.shared_var.is_dir():
        problems.append(
            Problem(
                StateCode.NO_SHARED_VAR,
                _rel(ctx, ctx.sysroot.shared_var),
                "the /var every deployment shares is missing",
            )
        )
    problems += _check_marker(ctx)
    return problems, notes, len(deployments)
