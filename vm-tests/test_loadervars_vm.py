"""systemd-boot's LoaderEntryDefault / LoaderEntryOneShot on a booted guest (OVMF, systemd 257).

`bootctl set-default` and `set-oneshot` write the variables in the guest's firmware;
`cfsboot status` and `cfsboot fsck` of the running system read them back through
efivarfs (cfsboot.boot.loadervars): a value naming no entry is only an fsck note,
another system's entry named is the override status reports, and `bootctl
set-default ""` brings cfsboot's default back; the ESP on /boot is the partition
LoaderDevicePartUUID names (the variables count for it). One boot of v1, through
vm-tests/boot_image.py's check script.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import boot_image
import osimage

pytestmark = pytest.mark.vm

# The guest mounts the ESP (the test OS keeps gpt-auto off) on /boot, where cfsboot and
# bootctl both look; each `next:` line is status's cfsboot.nextBoot.
SCRIPT = r"""#!/bin/sh
set -eu
mount "$(blkid -l -o device -t TYPE=vfat)" /boot
python3 -c 'from pathlib import Path
from cfsboot.boot.esp import DirEsp
from cfsboot.boot.espfind import partition_uuid
from cfsboot.linux.efivars import loader_string
print("esp:", partition_uuid(DirEsp(Path("/boot"))), loader_string("LoaderDevicePartUUID"))'
next() {
    printf 'next: '
    cfsboot status --json | python3 -c \
        'import json,sys; print(json.dumps(json.load(sys.stdin)["status"]["cfsboot"]["nextBoot"]))'
}
next
bootctl set-default gone.conf
next
cfsboot fsck --json | python3 -c 'import json,sys
d = json.load(sys.stdin)
notes = [n["message"] for s in d["sections"] for n in s["notes"]]
print("fsck:", d["exitCode"], json.dumps(notes))'
printf 'title Other OS\nlinux /vmlinuz-other\n' > /boot/loader/entries/other.conf
bootctl set-default other.conf
next
cfsboot status --format human | tail -1
bootctl set-oneshot other.conf
bootctl set-default ""
cfsboot status --format human | tail -1
bootctl set-oneshot ""
next
"""


def test_status_and_fsck_read_bootctls_variables(
    test_os: dict[str, osimage.OsImage], tmp_path: Path
) -> None:
    v1 = test_os["v1"]
    check = tmp_path / "check"
    check.write_text(SCRIPT)
    status, why, result = boot_image.boot_image(v1.ref, check, tmp_path)
    out = boot_image.script_output(result.serial_log)
    print("\n".join(out))
    assert status == 0, why
    # The ESP mounted on /boot is the partition systemd-boot says it was loaded from
    # (cfsboot.boot.espfind.partition_uuid, compared with LoaderDevicePartUUID).
    esp, mine, loaded = out.pop(0).split(" ")
    assert esp == "esp:" and mine != "None" and mine == loaded.upper(), (mine, loaded)
    digest, short = v1.image_id, v1.image_id[:12]
    own = json.dumps({"deployment": digest, "entry": "bootc_debian-13.1-0.conf", "override": None})
    default_msg = (
        "the EFI variable LoaderEntryDefault names other.conf (not a cfsboot entry):"
        f" systemd-boot starts it at every boot instead of deployment {short}…; `bootctl"
        ' set-default ""` clears it'
    )
    other = {
        "deployment": None,
        "entry": "other.conf",
        "override": {
            "variable": "LoaderEntryDefault",
            "value": "other.conf",
            "cfsbootDeployment": digest,
            "message": default_msg,
        },
    }
    gone = (
        "'gone.conf' names no boot entry: systemd-boot passes over it"
        ' (`bootctl set-default ""` removes it)'
    )
    assert out == [
        f"next: {own}",
        f"next: {own}",
        f"fsck: 0 {json.dumps([gone])}",
        f"next: {json.dumps(other)}",
        f"Boot loader override: {default_msg}.",
        "Boot loader override: the EFI variable LoaderEntryOneShot names other.conf (not a"
        f" cfsboot entry): systemd-boot starts it at the next boot instead of deployment {short}…;"
        ' `bootctl set-oneshot ""` clears it.',
        f"next: {own}",
    ]
