"""/etc merge where root is needed: owners, devices, trusted.* and security.* xattrs,
whiteouts and opaque directories, and a real overlayfs /etc carried from one image to the next.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cfsboot.deploy.etcmerge import (
    EtcMergeConflict,
    MergeReport,
    carry_upper,
    find_upper_conflicts,
    merge,
)
from cfstest.gates import missing_capability

pytestmark = [pytest.mark.integration]

# struct vfs_cap_data, revision 2 (<linux/capability.h>): cap_net_bind_service, effective.
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
MTIME = 1_600_000_000_123_456_789


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Type, mode, owner, content (or target, or rdev) and xattrs of every path below `root`."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                data: object = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            else:
                data = st.st_rdev
            xattrs = sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            )
            out[os.path.relpath(path, root)] = (
                stat.filemode(st.st_mode),
                st.st_uid,
                st.st_gid,
                data,
                xattrs,
            )
    return out


@pytest.fixture
def privileged(tmp_path: Path) -> None:
    """Skip (fail in CI) unless we can make device nodes and trusted.*/security.* xattrs."""
    probe = tmp_path / "probe"
    try:
        os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        os.setxattr(probe, "trusted.cfsboot", b"1", follow_symlinks=False)
        os.setxattr(probe, "security.cfsboot", b"1", follow_symlinks=False)
        os.chown(probe, 1000, 1000, follow_symlinks=False)
    except OSError as e:
        missing_capability(f"cannot create devices, owners and trusted.* xattrs here: {e}")
    finally:
        probe.unlink(missing_ok=True)


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def _is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


@pytest.fixture
def trees(tmp_path: Path, privileged: None) -> tuple[Path, Path, Path]:
    """pristine, current, new: three equal trees (shutil.copytree would read the device)."""
    roots = tmp_path / "pristine", tmp_path / "current", tmp_path / "new"
    for root in roots:
        (root / "dir").mkdir(parents=True)
        for name in ("owned", "caps", "xtrusted", "xsecurity", "dir/inner"):
            (root / name).write_text(f"{name}\n")
        os.setxattr(root / "xtrusted", "trusted.k", b"1")
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return roots


def test_owner_only_changes_are_carried(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    os.chown(current / "owned", 1000, 1001)
    os.chown(current / "dir", 0, 1000)
    os.chmod(current / "dir", 0o2775)
    report = merge(pristine, current, new)
    assert report.modified == ("dir", "owned")
    got = snapshot(new)
    assert got["owned"][1:3] == (1000, 1001)
    assert got["dir"][:3] == ("drwxrwsr-x", 0, 1000)


def test_setuid_and_capabilities_survive_the_chown(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    os.chown(current / "caps", 1000, 1000)
    os.chmod(current / "caps", 0o6755)
    os.setxattr(current / "caps", "security.capability", CAPS)
    merge(pristine, current, new)
    assert snapshot(new)["caps"] == snapshot(current)["caps"]
    assert snapshot(new)["caps"][0] == "-rwsr-sr-x"


def test_trusted_and_security_xattr_changes_are_carried(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    os.setxattr(current / "xtrusted", "trusted.k", b"2")
    os.setxattr(current / "xsecurity", "security.cfsboot", b"label")
    os.setxattr(new / "xsecurity", "security.other", b"v2")  # replaced by current's set
    report = merge(pristine, current, new)
    assert report.modified == ("xsecurity", "xtrusted")
    assert snapshot(new)["xtrusted"][4] == [("trusted.k", b"2")]
    assert snapshot(new)["xsecurity"][4] == [("security.cfsboot", b"label")]


def test_device_nodes_compare_by_type_and_rdev(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    os.utime(current / "null", ns=(MTIME, MTIME))  # not a change
    os.mknod(current / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.mknod(current / "dir/zero", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.unlink(current / "dir/inner")
    os.mknod(current / "dir/inner", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mknod(current / "dir/sock", stat.S_IFSOCK | 0o600)
    report = merge(pristine, current, new)
    assert report == MergeReport(added=("dir/sock", "dir/zero", "loop9"), modified=("dir/inner",))
    got, want = snapshot(new), snapshot(current)
    for rel in ("loop9", "dir/inner", "dir/sock", "dir/zero"):
        assert got[rel] == want[rel], rel
    assert got["loop9"][0].startswith("b") and got["loop9"][3] == os.makedev(7, 9)
    assert got["dir/inner"][3] == os.makedev(1, 5)
    assert got["dir/sock"][0].startswith("s")


# --- overlay upper dirs -------------------------------------------------------------------


@pytest.fixture
def layers(tmp_path: Path, privileged: None) -> tuple[Path, Path, Path, Path]:
    old_lower = tmp_path / "old_lower"
    (old_lower / "replaced.d").mkdir(parents=True)
    (old_lower / "replaced.d/v1").write_text("v1\n")
    (old_lower / "ssl/certs").mkdir(parents=True)
    for name in ("kept", "gone", "copied", "xwhiteout"):
        (old_lower / name).write_text(f"{name} v1\n")
    new_lower = tmp_path / "new_lower"
    shutil.copytree(old_lower, new_lower, symlinks=True)
    (new_lower / "gone").unlink()
    (new_lower / "kept").write_text("kept v2\n")
    (new_lower / "replaced.d/v2").write_text("v2\n")
    (tmp_path / "old_upper").mkdir()
    return tmp_path / "old_upper", old_lower, new_lower, tmp_path / "new_upper"


def test_whiteouts_opaque_dirs_and_bookkeeping(layers: tuple[Path, Path, Path, Path]) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    _whiteout(old_upper / "kept")  # the new image still has it: stays hidden
    _whiteout(old_upper / "gone")  # the new image dropped it: nothing to hide
    (old_upper / "xwhiteout").touch()  # the xattr form of a whiteout
    os.setxattr(old_upper / "xwhiteout", "trusted.overlay.whiteout", b"y")
    (old_upper / "replaced.d").mkdir()
    os.setxattr(old_upper / "replaced.d", "trusted.overlay.opaque", b"y")
    (old_upper / "replaced.d/mine").write_text("mine\n")
    _whiteout(old_upper / "replaced.d/v1")  # needless in an opaque dir
    shutil.copy2(old_lower / "copied", old_upper / "copied")  # a copy-up, nothing changed
    os.setxattr(old_upper / "copied", "trusted.overlay.origin", b"\x00fh")
    (old_upper / "ssl").mkdir()
    os.setxattr(old_upper / "ssl", "trusted.overlay.impure", b"y")
    (old_upper / "ssl/local.pem").write_text("local\n")
    os.setxattr(old_upper / "ssl/local.pem", "trusted.overlay.origin", b"\x00fh")
    os.setxattr(old_upper / "ssl/local.pem", "trusted.local", b"kept")

    assert find_upper_conflicts(old_upper, old_lower, new_lower) == []
    report = carry_upper(old_upper, old_lower, new_lower, new_upper)
    assert report == MergeReport(
        added=("replaced.d/mine", "ssl/local.pem"),
        modified=("replaced.d",),
        removed=("kept", "xwhiteout"),
        dropped=("copied", "gone", "replaced.d/v1"),
    )
    assert sorted(os.listdir(new_upper)) == ["kept", "replaced.d", "ssl", "xwhiteout"]
    assert _is_whiteout(new_upper / "kept") and _is_whiteout(new_upper / "xwhiteout")
    assert os.getxattr(new_upper / "replaced.d", "trusted.overlay.opaque") == b"y"
    assert os.listdir(new_upper / "replaced.d") == ["mine"]
    got = snapshot(new_upper)
    assert got["ssl"][4] == []  # impure is bookkeeping of the old upper dir
    assert got["ssl/local.pem"][4] == [("trusted.local", b"kept")]


def test_metacopy_and_redirect_cannot_be_carried(layers: tuple[Path, Path, Path, Path]) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    (old_upper / "copied").touch()
    os.setxattr(old_upper / "copied", "trusted.overlay.metacopy", b"")
    (old_upper / "moved.d").mkdir()
    os.setxattr(old_upper / "moved.d", "trusted.overlay.redirect", b"/replaced.d")
    reasons = [c.reason for c in find_upper_conflicts(old_upper, old_lower, new_lower)]
    assert len(reasons) == 2
    assert "metadata-only copy-up" in reasons[0] and "renamed" in reasons[1]
    with pytest.raises(EtcMergeConflict):
        carry_upper(old_upper, old_lower, new_lower, new_upper)
    assert not new_upper.exists()


def test_opaque_dir_where_the_new_image_has_a_symlink(
    layers: tuple[Path, Path, Path, Path],
) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    (old_upper / "replaced.d").mkdir()
    os.setxattr(old_upper / "replaced.d", "trusted.overlay.opaque", b"y")
    shutil.rmtree(new_lower / "replaced.d")
    (new_lower / "replaced.d").symlink_to("/usr/etc/replaced.d")
    assert [c.reason for c in find_upper_conflicts(old_upper, old_lower, new_lower)] == [
        "/etc/replaced.d is a directory here but a symlink in the new image"
    ]


# --- a real overlayfs /etc, changed by the kernel and carried to a new image ----------------

CHANGE = r"""
import os, subprocess, sys
lower, upper, work, merged = sys.argv[1:]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}", merged], check=True)
os.chdir(merged)
open("motd", "w").write("local\n")
os.utime("hostname")                      # copy-up without a change
os.unlink("gone.conf")                    # the new image drops it too
os.unlink("kept.conf")                    # the new image changes it
subprocess.run(["rm", "-r", "replaced.d"], check=True)
os.mkdir("replaced.d")                    # over a whiteout: opaque
open("replaced.d/only", "w").write("mine\n")
os.chmod("perm.conf", 0o600)
os.chown("owner.conf", 1000, 1000)
os.setxattr("xattr.conf", "user.local", b"1")
os.mkdir("added.d")
open("added.d/f", "w").write("f\n")
os.chdir("/")
subprocess.run(["umount", merged], check=True)
"""

SNAPSHOT = r"""
import subprocess, sys
lower, upper, work, merged, out = sys.argv[1:]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}", merged], check=True)
subprocess.run(["cp", "-a", f"{merged}/.", out], check=True)
subprocess.run(["umount", merged], check=True)
"""


def _in_namespace(script: str, *args: Path) -> None:
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script]
    proc = subprocess.run([*argv, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_real_overlay_upper_is_carried(tmp_path: Path, can_mount: None, privileged: None) -> None:
    old_lower, new_lower = tmp_path / "v1", tmp_path / "v2"
    (old_lower / "replaced.d").mkdir(parents=True)
    for name in ("motd", "hostname", "gone.conf", "kept.conf", "perm.conf", "owner.conf"):
        (old_lower / name).write_text(f"{name} v1\n")
    (old_lower / "xattr.conf").write_text("x\n")
    (old_lower / "replaced.d/v1").write_text("v1\n")
    shutil.copytree(old_lower, new_lower, symlinks=True)
    for name in ("motd", "hostname", "kept.conf", "perm.conf"):
        (new_lower / name).write_text(f"{name} v2\n")
    (new_lower / "gone.conf").unlink()
    (new_lower / "replaced.d/v2").write_text("v2\n")
    (new_lower / "new.conf").write_text("new in v2\n")
    dirs = {n: tmp_path / n for n in ("upper1", "work1", "upper2", "work2", "merged", "view")}
    for name, path in dirs.items():
        if name != "upper2":
            path.mkdir()

    _in_namespace(CHANGE, old_lower, dirs["upper1"], dirs["work1"], dirs["merged"])
    report = carry_upper(dirs["upper1"], old_lower, new_lower, dirs["upper2"])
    assert report.dropped == ("gone.conf", "hostname")
    _in_namespace(SNAPSHOT, new_lower, dirs["upper2"], dirs["work2"], dirs["merged"], dirs["view"])

    view = dirs["view"]
    assert sorted(os.listdir(view)) == [
        "added.d",
        "hostname",
        "motd",
        "new.conf",
        "owner.conf",
        "perm.conf",
        "replaced.d",
        "xattr.conf",
    ]
    assert (view / "motd").read_text() == "local\n"
    assert (view / "hostname").read_text() == "hostname v2\n"  # the copy-up was not carried
    assert (view / "new.conf").read_text() == "new in v2\n"
    assert os.listdir(view / "replaced.d") == ["only"]  # opaque: v2's files stay hidden
    assert (view / "added.d/f").read_text() == "f\n"
    got = snapshot(view)
    assert got["perm.conf"][0] == "-rw-------"
    assert got["perm.conf"][3] == b"perm.conf v1\n"  # a copy-up carries its content
    assert got["owner.conf"][1:3] == (1000, 1000)
    assert ("user.local", b"1") in got["xattr.conf"][4]
