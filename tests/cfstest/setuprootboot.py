"""setup-root booted against a real sysroot: an ext4 image file, loop-mounted in a
private namespace (tests/integration/test_setuproot*.py).

`make_sysroot` builds the physical root with two deployments (by the stager, or by C
mkcomposefs); `boot` runs setup-root in `unshare -m --propagation private` with its own
tmpfs on /run and inspects the result from inside the same namespace. When the
namespace ends every mount goes with it, and the autoclear loop devices with them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfstest import REPO_ROOT
from setuproot.contract import DEPLOY_VAR_LINK_TARGET, HashAlg, object_relpath

BIG = bytes(range(256)) * 400  # 100 KiB: an external object, read through objects/
HELLO = b"#!/bin/sh\necho this file is longer than sixty-four bytes so it is external\n"


@dataclass(frozen=True)
class Sysroot:
    image: Path  # ext4 image file holding the physical root
    digests: dict[str, str]  # deployment name -> image digest (hex)
    algorithm: HashAlg

    def copy(self, image: Path) -> Sysroot:
        """A copy of the physical root at `image` (sparse), for one test to change."""
        subprocess.run(["cp", "--sparse=always", str(self.image), str(image)], check=True)
        return Sysroot(image, self.digests, self.algorithm)


def _write_tree(root: Path, version: str) -> None:
    for d in ("etc", "usr/bin", "usr/share", "var", "sysroot", "run", "boot"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("cfsboot-test\n")
    (root / "etc/os-release").write_text(f"ID=cfsboot\nVERSION_ID={version}\n")
    (root / "usr/bin/hello").write_bytes(HELLO)
    (root / "usr/bin/hello").chmod(0o755)
    (root / "usr/share/big").write_bytes(BIG)
    (root / "usr/share/version").write_text(version * 40 + "\n")
    (root / "var/from-install").write_text("shared var\n")
    # What install and switch need to write boot entries (nothing boots them here).
    kdir = root / "usr/lib/modules/6.12.0-test"
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"kernel " * 1000)
    (kdir / "initramfs.img").write_bytes(b"initramfs " * 1000)
    efi = root / "usr/lib/systemd/boot/efi"
    efi.mkdir(parents=True)
    (efi / "systemd-bootx64.efi").write_bytes(b"systemd-boot " * 1000)


def _build_with_stager(physical: Path, sources: dict[str, Path]) -> tuple[dict[str, str], HashAlg]:
    """`install to-filesystem` the first tree, `switch` + `finalize-staged` to the second."""
    from cfsboot.boot.bootloader import SystemdBoot
    from cfsboot.boot.esp import DirEsp
    from cfsboot.deploy.install import InstallOptions, to_filesystem
    from cfsboot.deploy.stage import finalize, stage
    from cfsboot.deploy.sysroot import Sysroot as StagerSysroot
    from cfsboot.deploy.target import import_target
    from cfstest.ocibuild import build_layout

    esp = DirEsp(physical.parent / "esp")
    esp.root.mkdir()
    refs = {}
    for name, src in sources.items():
        build_layout(physical.parent / f"oci-{name}", [src])
        refs[name] = f"oci:{physical.parent / f'oci-{name}'}:latest"
    first, *rest = sources
    digests = {
        first: to_filesystem(refs[first], physical, esp, InstallOptions(insecure=True)).digest
    }
    stager = StagerSysroot(physical, run_dir=physical.parent / "run")
    bl = SystemdBoot(esp)
    for name in rest:
        target = import_target(stager, refs[name])
        assert stage(stager, bl, target).staged
        finalize(stager, bl)
        digests[name] = target.digest
    return digests, stager.repo.algorithm


def _build_with_mkcomposefs(
    physical: Path, sources: dict[str, Path]
) -> tuple[dict[str, str], HashAlg]:
    mkcomposefs = Path(os.environ.get("CFSBOOT_REFTOOLS", "/var/cache/cfsboot/reftools-bin"))
    repo = physical / "composefs"
    (repo / "images").mkdir(parents=True)
    digests = {}
    for name, src in sources.items():
        tmp = physical / "image.tmp"
        out = subprocess.run(
            [
                str(mkcomposefs / "mkcomposefs"),
                "--min-version=1",
                "--print-digest",
                f"--digest-store={repo / 'objects'}",
                str(src),
                str(tmp),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        digest = out.stdout.strip()
        obj = repo / "objects" / object_relpath(digest)
        obj.parent.mkdir(exist_ok=True)
        tmp.rename(obj)
        (repo / "images" / digest).symlink_to(f"../objects/{object_relpath(digest)}")
        digests[name] = digest
    return digests, HashAlg.SHA256


def make_sysroot(base: Path, builder: str) -> Sysroot:
    sources = {}
    for name in ("a", "b"):
        _write_tree(base / f"src-{name}", name)
        sources[name] = base / f"src-{name}"
    physical = base / "physical"
    physical.mkdir()
    if builder == "stager":
        digests, alg = _build_with_stager(physical, sources)
    else:
        digests, alg = _build_with_mkcomposefs(physical, sources)
        (physical / "state/os/default/var").mkdir(parents=True)
        (physical / "state/os/default/var/from-install").write_text("shared var\n")
        for digest in digests.values():
            d = physical / "state/deploy" / digest
            d.mkdir(parents=True)
            (d / "var").symlink_to(DEPLOY_VAR_LINK_TARGET)
    image = base / "physical.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(physical), str(image), "64M"],
        check=True,
        capture_output=True,
    )
    return Sysroot(image, digests, alg)


@dataclass(frozen=True)
class Boot:
    rc: int
    stdout: str
    stderr: str
    mounts: dict[str, dict[str, Any]]  # findmnt target -> entry, inside the namespace


def _loops_on(path: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if str(path) in line]


def boot(
    sr: Sysroot,
    tmp_path: Path,
    cmdline: str,
    *,
    args: tuple[str, ...] = (),
    config: str | None = None,
    before: str = "",
    after: str = "",
    program: tuple[str, ...] = (sys.executable, "-m", "setuproot"),
) -> Boot:
    """Mount the physical root at $M in a private namespace, run setup-root, then `after`.

    `config`: the text of a config file to give with --config (tmp_path/conf.toml).
    """
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    if config is not None:
        (tmp_path / "conf.toml").write_text(config)
        args = (*args, "--config", str(tmp_path / "conf.toml"))
    argv = [
        *program,
        "--sysroot",
        str(mnt),
        "--cmdline",
        cmdline,
        *args,
    ]
    script = f"""
set -u
mount -t tmpfs tmpfs /run
mount -o loop {shlex.quote(str(sr.image))} "$M"
{before}
{shlex.join(argv)}
rc=$?
findmnt --json --list --submounts --output TARGET,SOURCE,FSTYPE,OPTIONS --mountpoint "$M" \
    > "$T/mounts.json"
if [ $rc = 0 ]; then
{after or ":"}
fi
exit $rc
"""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO_ROOT / "setup-root"),
        "M": str(mnt),
        "T": str(tmp_path),
    }
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert not _loops_on(sr.image), "a loop device outlived the namespace"
    mounts = {
        m["target"]: m for m in json.loads((tmp_path / "mounts.json").read_text())["filesystems"]
    }
    return Boot(proc.returncode, proc.stdout, proc.stderr, mounts)


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cfsboot-setup-root: "), lines[0]
    return lines[0]
