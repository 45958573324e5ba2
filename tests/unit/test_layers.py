"""The stager's layers: data flows one way, and a lower layer never imports a higher one.

linux -> composefs -> oci -> image -> boot -> deploy -> commands -> cli, with
`cfsboot.errors`, `cfsboot.jsondoc` (and the package root) below them all. setup-root
(`setuproot`) sits under everything and imports only the standard library.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from cfstest import REPO_ROOT

STAGER = REPO_ROOT / "stager" / "cfsboot"
SETUP_ROOT = REPO_ROOT / "setup-root" / "setuproot"

LAYERS = ["linux", "composefs", "oci", "image", "boot", "deploy", "commands", "cli"]
# Modules beside cli.py in its layer: its parsers, imported only by a run that parses.
CLI_LAYER = {"cliparse"}
BASE = {"cfsboot", "cfsboot.errors", "cfsboot.jsondoc"}


def _module_name(path: Path, top: Path, package: str) -> str:
    rel = path.relative_to(top).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, absolute, at any depth of the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.add(name)
            # `from pkg import mod` imports pkg.mod when mod is a module
            out.update(f"{name}.{a.name}" for a in node.names)
    return out


def _rank(module: str) -> int | None:
    """The layer of a cfsboot module (-1 for the base), None outside cfsboot."""
    if module in BASE:
        return -1
    parts = module.split(".")
    if parts[0] != "cfsboot" or len(parts) < 2:
        return None
    if parts[1] in CLI_LAYER:
        return LAYERS.index("cli")
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _stager_modules() -> list[tuple[str, Path]]:
    return [(_module_name(p, STAGER, "cfsboot"), p) for p in sorted(STAGER.rglob("*.py"))]


def test_every_stager_module_is_in_a_layer() -> None:
    unplaced = [m for m, _ in _stager_modules() if _rank(m) is None]
    assert unplaced == [], f"modules outside the layers {LAYERS}: {unplaced}"


def test_no_layer_imports_a_higher_one() -> None:
    known = {m for m, _ in _stager_modules()}
    wrong = []
    for module, path in _stager_modules():
        mine = _rank(module)
        assert mine is not None
        for dep in sorted(_imports(path, module)):
            if dep not in known:
                continue
            theirs = _rank(dep)
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine] if mine >= 0 else 'base'}) imports {dep}")
    assert wrong == [], "\n".join(wrong)


def test_commands_do_not_import_each_other() -> None:
    known = {m for m, _ in _stager_modules()}
    wrong = []
    for module, path in _stager_modules():
        if not module.startswith("cfsboot.commands.") or module.endswith(".common"):
            continue
        for dep in _imports(path, module) & known:
            if dep.startswith("cfsboot.commands.") and dep not in (
                module,
                "cfsboot.commands.common",
            ):
                wrong.append(f"{module} imports {dep}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize(
    "path", sorted(SETUP_ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(SETUP_ROOT))
)
def test_setup_root_imports_only_the_standard_library(path: Path) -> None:
    """Every boot pays for setup-root's imports: the standard library and itself, nothing else."""
    module = _module_name(path, SETUP_ROOT, "setuproot")
    foreign = sorted(
        dep
        for dep in _imports(path, module)
        if dep.split(".")[0] not in sys.stdlib_module_names
        and dep.split(".")[0] not in ("setuproot", "__future__")
    )
    # `from X import name` adds X.name: only the top package decides.
    assert foreign == [], f"{module} imports {foreign}"


def test_the_layer_check_sees_a_violation(tmp_path: Path) -> None:
    """The check itself: an upward import (even a lazy one) is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cfsboot.deploy.stage import stage\n")
    assert "cfsboot.deploy.stage" in _imports(bad, "cfsboot.composefs.bad")
    high, low = _rank("cfsboot.deploy.stage"), _rank("cfsboot.composefs.bad")
    assert high is not None and low is not None and high > low
