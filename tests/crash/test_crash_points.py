"""Crash safety: SIGKILL cfsboot at every write step of switch, finalize, rollback, gc, bless.

For each operation and each ESP backend (a directory, standing in for a
mounted ESP; a FAT32 image written through mtools), the operation runs once
with the hook of `crashhook` counting its crash points (every rename, link,
unlink, mkdir, rmdir, fsync, syncfs, renameat2 exchange, FAT sector edit and
writing mtools command, before and after; see its docstring for why a kill
there models a power cut and what it does not cover). Then, for every crash
point, a fresh copy of the disk as it was before the operation is taken, the
operation is killed at that point, and the disk is read the way the firmware,
the boot loader and setup-root would read it, with no cfsboot recovery run
first:

- the live menu (`loader/entries/*.conf`, in systemd-boot's order) exists and
  its default is a cfsboot entry for the old default or the new deployment
  (which ones are allowed depends on the operation, see SCENARIOS); every other
  cfsboot entry in it must boot too;
- each entry's kernel and initrd are on the ESP with exactly the bytes of the
  kernel and initramfs of its deployment's image;
- its deployment is complete: `composefs/images/ID` is an object whose
  fs-verity digest is ID, every object the EROFS image references is there
  with its digest, `state/deploy/ID/` has its origin, its `var` link and the
  /etc its setup-root config needs (overlay: upper and work, with the local
  change carried from the first deployment);
- boot counting, in the oracle's terms (cfstest.bootorder): a default entry on
  trial (`+LEFT[-DONE]` in its name) must have a fallback: renamed as the boot
  loader leaves it once its tries are spent (`+0-N`), the menu's default must be
  another cfsboot entry. The system the bless scenario starts from got the boot
  loader's first count by the rename systemd-boot does (`boot_loader_counts`),
  and `cfsboot bless` (the rename that ends a trial) is a scenario of its own;
- on the FAT image, `fsck.vfat -n` finds nothing wrong, except lost clusters
  where cfsboot.boot.fat documents them: between the two sector writes of an
  exchange whose names lie in different sectors (scenario finalize-split),
  which leaves `loader/entries.staged` missing.

Then the next run happens (see `recoveries`: the same operation again, or what
its error message says to do; for finalize both with the marker kept and after
a reboot emptied /run) and must complete, leaving the expected default with
the same invariant; then `cfsboot gc` runs, must not give up on anything, and
must leave exactly the names on the root filesystem and the ESP that a
crash-free run followed by gc leaves. Points after which the disk is what an
earlier point left (a barrier, a mkdir that found its directory) are the same
test and run once; CFSBOOT_CRASH_EVERY_POINT=1 runs every point anyway. The
number of crash points per operation and backend is printed, and the last test
prints the totals (visible with -rP or -s).

The runs go through `crashhook.py --serve` (a fork server: cfsboot is imported
once, each command runs in a forked child from `cfsboot.cli.main`), two at a
time, on a tmpfs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crashdisk import (
    DIGEST_NAMES,
    ENV,
    FAT_SIZE,
    LOCAL_DATA,
    LOCAL_NAME,
    STAGED_ENTRIES,
    Backend,
    Machine,
    Servers,
    boot_loader_counts,
    cfsboot,
    check_boots,
    disk_names,
)
from crashplan import (
    FINALIZE,
    SCENARIOS,
    STAGE_AGAIN_HINT,
    SWITCH,
    VERSIONS,
    References,
    Scenario,
    check_same_names,
    recoveries,
    with_refs,
)

from cfsboot.boot import fat
from cfsboot.deploy.install import InstallOptions, to_filesystem
from cfsboot.deploy.state import ETC_VIEWS_PREFIX
from cfsboot.linux.fsutil import TEMP_MARKER
from cfstest.osimages import os_image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("can_mount", "fat_tools"),
]

WORKERS = 2  # the machine's cores
EVERY_POINT = os.environ.get("CFSBOOT_CRASH_EVERY_POINT") == "1"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs when we can mount one: thousands of syncfs calls stay off the shared disk."""
    path = tmp_path_factory.mktemp("crash")
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4g", "cfsboot-crash", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers(WORKERS)
    yield s
    s.close()


@pytest.fixture(scope="module")
def images(workdir: Path) -> dict[str, str]:
    from cfsboot.image.importer import import_image

    refs = {v: os_image(workdir / "images" / v, v[1:], **kw) for v, kw in VERSIONS.items()}
    for v, ref in refs.items():
        DIGEST_NAMES[v] = import_image(ref, None).image_digest
    return refs


def _install(m: Machine, ref: str) -> None:
    m.root.mkdir(parents=True)
    m.run.mkdir()
    if m.backend is Backend.DIR:
        m.esp_dir.mkdir()
    else:
        with open(m.esp_image, "wb") as f:
            f.truncate(FAT_SIZE)
        subprocess.run(["mkfs.vfat", "-F", "32", str(m.esp_image)], check=True, capture_output=True)
    to_filesystem(ref, m.root, m.esp(), InstallOptions())
    d1 = DIGEST_NAMES["v1"]
    (m.root / "state" / "deploy" / d1 / "etc" / "upper" / LOCAL_NAME).write_bytes(LOCAL_DATA)


@pytest.fixture(scope="module")
def systems(
    workdir: Path, images: dict[str, str], servers: Servers
) -> dict[Backend, dict[str, Machine]]:
    """For each backend, the systems the scenarios start from (built once, copied per run)."""
    out: dict[Backend, dict[str, Machine]] = {}
    steps: list[tuple[str, list[list[str]]]] = [
        ("installed", []),
        ("staged-v2", [["switch", images["v2"], "-q"]]),
        ("v2-with-v3-staged", [["finalize-staged"], ["switch", images["v3"], "-q"]]),
        (
            "four-deployed",
            [["finalize-staged"], ["switch", images["v4"], "-q"], ["finalize-staged"]],
        ),
    ]
    for backend in Backend:
        cur = Machine(workdir / "systems" / backend / "build", backend)
        _install(cur, images["v1"])
        out[backend] = {}
        for name, commands in steps:
            for argv in commands:
                cfsboot(servers, cur, *argv)
            out[backend][name] = cur.copy(workdir / "systems" / backend / name)
        d = DIGEST_NAMES
        assert check_boots(out[backend]["four-deployed"], [d["v4"]]).menu == [
            d[v] for v in ("v4", "v3", "v2", "v1")
        ]
    for backend in Backend:
        trial = out[backend]["staged-v2"].copy(workdir / "systems" / backend / "v2-on-trial")
        cfsboot(servers, trial, "finalize-staged")
        boot_loader_counts(trial)
        out[backend]["v2-on-trial"] = trial
    split = out[Backend.FAT]["installed"].copy(workdir / "systems" / "fat" / "staged-v2-split")
    split_loader_directory(split, servers, images)
    out[Backend.FAT]["staged-v2-split"] = split
    return out


def _loader_slots(image: Path) -> tuple[int, dict[str, set[int]]]:
    """loader/ of the FAT image: free slots in the sector of `entries`, each name's sectors."""
    with fat.FatFs.open(image, 0) as fs:
        d = fs.directory(["loader"])
        sector_of = fs.geometry.sector_of
        sectors = {
            e.name: {sector_of(d.positions[i]) for i in (*e.lfn_indices, e.index)}
            for e in d.entries
        }
        [home] = sectors["entries"]
        free = sum(1 for i, p in enumerate(d.positions) if sector_of(p) == home and d.is_free(i))
    return free, sectors


def _mtools(*argv: str) -> None:
    subprocess.run(argv, env=ENV, check=True, capture_output=True)


def split_loader_directory(m: Machine, servers: Servers, images: dict[str, str]) -> None:
    """Stage v2 so that loader/entries.staged lands in another sector than loader/entries.

    Files of someone else's (as systemd-boot's random-seed would be) fill the sector of
    `entries` before staging, and three of them are deleted after it, so that there is
    room for the exchange to move `entries.staged`'s three slots next to `entries`.
    """
    filler = m.path / "filler"
    filler.write_bytes(b"not cfsboot's\n")
    n = 0
    while _loader_slots(m.esp_image)[0]:
        n += 1
        _mtools("mcopy", "-i", str(m.esp_image), str(filler), f"::/loader/f{n}")
    cfsboot(servers, m, *with_refs(SWITCH, images))
    for i in (1, 2, 3):
        _mtools("mdel", "-i", str(m.esp_image), f"::/loader/f{i}")
    free, sectors = _loader_slots(m.esp_image)
    assert free >= 3 and not sectors["entries.staged"] & sectors["entries"], sectors
    filler.unlink()


# ---------------------------------------------------------------------------------------
# The crash loop
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    n: int
    when: str
    op: str
    what: str
    state: str

    def describe(self, base: Path) -> str:
        return f"point {self.n}: {self.when} {self.op} {self.what.replace(str(base), '')}"


def read_trace(path: Path) -> list[Point]:
    out = []
    for line in path.read_text().splitlines():
        n, when, op, what, state = line.split("\t")
        if n != "-":
            out.append(Point(int(n), when, op, what, state))
    return out


@dataclass
class Outcome:
    scenario: str
    backend: Backend
    points: int
    tried: int
    seconds: float = 0.0
    defaults: dict[str, int] = field(default_factory=dict)  # version -> crash points
    sector_edits: int = 0  # FAT sector edits of a run without a crash
    next_runs: dict[str, int] = field(default_factory=dict)  # recovery label -> times
    lock: threading.Lock = field(default_factory=threading.Lock)


RESULTS: list[Outcome] = []


def crash_at(
    servers: Servers,
    sc: Scenario,
    pre: Machine,
    work: Path,
    refs: dict[str, str],
    references: References,
    p: Point,
    outcome: Outcome,
) -> None:
    """Crash at `p`, check the disk; run the next run(s) and gc, check again."""
    m = pre.copy(work / f"n{p.n}")
    cfsboot(servers, m, *with_refs(sc.argv, refs), crash_at=p.n)
    # Inside an exchange that takes more than one sector write: some done, not all.
    edits = sum(
        1 for q in read_trace(m.path / "trace") if q.op == "fat-sector" and q.when == "after"
    )
    in_exchange = 0 < edits < outcome.sector_edits
    crashed = check_boots(m, [DIGEST_NAMES[v] for v in sc.after_crash], in_exchange=in_exchange)
    version = {d: v for v, d in DIGEST_NAMES.items()}[crashed.default]
    with outcome.lock:
        outcome.defaults[version] = outcome.defaults.get(version, 0) + 1
    plans = recoveries(sc, crashed, m.marker.exists())
    with outcome.lock:
        for rec, _ in plans:
            outcome.next_runs[rec.label] = outcome.next_runs.get(rec.label, 0) + 1
    for i, (rec, reboot) in enumerate(plans):
        target = m if i == len(plans) - 1 else m.copy(work / f"n{p.n}-{i}")
        if reboot:
            shutil.rmtree(target.run)
            target.run.mkdir()
        expect = [DIGEST_NAMES[rec.expect]]
        try:
            for command in rec.commands:
                if command[0] == "!":
                    out = cfsboot(servers, target, *with_refs(command[1:], refs), fails=True)
                    assert STAGE_AGAIN_HINT in out, f"cfsboot {' '.join(command[1:])}: {out}"
                else:
                    cfsboot(servers, target, *with_refs(command, refs))
            check_boots(target, expect, in_exchange=in_exchange, after=True)
            # gc then leaves exactly what it leaves after a run that was never interrupted.
            out = cfsboot(servers, target, "gc")
            assert "note:" not in out, f"gc: {out.strip()}"
            seen = check_boots(target, expect, in_exchange=in_exchange, after=True)
            check_same_names(disk_names(target, seen.view), references.names(sc, pre, rec.expect))
        except AssertionError as e:
            raise AssertionError(f"after {rec.label}: {e}") from None
        if target is not m:
            shutil.rmtree(target.path)
    shutil.rmtree(m.path)


def run_scenario(
    servers: Servers, sc: Scenario, pre: Machine, work: Path, refs: dict[str, str]
) -> Outcome:
    started = time.monotonic()
    counted = pre.copy(work / "count")
    trace = counted.path / "trace"
    out = counted.path / "count-output"
    env = {
        "CFSBOOT_CRASH_AT": "0",
        "CFSBOOT_CRASH_TRACE": str(trace),
        "CFSBOOT_CRASH_FINGERPRINT": "1",
        "CFSBOOT_CRASH_ROOTS": ":".join(str(p) for p in counted.roots()),
    }
    status = servers.run(counted.argv(*with_refs(sc.argv, refs)), out, env)
    assert status == 0, out.read_text()
    points = read_trace(trace)
    assert points, "the operation wrote nothing"
    # The state before the operation counts as seen: a point that leaves it is a no-op.
    seen_states: set[str] = set()
    chosen = []
    for p in points:
        if EVERY_POINT or p.state not in seen_states:
            chosen.append(p)
        seen_states.add(p.state)
    failures: list[str] = []
    outcome = Outcome(sc.name, pre.backend, len(points), len(chosen))
    outcome.sector_edits = sum(1 for p in points if p.op == "fat-sector" and p.when == "after")
    references = References(work, servers, refs)

    def one(p: Point) -> None:
        try:
            crash_at(servers, sc, pre, work, refs, references, p, outcome)
        except AssertionError as e:
            # pytest's rewritten asserts append a long explanation: the first lines say it.
            why = str(e).split("\nassert ")[0]
            failures.append(f"{p.describe(counted.path)}: {why}")

    with ThreadPoolExecutor(servers.size) as pool:
        list(pool.map(one, chosen))
    outcome.seconds = time.monotonic() - started
    RESULTS.append(outcome)
    print(
        f"{sc.name} on {pre.backend}: {outcome.points} crash points, {outcome.tried} distinct"
        f" disk states crashed into and checked ({outcome.seconds:.0f} s);"
        f" default after the crash: {outcome.defaults}; next runs: {outcome.next_runs}"
    )
    failures.sort(key=lambda f: int(f.split(":")[0].split()[1]))
    assert not failures, f"{len(failures)} crash point(s) broke the invariant:\n" + "\n".join(
        failures[:15]
    )
    shutil.rmtree(counted.path)
    return outcome


@pytest.mark.parametrize(
    ("sc", "backend"),
    [pytest.param(sc, b, id=f"{sc.name}-{b}") for sc in SCENARIOS for b in sc.backends],
)
def test_crash_points(
    sc: Scenario,
    backend: Backend,
    systems: dict[Backend, dict[str, Machine]],
    images: dict[str, str],
    servers: Servers,
    workdir: Path,
) -> None:
    pre = systems[backend][sc.pre]
    work = workdir / "runs" / f"{sc.name}-{backend}"
    work.mkdir(parents=True)
    outcome = run_scenario(servers, sc, pre, work, images)
    # Every scenario must reach the states it claims: the default changes where it should.
    if sc.op in ("finalize", "rollback"):
        assert len(outcome.defaults) == 2, outcome.defaults
    if sc.name == "finalize-split":
        assert outcome.sector_edits == 2, "the exchange did not take its two-step path"


def _crash_where(
    servers: Servers, pre: Machine, work: Path, argv: Sequence[str], op: str, where: str
) -> Machine:
    """A copy of `pre` with `argv` killed just after the first `op` step on a path with `where`."""
    counted = pre.copy(work / "count")
    env = {
        "CFSBOOT_CRASH_TRACE": str(counted.path / "trace"),
        "CFSBOOT_CRASH_ROOTS": ":".join(str(p) for p in counted.roots()),
    }
    assert servers.run(counted.argv(*argv), counted.path / "out", env) == 0
    points = read_trace(counted.path / "trace")
    p = next(p for p in points if p.op == op and p.when == "after" and where in p.what)
    m = pre.copy(work / "crashed")
    cfsboot(servers, m, *argv, crash_at=p.n)
    shutil.rmtree(counted.path)
    return m


@pytest.mark.parametrize(
    ("op", "where"),
    [("rename", "/etc/upper"), ("renameat2", "loader/entries")],
    ids=["after-etc-carry", "after-exchange"],
)
def test_finalize_runs_again_after_a_kill(
    op: str,
    where: str,
    systems: dict[Backend, dict[str, Machine]],
    servers: Servers,
    tmp_path: Path,
) -> None:
    """A finalize killed with the marker kept (no reboot) completes when run again.

    Before the fix, the carry refused the filled upper dir ("is not an empty directory")
    and, after the exchange, finalize found no staged menu: the update stayed unapplied
    (or the marker stayed) until a reboot.
    """
    m = _crash_where(servers, systems[Backend.DIR]["staged-v2"], tmp_path, FINALIZE, op, where)
    assert m.marker.exists()
    out = cfsboot(servers, m, *FINALIZE)
    assert "is now the default" in out
    check_boots(m, [DIGEST_NAMES["v2"]])
    assert not m.marker.exists() and not (m.esp_dir / STAGED_ENTRIES).exists()
    assert not list((m.root / "state/deploy" / DIGEST_NAMES["v2"] / "etc").glob(".*"))


@pytest.mark.parametrize(
    ("op", "where"),
    [
        ("symlink", "composefs/streams/."),
        ("symlink", "composefs/images/."),
        ("mkdir", "/.cfsboot-etc-"),
        ("mkdir", "state/deploy/."),
    ],
    ids=["stream-link", "image-link", "etc-views", "state-dir"],
)
def test_gc_collects_what_a_kill_left(
    op: str,
    where: str,
    systems: dict[Backend, dict[str, Machine]],
    images: dict[str, str],
    servers: Servers,
    tmp_path: Path,
) -> None:
    """Temporary names a killed switch leaves are gc's to remove, not a reason to stop.

    Before the fix, a stream link left under its temporary name counted as a stream
    of someone else's, and gc stopped collecting objects for good; the other
    leftovers stayed forever.
    """
    m = _crash_where(
        servers, systems[Backend.DIR]["installed"], tmp_path, with_refs(SWITCH, images), op, where
    )
    for command in (SWITCH, FINALIZE):
        cfsboot(servers, m, *with_refs(command, images))
    out = cfsboot(servers, m, "gc")
    assert "note:" not in out and "leftover(s) of interrupted runs" in out, out
    left = [
        n
        for n in disk_names(m, m.esp_dir)
        if TEMP_MARKER in n or ETC_VIEWS_PREFIX in n or ".tmp-" in n or ".del-" in n
    ]
    assert left == []
    check_boots(m, [DIGEST_NAMES["v2"]])


def test_summary() -> None:
    """The totals (run after the crash tests, in file order)."""
    if not RESULTS:
        pytest.skip("no crash test ran")
    total = sum(r.points for r in RESULTS)
    tried = sum(r.tried for r in RESULTS)
    secs = sum(r.seconds for r in RESULTS)
    for r in RESULTS:
        print(
            f"  {r.scenario:9} {r.backend:4} {r.points:4} points,"
            f" {r.tried:4} tried, {r.seconds:5.0f} s"
        )
    print(f"crash points: {total} counted, {tried} distinct states tried, in {secs:.0f} s")
