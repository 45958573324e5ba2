"""The gates of the test tiers: a missing capability skips, except in CI, where it fails;
and no test skips any other way."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import conftest
from cfstest import REPO_ROOT, gates

pytest_plugins = ["pytester"]


def test_missing_capability_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no tools here"):
        gates.missing_capability("no tools here")


def test_missing_capability_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no tools here \(CI must have it"):
        gates.missing_capability("no tools here")


def test_require_tools_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    gates.require_tools({"sh": "dash"})  # present: nothing happens
    with pytest.raises(pytest.fail.Exception) as exc:
        gates.require_tools({"sh": "dash", "no-such-tool-a": "pkg-a", "no-such-tool-b": "pkg-a"})
    assert str(exc.value).startswith(
        "no-such-tool-a, no-such-tool-b not found (apt-get install pkg-a) (CI must have it"
    )


def test_probes_try_the_operation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes answer from what the operation did, not from the uid."""
    assert gates.can_mknod(tmp_path) == (os.geteuid() == 0)  # root here has CAP_MKNOD
    assert list(tmp_path.iterdir()) == []  # the probe cleans up
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare, no mount: the probe says no
    gates.can_mount.cache_clear()
    try:
        assert gates.can_mount() is False
    finally:
        gates.can_mount.cache_clear()


def test_ci_fails_when_the_reference_tools_are_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """End to end: a conformance test run with CI=true and no C tools errors instead of skipping."""
    pytester.makeconftest(Path(conftest.__file__).read_text())
    pytester.makepyfile("def test_needs_c(reftools):\n    pass\n")
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CFSBOOT_REFTOOLS", str(tmp_path / "none"))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT / "tests"))  # cfstest, as pyproject says
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*reference C tools not found in*CI must have it*"])


# ---------------------------------------------------------------------------------------
# No skip outside the gate
# ---------------------------------------------------------------------------------------

# Spelled in pieces so that this file does not match itself.
SKIP = re.compile(r"\bskip" + r"if\b|\bpytest\.skip\b|\bimportor" + r"skip\b|\.mark\.skip\b")
GATE = REPO_ROOT / "tests" / "cfstest" / "gates.py"
# Skips that are not about a missing capability, each with the reason it may stay:
# (file relative to the repository, the text on the line).
ALLOWED = {
    # The totals of the crash tests above it: with them deselected (-k) there is nothing
    # to report, which is not a missing capability (the crash tests themselves are gated).
    ("tests/crash/test_crash_points.py", 'pytest.skip("no crash test ran")'),
}


def _skips() -> list[tuple[str, str]]:
    found = []
    for top in ("tests", "vm-tests"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            if path in (GATE, Path(__file__).resolve()):
                continue
            for line in path.read_text().splitlines():
                if SKIP.search(line):
                    found.append((str(path.relative_to(REPO_ROOT)), line.strip()))
    return found


def test_every_skip_goes_through_the_gate() -> None:
    stray = [f"{path}: {line}" for path, line in _skips() if (path, line) not in ALLOWED]
    assert stray == [], "skip through cfstest.gates.missing_capability instead:\n" + "\n".join(
        stray
    )


def test_the_allow_list_is_not_stale() -> None:
    assert ALLOWED <= set(_skips())


def test_the_guard_sees_skips() -> None:
    for line in (
        "@pytest.mark.skip" + "if(True, reason='x')",
        "    pytest.skip('x')",
        "pytest.importor" + "skip('construct')",
        "@pytest.mark.skip(reason='x')",
    ):
        assert SKIP.search(line), line
    assert not SKIP.search("missing_capability('x')")
