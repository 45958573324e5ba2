"""cfsboot's own records under `state/cfsboot/`, for `cfsboot fsck`: pins and the cached update.

- `pinned/ID` (cfsboot.deploy.pins): a pin must name a deployment that exists. A pin
  of one that is gone keeps nothing; `--repair` removes it (never the pin of the
  protected deployment: the booted one, or offline the default one). A name that is
  not a full deployment ID is no pin (cfsboot ignores it, so a user who meant it is
  misled); `--repair` removes it. `pinned` must be a directory: anything else holds
  no pin and makes pin, gc and status fail, and is removed; a directory that cannot
  be read is left to a person.
- `cached-update.json` (cfsboot.deploy.updatecache): a file that cannot be read, is
  not JSON or is not `{"deployment": ID, "image": {...}}` is dropped by status
  without a word; `--repair` removes it (the next `cfsboot upgrade --check` writes
  it again). One naming a deployment that is gone is stale, not damage: a note.
- Temporary names of interrupted writes (`.NAME.cfsboot-tmp-…`) in either place are
  leftovers, removed like the state's other leftovers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cfsboot.composefs.repocheck import Problem
from cfsboot.deploy.fsck.context import Context
from cfsboot.deploy.fsck.state import StateCode
from cfsboot.deploy.pins import PINS_DIR
from cfsboot.deploy.updatecache import CACHED_UPDATE
from cfsboot.linux.fsutil import TEMP_MARKER

_ID_RE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")


def _leftover(rel: str) -> Problem:
    return Problem(StateCode.LEFTOVER, rel, "left by an interrupted write or removal", rel)


def _check_pins(ctx: Context) -> list[Problem]:
    path = ctx.sysroot.path / PINS_DIR
    if not os.path.lexists(path):
        return []
    if not path.is_dir():
        return [
            Problem(
                StateCode.PINS_NOT_DIR,
                PINS_DIR,
                "is not a directory: it holds no pin, and pin, gc and status cannot read it",
                PINS_DIR,
            )
        ]
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return [Problem(StateCode.PINS_UNREADABLE, PINS_DIR, f"cannot be read: {e.strerror}")]
    out: list[Problem] = []
    for name in names:
        rel = f"{PINS_DIR}/{name}"
        if TEMP_MARKER in name:
            out.append(_leftover(rel))
        elif not _ID_RE.fullmatch(name):
            out.append(
                Problem(
                    StateCode.PIN_BAD,
                    rel,
                    "not a pin (pins are named by a full deployment ID in lower-case hex):"
                    " cfsboot ignores it",
                    rel,
                )
            )
        elif not ctx.has_state(name):
            out.append(
                Problem(
                    StateCode.PIN_DANGLING,
                    rel,
                    f"pins deployment {name[:16]}…, which no longer exists",
                    name,
                )
            )
    return out


def _cached_update_damage(path: Path) -> str | None:
    """What is wrong with the cached-update file (None: nothing, or there is none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested
        return "is not JSON"
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("deployment"), str)
        or not _ID_RE.fullmatch(doc["deployment"])
        or not isinstance(doc.get("image"), dict)
    ):
        return 'is not a cached update ({"deployment": ID, "image": {...}})'
    return None


def check_tool_state(ctx: Context) -> tuple[list[Problem], list[Problem]]:
    """(problems, notes) of the pins and the cached update."""
    problems = _check_pins(ctx)
    notes: list[Problem] = []
    parent = (ctx.sysroot.path / CACHED_UPDATE).parent
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        names = []
    prefix = CACHED_UPDATE.rsplit("/", 1)[0]
    problems += [_leftover(f"{prefix}/{n}") for n in names if TEMP_MARKER in n]
    path = ctx.sysroot.path / CACHED_UPDATE
    why = _cached_update_damage(path)
    if why is not None:
        problems.append(
            Problem(
                StateCode.CACHED_UPDATE_DAMAGED,
                CACHED_UPDATE,
                f"{why}; status ignores it",
                CACHED_UPDATE,
            )
        )
    elif path.exists():
        depl = json.loads(path.read_bytes())["deployment"]
        if not ctx.has_state(depl):
            notes.append(
                Problem(
                    StateCode.CACHED_UPDATE_STALE,
                    CACHED_UPDATE,
                    f"found for deployment {depl[:16]}…, which no longer exists (the next"
                    " `cfsboot upgrade --check` replaces it)",
                    depl,
                )
            )
    return problems, notes
