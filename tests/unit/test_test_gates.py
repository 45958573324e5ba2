"""The gates of the test tiers: a missing capability skips, except in CI, where it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

import conftest

pytest_plugins = ["pytester"]


def test_missing_capability_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no tools here"):
        conftest.missing_capability("no tools here")


def test_missing_capability_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"no tools here \(CI must have it"):
        conftest.missing_capability("no tools here")


def test_ci_fails_when_the_reference_tools_are_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """End to end: a conformance test run with CI=true and no C tools errors instead of skipping."""
    pytester.makeconftest(Path(conftest.__file__).read_text())
    pytester.makepyfile("def test_needs_c(reftools):\n    pass\n")
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CFSBOOT_REFTOOLS", str(tmp_path / "none"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*reference C tools not found in*CI must have it*"])
