"""setup-root against a real sysroot: an ext4 image file, loop-mounted in a private namespace.

Each "boot" runs setup-root as a subprocess inside `unshare -m --propagation
private` with its own tmpfs on /run, then inspects the result from inside the
same namespace. When the namespace ends every mount goes with it, and the
autoclear loop devices with them; the ext4 image keeps whatever setup-root
and the script wrote (the /etc upper dir, the shared /var), so two boots in a
row show persistence.

The host kernel has no fs-verity: secure mode (`composefs=HEX`) can only be
shown to refuse here (test_setuproot_refusals.py); it is proven to work in the VM
tests. The sysroot and the boots: cfstest.setuprootboot.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cfstest import REPO_ROOT
from cfstest.reftools import RefTools
from cfstest.setuprootboot import BIG, HELLO, Sysroot, boot, make_sysroot, one_line
from setuproot.contract import HashAlg

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]


@pytest.fixture(scope="module")
def sysroot_template(tmp_path_factory: pytest.TempPathFactory) -> Sysroot:
    """Two deployments made by the stager (install, switch, finalize; sha512, insecure: no
    fs-verity here)."""
    return make_sysroot(tmp_path_factory.mktemp("sysroot"), "stager")


@pytest.fixture
def sysroot(sysroot_template: Sysroot, tmp_path: Path) -> Sysroot:
    """A fresh copy of the physical root for each test."""
    return sysroot_template.copy(tmp_path / "physical.ext4")


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
    sr = make_sysroot(tmp_path / "c", "mkcomposefs")
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
