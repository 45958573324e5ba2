"""The oracle's version comparison (cfstest.bootorder.version_compare) against systemd:
its published test vectors, `systemd-analyze compare-versions` on random strings; and
cfsboot's own comparison against the oracle."""

from __future__ import annotations

import itertools
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsboot.image.versions import compare_versions as cfsboot_compare_versions
from cfstest.bootorder import version_compare
from cfstest.gates import missing_capability

# ---------------------------------------------------------------------------------------
# Versions: systemd's vectors (src/test/test-string-util.c, strverscmp_improved)
# ---------------------------------------------------------------------------------------

# Each one is older than every one after it.
ASCENDING = [
    "~1", "", "ab", "abb", "abc", "0001", "002", "12", "122", "122.9", "123~rc1", "123",
    "123-a", "123-a.1", "123-a1", "123-a1.1", "123-3", "123-3.1", "123^patch1", "123^1",
    "123.a-1", "123.1-1", "123a-1", "124",
]  # fmt: skip
# (older, newer)
NEWER = [
    ("123.45-67.88", "123.45-67.89"),
    ("123.45-67.89", "123.45-67.89a"),
    ("123.45-67.ab", "123.45-67.89"),
    ("123.45-67.9", "123.45-67.89"),
    ("123.45-67", "123.45-67.89"),
    ("123.45-66.89", "123.45-67.89"),
    ("123.45-9.99", "123.45-67.89"),
    ("123.42-99.99", "123.45-67.89"),
    ("123-99.99", "123.45-67.89"),
    ("123~rc1-99.99", "123.45-67.89"),
    ("123~rc1-99.99", "123-45.67.89"),
    ("123~rc1-99.99", "123~rc2-67.89"),
    ("123~rc1-99.99", "123^aa2-67.89"),
    ("123~rc1-99.99", "123aa2-67.89"),
    ("123-99.99", "123^aa2-67.89"),
    ("123-99.99", "123aa2-67.89"),
    ("123^45-67.89", "123.45-67.89"),
    ("123^aa1-99.99", "123^aa2-67.89"),
    ("123^aa2-67.89", "123aa2-67.89"),
    ("123.aa2-67.89", "123aa2-67.89"),
    ("123.aa2-67.89", "123.ab2-67.89"),
]
# (a, b, sign of the comparison)
CORNERS = [
    ("123_aa2-67.89", "123aa+2-67.89", 0),
    ("123.", "123", 1),
    ("12_3", "123", -1),
    ("12_3", "12", 1),
    ("12_3", "12.3", 1),
    ("123.0", "123", 1),
    ("123_0", "123", 1),
    ("123..0", "123.0", -1),
    ("", None, 0),
    (None, "", 0),
    ("0_", "0", 0),
    ("_0_", "0", 0),
    ("_0", "0", 0),
    ("0", "0___", 0),
    ("", "_", 0),
    ("_", "", 0),
    ("_", "_", 0),
    ("", "~", 1),
    ("~", "", -1),
    ("~", "~", 0),
]
# rpm's vectors as systemd keeps them (where systemd differs from rpm, systemd's result).
RPM = [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0", "1.0", 1),
    ("2.0.1", "2.0.1", 0), ("2.0", "2.0.1", -1), ("2.0.1", "2.0", 1),
    ("2.0.1a", "2.0.1a", 0), ("2.0.1a", "2.0.1", 1), ("2.0.1", "2.0.1a", -1),
    ("5.5p1", "5.5p1", 0), ("5.5p1", "5.5p2", -1), ("5.5p2", "5.5p1", 1),
    ("5.5p10", "5.5p10", 0), ("5.5p1", "5.5p10", -1), ("5.5p10", "5.5p1", 1),
    ("10xyz", "10.1xyz", 1), ("10.1xyz", "10xyz", -1),
    ("xyz10", "xyz10", 0), ("xyz10", "xyz10.1", -1), ("xyz10.1", "xyz10", 1),
    ("xyz.4", "xyz.4", 0), ("xyz.4", "8", -1), ("8", "xyz.4", 1),
    ("xyz.4", "2", -1), ("2", "xyz.4", 1),
    ("5.5p2", "5.6p1", -1), ("5.6p1", "5.5p2", 1),
    ("5.6p1", "6.5p1", -1), ("6.5p1", "5.6p1", 1),
    ("6.0.rc1", "6.0", 1), ("6.0", "6.0.rc1", -1),
    ("10b2", "10a1", 1), ("10a2", "10b2", -1),
    ("1.0aa", "1.0aa", 0), ("1.0a", "1.0aa", -1), ("1.0aa", "1.0a", 1),
    ("10.0001", "10.0001", 0), ("10.0001", "10.1", 0), ("10.1", "10.0001", 0),
    ("10.0001", "10.0039", -1), ("10.0039", "10.0001", 1),
    ("4.999.9", "5.0", -1), ("5.0", "4.999.9", 1),
    ("20101121", "20101121", 0), ("20101121", "20101122", -1), ("20101122", "20101121", 1),
    ("2_0", "2_0", 0), ("2.0", "2_0", -1), ("2_0", "2.0", 1),
    ("a", "a", 0), ("a+", "a+", 0), ("a+", "a_", 0), ("a_", "a+", 0),
    ("+a", "+a", 0), ("+a", "_a", 0), ("_a", "+a", 0),
    ("+_", "+_", 0), ("_+", "+_", 0), ("_+", "_+", 0), ("+", "_", 0), ("_", "+", 0),
    ("1.0~rc1", "1.0~rc1", 0), ("1.0~rc1", "1.0", -1), ("1.0", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc2", "1.0~rc1", 1),
    ("1.0~rc1~git123", "1.0~rc1~git123", 0), ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0~rc1", "1.0~rc1~git123", 1),
    ("1.0^", "1.0^", 0), ("1.0^", "1.0", 1), ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0^git1", 0), ("1.0^git1", "1.0", 1), ("1.0", "1.0^git1", -1),
    ("1.0^git1", "1.0^git2", -1), ("1.0^git2", "1.0^git1", 1),
    ("1.0^git1", "1.01", -1), ("1.01", "1.0^git1", 1),
    ("1.0^20160101", "1.0^20160101", 0), ("1.0^20160101", "1.0.1", -1),
    ("1.0.1", "1.0^20160101", 1),
    ("1.0^20160101^git1", "1.0^20160101^git1", 0),
    ("1.0^20160102", "1.0^20160101^git1", 1), ("1.0^20160101^git1", "1.0^20160102", -1),
    ("1.0~rc1^git1", "1.0~rc1^git1", 0), ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc1^git1", -1),
    ("1.0^git1~pre", "1.0^git1~pre", 0), ("1.0^git1", "1.0^git1~pre", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
    ("1b.fc17", "1b.fc17", 0), ("1b.fc17", "1.fc17", 1), ("1.fc17", "1b.fc17", -1),
    ("1g.fc17", "1g.fc17", 0), ("1g.fc17", "1.fc17", 1), ("1.fc17", "1g.fc17", -1),
    ("1.1.α", "1.1.α", 0), ("1.1.α", "1.1.β", 0), ("1.1.β", "1.1.α", 0),
    ("1.1.αα", "1.1.α", 0), ("1.1.α", "1.1.ββ", 0), ("1.1.ββ", "1.1.αα", 0),
]  # fmt: skip
# The Version Format Specification's own examples that systemd agrees with.
SPEC_EXAMPLES = [
    ("11", "11", 0), ("systemd-123", "systemd-123", 0), ("bar-123", "foo-123", -1),
    ("123a", "123", 1), ("123.a", "123", 1), ("123.a", "123.b", -1), ("123a", "123.a", 1),
    ("11α", "11β", 0), ("A", "a", -1), ("", "0", -1), ("0.", "0", 1), ("0.0", "0", 1),
    ("1_", "1", 0), ("_1", "1", 0), ("1_", "1.2", -1), ("1_2_3", "1.3.3", 1),
    ("1+", "1", 0), ("+1", "1", 0), ("1+", "1.2", -1), ("1+2+3", "1.3.3", 1),
]  # fmt: skip


def _all_vectors() -> list[tuple[str | None, str | None, int]]:
    out: list[tuple[str | None, str | None, int]] = []
    for older, newer in [*itertools.combinations(ASCENDING, 2), *NEWER]:
        out += [(older, newer, -1), (newer, older, 1), (older, older, 0), (newer, newer, 0)]
    return out + CORNERS + RPM + SPEC_EXAMPLES


VECTORS = _all_vectors()


def test_version_vectors() -> None:
    wrong = [(a, b, want) for a, b, want in VECTORS if version_compare(a, b) != want]
    assert wrong == []


def test_spec_text_where_systemd_differs() -> None:
    """The three places the module docstring names, as systemd decides them."""
    assert version_compare("", "~") == 1  # the spec's text: '' < '~'
    assert version_compare("1.0^20160101", "1.0.1") == -1  # the spec's text: '^' higher
    assert version_compare("a", "0") == -1  # the spec's text: an empty number is 0


_SYSTEMD_ANALYZE_SIGN = {0: 0, 11: 1, 12: -1}


def _systemd_analyze(a: str, b: str) -> int:
    proc = subprocess.run(
        ["systemd-analyze", "compare-versions", "--", a, b],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    assert proc.returncode in _SYSTEMD_ANALYZE_SIGN, proc.stderr
    return _SYSTEMD_ANALYZE_SIGN[proc.returncode]


@pytest.fixture(scope="module")
def systemd_analyze() -> None:
    """systemd-analyze compare-versions (systemd >= 252): systemd's own comparison."""
    try:
        ok = _systemd_analyze("1", "2") == -1
    except (OSError, AssertionError):
        ok = False
    if not ok:
        missing_capability("systemd-analyze compare-versions not available (systemd >= 252)")


_version_text = st.text(alphabet="0123456789aAzZ.-^~_+", max_size=10)


@pytest.mark.usefixtures("systemd_analyze")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_version_text, _version_text)
def test_versions_like_systemd_analyze(a: str, b: str) -> None:
    assert version_compare(a, b) == _systemd_analyze(a, b), (a, b)


@settings(max_examples=2000)
@given(_version_text, _version_text)
def test_cfsboot_versions_agree_with_the_oracle(a: str, b: str) -> None:
    assert cfsboot_compare_versions(a, b) == version_compare(a, b)
