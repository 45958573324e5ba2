"""A physical root laid out by bootc boots with cfsboot's setup-root and is managed by its stager.

The sysroot is built here from bootc's documented layout (../shared/reference/
bootc-composefs-notes.md, section 1 and 2), not by cfsboot: the EROFS image and its objects by
the reference C mkcomposefs, then what bootc's install writes for an image that names no
/etc mode: `state/deploy/ID/etc` a full copy of the image's /etc (bind, bootc's default),
`var -> ../../os/default/var`, `ID.origin` in bootc's INI, the shared /var, the
`ostree/bootc` compat link, and on the ESP `loader/entries/bootc_<os>-<ver>-1.conf` with
`sort-key bootc-<os>-0` pointing at `EFI/Linux/bootc_composefs-ID/{vmlinuz,initrd}`.

Then: setup-root binds that /etc (its state says bind); a change made while booted
survives switch (the new deployment is bind too, its /etc three-way merged at finalize),
rollback, another switch and gc, and the deployment cfsboot wrote boots with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cfsboot.image.importer import import_image
from cfstest import bootcschema
from cfstest.dirsystem import System
from cfstest.osimages import os_image
from cfstest.reftools import RefTools
from cfstest.setuprootboot import Sysroot, boot
from setuproot.contract import HashAlg, object_relpath

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

OS_ID, VERSION = "bootcos", "41"
IMAGE = "quay.io/example/bootc-os:41"
MANIFEST = "sha256:" + "5e" * 32
KERNEL = b"bootc's kernel " * 2000
INITRD = b"bootc's initrd " * 1000


def _image_tree(root: Path) -> None:
    """The image bootc installed (what its EROFS holds, /boot and /sysroot empty)."""
    for d in ("etc/ssh", "usr/bin", "usr/lib/modules/6.12.0", "var/lib", "boot", "sysroot", "run"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("bootc-host\n")
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (root / "etc/motd").write_text("welcome\n")
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho a tool long enough to be stored apart\n")
    (root / "usr/lib/os-release").write_text(
        f'ID={OS_ID}\nVERSION_ID={VERSION}\nPRETTY_NAME="bootc OS {VERSION}"\n'
    )
    (root / "usr/lib/modules/6.12.0/vmlinuz").write_bytes(KERNEL)
    (root / "usr/lib/modules/6.12.0/initramfs.img").write_bytes(INITRD)
    (root / "var/lib/seeded").write_text("from the image\n")


def _bootc_sysroot(tmp: Path, reftools: RefTools) -> tuple[Path, Path, str]:
    """(physical root, ESP, deployment id) as bootc's composefs install leaves them."""
    tree, physical, esp = tmp / "tree", tmp / "physical", tmp / "esp"
    _image_tree(tree)
    repo = physical / "composefs"
    (repo / "images").mkdir(parents=True)
    os.chmod(repo, 0o700)
    erofs = tmp / "image.erofs"
    out = reftools.run(
        "mkcomposefs",
        "--min-version=1",
        "--print-digest",
        f"--digest-store={repo / 'objects'}",
        tree,
        erofs,
    )
    d = out.decode().strip()
    obj = repo / "objects" / object_relpath(d)
    obj.parent.mkdir(exist_ok=True)
    erofs.rename(obj)
    (repo / "images" / d).symlink_to(f"../objects/{object_relpath(d)}")
    meta = {
        "version": 1,
        "algorithm": "fsverity-sha256-12",  # mkcomposefs digests are sha256 (bootc: sha512)
        "features": {"compatible": [], "read-only-compatible": [], "incompatible": []},
    }
    (repo / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (physical / "ostree").mkdir()
    (physical / "ostree/bootc").symlink_to("../composefs/bootc")
    var = physical / "state/os/default/var"
    state = physical / "state/deploy" / d
    state.mkdir(parents=True)
    var.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", f"{tree}/var", str(var)], check=True)
    subprocess.run(["cp", "-a", f"{tree}/etc", str(state / "etc")], check=True)
    (state / "var").symlink_to("../../os/default/var")
    boot_digest = hashlib.sha256(KERNEL + INITRD).hexdigest()
    (state / f"{d}.origin").write_text(
        "[origin]\n"
        f"container-image-reference = ostree-unverified-image:registry:{IMAGE}\n"
        "\n[boot]\nboot_type = bls\n"
        f"digest = {boot_digest}\n"
        f"\n[image]\nmanifest_digest = {MANIFEST}\n"
    )
    kdir = esp / "EFI/Linux" / f"bootc_composefs-{d}"
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(KERNEL)
    (kdir / "initrd").write_bytes(INITRD)
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "loader/loader.conf").write_text("timeout 5\n")
    (esp / f"loader/entries/bootc_{OS_ID}-{VERSION}-1.conf").write_text(
        f"title bootc OS {VERSION}\n"
        f"version {VERSION}\n"
        f"linux /EFI/Linux/bootc_composefs-{d}/vmlinuz\n"
        f"initrd /EFI/Linux/bootc_composefs-{d}/initrd\n"
        f"options root=UUID=6b2e7e9a-3c0f-4f5e-9d1c-0d4b7c1e2a3f rw composefs=?{d}\n"
        f"sort-key bootc-{OS_ID}-0\n"
    )
    return physical, esp, d


@contextmanager
def _mounted(image: Path, at: Path) -> Iterator[Path]:
    """The physical root's ext4 image mounted read-write, as an admin would for the stager."""
    at.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(at)], check=True)
    try:
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)


def test_bootc_sysroot_boots_and_is_managed(reftools: RefTools, tmp_path: Path) -> None:
    physical, esp, a = _bootc_sysroot(tmp_path / "bootc", reftools)
    image = tmp_path / "physical.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(physical), str(image), "96M"],
        check=True,
        capture_output=True,
    )
    sysroot = Sysroot(image, {"a": a}, HashAlg.SHA256)
    etc_a = f"$M/sysroot/state/deploy/{a}/etc"

    # 1. Our setup-root boots bootc's deployment: /etc is the bind of its full copy.
    first = boot(
        sysroot,
        tmp_path,
        f"root=UUID=x rw composefs=?{a}",
        after=f"""
cat "$M/etc/hostname" "$M/usr/bin/tool" "$M/var/lib/seeded"
echo local-host > "$M/etc/hostname"
echo "PermitRootLogin yes" > "$M/etc/ssh/sshd_config"
echo added > "$M/etc/added.conf"
rm "$M/etc/motd"
ls {etc_a}
""",
    )
    assert first.rc == 0, first.stderr
    assert first.stdout.splitlines() == [
        "bootc-host",
        "#!/bin/sh",
        "echo a tool long enough to be stored apart",
        "from the image",
        "added.conf",
        "hostname",
        "ssh",
    ]
    etc = first.mounts[str(tmp_path / "mnt/etc")]
    assert etc["fstype"] == "ext4" and etc["source"].endswith(f"[/state/deploy/{a}/etc]")

    # 2. Our stager manages it: status, switch (bind followed, /etc merged), rollback, gc.
    refs = {
        v: os_image(tmp_path / "img" / v, v[1:], kernel=f"k{v[1:]}", etc={"from-image": b"x\n"})
        for v in ("v2", "v3")
    }
    d2, d3 = (
        import_image(refs[v], None, algorithm=HashAlg.SHA256).image_digest for v in ("v2", "v3")
    )
    with _mounted(image, tmp_path / "root") as root:
        sys_ = System(root, esp, tmp_path / "run")
        doc = sys_.status()
        assert bootcschema.unknown(doc) == []
        booted = doc["status"]["booted"]
        assert booted["image"]["image"] == {"image": IMAGE, "transport": "registry"}
        assert booted["image"]["imageDigest"] == MANIFEST
        assert booted["composefs"]["verity"] == a
        assert booted["composefs"]["bootDigest"] == hashlib.sha256(KERNEL + INITRD).hexdigest()
        assert doc["status"]["type"] == "bootcHost"

        sys_.cfs("switch", refs["v2"], "-q")
        etc2 = root / "state/deploy" / d2 / "etc"
        # bootc's layout followed: a full /etc for the new deployment, no upper dir.
        assert (etc2 / "from-image").read_text() == "x\n"
        assert not (etc2 / "upper").exists()
        sys_.cfs("finalize-staged")
        assert sys_.menu() == [d2, a]
        assert (etc2 / "hostname").read_text() == "local-host\n"
        assert (etc2 / "ssh/sshd_config").read_text() == "PermitRootLogin yes\n"
        assert (etc2 / "added.conf").read_text() == "added\n"
        assert not (etc2 / "motd").exists()
        assert (etc2 / "from-image").read_text() == "x\n"
        # bootc's own state is as bootc left it (and as the boot changed it).
        assert (root / "state/deploy" / a / "etc/hostname").read_text() == "local-host\n"

        sys_.cfs("rollback")
        assert sys_.menu() == [a, d2]
        sys_.cfs("rollback")
        assert sys_.menu() == [d2, a]
        sys_.cfs("switch", refs["v3"], "-q")
        sys_.cfs("finalize-staged")
        assert sys_.menu() == [d3, d2, a]
        sys_.cfs("gc")
        # bootc's deployment is the one no slot keeps: gone, with its image and kernel.
        assert sys_.menu() == [d3, d2]
        assert not (root / "state/deploy" / a).exists()
        assert not (root / "composefs/images" / a).exists()
        assert not (esp / "EFI/Linux" / f"bootc_composefs-{a}").exists()
        # Both were staged by switch, so both are on trial (3 tries, never blessed here).
        assert sorted(os.listdir(esp / "loader/entries")) == [
            "bootc_testos-2-0+3.conf",
            "bootc_testos-3-1+3.conf",
        ]

    # 3. The deployment cfsboot wrote boots with the /etc changes made under bootc.
    sysroot = Sysroot(image, {"v3": d3}, HashAlg.SHA256)
    last = boot(
        sysroot,
        tmp_path,
        f"composefs=?{d3}",
        after='cat "$M/etc/hostname" "$M/etc/ssh/sshd_config" "$M/etc/added.conf"',
    )
    assert last.rc == 0, last.stderr
    assert last.stdout == "local-host\nPermitRootLogin yes\nadded\n"
    etc = last.mounts[str(tmp_path / "mnt/etc")]
    assert etc["source"].endswith(f"[/state/deploy/{d3}/etc]")
