"""`cfsboot fsck`: check a physical root (repository, state, ESP) or a bare repository.

The full check reads every object once (cfsboot.composefs.repocheck), the
records (cfsboot.image.recordcheck), the state and the ESP with the boot
files' contents. With `repair`, what is safe is repaired (cfsboot.deploy.fsck.repair)
and everything is checked again, so the report says what is left. The
repository lock is held throughout: nothing writes meanwhile, and nothing a
running import has not finished is mistaken for a leftover.

`quick_problems` (cfsboot.deploy.fsck.quick) is the cheap part (no object, no
boot file is read) that status and gc run first, to warn about a broken state
instead of tripping on it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cfsboot.boot.bootloader import Bootloader, detect
from cfsboot.boot.esp import DirEsp, Esp, MtoolsEsp
from cfsboot.boot.espfind import open_esp
from cfsboot.boot.grubloader import Grub
from cfsboot.composefs.objectcheck import Verdict
from cfsboot.composefs.repocheck import Code, Problem, RepoCheck, check_repository
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.fsck import refetch
from cfsboot.deploy.fsck.context import Context
from cfsboot.deploy.fsck.esp import check_esp
from cfsboot.deploy.fsck.loaderbin import check_loader_binary
from cfsboot.deploy.fsck.quick import menus as _menus
from cfsboot.deploy.fsck.repair import (
    DROP_ENTRY,
    DROP_MARKER,
    DROP_PIN,
    DROP_STAGED_MENU,
    RECOPY,
    REMOVE,
    REWRITE_ENV,
    attempt,
    enable_object_verity,
    recopy_boot_files,
    remove_leftover,
    repair_text,
)
from cfsboot.deploy.fsck.report import FsckReport, Group, Section
from cfsboot.deploy.fsck.state import check_state
from cfsboot.deploy.fsck.toolstate import check_tool_state
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.unmanaged import RECORD, is_unmanaged
from cfsboot.errors import CfsbootError
from cfsboot.image.recordcheck import Records, check_records, keep_stream


@dataclass
class Findings:
    sections: list[Section]
    ctx: Context | None = None
    check: RepoCheck | None = None
    plan: refetch.Plan = field(default_factory=refetch.Plan)


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _check_repo(repo: Repository, keep_trees: set[str]) -> tuple[RepoCheck, Records, str]:
    check = check_repository(repo, keep_trees=keep_trees, keep_stream=keep_stream)
    records = check_records(check, str(repo.algorithm))
    layout = check.layout
    mode = "insecure" if repo.insecure else "secure"
    summary = (
        f"{len(layout.objects)} objects ({_size(check.bytes_read)}), {len(layout.images)} images,"
        f" {len(layout.streams)} streams, {len(layout.tags)} tags ({repo.algorithm}, {mode})"
    )
    return check, records, summary


def _sections(sysroot: Sysroot | None, repo_where: str, esp_where: str) -> list[Section]:
    out = [Section(Group.REPOSITORY, repo_where)]
    if sysroot is not None:
        out += [Section(Group.STATE, str(sysroot.path)), Section(Group.ESP, esp_where)]
    return out


def examine(
    sysroot: Sysroot | None, repo: Repository | None, bl: Bootloader | None, f: Findings
) -> None:
    """Run every check into `f` (sections whose error is set are skipped)."""
    repo_s = f.sections[0]
    records = Records()
    ctx = Context(sysroot, repo, bl, deep=True) if sysroot is not None else None
    if ctx is not None and bl is not None:
        try:
            _menus(ctx)
        except (CfsbootError, OSError) as e:  # a menu that cannot be read: the ESP is unchecked
            f.sections[2].error = str(e)
            ctx.bl = None
    wanted_trees = set(sysroot.deployment_dirs()) if sysroot is not None else set()
    if repo is not None and repo_s.error is None:
        f.check, records, repo_s.summary = _check_repo(repo, wanted_trees)
        # After check_records: it adds the objects layer records need to the missing ones.
        repo_s.problems = f.check.all_problems() + records.problems
    if ctx is not None:
        if f.check is not None:
            ctx.images, ctx.trees = set(f.check.layout.images), f.check.trees
        _state_and_esp(ctx, f.sections)
        f.ctx = ctx
    if f.check is not None:
        origins = _origins(ctx)
        wanted = set()
        if ctx is not None and ctx.images is not None:
            wanted = {d for d in wanted_trees if d not in ctx.images}
        f.plan = refetch.plan(f.check, records, origins, wanted)
    _annotate(f)


def _origins(ctx: Context | None) -> dict[str, str]:
    if ctx is None:
        return {}
    out = {}
    for d in ctx.sysroot.deployment_dirs():
        o = ctx.good_origin(d)
        if o is not None:
            out[d] = o.image
    return out


def _state_and_esp(ctx: Context, sections: list[Section]) -> None:
    state_s, esp_s = sections[1], sections[2]
    try:
        state_s.problems, state_s.notes, n = check_state(ctx)
        more, notes = check_tool_state(ctx)
        state_s.problems += more
        state_s.notes += notes
        state_s.summary = f"{n} deployment(s)"
    except (CfsbootError, OSError) as e:
        state_s.error = str(e)
    if esp_s.error is None and ctx.bl is not None:
        try:
            found = check_esp(ctx)
        except (CfsbootError, OSError) as e:
            esp_s.error = str(e)
        else:
            esp_s.problems, esp_s.notes = check_loader_binary(ctx.bl) + found.problems, found.notes
            n = found.entries
            esp_s.summary = f"{ctx.bl.kind}, {n} entr{'y' if n == 1 else 'ies'}"


def _annotate(f: Findings) -> None:
    for s in f.sections:
        s.problems = [
            Problem(p.code, p.path, p.message, p.subject, repair_text(s.group, p, f.ctx, f.plan))
            for p in s.problems
        ]


# -- repairs ---------------------------------------------------------------------------


def _repair_repository(repo: Repository, f: Findings, done: list[str], failed: list[str]) -> None:
    for p in f.sections[0].problems:
        if p.code == Code.LEFTOVER:
            attempt(done, failed, f"removed {p.path}", partial(remove_leftover, repo.path / p.path))
        elif p.code == Verdict.NO_VERITY:
            what = f"enabled fs-verity on {p.path}"
            attempt(done, failed, what, partial(enable_object_verity, repo, p.subject))
    if f.check is not None and f.plan.jobs:
        ok, bad = refetch.run(repo, f.check, f.plan)
        done += ok
        failed += bad


def _repair_state_and_esp(ctx: Context, f: Findings, done: list[str], failed: list[str]) -> None:
    sysroot, bl = ctx.sysroot, ctx.bl
    state_s, esp_s = f.sections[1], f.sections[2]
    for p in state_s.problems:
        if (p.repair and p.code == Code.LEFTOVER) or p.repair in (REMOVE, DROP_PIN):
            what = f"removed {p.path}"
            attempt(done, failed, what, partial(remove_leftover, sysroot.path / p.path))
    if any(p.repair == DROP_MARKER for p in state_s.problems):
        # The marker first: without it nothing finalizes whatever the staged menu holds.
        attempt(done, failed, "removed the staged-deployment marker", sysroot.clear_staged)
        if bl is not None and bl.has_staged():
            attempt(done, failed, "removed the staged menu", bl.discard_staged)
    if bl is None:
        return
    repairs = {p.repair for p in esp_s.problems}
    if any(p.code == Code.LEFTOVER for p in esp_s.problems):
        attempt(done, failed, "recovered interrupted ESP writes", lambda: "; ".join(bl.recover()))
    if DROP_STAGED_MENU in repairs and bl.has_staged() and not sysroot.marker_path.exists():
        attempt(done, failed, "removed the staged menu without a marker", bl.discard_staged)
    for p in esp_s.problems:
        if p.repair == RECOPY:
            what = f"copied the boot files of {p.subject[:16]}… again"
            attempt(done, failed, what, partial(recopy_boot_files, ctx, p.subject))
    if any(p.repair == REWRITE_ENV for p in esp_s.problems) and isinstance(bl, Grub):
        attempt(done, failed, "wrote an empty GRUB environment block", bl.reset_env)
    dangling = {p.subject.partition(":")[2] for p in esp_s.problems if p.repair == DROP_ENTRY}
    if dangling and not ctx.staged_pending:
        live = bl.menu()
        if any(m.deployment not in dangling for m in live):
            names = ", ".join(f"{d[:16]}…" for d in sorted(dangling))
            what = f"removed the boot entries of {names}"
            attempt(done, failed, what, partial(bl.drop_entries, dangling))


def repair(
    sysroot: Sysroot | None, repo: Repository | None, f: Findings
) -> tuple[list[str], list[str]]:
    """Do every repair the findings offer: (done, failed), one line each."""
    done: list[str] = []
    failed: list[str] = []
    if repo is not None and f.sections[0].error is None:
        _repair_repository(repo, f, done, failed)
    if sysroot is not None and f.ctx is not None:
        _repair_state_and_esp(f.ctx, f, done, failed)
    return done, failed


# -- entry points ----------------------------------------------------------------------


def _run(
    sysroot: Sysroot | None,
    repo: Repository | None,
    bl: Bootloader | None,
    sections: list[Section],
    *,
    do_repair: bool,
) -> FsckReport:
    start = time.perf_counter()
    f = Findings(sections)
    examine(sysroot, repo, bl, f)
    report = FsckReport(f.sections)
    if do_repair and any(p.repair for p in report.problems):
        report.repaired, report.not_repaired = repair(sysroot, repo, f)
        again = Findings([Section(s.group, s.where, error=s.error) for s in sections])
        examine(sysroot, repo, bl, again)
        report.sections = again.sections
    report.seconds = time.perf_counter() - start
    return report


def _esp_where(esp: Esp) -> str:
    if isinstance(esp, DirEsp):
        return str(esp.root)
    if isinstance(esp, MtoolsEsp):
        return esp.drive
    return type(esp).__name__


def fsck_sysroot(
    path: Path, *, esp: str | None, run_dir: Path | None, do_repair: bool
) -> FsckReport:
    """Check (and repair) the physical root at `path`; a CfsbootError when it is not one."""
    sysroot = Sysroot(path, run_dir=run_dir)
    sections = _sections(sysroot, str(sysroot.repo_path), esp or "(found from the root's disk)")
    with ExitStack() as stack:
        repo = None
        try:
            repo = sysroot.repo
            if repo.read_only and do_repair:
                raise CfsbootError(f"repository {repo.path} is read-only here: cannot repair")
            if not repo.read_only:
                stack.enter_context(repo.lock())
        except CfsbootError as e:
            sections[0].error = str(e)
            repo = None
        bl = None
        if is_unmanaged(sysroot):  # --bootloader none: the boot entries are the user's
            sections[2].where = "none"
            sections[2].summary = f"not managed by cfsboot ({RECORD}): not checked"
        else:
            try:
                esp_ = stack.enter_context(open_esp(sysroot.path, esp))
                bl = sysroot.attach(detect(esp_))
                sections[2].where = _esp_where(bl.esp)
            except CfsbootError as e:
                sections[2].error = str(e)
        return _run(sysroot, repo, bl, sections, do_repair=do_repair)
    raise AssertionError("unreachable")


def fsck_repository(path: Path, *, do_repair: bool) -> FsckReport:
    """Check (and repair) a repository alone; a CfsbootError when there is none."""
    repo = Repository.open(path)
    if do_repair and repo.read_only:
        raise CfsbootError(f"repository {repo.path} is read-only here: cannot repair")
    sections = _sections(None, str(repo.path), "")
    with ExitStack() as stack:
        if not repo.read_only:
            stack.enter_context(repo.lock())
        return _run(None, repo, None, sections, do_repair=do_repair)
    raise AssertionError("unreachable")
