"""Kernel arguments of boot entries: install-time ones, kargs.d, composefs= (or composefs.digest=).

kargs.d files themselves are read by cfsboot.image.kargsd.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cfsboot.errors import die
from setuproot.contract import KARG, KARG_DIGEST, ComposefsKarg, KargStyle

# Why --karg-style cannot apply to an image that ships a UKI.
UKI_STYLE_SEALED = (
    "a UKI's sealed command line spells its composefs karg"
    " (build it with cfsboot container ukify --karg-style)"
)


def karg_key(arg: str) -> str:
    return arg.split("=", 1)[0]


def is_composefs_karg(arg: str) -> bool:
    """Whether setup-root would read `arg` as a composefs karg: it drops every double
    quote (as the kernel does around values), so `"composefs=X"` is one too."""
    return karg_key(arg.replace('"', "")) in (KARG, KARG_DIGEST)


def karg_style(args: Iterable[str]) -> KargStyle | None:
    """How `args` spell their (first) composefs karg; None when they have none."""
    for arg in args:
        key = karg_key(arg)
        if key == KARG_DIGEST:
            return KargStyle.DIGEST
        if key == KARG:
            return KargStyle.COMPOSEFS
    return None


def set_composefs_karg(
    args: Sequence[str], karg: ComposefsKarg, style: KargStyle | None = None
) -> list[str]:
    """`args` with every composefs karg replaced by `karg` (in the first one's place, or last).

    style: how to spell it; None keeps the spelling `args` use (composefs= if they have none).
    """
    if style is None:
        style = karg_style(args) or KargStyle.COMPOSEFS
    out: list[str] = []
    placed = False
    for arg in args:
        if is_composefs_karg(arg):
            if not placed:
                out.append(karg.to_karg(style))
                placed = True
        else:
            out.append(arg)
    if not placed:
        out.append(karg.to_karg(style))
    return out


def dedupe(args: Iterable[str]) -> list[str]:
    """Drop exact repeats of an argument, keeping the first (twice means nothing more)."""
    seen: set[str] = set()
    out: list[str] = []
    for arg in args:
        if arg not in seen:
            seen.add(arg)
            out.append(arg)
    return out


def install_kargs(
    *,
    install: Sequence[str],
    composefs: ComposefsKarg,
    kargs_d: Sequence[str],
    style: KargStyle = KargStyle.COMPOSEFS,
) -> list[str]:
    """The first deployment's arguments in bootc's order: install ones (`rw`, `--karg`),
    the composefs karg, then the image's kargs.d. A composefs karg given anywhere else is replaced.
    """
    base = [a for a in install if not is_composefs_karg(a)]
    rest = [a for a in kargs_d if not is_composefs_karg(a)]
    return dedupe([*base, composefs.to_karg(style), *rest])


def upgrade_kargs(
    current: Sequence[str],
    *,
    old_kargs_d: Sequence[str],
    new_kargs_d: Sequence[str],
    composefs: ComposefsKarg,
    style: KargStyle | None = None,
) -> list[str]:
    """A new deployment's arguments from the booted entry's, as bootc computes them on upgrade.

    Drop what only the old image's kargs.d had, add what only the new one has,
    swap the composefs karg (spelt as `current` spells it unless `style` says).
    Arguments the admin added by hand stay.
    """
    removed = set(old_kargs_d) - set(new_kargs_d)
    added = [a for a in new_kargs_d if a not in set(old_kargs_d)]
    kept = [a for a in current if a not in removed]
    if style is None:
        style = karg_style(current) or KargStyle.COMPOSEFS
    merged = [*kept, *(a for a in added if a not in kept)]
    return dedupe(set_composefs_karg(merged, composefs, style))


def check_karg_deletes(deletes: Sequence[str]) -> None:
    """Refuse a --karg-delete that names nothing, or the composefs karg cfsboot owns."""
    for arg in deletes:
        if not arg or any(c.isspace() for c in arg):
            die(f"--karg-delete {arg!r}: expected one KEY or KEY=VALUE")
        if is_composefs_karg(arg):
            die(
                f"--karg-delete {arg}: the composefs karg names the image to boot",
                hint="cfsboot writes it for every deployment",
            )


def delete_kargs(args: Sequence[str], deletes: Sequence[str]) -> tuple[list[str], list[str]]:
    """`args` without what `deletes` names (bootc's --karg-delete), and the deletes that
    matched nothing.

    `KEY` removes every argument with that key (`KEY`, `KEY=anything`); `KEY=VALUE`
    removes that exact argument only.
    """
    kept = list(args)
    unmatched: list[str] = []
    for d in deletes:
        if "=" in d:
            gone = [a for a in kept if a == d]
        else:
            gone = [a for a in kept if karg_key(a) == d]
        if not gone:
            unmatched.append(d)
        kept = [a for a in kept if a not in gone]
    return kept, unmatched
