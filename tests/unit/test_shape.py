"""Modules and functions a newcomer can read: size limits on the stager and setup-root.

The convention (STYLE.md, "Shape"): a module stays within 500 lines and a
function (or method) within 80, counted from its `def` to its last line.
Past that, split it by concern, or say in its docstring why it is long: a
line of the module's (or the function's) docstring that starts with
`Long because`, e.g.

    def lay_out(...):
        '''Place every inode, then write them.

        Long because the byte order of mkcomposefs is one sequence: split, it
        would hide which step depends on which.
        '''

The reason is read by people first, so it says why splitting would be worse,
not that there was no time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from conftest import REPO_ROOT

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
REASON = "Long because"
TOPS = [REPO_ROOT / "stager" / "cfsboot", REPO_ROOT / "setup-root"]

# The allow-list: files that work in flight rewrites, exempt until it lands. Each
# entry names that work, so the exemption is visible and goes away with it.
EXEMPT: dict[str, str] = {}


def _exempt(path: Path) -> bool:
    rel = path.relative_to(REPO_ROOT)
    return any(rel.match(pattern) for pattern in EXEMPT)


def _has_reason(docstring: str | None) -> bool:
    return any(line.strip().startswith(REASON) for line in (docstring or "").splitlines())


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def shape_problems(path: Path, name: str) -> list[str]:
    """What in `path` is too long without a reason, one line each."""
    text = path.read_text()
    tree = ast.parse(text, str(path))
    problems = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES and not _has_reason(ast.get_docstring(tree)):
        problems.append(f"{name}: {lines} lines (limit {MAX_MODULE_LINES})")
    for fn in _functions(tree):
        length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if length > MAX_FUNCTION_LINES and not _has_reason(ast.get_docstring(fn)):
            problems.append(
                f"{name}:{fn.lineno} {fn.name}() is {length} lines (limit {MAX_FUNCTION_LINES})"
            )
    return problems


def _sources() -> list[Path]:
    return sorted(p for top in TOPS for p in top.rglob("*.py"))


def test_modules_and_functions_stay_readable() -> None:
    problems = [
        problem
        for path in _sources()
        if not _exempt(path)
        for problem in shape_problems(path, str(path.relative_to(REPO_ROOT)))
    ]
    assert problems == [], (
        f"split these, or give the reason in a docstring line starting {REASON!r}:\n"
        + "\n".join(problems)
    )


def test_every_exemption_names_files_that_exist() -> None:
    # (one test, not one per pattern: an empty allow-list is no skipped test)
    sources = [p.relative_to(REPO_ROOT) for p in _sources()]
    assert [pat for pat in sorted(EXEMPT) if not any(p.match(pat) for p in sources)] == []


def test_the_shape_check_sees_a_long_function_and_accepts_a_reason(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    long_fn = tmp_path / "long.py"
    long_fn.write_text(f'def f() -> None:\n    """Sums."""\n{body}')
    assert shape_problems(long_fn, "long.py") == [
        f"long.py:1 f() is {MAX_FUNCTION_LINES + 2} lines (limit {MAX_FUNCTION_LINES})"
    ]
    long_fn.write_text(
        f'def f() -> None:\n    """Sums.\n\n    Long because: a test.\n    """\n{body}'
    )
    assert shape_problems(long_fn, "long.py") == []
    big = tmp_path / "big.py"
    big.write_text('"""A module."""\n' + "x = 1\n" * MAX_MODULE_LINES)
    assert shape_problems(big, "big.py") == [
        f"big.py: {MAX_MODULE_LINES + 1} lines (limit {MAX_MODULE_LINES})"
    ]
