"""Crash safety: SIGKILL cfsboot at every write step of switch, finalize, rollback and gc.

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

import enum
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cfsboot.boot import fat
from cfsboot.boot.esp import DirEsp, Esp, MtoolsEsp
from cfsboot.composefs import fsverity
from cfsboot.composefs.erofs.reader import read_image
from cfsboot.composefs.tree import Inode, lookup, walk
from cfsboot.deploy.install import InstallOptions, to_filesystem
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.state import ETC_VIEWS_PREFIX
from cfsboot.linux.fsutil import TEMP_MARKER
from cfstest import bootorder
from cfstest.osimages import KVER, OsOptions, os_image
from setuproot.config import EtcMount, parse_config
from setuproot.contract import SETUP_ROOT_CONFIG, HashAlg, parse_cmdline

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("can_mount", "fat_tools"),
]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
HOOK = HERE / "crashhook.py"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        str(p) for p in (REPO_ROOT / "stager", REPO_ROOT / "setup-root", HERE)
    ),
    "MTOOLS_SKIP_CHECK": "1",
}
ENV.pop("CFSBOOT_DEBUG", None)
WORKERS = 2  # the machine's cores
EVERY_POINT = os.environ.get("CFSBOOT_CRASH_EVERY_POINT") == "1"
FAT_SIZE = 40 << 20  # the smallest comfortable FAT32 (65525 clusters of 512 bytes)
# A change the admin made in the first deployment's /etc; every later one must carry it.
LOCAL_NAME, LOCAL_DATA = "local.conf", b"a local change\n"
KILLED = -9
STAGED_ENTRIES = "loader/entries.staged"  # bootc's name for the menu finalize swaps in


class Backend(enum.StrEnum):
    DIR = "dir"  # a directory stands in for the mounted ESP (DirEsp, renameat2)
    FAT = "fat"  # a FAT32 image through mtools (MtoolsEsp, cfsboot.boot.fat's exchange)


# ---------------------------------------------------------------------------------------
# Machines (one copy of a disk) and the fork servers that run cfsboot on them
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The physical root, the ESP and the run directory (the staged marker) of one system."""

    path: Path
    backend: Backend

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def esp_dir(self) -> Path:
        return self.path / "esp"

    @property
    def esp_image(self) -> Path:
        return self.path / "esp.img"

    @property
    def run(self) -> Path:
        return self.path / "run"

    @property
    def marker(self) -> Path:
        return self.run / "composefs" / "staged-deployment"

    def esp_spec(self) -> str:
        return str(self.esp_dir) if self.backend is Backend.DIR else f"{self.esp_image}@0"

    def esp(self) -> Esp:
        if self.backend is Backend.DIR:
            return DirEsp(self.esp_dir)
        return MtoolsEsp(self.esp_image, 0)

    def roots(self) -> list[Path]:
        esp = self.esp_dir if self.backend is Backend.DIR else self.esp_image
        return [self.root, esp, self.run]

    def argv(self, *args: str) -> list[str]:
        return [
            *args,
            "--sysroot",
            str(self.root),
            "--esp",
            self.esp_spec(),
            "--run-dir",
            str(self.run),
        ]

    def copy(self, dest: Path) -> Machine:
        """A copy of the whole disk (root, ESP, run directory) at `dest`."""
        dest.mkdir(parents=True)
        for p in self.roots():
            subprocess.run(["cp", "-a", "--reflink=auto", p, dest / p.name], check=True)
        return Machine(dest, self.backend)


class ForkServer:
    """`crashhook.py --serve`: runs cfsboot commands in forked children (see crashhook)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HOOK), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
            text=True,
        )

    def run(self, argv: Sequence[str], output: Path, env: dict[str, str] | None = None) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        req = {"argv": list(argv), "env": {**ENV, **(env or {})}, "cwd": "/", "output": str(output)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise AssertionError(f"the fork server died (exit code {self.proc.wait()})")
        return int(json.loads(reply)["status"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Servers:
    """A pool of fork servers, one per worker thread."""

    def __init__(self, n: int) -> None:
        self.all = [ForkServer() for _ in range(n)]
        self.free: queue.Queue[ForkServer] = queue.Queue()
        for s in self.all:
            self.free.put(s)

    @property
    def size(self) -> int:
        return len(self.all)

    def run(self, argv: Sequence[str], output: Path, env: dict[str, str] | None = None) -> int:
        server = self.free.get()
        try:
            return server.run(argv, output, env)
        finally:
            self.free.put(server)

    def close(self) -> None:
        for s in self.all:
            s.close()


def cfsboot(
    servers: Servers, m: Machine, *args: str, crash_at: int | None = None, fails: bool = False
) -> str:
    """Run one cfsboot command on `m`; its output.

    Without a crash point it must succeed (or, `fails`, fail with exit code 1); with one,
    it must be killed there.
    """
    out = m.path / f"out-{time.monotonic_ns()}"
    env = {}
    if crash_at is not None:
        env = {"CFSBOOT_CRASH_AT": str(crash_at), "CFSBOOT_CRASH_TRACE": str(m.path / "trace")}
        env["CFSBOOT_CRASH_ROOTS"] = ":".join(str(p) for p in m.roots())
    status = servers.run(m.argv(*args), out, env)
    text = out.read_text(errors="replace")
    out.unlink()
    want = KILLED if crash_at is not None else 1 if fails else 0
    if status != want:
        what = f"cfsboot {' '.join(args)}"
        if crash_at is not None:
            what += f" was not killed at point {crash_at} (it took fewer steps than counted):"
        raise AssertionError(f"{what} exit status {status}, expected {want}: {text.strip()}")
    return text


# ---------------------------------------------------------------------------------------
# The invariant, as the firmware, the boot loader and setup-root see the disk
# ---------------------------------------------------------------------------------------


def esp_view(m: Machine) -> Path:
    """A directory with the ESP's files: the ESP itself, or a copy read out by mtools."""
    if m.backend is Backend.DIR:
        return m.esp_dir
    view = m.path / "esp-view"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir()
    proc = subprocess.run(
        ["mcopy", "-s", "-n", "-i", str(m.esp_image), "::/*", str(view)],
        capture_output=True,
        env=ENV,
        check=False,
    )
    assert proc.returncode == 0, f"mtools cannot read the ESP: {proc.stderr.decode()}"
    return view


def esp_path(view: Path, path: str, *, fat: bool) -> Path | None:
    """What an ESP path names; FAT (and so firmware) compares names case-insensitively."""
    node = view
    for part in (p for p in path.split("/") if p):
        if fat:
            names = {n.casefold(): n for n in os.listdir(node)} if node.is_dir() else {}
            name = names.get(part.casefold())
            if name is None:
                return None
            node = node / name
        else:
            node = node / part
    return node if node.exists() else None


def live_menu(view: Path) -> list[bootorder.Entry]:
    """cfsboot's entries of the live menu, the one systemd-boot boots by default first.

    The order and the default are the Boot Loader Specification's and systemd-boot's
    (cfstest.bootorder), not cfsboot's own reading of its menu.
    """
    menu = bootorder.read_esp(view)
    assert menu.entries, "no loader/entries or no entry in it: the menu is gone"
    default = menu.default
    assert default is not None
    assert default.file.startswith("bootc_") and bootorder.entry_digest(default), (
        f"the default entry {default.file} is not cfsboot's"
    )
    ours = [e for e in menu.entries if e.file.startswith("bootc_") and bootorder.entry_digest(e)]
    return [default, *(e for e in ours if e is not default)]


def _object_bytes(objects: Path, node: Inode, alg: HashAlg) -> bytes:
    if node.content is not None:
        return node.content
    if not node.size:
        return b""
    assert node.payload is not None
    path = objects / os.fsdecode(node.payload).lstrip("/")
    assert path.is_file(), f"object {path.relative_to(objects)} is missing"
    data = path.read_bytes()
    if node.digest is not None:
        got = fsverity.digest_bytes(data, alg)
        assert got == node.digest, f"object {path.relative_to(objects)} has digest {got.hex()}"
    return data


def check_deployment(root: Path, d: str) -> Inode:
    """`d` is complete the way setup-root needs it; its image tree."""
    repo = root / "composefs"
    alg = HashAlg.from_repo_name(json.loads((repo / "meta.json").read_text())["algorithm"])
    assert alg is not None
    image = repo / "images" / d
    assert image.is_symlink(), f"composefs/images/{d[:12]}… is missing"
    obj = image.resolve()
    assert obj.is_file(), f"composefs/images/{d[:12]}… points at nothing"
    assert obj.is_relative_to(repo / "objects")
    data = obj.read_bytes()
    assert fsverity.digest_bytes(data, alg).hex() == d, f"image {d[:12]}… has another digest"
    tree = read_image(data)
    objects = repo / "objects"
    for _path, node in walk(tree):
        if node.is_reg():
            _object_bytes(objects, node, alg)
    state = root / "state" / "deploy" / d
    origin = state / f"{d}.origin"
    assert origin.is_file(), f"deployment {d[:12]}… has no origin"
    Origin.parse(origin.read_text(), name=str(origin))
    assert os.readlink(state / "var") == "../../os/default/var"
    assert (state / "var").is_dir(), "the shared var is missing"
    conf = lookup(tree, SETUP_ROOT_CONFIG.encode())
    config = parse_config(_object_bytes(objects, conf, alg).decode()) if conf else None
    mode = config.etc if config else EtcMount.OVERLAY
    if mode is EtcMount.OVERLAY:
        for sub in ("upper", "work"):
            assert (state / "etc" / sub).is_dir(), f"deployment {d[:12]}… has no etc/{sub}"
        local = state / "etc" / "upper" / LOCAL_NAME
        assert local.is_file() and local.read_bytes() == LOCAL_DATA, (
            f"deployment {d[:12]}… lost the local /etc change"
        )
    elif mode is EtcMount.BIND:
        assert (state / "etc" / LOCAL_NAME).read_bytes() == LOCAL_DATA
    return tree


def check_entry(m: Machine, view: Path, e: bootorder.Entry) -> str:
    """One boot entry boots: its karg, its boot files, its deployment; the deployment."""
    d = bootorder.entry_digest(e)
    assert d is not None
    [karg] = parse_cmdline(" ".join(e.options))
    assert karg.digest == d
    tree = check_deployment(m.root, d)
    repo = m.root / "composefs"
    alg = HashAlg.from_repo_name(json.loads((repo / "meta.json").read_text())["algorithm"])
    assert alg is not None
    fat = m.backend is Backend.FAT
    assert e.linux is not None and len(e.initrd) == 1, f"{e.file}: not a kernel+initrd entry"
    for path, image_path in (
        (e.linux, f"usr/lib/modules/{KVER}/vmlinuz"),
        (e.initrd[0], f"usr/lib/modules/{KVER}/initramfs.img"),
    ):
        f = esp_path(view, path, fat=fat)
        assert f is not None and f.is_file(), f"{e.file}: {path} is not on the ESP"
        node = lookup(tree, image_path.encode())
        assert node is not None
        want = _object_bytes(repo / "objects", node, alg)
        assert f.read_bytes() == want, f"{e.file}: {path} has other bytes than the image's"
    return d


@dataclass
class Seen:
    default: str
    menu: list[str]
    view: Path  # the ESP's files as read for the check


def check_boots(
    m: Machine, allowed: Sequence[str], *, in_exchange: bool = False, after: bool = False
) -> Seen:
    """The invariant (module docstring); the default must be one of `allowed`.

    Lost clusters on the FAT are accepted only where cfsboot.boot.fat says a crash leaves
    them: between the two steps of an exchange across sectors (`in_exchange`), which
    leaves `loader/entries.staged` missing; `after` that, they stay until an fsck.
    """
    view = esp_view(m)
    fat = m.backend is Backend.FAT
    menu = live_menu(view)
    ids = [check_entry(m, view, e) for e in menu]
    names = {d: n for n, d in DIGEST_NAMES.items()}
    assert ids[0] in allowed, (
        f"the default boots {names.get(ids[0], ids[0][:12])}, expected one of"
        f" {[names.get(a, a[:12]) for a in allowed]}"
    )
    if fat and fsck(m.esp_image):
        assert in_exchange, "fsck.vfat finds lost clusters outside the exchange's crash window"
        if not after:
            staged = esp_path(view, STAGED_ENTRIES, fat=True)
            assert staged is None, "lost clusters, but loader/entries.staged is still there"
    return Seen(ids[0], ids, view)


def disk_names(m: Machine, view: Path) -> set[str]:
    """Every name on the root filesystem and the ESP (FAT names case-folded)."""
    out: set[str] = set()
    for base, prefix in ((m.root, "root"), (view, "esp")):
        for dirpath, dirnames, filenames in os.walk(base):
            for n in [*dirnames, *filenames]:
                rel = os.path.relpath(os.path.join(dirpath, n), base)
                if prefix == "esp" and m.backend is Backend.FAT:
                    rel = rel.casefold()
                out.add(f"{prefix}/{rel}")
    return out


# What fsck.vfat -n says about clusters that nothing points to (and the free count they
# throw off): the one inconsistency the FAT exchange's crash window may leave (cfsboot.boot.fat).
LOST_CLUSTER_LINES = re.compile(
    r"Reclaimed \d+ unused clusters? \(\d+ bytes\)\.|Free cluster summary wrong \(.*\)"
    r"|  Auto-correcting\.|Leaving filesystem unchanged\.|"
)


def fsck(image: Path) -> bool:
    """fsck.vfat -n finds nothing wrong but, perhaps, lost clusters; are there any?"""
    proc = subprocess.run(["fsck.vfat", "-n", str(image)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines()[1:] if not ln.startswith(f"{image}:")]
    if proc.returncode == 0 and not lines:
        return False
    assert all(LOST_CLUSTER_LINES.fullmatch(ln) for ln in lines), (
        f"fsck.vfat -n: {proc.stdout}{proc.stderr}"
    )
    return True


# ---------------------------------------------------------------------------------------
# Images, systems and the operations
# ---------------------------------------------------------------------------------------

# v1 -> v2 changes the kernel (switch copies boot files) and /etc (finalize merges);
# v3 shares v2's kernel; v4 has its own. gc after v2, v3, v4 drops v1 (and its kernel
# directory) and v2 (whose kernel directory v3 still boots).
VERSIONS: dict[str, OsOptions] = {
    "v1": {"kernel": "k1"},
    "v2": {"kernel": "k2", "etc": {"added-by-v2": b"new file of v2\n"}},
    "v3": {"kernel": "k2"},
    "v4": {"kernel": "k3"},
}
DIGEST_NAMES: dict[str, str] = {}  # v1 -> digest, filled by the images fixture


@dataclass(frozen=True)
class Scenario:
    name: str
    op: str  # switch, finalize, rollback, gc: what runs (see `recoveries`)
    argv: tuple[str, ...]
    pre: str  # the system it starts from (see `systems`)
    after_crash: tuple[str, ...]  # versions the default may boot right after a crash
    # Crash-free runs from `pre` to each default the next run may leave, ending with gc.
    clean: dict[str, tuple[tuple[str, ...], ...]]
    backends: tuple[Backend, ...] = tuple(Backend)


SWITCH = ("switch", "@v2", "-q")
FINALIZE = ("finalize-staged",)
ROLLBACK = ("rollback",)
GC = ("gc",)
SCENARIOS = (
    # Staging never touches the live menu: the old default boots at every point.
    Scenario("switch", "switch", SWITCH, "installed", ("v1",), {"v2": (SWITCH, FINALIZE, GC)}),
    # The exchange of the staged and the live menu is the one step that changes the default.
    Scenario("finalize", "finalize", FINALIZE, "staged-v2", ("v1", "v2"), {"v2": (FINALIZE, GC)}),
    # The same where loader/entries and loader/entries.staged lie in different sectors of
    # the FAT directory: the exchange takes two sector writes (see cfsboot.boot.fat).
    Scenario(
        "finalize-split",
        "finalize",
        FINALIZE,
        "staged-v2-split",
        ("v1", "v2"),
        {"v2": (FINALIZE, GC)},
        (Backend.FAT,),
    ),
    # From [v2, v1] with v3 staged: the staged one is dropped, then v1 becomes the default.
    Scenario(
        "rollback",
        "rollback",
        ROLLBACK,
        "v2-with-v3-staged",
        ("v2", "v1"),
        {"v1": (ROLLBACK, GC), "v2": (ROLLBACK, ROLLBACK, GC)},
    ),
    # From [v4, v3, v2, v1]: v2 and v1 go; v4 is the default throughout.
    Scenario("gc", "gc", GC, "four-deployed", ("v4",), {"v4": (GC, GC)}),
)


def _args(argv: Sequence[str], refs: dict[str, str]) -> list[str]:
    return [refs[a[1:]] if a.startswith("@") else a for a in argv]


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
    cfsboot(servers, m, *_args(SWITCH, images))
    for i in (1, 2, 3):
        _mtools("mdel", "-i", str(m.esp_image), f"::/loader/f{i}")
    free, sectors = _loader_slots(m.esp_image)
    assert free >= 3 and not sectors["entries.staged"] & sectors["entries"], sectors
    filler.unlink()


# ---------------------------------------------------------------------------------------
# Running the operation again
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What the next run does and what it must leave: its commands, the default after it."""

    label: str
    commands: tuple[tuple[str, ...], ...]
    expect: str  # version


# A command that must fail, saying this (the finalize that finds no staged menu).
STAGE_AGAIN_HINT = "run the switch or upgrade again"
REFUSED_FINALIZE = ("!", *FINALIZE)


def recoveries(sc: Scenario, crashed: Seen, has_marker: bool) -> list[tuple[Recovery, bool]]:
    """The next runs to try after a crash, each with: drop the run directory first (a reboot)?"""
    by_digest = {d: v for v, d in DIGEST_NAMES.items()}
    default = by_digest[crashed.default]
    if sc.op == "switch":
        return [(Recovery("switch again", (SWITCH, FINALIZE), "v2"), False)]
    if sc.op == "finalize":
        out = []
        staged = esp_path(crashed.view, STAGED_ENTRIES, fat=True)
        if has_marker and staged is None and default == "v1":
            # The FAT exchange's window lost the staged menu (cfsboot.boot.fat): finalize says
            # so and what to do, and the old default boots until then.
            rec = Recovery(
                "finalize again, then switch again", (REFUSED_FINALIZE, SWITCH, FINALIZE), "v2"
            )
            out.append((rec, False))
        elif has_marker:
            # Killed without a reboot (a manual finalize-staged): the shutdown runs it again.
            out.append((Recovery("finalize again", (sc.argv,), "v2"), False))
        # After a power cut /run is empty: the admin sees the old default and switches again.
        redo = (SWITCH, FINALIZE) if default == "v1" else ()
        out.append((Recovery("reboot, switch again", redo, "v2"), True))
        return out
    if sc.op == "rollback":
        # rollback toggles: run again, it must make the other one of the two the default.
        other = "v1" if default == "v2" else "v2"
        return [(Recovery("rollback again", (sc.argv,), other), False)]
    assert sc.op == "gc"
    return [(Recovery("gc again", (sc.argv,), "v4"), False)]


class References:
    """What crash-free runs leave on the disk, by scenario, backend and resulting default."""

    def __init__(self, work: Path, servers: Servers, refs: dict[str, str]) -> None:
        self.work = work
        self.servers = servers
        self.refs = refs
        self.lock = threading.Lock()
        self.cache: dict[tuple[str, Backend, str], set[str]] = {}

    def names(self, sc: Scenario, pre: Machine, expect: str) -> set[str]:
        key = (sc.name, pre.backend, expect)
        with self.lock:
            if key not in self.cache:
                m = pre.copy(self.work / f"reference-{sc.name}-{pre.backend}-{expect}")
                for command in sc.clean[expect]:
                    cfsboot(self.servers, m, *_args(command, self.refs))
                seen = check_boots(m, [DIGEST_NAMES[expect]])
                self.cache[key] = disk_names(m, seen.view)
                shutil.rmtree(m.path)
            return self.cache[key]


def check_same_names(got: set[str], want: set[str]) -> None:
    def short(names: set[str]) -> list[str]:
        out = []
        for n in sorted(names)[:6]:
            for v, d in DIGEST_NAMES.items():
                n = n.replace(d, v)
            out.append(n)
        return out

    assert got == want, (
        "the disk differs from a crash-free run's: extra"
        f" {short(got - want)}, missing {short(want - got)}"
    )


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
    cfsboot(servers, m, *_args(sc.argv, refs), crash_at=p.n)
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
                    out = cfsboot(servers, target, *_args(command[1:], refs), fails=True)
                    assert STAGE_AGAIN_HINT in out, f"cfsboot {' '.join(command[1:])}: {out}"
                else:
                    cfsboot(servers, target, *_args(command, refs))
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
    status = servers.run(counted.argv(*_args(sc.argv, refs)), out, env)
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
        servers, systems[Backend.DIR]["installed"], tmp_path, _args(SWITCH, images), op, where
    )
    for command in (SWITCH, FINALIZE):
        cfsboot(servers, m, *_args(command, images))
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
