"""setup-root against a real sysroot: an ext4 image file, loop-mounted in a private namespace.

Each "boot" runs setup-root as a subprocess inside `unshare -m --propagation
private` with its own tmpfs on /run, then inspects the result from inside the
same namespace. When the namespace ends every mount goes with it, and the
autoclear loop devices with them; the ext4 image keeps whatever setup-root
and the script wrote (the /etc upper dir, the shared /var), so two boots in a
row show persistence.

The host kernel has no fs-verity: secure mode (`composefs=HEX`) can only be
shown to refuse here; it is proven to work in the VM tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cfstest.reftools import RefTools
from setuproot.contract import DEPLOY_VAR_LINK_TARGET, HashAlg, object_relpath

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIG = bytes(range(256)) * 400  # 100 KiB: an external object, read through objects/
HELLO = b"#!/bin/sh\necho this file is longer than sixty-four bytes so it is external\n"


@dataclass(frozen=True)
class Sysroot:
    image: Path  # ext4 image file holding the physical root
    digests: dict[str, str]  # deployment name -> image digest (hex)
    algorithm: HashAlg


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


def _make_sysroot(base: Path, builder: str) -> Sysroot:
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


@pytest.fixture(scope="module")
def sysroot_template(tmp_path_factory: pytest.TempPathFactory) -> Sysroot:
    """Two deployments made by the stager (install, switch, finalize; sha512, insecure: no
    fs-verity here)."""
    return _make_sysroot(tmp_path_factory.mktemp("sysroot"), "stager")


@pytest.fixture
def sysroot(sysroot_template: Sysroot, tmp_path: Path) -> Sysroot:
    """A fresh copy of the physical root for each test."""
    image = tmp_path / "physical.ext4"
    subprocess.run(
        ["cp", "--sparse=always", str(sysroot_template.image), str(image)],
        check=True,
    )
    return Sysroot(image, sysroot_template.digests, sysroot_template.algorithm)


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


def test_insecure_boot_mounts_the_image_as_root(sysroot: Sysroot, tmp_path: Path) -> None:
    a = sysroot.digests["a"]
    m = str(tmp_path / "mnt")
    (tmp_path / "big").write_bytes(BIG)
    b = boot(
        sysroot,
        tmp_path,
        f"root=/dev/vda2 rw composefs=?{a} quiet",
        after="""
cat "$M/usr/bin/hello"
cmp "$M/usr/share/big" "$T/big" && echo BIG-OK
touch "$M/usr/new" 2>/dev/null || echo ROOT-RO
echo changed > "$M/etc/hostname" && echo ETC-RW
echo mine > "$M/var/mine" && echo VAR-RW
test -d "$M/sysroot/composefs/objects" && echo PHYSICAL-OK
test ! -e /run/cfsboot && echo RUN-CLEAN
""",
    )
    assert (b.rc, b.stderr) == (0, "")
    assert sysroot.algorithm is HashAlg.SHA512 and len(a) == 128
    root = b.mounts[m]
    assert (root["source"], root["fstype"]) == (f"composefs:{a}", "overlay")
    opts = root["options"].split(",")
    assert "ro" in opts and "metacopy=on" in opts and "redirect_dir=on" in opts
    assert f"datadir+={m}/composefs/objects" in opts
    assert not any(o.startswith("verity") for o in opts)
    assert b.mounts[f"{m}/sysroot"]["fstype"] == "ext4"
    var = b.mounts[f"{m}/var"]
    assert (var["fstype"], var["source"].endswith("[/state/os/default/var]")) == ("ext4", True)
    etc = b.mounts[f"{m}/etc"]
    assert etc["fstype"] == "overlay"
    assert f"upperdir={m}/sysroot/state/deploy/{a}/etc/upper" in etc["options"].split(",")
    out = b.stdout.encode()
    assert out.startswith(HELLO)
    for word in ("ROOT-RO", "ETC-RW", "VAR-RW", "PHYSICAL-OK", "RUN-CLEAN"):
        assert word in b.stdout


def test_big_file_read_through_objects_layer(sysroot: Sysroot, tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(BIG)
    b = boot(
        sysroot,
        tmp_path,
        f"composefs=?{sysroot.digests['b']}",
        after='cmp "$M/usr/share/big" "$T/big" && echo BIG-OK; cat "$M/usr/share/version"',
    )
    assert b.rc == 0, b.stderr
    assert b.stdout == "BIG-OK\n" + "b" * 40 + "\n"


def test_image_made_by_c_mkcomposefs(reftools: RefTools, tmp_path: Path) -> None:
    """Images from the reference C tool (sha256 digests) mount the same way."""
    sr = _make_sysroot(tmp_path / "c", "mkcomposefs")
    assert sr.algorithm is HashAlg.SHA256 and len(sr.digests["a"]) == 64
    (tmp_path / "big").write_bytes(BIG)
    b = boot(
        sr,
        tmp_path,
        f"composefs.digest=?v1-sha256-12:{sr.digests['a']}",
        after='cmp "$M/usr/share/big" "$T/big" && echo BIG-OK; cat "$M/usr/bin/hello"',
    )
    assert b.rc == 0, b.stderr
    assert b.stdout.encode() == b"BIG-OK\n" + HELLO


def test_frozen_program_boots(sysroot: Sysroot, tmp_path: Path) -> None:
    """What `make freeze` builds (and the initramfs runs) does the same real mounts."""
    spec = importlib.util.spec_from_file_location("freeze", REPO_ROOT / "setup-root/freeze.py")
    assert spec is not None and spec.loader is not None
    freeze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(freeze)
    assert freeze.main(["--out", str(tmp_path / "frozen")]) == 0
    program = str(tmp_path / "frozen/cfsboot-setup-root/cfsboot-setup-root")
    (tmp_path / "big").write_bytes(BIG)
    a = sysroot.digests["a"]
    b = boot(
        sysroot,
        tmp_path,
        f"composefs=?{a}",
        program=(program,),
        after='cmp "$M/usr/share/big" "$T/big" && echo BIG-OK; echo x > "$M/etc/x" && echo ETC-RW',
    )
    assert (b.rc, b.stdout, b.stderr) == (0, "BIG-OK\nETC-RW\n", "")
    assert b.mounts[str(tmp_path / "mnt")]["source"] == f"composefs:{a}"
    refused = boot(sysroot, tmp_path, f"composefs={a}", program=(program,))
    assert refused.rc == 5 and "has no fs-verity support" in one_line(refused.stderr)


def test_etc_persists_in_upper_dir_across_boots(sysroot: Sysroot, tmp_path: Path) -> None:
    a = sysroot.digests["a"]
    first = boot(
        sysroot,
        tmp_path,
        f"composefs=?{a}",
        after='echo changed > "$M/etc/hostname"; echo new > "$M/etc/added"; rm "$M/etc/os-release"',
    )
    assert first.rc == 0, first.stderr
    upper = f'"$M/sysroot/state/deploy/{a}/etc/upper"'
    second = boot(
        sysroot,
        tmp_path,
        f"composefs=?{a}",
        after=f"""
cat "$M/etc/hostname" "$M/etc/added"
test -e "$M/etc/os-release" || echo OS-RELEASE-GONE
stat -c '%a %n' {upper} "$M/sysroot/state/deploy/{a}/etc/work" | sed "s|$M/sysroot/||"
ls {upper}
""",
    )
    assert second.rc == 0, second.stderr
    assert second.stdout == (
        "changed\nnew\nOS-RELEASE-GONE\n"
        f"755 state/deploy/{a}/etc/upper\n700 state/deploy/{a}/etc/work\n"
        "added\nhostname\nos-release\n"
    )


def test_var_shared_between_deployments_etc_not(sysroot: Sysroot, tmp_path: Path) -> None:
    a, b = sysroot.digests["a"], sysroot.digests["b"]
    first = boot(
        sysroot,
        tmp_path,
        f"composefs=?{a}",
        after='echo from-a > "$M/var/marker"; echo a-host > "$M/etc/hostname"',
    )
    assert first.rc == 0, first.stderr
    second = boot(
        sysroot,
        tmp_path,
        f"composefs=?{b}",
        after='cat "$M/var/marker" "$M/var/from-install" "$M/etc/hostname" "$M/etc/os-release"',
    )
    assert second.rc == 0, second.stderr
    assert second.stdout == "from-a\nshared var\ncfsboot-test\nID=cfsboot\nVERSION_ID=b\n"


def test_old_kernel_paths_loop_device_and_lowerdir_string(sysroot: Sysroot, tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(BIG)
    m = str(tmp_path / "mnt")
    b = boot(
        sysroot,
        tmp_path,
        f"composefs=?{sysroot.digests['a']}",
        args=("--force-loop", "--force-lowerdir-string"),
        after='cmp "$M/usr/share/big" "$T/big" && echo BIG-OK; losetup -ln -O BACK-FILE',
    )
    assert b.rc == 0, b.stderr
    opts = b.mounts[m]["options"].split(",")
    assert f"lowerdir=/run/cfsboot/erofs::{m}/composefs/objects" in opts
    lines = b.stdout.splitlines()
    assert lines[0] == "BIG-OK"
    # The EROFS sits on a loop device over the image object (and the ext4 on its own).
    assert any("/composefs/objects/" in line for line in lines[1:]), b.stdout


def test_transient_etc_and_root(sysroot: Sysroot, tmp_path: Path) -> None:
    config = "[root]\ntransient = true\n[etc]\ntransient = true\n"
    a = sysroot.digests["a"]
    after = 'cat "$M/etc/hostname"; echo x > "$M/etc/hostname"; touch "$M/usr/new" && echo ROOT-RW'
    first = boot(sysroot, tmp_path, f"composefs=?{a}", config=config, after=after)
    assert first.rc == 0, first.stderr
    assert first.mounts[str(tmp_path / "mnt")]["source"] == f"transient:composefs:{a}"
    second = boot(sysroot, tmp_path, f"composefs=?{a}", config=config, after=after)
    assert second.stdout == first.stdout == "cfsboot-test\nROOT-RW\n"


def test_bind_etc(sysroot: Sysroot, tmp_path: Path) -> None:
    a = sysroot.digests["a"]
    m = str(tmp_path / "mnt")
    b = boot(
        sysroot,
        tmp_path,
        f"composefs=?{a}",
        config='[etc]\nmount = "bind"\n[var]\nmount = "none"\n',
        before=f'mkdir "$M/state/deploy/{a}/etc"; echo copied > "$M/state/deploy/{a}/etc/hostname"',
        after='cat "$M/etc/hostname"',
    )
    assert (b.rc, b.stdout) == (0, "copied\n"), b.stderr
    assert b.mounts[f"{m}/etc"]["source"].endswith(f"[/state/deploy/{a}/etc]")
    assert f"{m}/var" not in b.mounts


def test_no_etc_mount_leaves_the_images_read_only_etc(sysroot: Sysroot, tmp_path: Path) -> None:
    m = str(tmp_path / "mnt")
    b = boot(
        sysroot,
        tmp_path,
        f"composefs=?{sysroot.digests['a']}",
        config='[etc]\nmount = "none"\n',
        after='cat "$M/etc/hostname"; touch "$M/etc/x" 2>/dev/null || echo ETC-RO',
    )
    assert (b.rc, b.stdout, b.stderr) == (0, "cfsboot-test\nETC-RO\n", "")
    assert f"{m}/etc" not in b.mounts and f"{m}/var" in b.mounts


def _refused(b: Boot, tmp_path: Path, code: int) -> str:
    assert b.rc == code, b.stderr
    # Nothing was touched: /sysroot is still the physical root, with nothing on top.
    assert [(t, e["fstype"]) for t, e in b.mounts.items()] == [(str(tmp_path / "mnt"), "ext4")]
    return one_line(b.stderr)


def test_secure_karg_refused_without_fs_verity(sysroot: Sysroot, tmp_path: Path) -> None:
    a = sysroot.digests["a"]
    line = _refused(boot(sysroot, tmp_path, f"composefs={a}"), tmp_path, 5)
    assert "has no fs-verity support" in line
    assert line.endswith(f"boot with composefs=?{a} to skip the check")


def test_missing_image_refused(sysroot: Sysroot, tmp_path: Path) -> None:
    missing = "0" * sysroot.algorithm.hex_len
    line = _refused(boot(sysroot, tmp_path, f"composefs=?{missing}"), tmp_path, 4)
    assert line == (
        f"cfsboot-setup-root: composefs image {missing} not found:"
        f" {tmp_path}/mnt/composefs/images/{missing} does not exist"
    )


def test_bad_karg_refused(sysroot: Sysroot, tmp_path: Path) -> None:
    line = _refused(boot(sysroot, tmp_path, "rw composefs=?abc"), tmp_path, 2)
    assert line.startswith("cfsboot-setup-root: invalid kernel argument composefs=?abc:")


def test_bad_config_refused(sysroot: Sysroot, tmp_path: Path) -> None:
    b = boot(
        sysroot, tmp_path, f"composefs=?{sysroot.digests['a']}", config='[etc]\nmount = "copy"\n'
    )
    line = _refused(b, tmp_path, 3)
    assert line == (
        f"cfsboot-setup-root: {tmp_path / 'conf.toml'}: etc.mount must be one of"
        " overlay | bind | transient | none, not 'copy'"
    )


# The host kernel has no fs-verity, so the kernel's answer to FS_IOC_MEASURE_VERITY is
# replaced (in the setup-root process only) to show the other two verdicts on real mounts.
MEASURED = """
import sys
from setuproot import mount, verity
from setuproot.contract import HashAlg

answer = sys.argv.pop(1)

def measure(fd, *, path=None):
    if answer == "none":
        raise verity.NoVerity(61, "FS_IOC_MEASURE_VERITY: the file has no fs-verity", path)
    return HashAlg.SHA512, bytes(64)

mount.measure_verity = measure
from setuproot.main import main
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("karg", "before", "measured", "code", "message"),
    [
        pytest.param(
            "composefs={a}",
            "",
            "zeros",
            6,
            "composefs image {m}/composefs/images/{a} has the wrong fs-verity digest:"
            " expected sha512:{a}, found sha512:{zeros}",
            id="wrong-digest",
        ),
        pytest.param(
            "composefs={a}",
            "",
            "none",
            5,
            "composefs image {m}/composefs/images/{a} has no fs-verity digest;"
            " boot with composefs=?{a} to allow it",
            id="no-verity",
        ),
        pytest.param(
            "composefs=?{a}",
            'rm -r "$M/state/deploy/{a}"',
            None,
            8,
            "deployment state {m}/state/deploy/{a} is missing (was {a12}... deployed?)",
            id="undeployed",
        ),
        pytest.param(
            "composefs=?{a}",
            'mount -o remount,ro "$M"',
            None,
            8,
            "cannot use {m}/state/deploy/{a}/etc: the filesystem is read-only"
            " (the physical root must be mounted rw: boot with `rw`)",
            id="read-only-physical-root",
        ),
        pytest.param(
            "composefs=?{a}",
            'rm "$M/composefs/images/{a}"; head -c 8192 /dev/zero > "$M/composefs/images/{a}"',
            None,
            1,
            "cannot mount composefs image {m}/composefs/images/{a}: not a valid EROFS image",
            id="not-erofs",
        ),
    ],
)
def test_refused_with_its_message(
    sysroot: Sysroot,
    tmp_path: Path,
    karg: str,
    before: str,
    measured: str | None,
    code: int,
    message: str,
) -> None:
    a = sysroot.digests["a"]
    fmt = {"a": a, "a12": a[:12], "m": str(tmp_path / "mnt"), "zeros": "00" * 64}
    program: tuple[str, ...] = (sys.executable, "-m", "setuproot")
    if measured is not None:
        program = (sys.executable, "-c", MEASURED, measured)
    b = boot(sysroot, tmp_path, karg.format(**fmt), before=before.format(**fmt), program=program)
    line = _refused(b, tmp_path, code)
    assert line.startswith(f"cfsboot-setup-root: {message.format(**fmt)}")
