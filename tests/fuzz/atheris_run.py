"""Coverage-guided fuzzing of one cfstest.fuzztargets target with atheris (libFuzzer).

    python tests/fuzz/atheris_run.py TARGET [libFuzzer options, e.g. -runs=100000]

The same judge as the hypothesis runs (cfstest.fuzzing.check): a documented error
passes; any other exception, a hang or a write outside the temporary directory
stops the run with the input saved by libFuzzer (crash-*), to be pinned in
test_fuzz_regressions.py. `make fuzz` runs every target this way.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "stager"), str(ROOT / "setup-root"), str(ROOT / "tests")]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cfsboot", "setuproot"]):
    from cfstest.fuzzing import check  # noqa: E402
    from cfstest.fuzztargets import all_targets  # noqa: E402


def main() -> None:
    targets = {t.name: t for t in all_targets()}
    if sys.argv[1:] == ["--list"]:
        print("\n".join(targets))
        return
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit(f"usage: atheris_run.py TARGET [libFuzzer options]; targets: {sorted(targets)}")
    target = targets[sys.argv[1]]
    # The seeds once, still importing under instrumentation: cfsboot imports some modules
    # where it needs them (the PE parser, the decompressors, ...), and atheris sees into
    # only what was instrumented when imported.
    with atheris.instrument_imports(include=["cfsboot", "setuproot"]):
        for seed in target.seeds:
            with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as warm:
                check(target, seed, Path(warm))
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as top:
        corpus = Path(top) / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(target.seeds):
            (corpus / f"seed{i}").write_bytes(seed)
        work = Path(top) / "work"
        runs = [0]

        def one(data: bytes) -> None:
            runs[0] += 1
            tmp = work / str(runs[0])
            tmp.mkdir(parents=True)
            try:
                check(target, data, tmp)
            finally:
                shutil.rmtree(tmp)

        argv = [sys.argv[0], *sys.argv[2:], str(corpus)]
        atheris.Setup(argv, one)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
