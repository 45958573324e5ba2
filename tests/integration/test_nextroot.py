"""A soft reboot's next root (setuproot.nextroot) built with real mounts on the host.

The physical root is an ext4 image loop-mounted at $M (the running system's
/sysroot), in a private mount namespace with its own /run, as in
test_setuproot.py; the next root goes to $T/nextroot instead of /run/nextroot.
What must hold is what systemd's soft reboot switches into: the deployment's
composefs overlay at the target, the physical root at target/sysroot, /etc
and /var as setup-root mounts them at boot, and the physical root still
mounted where it was (the running system keeps using it until the switch).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from cfstest.setuprootboot import Boot, Sysroot, boot, make_sysroot

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

# Run by boot() as `python -c PROGRAM --sysroot M --cmdline CMDLINE [CONFIG]`.
PROGRAM = """
import os, sys
from setuproot.config import Config, EtcMount, load_config, resolve_etc
from setuproot.contract import deploy_dir, parse_cmdline
from setuproot.mount import SetupError
from setuproot.nextroot import mount_root_at
sysroot, cmdline = sys.argv[2], sys.argv[4]
[karg] = parse_cmdline(cmdline)
config = load_config(sys.argv[6], must_exist=True) if len(sys.argv) > 6 else Config()
config = resolve_etc(config, os.path.join(sysroot, deploy_dir(karg.digest), "etc"))
target = os.environ["T"] + "/nextroot"
try:
    plan = mount_root_at(sysroot, karg, config, target)
except SetupError as e:
    print(f"mounted={os.path.ismount(target)}")
    print(f"cfsboot-setup-root: {e}", file=sys.stderr)
    sys.exit(e.code)
"""

LIST_NEXT = """
findmnt --json --list --submounts --output TARGET,SOURCE,FSTYPE,OPTIONS \
    --mountpoint "$T/nextroot" > "$T/next.json" || echo '{"filesystems": []}' > "$T/next.json"
"""


@pytest.fixture(scope="module")
def sysroot_template(tmp_path_factory: pytest.TempPathFactory) -> Sysroot:
    return make_sysroot(tmp_path_factory.mktemp("sysroot"), "stager")


@pytest.fixture
def sysroot(sysroot_template: Sysroot, tmp_path: Path) -> Sysroot:
    return sysroot_template.copy(tmp_path / "physical.ext4")


def _next(
    sr: Sysroot,
    tmp_path: Path,
    digest: str,
    after: str = "",
    *,
    twice: bool = False,
    config: str | None = None,
    before: str = "",
) -> tuple[Boot, dict[str, dict[str, Any]]]:
    prog = (sys.executable, "-c", PROGRAM)
    argv = [*prog, "--sysroot", "$M", "--cmdline", f"composefs=?{digest}"]
    again = " ".join(shlex.quote(a) if a != "$M" else '"$M"' for a in argv) + "\n"
    b = boot(
        sr,
        tmp_path,
        f"composefs=?{digest}",
        program=prog,
        config=config,
        before=before,
        after=(again if twice else "") + after + LIST_NEXT,
    )
    listing = tmp_path / "next.json"
    mounts = json.loads(listing.read_text())["filesystems"] if listing.exists() else []
    return b, {m["target"]: m for m in mounts}


def test_next_root_as_setup_root_mounts_it(sysroot: Sysroot, tmp_path: Path) -> None:
    b_digest = sysroot.digests["b"]
    m, n = str(tmp_path / "mnt"), str(tmp_path / "nextroot")
    b, mounts = _next(
        sysroot,
        tmp_path,
        b_digest,
        after="""
cat "$T/nextroot/usr/share/version" | head -c 1; echo
grep VERSION_ID "$T/nextroot/etc/os-release"
echo next > "$T/nextroot/etc/hostname" && echo ETC-RW
cat "$T/nextroot/var/from-install"
touch "$T/nextroot/usr/new" 2>/dev/null || echo ROOT-RO
test -d "$M/composefs/objects" && echo PHYSICAL-STAYS
findmnt -n -o FSTYPE --mountpoint "$M"
test ! -e /run/cfsboot/nextroot && echo RUN-CLEAN
""",
    )
    assert (b.rc, b.stderr) == (0, "")
    assert b.stdout.splitlines()[:8] == [
        "b",
        "VERSION_ID=b",
        "ETC-RW",
        "shared var",
        "ROOT-RO",
        "PHYSICAL-STAYS",
        "ext4",
        "RUN-CLEAN",
    ]
    root = mounts[n]
    assert (root["source"], root["fstype"]) == (f"composefs:{b_digest}", "overlay")
    opts = root["options"].split(",")
    assert "ro" in opts and "metacopy=on" in opts and "redirect_dir=on" in opts
    assert f"datadir+={m}/composefs/objects" in opts
    assert mounts[f"{n}/sysroot"]["fstype"] == "ext4"
    etc = mounts[f"{n}/etc"]
    assert etc["fstype"] == "overlay"
    assert f"upperdir={n}/sysroot/state/deploy/{b_digest}/etc/upper" in etc["options"].split(",")
    var = mounts[f"{n}/var"]
    assert (var["fstype"], var["source"].endswith("[/state/os/default/var]")) == ("ext4", True)
    assert sorted(mounts) == [n, f"{n}/etc", f"{n}/sysroot", f"{n}/var"]
    # The /etc change went to b's upper dir on the physical root, as at boot.
    assert b.mounts[m]["fstype"] == "ext4"


def test_a_second_preparation_replaces_the_first(sysroot: Sysroot, tmp_path: Path) -> None:
    b, mounts = _next(sysroot, tmp_path, sysroot.digests["a"], twice=True)
    assert (b.rc, b.stderr) == (0, "")
    n = str(tmp_path / "nextroot")
    assert sorted(mounts) == [n, f"{n}/etc", f"{n}/sysroot", f"{n}/var"]


def test_transient_etc_keeps_its_tmpfs_under_run(sysroot: Sysroot, tmp_path: Path) -> None:
    b, mounts = _next(
        sysroot,
        tmp_path,
        sysroot.digests["b"],
        config='[etc]\nmount = "transient"\n',
        after="findmnt -n -o FSTYPE --mountpoint /run/cfsboot/nextroot/etc-transient\n",
    )
    assert (b.rc, b.stderr) == (0, "")
    assert b.stdout.splitlines() == ["tmpfs"]
    etc = mounts[str(tmp_path / "nextroot/etc")]
    assert "upperdir=/run/cfsboot/nextroot/etc-transient/upper" in etc["options"].split(",")


def test_a_missing_image_is_one_line(sysroot: Sysroot, tmp_path: Path) -> None:
    missing = "ee" * 64
    b, _ = _next(sysroot, tmp_path, missing)
    assert b.rc == 4  # ExitCode.IMAGE_MISSING
    assert b.stderr == (
        f"cfsboot-setup-root: composefs image {missing} not found:"
        f" {tmp_path / 'mnt'}/composefs/images/{missing} does not exist\n"
    )
    assert b.stdout == "mounted=False\n"


def test_a_failure_after_the_root_was_attached_leaves_nothing(
    sysroot: Sysroot, tmp_path: Path
) -> None:
    """The /etc overlay fails (its upper dir is a file) after the root and the physical
    root were attached at the target: both are gone again."""
    d = sysroot.digests["b"]
    upper = f'"$M/state/deploy/{d}/etc/upper"'
    b, _ = _next(sysroot, tmp_path, d, before=f"rm -rf {upper} && touch {upper}\n")
    assert b.rc == 1  # ExitCode.MOUNT_FAILED
    assert b.stderr.startswith("cfsboot-setup-root: cannot ")
    assert "etc overlay" in b.stderr and len(b.stderr.splitlines()) == 1
    assert b.stdout == "mounted=False\n"
