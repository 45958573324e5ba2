"""`install to-disk` with bootc's install flags, booted: --root-ssh-authorized-keys and a
/usr/lib/bootc/install/ config from the image, a root found by the Discoverable
Partitions Specification, and `usr-overlay` across a reboot.

The image is the test OS v1 with one more layer: the install config (a karg the
guest looks for in /proc/cmdline), and /root as a symlink to var/roothome, as on
bootc images, so that the keys land in the shared /var. The test OS's kargs.d turns
gpt-auto off (images.NO_GPT_AUTO); `--karg-delete systemd.gpt_auto` drops that, so the
entry has no root= and systemd-gpt-auto-generator in the initrd finds the root
partition by its type; the entry names the image as composefs.digest= (--karg-style
digest). The guest's own verdicts (guest/scenarios/installed-flags,
usr-overlay) say whether the keys, the karg and the DPS root are there, and that
`cfsboot usr-overlay` makes /usr writable until the next boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import images
import osimage
from cfstest import ocibuild
from cfstest.cli import run as cfsboot
from installed import DISK_SIZE, booted_ok

pytestmark = pytest.mark.vm

KARG = "cfsboot.test.installconfig=1"
KEYS = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIVmTestKeyOfTheInstallScenario root@host\n"
EPOCH = 1_735_689_600


def _json(layout: Path, digest: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())
    return doc


def derived(base: osimage.OsImage, out: Path) -> str:
    """`base` plus a layer with the install config and /root -> var/roothome."""
    shutil.copytree(base.layout / "blobs", out / "blobs", copy_function=os.link)
    index = json.loads((base.layout / "index.json").read_text())
    [desc] = [m for m in index["manifests"] if m["annotations"][ocibuild.REF_NAME] == base.variant]
    manifest = _json(base.layout, desc["digest"])
    config = _json(base.layout, manifest["config"]["digest"])
    layout = ocibuild.Layout(out)
    toml = f'[install]\nkargs = ["{KARG}"]\n'.encode()
    entries = [
        ocibuild.Entry("usr/lib/bootc/install", "dir", mtime=EPOCH),
        ocibuild.Entry("usr/lib/bootc/install/50-vmtest.toml", data=toml, mtime=EPOCH),
        ocibuild.Entry(".wh.root", data=b"", mtime=EPOCH),
        ocibuild.Entry("root", "symlink", linkname="var/roothome", mtime=EPOCH),
        ocibuild.Entry("var/roothome", "dir", mode=0o700, mtime=EPOCH),
    ]
    layer = layout.add_layer(ocibuild.tar_chunks(entries))
    config["rootfs"]["diff_ids"].append(layer.diff_id)
    cdesc = layout.add_blob(ocibuild.canonical_json(config), ocibuild.MT_CONFIG)
    body = {
        "schemaVersion": 2,
        "mediaType": ocibuild.MT_MANIFEST,
        "config": cdesc.to_json(),
        "layers": [*manifest["layers"], layer.to_json()],
    }
    mdesc = layout.add_blob(ocibuild.canonical_json(body), ocibuild.MT_MANIFEST)
    layout.add_to_index(mdesc, "installflags")
    assert hashlib.sha256(ocibuild.canonical_json(body)).hexdigest() == mdesc.digest[7:]
    return f"oci:{out}:installflags"


def test_install_flags_dps_and_usr_overlay_booted(
    test_os: dict[str, osimage.OsImage], tmp_path: Path, results_dir: Path
) -> None:
    ref = derived(test_os["v1"], tmp_path / "layout")
    keys = tmp_path / "authorized_keys"
    keys.write_text(KEYS)
    disk = tmp_path / "disk.raw"
    out = cfsboot(
        "install", "to-disk", ref, disk,
        "--size", DISK_SIZE,
        "--root-label", images.ROOT_LABEL,
        "--boot-timeout", "0",
        "--root-ssh-authorized-keys", keys,
        "--karg-delete", "systemd.gpt_auto",
        "--karg-style", "digest",
        "--insecure",
        "-q",
    )  # fmt: skip
    digest = out.stdout.strip()
    # composefs-rs's spelling, which setup-root must find the image by.
    composefs = f"composefs.digest=?v1-sha512-12:{digest}"
    expect = {
        "karg": KARG,
        "keys": KEYS,
        "root_arg": False,
        "digest": digest,
        "composefs": composefs,
    }
    checks = ("installed-flags", "usr-overlay")
    booted_ok(disk, results_dir / "first", checks, {**expect, "usr_overlay": "write"})
    # The next boot: what usr-overlay held is gone, /usr is read-only again.
    booted_ok(disk, results_dir / "again", checks, {**expect, "usr_overlay": "gone"})
