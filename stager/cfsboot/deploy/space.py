"""Free space for a new deployment, checked before its state or boot files are written.

The import checks the repository's filesystem itself (cfsboot.image.importer);
what a deployment adds after it is the state (a full copy of /etc in bind mode,
the shared /var the first time) and the boot files on the ESP (a kernel and
initrd, unless another deployment's are the same objects, or a UKI).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.boot.boottype import BootType
from cfsboot.boot.esp import DirEsp, Esp, MtoolsEsp
from cfsboot.composefs.tree import Inode, walk
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import Target
from cfsboot.image import extract, imagefiles
from cfsboot.image.info import read_image_info
from cfsboot.linux import space
from cfsboot.linux.run import run
from setuproot.config import EtcMount

# Left free on the ESP: its writes are a few files under temporary names (FAT, no journal).
ESP_MARGIN = 1 << 20


def files_size(node: Inode | None) -> int:
    """Bytes of the regular files under `node` (what extracting it writes, about)."""
    if node is None:
        return 0
    return sum(n.size for _, n in walk(node) if n.is_reg())


def esp_free(esp: Esp) -> int | None:
    """Bytes free on the ESP; None when it cannot be told."""
    if isinstance(esp, DirEsp):
        st = os.statvfs(esp.root)
        return st.f_bavail * st.f_frsize
    if isinstance(esp, MtoolsEsp):  # mdir's last line: `35 563 520 bytes free`
        env = {"MTOOLS_SKIP_CHECK": "1"}
        proc = run(["mdir", "-i", esp.drive, "::/"], capture=True, check=False, env=env)
        m = re.search(rb"([0-9][0-9 ]*) bytes free", proc.stdout)
        return int(m.group(1).replace(b" ", b"")) if proc.returncode == 0 and m else None
    return None


def _esp_where(esp: Esp) -> str:
    if isinstance(esp, DirEsp):
        return f"the ESP {esp.root}"
    if isinstance(esp, MtoolsEsp):
        return f"the ESP in {esp.drive}"
    return "the ESP"


def boot_files_need(
    sysroot: Sysroot, target: Target, menu: Sequence[MenuEntry]
) -> space.Need | None:
    """What the target's boot files add to the ESP (None: nothing, another entry's are his)."""
    if target.boot.ukis:
        uki = sorted(target.boot.ukis, key=lambda u: u.path)[0]
        return space.Need("its UKI", uki.size)
    kernel = imagefiles.newest_kernel(target.boot)
    if kernel is None or kernel.initramfs is None:
        return None  # build_entry says why it cannot boot
    ours = (kernel.vmlinuz.digest, kernel.initramfs.digest)
    for m in menu:
        info = read_image_info(sysroot.repo, m.deployment) if m.boot_type is BootType.BLS else None
        other = imagefiles.newest_kernel(info.boot) if info is not None else None
        if other is not None and other.initramfs is not None:
            if (other.vmlinuz.digest, other.initramfs.digest) == ours and None not in ours:
                return None  # the same objects: build_entry shares that entry's files
    return space.Need("its kernel and initrd", kernel.vmlinuz.size + kernel.initramfs.size)


def check_deploy_space(
    sysroot: Sysroot,
    bl: Bootloader | None,
    target: Target,
    menu: Sequence[MenuEntry],
    *,
    action: str,
    init_var: bool = False,
) -> None:
    """Refuse (one line, the figures) a deployment its state or boot files cannot fit."""
    state: list[space.Need] = [space.Need("its state", 64 << 10)]
    if target.config.etc is EtcMount.BIND:
        state.append(
            space.Need("its copy of /etc", files_size(extract.subtree(target.tree, "etc")))
        )
    if init_var and not sysroot.shared_var.exists():
        state.append(space.Need("the shared /var", files_size(extract.subtree(target.tree, "var"))))
    space.check_paths([(Path(sysroot.deploy_root), n) for n in state], action=action)
    if bl is not None:
        need = boot_files_need(sysroot, target, menu)
        if need is not None:
            free = esp_free(bl.esp)
            space.check(_esp_where(bl.esp), free, [need], action=action, margin=ESP_MARGIN)
