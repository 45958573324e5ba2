"""Fuzz every parser of outside input (cfstest.fuzztargets) with mutated seeds and raw bytes.

`make test` runs each target for EXAMPLES[name] inputs; `make fuzz` multiplies them
(CFSBOOT_FUZZ_SCALE) and adds atheris's coverage-guided runs (atheris_run.py).
Crashes found are pinned as regression tests in test_fuzz_regressions.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given

from cfstest.fuzzing import Target, check, fuzz_settings, inputs
from cfstest.fuzztargets import all_targets

TARGETS = {t.name: t for t in all_targets()}

# Inputs per target in `make test`: enough to reach each parser's branches, ~1 min in all.
EXAMPLES = {
    "dumpfile": 800,
    "erofs": 600,
    "tar": 1000,
    "oci": 1000,
    "kargs": 1000,
    "setup-root-conf": 1000,
    "origin": 800,
    "bls": 600,
    "grub-menu": 800,
    "kargs.d": 800,
    "os-release": 800,
    "install-config": 1000,
    "layer": 300,
    "oci-layout": 300,
    "uki": 600,
    "layer-record": 400,
    "image-info": 400,
    "archive": 300,
    "gpt": 800,
    "fat": 400,
    "efivars": 500,
    "state-files": 500,
}


def test_every_target_has_a_budget() -> None:
    assert sorted(EXAMPLES) == sorted(TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name: str, tmp_path: Path) -> None:
    target: Target = TARGETS[name]

    @fuzz_settings(EXAMPLES[name])
    @given(data=inputs(target))
    def run(data: bytes) -> None:
        # A fresh directory per input, gone after it (thousands would pile up in pytest's).
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            check(target, data, Path(tmp))

    run()
