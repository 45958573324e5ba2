"""The deployment lifecycle on a disk image made by `cfsboot install to-disk`.

install -> switch -> finalize -> status -> rollback -> gc, with the root
filesystem loop-mounted at its offset in the image and the ESP read through
mtools (this host cannot mount vfat), exactly as an admin would run it
against an offline disk. Every step asserts the files on the ESP, the state
directories, the order of the boot entries and the status JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cfsboot.boot.disk import read_layout
from cfsboot.image.importer import import_image
from cfstest import bootorder
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass
class Machine:
    disk: Path
    root: Path  # the root filesystem, loop-mounted
    run: Path  # run directory (the staged marker)
    esp_offset: int

    def cfs(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cfsboot(*args, "--sysroot", self.root, "--run-dir", self.run, check=check)

    def _m(self, tool: str, *args: str) -> str:
        proc = subprocess.run(
            [tool, "-i", f"{self.disk}@@{self.esp_offset}", *args],
            capture_output=True,
            env=MTOOLS_ENV,
            check=False,
        )
        if proc.returncode != 0:
            raise FileNotFoundError(f"{tool} {args}: {proc.stderr.decode()}")
        return proc.stdout.decode("latin-1")

    def ls(self, path: str) -> list[str]:
        try:
            out = self._m("mdir", "-b", f"::/{path}")
        except FileNotFoundError:
            return []
        return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line)

    def read(self, path: str) -> str:
        return self._m("mtype", f"::/{path}")

    def boot_menu(self, staged: bool = False) -> bootorder.Menu:
        """The menu systemd-boot would show (cfstest.bootorder: the BLS rules, not cfsboot's)."""
        d = "loader/entries.staged" if staged else "loader/entries"
        files = [(n, self.read(f"{d}/{n}")) for n in self.ls(d)]
        conf = self.read("loader/loader.conf") if "loader.conf" in self.ls("loader") else None
        return bootorder.systemd_boot_menu(files, conf)

    def entries(self, staged: bool = False) -> list[bootorder.Entry]:
        return list(self.boot_menu(staged).entries)

    def menu(self) -> list[str]:
        """Deployments in systemd-boot's order; the first is the one it boots."""
        menu = self.boot_menu()
        # cfsboot writes no loader.conf `default`: the first entry is the default one.
        assert menu.default is (menu.entries[0] if menu.entries else None)
        return [bootorder.entry_digest(e) or "?" for e in menu.entries]

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cfs("status", "--json").stdout)
        return doc


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("images")
    return {
        "v1": os_image(base / "v1", "1"),
        "v2": os_image(base / "v2", "2", etc={"added-by-v2": b"new file of v2\n"}),
        "v3": os_image(base / "v3", "3", kernel="k3"),
    }


def _digest(ref: str) -> str:
    return import_image(ref, None).image_digest


@pytest.fixture
def machine(tmp_path: Path, images: dict[str, str]) -> Iterator[Machine]:
    disk = tmp_path / "disk.img"
    cfsboot("install", "to-disk", images["v1"], disk, "--size", "3G", "--karg", "quiet", "-q")
    layout = read_layout(disk)
    root_part = layout.partitions[1]
    mnt = tmp_path / "root"
    mnt.mkdir()
    subprocess.run(
        [
            "mount",
            "-o",
            f"loop,offset={root_part.start},sizelimit={root_part.size}",
            disk,
            mnt,
        ],
        check=True,
    )
    try:
        yield Machine(disk, mnt, tmp_path / "run", layout.esp.start)
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_install_writes_loader_entry_state_and_shared_var(
    machine: Machine, images: dict[str, str]
) -> None:
    d1 = _digest(images["v1"])
    assert machine.ls("EFI/BOOT") == ["BOOTX64.EFI"]
    assert "systemd-bootx64.efi" in machine.ls("EFI/systemd")
    assert machine.read("loader/loader.conf") == "timeout 5\n"
    [entry] = machine.entries()
    assert entry.file == "bootc_testos-1-0.conf"
    kdir = f"/EFI/Linux/bootc_composefs-{d1}"
    assert entry.title == "Test OS" and entry.version == "1"
    assert entry.linux == f"{kdir}/vmlinuz" and entry.initrd == (f"{kdir}/initrd",)
    assert entry.sort_key == "bootc-testos-0"
    opts = list(entry.options)
    assert opts[0].startswith("root=UUID=") and opts[1:3] == ["rw", "quiet"]
    # No fs-verity on this host: an insecure repository, composefs=? (kargs.d after it).
    assert opts[3:] == [f"composefs=?{d1}", "console=ttyS0,115200"]
    state = machine.root / "state/deploy" / d1
    assert os.readlink(state / "var") == "../../os/default/var"
    assert (state / "var/lib/seeded").read_text() == "from the image\n"
    assert sorted(os.listdir(state / "etc")) == ["upper", "work"]
    origin = (state / f"{d1}.origin").read_text()
    assert "container-image-reference = ostree-unverified-image:oci:" in origin
    assert "boot_type = bls" in origin
    assert (machine.root / "composefs/images" / d1).is_symlink()
    assert (machine.root / "composefs/images/refs/deploy" / d1).is_symlink()


def test_switch_finalize_rollback_gc(machine: Machine, images: dict[str, str]) -> None:
    d1, d2, d3 = (_digest(images[v]) for v in ("v1", "v2", "v3"))
    upper1 = machine.root / "state/deploy" / d1 / "etc/upper"
    (upper1 / "local.conf").write_text("a local change\n")

    out = machine.cfs("switch", images["v2"], "-q")
    assert out.stdout.strip() == d2
    assert "it boots next" in out.stderr
    # Staged: the live menu is unchanged, the staged one has v2 first, then v1.
    assert machine.menu() == [d1]
    staged = machine.entries(staged=True)
    # v2 boots on trial (3 tries by default: BLS boot counting in its name), v1 does not.
    assert [e.file for e in staged] == ["bootc_testos-2-1+3.conf", "bootc_testos-1-0.conf"]
    assert [bootorder.entry_digest(e) for e in staged] == [d2, d1]
    # Same kernel and initrd: v2 boots v1's copy instead of a second one.
    assert staged[0].linux == staged[1].linux
    assert machine.ls("EFI/Linux") == [f"bootc_composefs-{d1}"]
    marker = json.loads((machine.run / "composefs/staged-deployment").read_text())
    assert marker == {"depl_id": d2, "finalization_locked": False}
    st = machine.status()
    assert st["status"]["staged"]["composefs"]["verity"] == d2
    assert st["status"]["booted"]["composefs"]["verity"] == d1

    # The reference the staged deployment follows: no change, nothing fetched (bootc).
    again = machine.cfs("switch", images["v2"], "-q")
    assert again.stderr.startswith(f"image specification is unchanged: {images['v2']} is")
    assert again.stdout == ""

    machine.cfs("finalize-staged")
    assert machine.menu() == [d2, d1]
    assert machine.ls("loader") == ["entries", "loader.conf"]
    assert not (machine.run / "composefs/staged-deployment").exists()
    upper2 = machine.root / "state/deploy" / d2 / "etc/upper"
    assert (upper2 / "local.conf").read_text() == "a local change\n"

    st = machine.status()
    assert st["apiVersion"] == "org.containers.bootc/v1" and st["kind"] == "BootcHost"
    s = st["status"]
    assert s["staged"] is None
    assert s["booted"]["composefs"]["verity"] == d2
    assert s["rollback"]["composefs"]["verity"] == d1
    assert s["booted"]["composefs"]["bootType"] == "Bls"
    assert s["booted"]["composefs"]["missingVerityAllowed"] is True
    assert s["booted"]["image"]["image"]["transport"] == "oci"
    assert s["booted"]["image"]["architecture"] == "amd64"
    assert s["booted"]["image"]["imageDigest"].startswith("sha256:")
    assert st["spec"]["bootOrder"] == "default"

    same = machine.cfs("switch", images["v2"], "-q")
    assert same.stderr.startswith(f"image specification is unchanged: {images['v2']} is")

    machine.cfs("rollback")
    assert machine.menu() == [d1, d2]
    machine.cfs("rollback")
    assert machine.menu() == [d2, d1]

    machine.cfs("switch", images["v3"], "-q")
    machine.cfs("finalize-staged")
    assert machine.menu() == [d3, d2, d1]
    assert machine.ls("EFI/Linux") == sorted([f"bootc_composefs-{d1}", f"bootc_composefs-{d3}"])

    dry = machine.cfs("gc", "--dry-run").stdout
    assert "would remove 1 deployment(s)" in dry
    assert machine.menu() == [d3, d2, d1]
    assert (machine.root / "state/deploy" / d1).exists()

    machine.cfs("gc")
    assert machine.menu() == [d3, d2]
    assert not (machine.root / "state/deploy" / d1).exists()
    assert not (machine.root / "composefs/images" / d1).exists()
    # v2 still boots the kernel directory named after v1: it stays.
    assert machine.ls("EFI/Linux") == sorted([f"bootc_composefs-{d1}", f"bootc_composefs-{d3}"])
    assert "would remove 0 deployment(s)" in machine.cfs("gc", "--dry-run").stdout

    machine.cfs("rollback")  # v2 default, v3 rollback
    machine.cfs("gc", "--keep", "0")
    assert machine.menu() == [d2, d3]


def test_rollback_needs_two_entries(machine: Machine) -> None:
    out = machine.cfs("rollback", check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "cfsboot: there is no rollback deployment (the boot menu has only one cfsboot entry)"
    ]


def test_rollback_drops_a_staged_deployment(machine: Machine, images: dict[str, str]) -> None:
    d1, d2, d3 = (_digest(images[v]) for v in ("v1", "v2", "v3"))
    machine.cfs("switch", images["v2"], "-q")
    machine.cfs("finalize-staged")
    machine.cfs("switch", images["v3"], "-q")
    out = machine.cfs("rollback")
    assert "dropped the staged deployment" in out.stderr
    assert machine.menu() == [d1, d2]
    assert machine.ls("loader") == ["entries", "loader.conf"]
    assert machine.cfs("finalize-staged").returncode == 0  # nothing staged any more
    assert machine.menu() == [d1, d2]
    # The dropped deployment's leftovers go with the next gc.
    machine.cfs("gc")
    assert not (machine.root / "state/deploy" / d3).exists()


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_other_root_filesystems(tmp_path: Path, images: dict[str, str], fs: str) -> None:
    """btrfs (fs-verity capable) and xfs (none: --insecure only) roots, through the same
    switch and finalize as ext4."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 3 << 30)
    if fs == "xfs":
        refused = cfsboot("install", "to-disk", images["v1"], disk, "--filesystem", fs, check=False)
        one_line_error(refused)
        assert "xfs has no fs-verity" in refused.stderr and "--insecure" in refused.stderr
        assert disk.read_bytes()[:4096] == bytes(4096)  # nothing written
    extra = ["--insecure"] if fs == "xfs" else []
    cfsboot("install", "to-disk", images["v1"], disk, "--filesystem", fs, "-q", *extra)
    layout = read_layout(disk)
    root_part = layout.partitions[1]
    probe = subprocess.run(
        ["blkid", "-p", "-O", str(root_part.start), "-o", "export", disk],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = dict(line.split("=", 1) for line in probe.stdout.split())
    assert found["TYPE"] == fs and found["LABEL"] == "root"
    mnt = tmp_path / "root"
    mnt.mkdir()
    opts = f"loop,offset={root_part.start},sizelimit={root_part.size}"
    subprocess.run(["mount", "-o", opts, disk, mnt], check=True)
    try:
        machine = Machine(disk, mnt, tmp_path / "run", layout.esp.start)
        [entry] = machine.entries()
        assert entry.options[0] == f"root=UUID={found['UUID']}"
        d1, d2 = _digest(images["v1"]), _digest(images["v2"])
        machine.cfs("switch", images["v2"], "-q")
        machine.cfs("finalize-staged")
        assert machine.menu() == [d2, d1]
        assert (mnt / "state/deploy" / d2 / "etc/upper").is_dir()
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_boot_counting_fallback_and_a_new_trial(machine: Machine, images: dict[str, str]) -> None:
    """v2 on trial runs out of tries (systemd-boot's renames, done here with mtools): v1 is
    the default again, status says why, and only staging v2 again gives it new tries."""
    d1, d2 = _digest(images["v1"]), _digest(images["v2"])
    machine.cfs("switch", images["v2"], "-q", "--boot-tries", "2")
    machine.cfs("finalize-staged")
    assert machine.ls("loader/entries") == ["bootc_testos-1-0.conf", "bootc_testos-2-1+2.conf"]
    trial = machine.status()["status"]["booted"]["cfsboot"]["bootAssessment"]
    assert trial == {"state": "pending", "triesLeft": 2, "triesDone": 0, "lastFailure": None}
    # systemd-boot boots it twice (renaming the entry before each boot); both boots fail.
    for old, new in (("+2", "+1-1"), ("+1-1", "+0-2")):
        machine._m("mren", f"::/loader/entries/bootc_testos-2-1{old}.conf",
                   f"bootc_testos-2-1{new}.conf")  # fmt: skip
    st = machine.status()["status"]
    # Offline, the default entry stands in for the booted one: v1, the fallback.
    assert st["booted"]["composefs"]["verity"] == d1 and st["rollbackQueued"] is False
    assert st["rollback"]["cfsboot"]["bootAssessment"] == {
        "state": "failed",
        "triesLeft": 0,
        "triesDone": 2,
        "lastFailure": None,
    }
    host = st["cfsboot"]["bootAssessment"]
    assert (host["fallback"], host["failedDeployment"], host["triesUsed"]) == (True, d2, 2)
    assert host["message"].startswith(f"deployment {d2[:12]}… (2) failed its boot assessment")
    # A new deployment staged meanwhile keeps v2 passed over (its spent counter stays).
    again = machine.cfs("switch", images["v2"], "-q")
    assert "it boots next" in again.stderr
    machine.cfs("finalize-staged")
    assert machine.ls("loader/entries") == ["bootc_testos-1-0.conf", "bootc_testos-2-1+3.conf"]
    assert machine.status()["status"]["cfsboot"]["bootAssessment"]["fallback"] is False
