"""setuproot.choice: StrEnum/IntEnum as setup-root and the stager use them, without `enum`."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys

import pytest

from setuproot.config import EtcMount
from setuproot.contract import HashAlg
from setuproot.mount import ExitCode


def test_members_are_values_and_singletons() -> None:
    assert HashAlg.SHA256 == "sha256" and isinstance(HashAlg.SHA256, str)  # type: ignore[comparison-overlap]
    assert HashAlg("sha512") is HashAlg.SHA512
    assert HashAlg(HashAlg.SHA256) is HashAlg.SHA256
    assert list(HashAlg) == [HashAlg.SHA256, HashAlg.SHA512]
    assert len(HashAlg) == 2 and "sha256" in HashAlg and "md5" not in HashAlg  # type: ignore[operator]
    assert (HashAlg.SHA256.name, HashAlg.SHA256.value) == ("SHA256", "sha256")
    assert {HashAlg.SHA256: 1}["sha256"] == 1  # type: ignore[index]


def test_methods_and_properties_are_not_members() -> None:
    assert HashAlg.SHA512.kernel_id == 2 and HashAlg.SHA256.digest_size == 32
    assert HashAlg.from_hex_len(128) is HashAlg.SHA512
    assert HashAlg.from_repo_name("fsverity-sha256-12") is HashAlg.SHA256


def test_text_forms() -> None:
    assert str(EtcMount.BIND) == "bind" and f"{EtcMount.BIND}" == "bind"
    assert f"{HashAlg.SHA256:>8}" == "  sha256"
    assert repr(EtcMount.NONE) == "<EtcMount.NONE: 'none'>"
    assert json.dumps({"alg": HashAlg.SHA512}) == '{"alg": "sha512"}'
    assert str(ExitCode.CONFIG) == "3" and f"{ExitCode.CONFIG}" == "3"
    assert repr(ExitCode.OK) == "<ExitCode.OK: 0>"


def test_int_members() -> None:
    assert ExitCode.WRONG_DIGEST == 6 and isinstance(ExitCode.USAGE, int)  # type: ignore[comparison-overlap]
    assert ExitCode(2) is ExitCode.USAGE and ExitCode.USAGE + 1 == 3
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuproot.mount import ExitCode as E; sys.exit(E.STATE)",
        ],  # fmt: skip
        check=False,
    )
    assert proc.returncode == 8


def test_unknown_value() -> None:
    with pytest.raises(ValueError, match="'md5' is not a valid HashAlg"):
        HashAlg("md5")
    with pytest.raises(ValueError, match="9 is not a valid ExitCode"):
        ExitCode(9)


def test_copy_and_pickle_keep_the_member() -> None:
    for member in (HashAlg.SHA512, EtcMount.OVERLAY, ExitCode.KERNEL):
        assert copy.copy(member) is member and copy.deepcopy(member) is member
        assert pickle.loads(pickle.dumps(member)) is member


def test_members_cannot_be_reassigned() -> None:
    with pytest.raises(AttributeError):
        HashAlg.SHA256 = "md5"  # type: ignore[misc]
