"""The crash harness's disks and their invariant (see test_crash_points for the whole).

A Machine is one copy of a disk (root filesystem, ESP, run directory); fork servers
(`crashhook.py --serve`) run cfsboot on it. The invariant reads the disk the way the
firmware, the boot loader (cfstest.bootorder, not cfsboot's code) and setup-root would.
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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cfsboot.boot.esp import DirEsp, Esp, MtoolsEsp
from cfsboot.composefs import fsverity
from cfsboot.composefs.erofs.reader import read_image
from cfsboot.composefs.tree import Inode, lookup, walk
from cfsboot.deploy.origin import Origin
from cfstest import bootorder
from cfstest.osimages import KVER
from setuproot.config import EtcMount, parse_config
from setuproot.contract import SETUP_ROOT_CONFIG, HashAlg, parse_cmdline

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
FAT_SIZE = 40 << 20  # the smallest comfortable FAT32 (65525 clusters of 512 bytes)
# A change the admin made in the first deployment's /etc; every later one must carry it.
LOCAL_NAME, LOCAL_DATA = "local.conf", b"a local change\n"
KILLED = -9
STAGED_ENTRIES = "loader/entries.staged"  # bootc's name for the menu finalize swaps in


DIGEST_NAMES: dict[str, str] = {}  # v1 -> digest, filled by the images fixture


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
    check_fallback(bootorder.read_esp(view))
    if fat and fsck(m.esp_image):
        assert in_exchange, "fsck.vfat finds lost clusters outside the exchange's crash window"
        if not after:
            staged = esp_path(view, STAGED_ENTRIES, fat=True)
            assert staged is None, "lost clusters, but loader/entries.staged is still there"
    return Seen(ids[0], ids, view)


def check_fallback(menu: bootorder.Menu) -> None:
    """A default on trial whose tries all fail leaves another cfsboot entry to boot.

    In the oracle's terms: rename the default as the boot loader leaves it once its
    tries are spent (`+0-N`); the menu's default must then be another cfsboot entry
    (check_boots has checked that every cfsboot entry boots).
    """
    trial = menu.default
    if trial is None or trial.tries_left is None:
        return
    after = bootorder.after_rename(menu, trial, bootorder.spent(trial))
    fallback = after.default
    assert fallback is not None and fallback.file != bootorder.spent(trial), (
        f"{trial.file} is on trial with nothing to fall back to once its tries are spent"
    )
    assert fallback.file.startswith("bootc_") and bootorder.entry_digest(fallback), (
        f"once {trial.file} has spent its tries, {fallback.file} boots: not cfsboot's"
    )


def boot_loader_counts(m: Machine) -> None:
    """What systemd-boot does before it boots a default entry on trial: the rename."""
    view = esp_view(m)
    default = bootorder.read_esp(view).default
    assert default is not None
    new = bootorder.counted_try(default)
    assert new is not None, f"{default.file} is not on trial"
    if m.backend is Backend.DIR:
        entries = m.esp_dir / "loader" / "entries"
        os.rename(entries / default.file, entries / new)
    else:
        where = f"::/loader/entries/{default.file}"
        subprocess.run(["mren", "-i", str(m.esp_image), where, new], env=ENV, check=True,
                       capture_output=True)  # fmt: skip


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
