"""What `cfsboot fsck` found and did: sections per group, one line per problem, and its JSON.

Exit codes: 0 nothing wrong (or everything repaired), 1 problems remain,
2 a group could not be checked at all (no repository, an unreadable ESP).
Notes (things `cfsboot gc` tidies, such as boot files no entry uses) are
shown but do not count as problems.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from cfsboot.composefs.repocheck import Problem

API_VERSION = "cfsboot/fsck/v1"


class Group(enum.StrEnum):
    REPOSITORY = "repository"
    STATE = "state"
    ESP = "esp"


class ExitCode(enum.IntEnum):
    CLEAN = 0
    PROBLEMS = 1
    NOT_CHECKED = 2


@dataclass
class Section:
    """One group's outcome: what was checked, and what is wrong with it."""

    group: Group
    where: str  # the repository, the physical root, the ESP
    summary: str = ""  # what was looked at, e.g. "1204 objects (311.0 MiB), 2 images"
    error: str | None = None  # why the group could not be checked (then nothing else counts)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)


@dataclass
class FsckReport:
    sections: list[Section]
    repaired: list[str] = field(default_factory=list)  # what --repair did, one line each
    not_repaired: list[str] = field(default_factory=list)  # repairs tried that failed
    seconds: float = 0.0

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.sections for p in s.problems]

    @property
    def exit_code(self) -> ExitCode:
        if any(s.error is not None for s in self.sections):
            return ExitCode.NOT_CHECKED
        return ExitCode.PROBLEMS if self.problems else ExitCode.CLEAN


# -- JSON ------------------------------------------------------------------------------


class ProblemDoc(TypedDict):
    code: str
    path: str
    message: str
    subject: str
    repair: str | None  # what --repair does about it; None: it needs a person


class SectionDoc(TypedDict):
    group: Literal["repository", "state", "esp"]
    where: str
    checked: bool
    error: str | None
    summary: str
    problems: list[ProblemDoc]
    notes: list[ProblemDoc]


class FsckDoc(TypedDict):
    apiVersion: str
    exitCode: int
    problems: int
    sections: list[SectionDoc]
    repaired: list[str]
    notRepaired: list[str]
    seconds: float


def _problem_doc(p: Problem) -> ProblemDoc:
    return {
        "code": p.code,
        "path": p.path,
        "message": p.message,
        "subject": p.subject,
        "repair": p.repair,
    }


def _group_name(g: Group) -> Literal["repository", "state", "esp"]:
    if g is Group.REPOSITORY:
        return "repository"
    return "state" if g is Group.STATE else "esp"


def to_json(report: FsckReport) -> FsckDoc:
    return {
        "apiVersion": API_VERSION,
        "exitCode": int(report.exit_code),
        "problems": len(report.problems),
        "sections": [
            {
                "group": _group_name(s.group),
                "where": s.where,
                "checked": s.error is None,
                "error": s.error,
                "summary": s.summary,
                "problems": [_problem_doc(p) for p in s.problems],
                "notes": [_problem_doc(p) for p in s.notes],
            }
            for s in report.sections
        ],
        "repaired": list(report.repaired),
        "notRepaired": list(report.not_repaired),
        "seconds": round(report.seconds, 3),
    }


# -- text ------------------------------------------------------------------------------


def human(report: FsckReport) -> str:
    """Grouped: a heading per group, then one indented line per problem."""
    out: list[str] = []
    for s in report.sections:
        head = f"{s.group} {s.where}"
        if s.error is not None:
            out.append(f"{head}: could not check: {s.error}")
            continue
        out.append(f"{head}: {s.summary}" if s.summary else head)
        out += [f"  {p.line()}" for p in s.problems]
        out += [f"  note: {p.line()}" for p in s.notes]
    if report.repaired:
        out.append("repaired:")
        out += [f"  {line}" for line in report.repaired]
    if report.not_repaired:
        out.append("not repaired:")
        out += [f"  {line}" for line in report.not_repaired]
    out.append(_verdict(report))
    return "\n".join(out) + "\n"


def _verdict(report: FsckReport) -> str:
    n = len(report.problems)
    fixable = sum(1 for p in report.problems if p.repair)
    took = f" ({report.seconds:.1f} s)"
    if report.exit_code is ExitCode.NOT_CHECKED:
        return f"fsck: could not check everything; {n} problem(s) in what was checked{took}"
    if n == 0:
        return f"fsck: no problems{took}"
    hint = f", {fixable} repairable with --repair" if fixable else ""
    return f"fsck: {n} problem(s){hint}{took}"
