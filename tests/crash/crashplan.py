"""What the crash harness runs: the images, the scenarios, and the next run after a crash."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crashdisk import (
    DIGEST_NAMES,
    STAGED_ENTRIES,
    Backend,
    Machine,
    Seen,
    Servers,
    cfsboot,
    check_boots,
    disk_names,
    esp_path,
)

from cfstest.osimages import OsOptions

# ---------------------------------------------------------------------------------------
# Images, systems and the operations
# ---------------------------------------------------------------------------------------

# v1 -> v2 changes the kernel (switch copies boot files) and /etc (finalize merges);
# v3 shares v2's kernel; v4 has its own. gc after v2, v3, v4 drops v1 (and its kernel
# directory) and v2 (whose kernel directory v3 still boots).
VERSIONS: dict[str, OsOptions] = {
    "v1": {"kernel": "k1"},
    "v2": {"kernel": "k2", "etc": {"added-by-v2": b"new file of v2\n"}},
    "v3": {"kernel": "k2"},
    "v4": {"kernel": "k3"},
}


@dataclass(frozen=True)
class Scenario:
    name: str
    op: str  # switch, finalize, rollback, gc, bless: what runs (see `recoveries`)
    argv: tuple[str, ...]
    pre: str  # the system it starts from (see `systems`)
    after_crash: tuple[str, ...]  # versions the default may boot right after a crash
    # Crash-free runs from `pre` to each default the next run may leave, ending with gc.
    clean: dict[str, tuple[tuple[str, ...], ...]]
    backends: tuple[Backend, ...] = tuple(Backend)


SWITCH = ("switch", "@v2", "-q")
FINALIZE = ("finalize-staged",)
ROLLBACK = ("rollback",)
GC = ("gc",)
BLESS = ("bless", "--deployment", "%v2")
SCENARIOS = (
    # Staging never touches the live menu: the old default boots at every point.
    Scenario("switch", "switch", SWITCH, "installed", ("v1",), {"v2": (SWITCH, FINALIZE, GC)}),
    # The exchange of the staged and the live menu is the one step that changes the default.
    Scenario("finalize", "finalize", FINALIZE, "staged-v2", ("v1", "v2"), {"v2": (FINALIZE, GC)}),
    # The same where loader/entries and loader/entries.staged lie in different sectors of
    # the FAT directory: the exchange takes two sector writes (see cfsboot.boot.fat).
    Scenario(
        "finalize-split",
        "finalize",
        FINALIZE,
        "staged-v2-split",
        ("v1", "v2"),
        {"v2": (FINALIZE, GC)},
        (Backend.FAT,),
    ),
    # From [v2, v1] with v3 staged: the staged one is dropped, then v1 becomes the default.
    Scenario(
        "rollback",
        "rollback",
        ROLLBACK,
        "v2-with-v3-staged",
        ("v2", "v1"),
        {"v1": (ROLLBACK, GC), "v2": (ROLLBACK, ROLLBACK, GC)},
    ),
    # From [v4, v3, v2, v1]: v2 and v1 go; v4 is the default throughout.
    Scenario("gc", "gc", GC, "four-deployed", ("v4",), {"v4": (GC, GC)}),
    # From [v2 on trial (counted once by the boot loader), v1]: its entry loses the counter.
    Scenario("bless", "bless", BLESS, "v2-on-trial", ("v2",), {"v2": (BLESS, GC)}),
)


def with_refs(argv: Sequence[str], refs: dict[str, str]) -> list[str]:
    """`@v2`: the image reference of v2; `%v2`: its deployment id."""
    return [
        refs[a[1:]] if a.startswith("@") else DIGEST_NAMES[a[1:]] if a.startswith("%") else a
        for a in argv
    ]


# ---------------------------------------------------------------------------------------
# Running the operation again
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What the next run does and what it must leave: its commands, the default after it."""

    label: str
    commands: tuple[tuple[str, ...], ...]
    expect: str  # version


# A command that must fail, saying this (the finalize that finds no staged menu).
STAGE_AGAIN_HINT = "run the switch or upgrade again"
REFUSED_FINALIZE = ("!", *FINALIZE)


def recoveries(sc: Scenario, crashed: Seen, has_marker: bool) -> list[tuple[Recovery, bool]]:
    """The next runs to try after a crash, each with: drop the run directory first (a reboot)?"""
    by_digest = {d: v for v, d in DIGEST_NAMES.items()}
    default = by_digest[crashed.default]
    if sc.op == "switch":
        return [(Recovery("switch again", (SWITCH, FINALIZE), "v2"), False)]
    if sc.op == "finalize":
        out = []
        staged = esp_path(crashed.view, STAGED_ENTRIES, fat=True)
        if has_marker and staged is None and default == "v1":
            # The FAT exchange's window lost the staged menu (cfsboot.boot.fat): finalize says
            # so and what to do, and the old default boots until then.
            rec = Recovery(
                "finalize again, then switch again", (REFUSED_FINALIZE, SWITCH, FINALIZE), "v2"
            )
            out.append((rec, False))
        elif has_marker:
            # Killed without a reboot (a manual finalize-staged): the shutdown runs it again.
            out.append((Recovery("finalize again", (sc.argv,), "v2"), False))
        # After a power cut /run is empty: the admin sees the old default and switches again.
        redo = (SWITCH, FINALIZE) if default == "v1" else ()
        out.append((Recovery("reboot, switch again", redo, "v2"), True))
        return out
    if sc.op == "rollback":
        # rollback toggles: run again, it must make the other one of the two the default.
        other = "v1" if default == "v2" else "v2"
        return [(Recovery("rollback again", (sc.argv,), other), False)]
    if sc.op == "bless":
        return [(Recovery("bless again", (sc.argv,), "v2"), False)]
    assert sc.op == "gc"
    return [(Recovery("gc again", (sc.argv,), "v4"), False)]


class References:
    """What crash-free runs leave on the disk, by scenario, backend and resulting default."""

    def __init__(self, work: Path, servers: Servers, refs: dict[str, str]) -> None:
        self.work = work
        self.servers = servers
        self.refs = refs
        self.lock = threading.Lock()
        self.cache: dict[tuple[str, Backend, str], set[str]] = {}

    def names(self, sc: Scenario, pre: Machine, expect: str) -> set[str]:
        key = (sc.name, pre.backend, expect)
        with self.lock:
            if key not in self.cache:
                m = pre.copy(self.work / f"reference-{sc.name}-{pre.backend}-{expect}")
                for command in sc.clean[expect]:
                    cfsboot(self.servers, m, *with_refs(command, self.refs))
                seen = check_boots(m, [DIGEST_NAMES[expect]])
                self.cache[key] = disk_names(m, seen.view)
                shutil.rmtree(m.path)
            return self.cache[key]


def check_same_names(got: set[str], want: set[str]) -> None:
    def short(names: set[str]) -> list[str]:
        out = []
        for n in sorted(names)[:6]:
            for v, d in DIGEST_NAMES.items():
                n = n.replace(d, v)
            out.append(n)
        return out

    assert got == want, (
        "the disk differs from a crash-free run's: extra"
        f" {short(got - want)}, missing {short(want - got)}"
    )
