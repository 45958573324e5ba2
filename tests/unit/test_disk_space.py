"""Free space is checked before an import and before a deployment's files (issue 15).

Without root: a manifest that declares a layer larger than the filesystem holds
is refused before any layer is read, and the ESP's free space is read from a FAT
image through mtools. The full-disk cases on real small filesystems are in
tests/integration/test_disk_space.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cfsboot.deploy.space import esp_free
from cfsboot.errors import CfsbootError
from cfsboot.linux import space
from cfstest.fatimage import make_esp, put
from cfstest.ocibuild import Layout, tar_chunks
from cfstest.ocirepo import snapshot
from cfstest.osimages import os_entries


def test_show_and_check_say_the_figures() -> None:
    assert space.show(3 * space.MIB // 2) == "1.5 MiB"
    assert space.show(12 << 30) == "12.0 GiB"
    space.check("x", None, [space.Need("a", 1 << 40)], action="y")  # unknown: not refused
    space.check("x", 9 * space.MIB, [space.Need("a", space.MIB)], action="y")
    with pytest.raises(CfsbootError) as e:
        space.check(
            "x", 9 * space.MIB, [space.Need("a", space.MIB), space.Need("b", 1)], action="y"
        )
    assert str(e.value) == (
        "not enough free space on x for y: it needs about 1.0 MiB (a 1.0 MiB + b 0.0 MiB)"
        " and 8.0 MiB to spare, 9.0 MiB is free; " + space.GC_HINT
    )


def _claiming(path: Path, size: int) -> str:
    """An OS image whose manifest says its second layer is `size` bytes."""
    out = Layout(path)
    base = out.add_layer(tar_chunks(os_entries("1")))
    extra = out.add_layer(tar_chunks([]))
    out.add_image([base, dataclasses.replace(extra, size=size)])
    return f"oci:{path}:latest"


def test_switch_refuses_an_image_the_repository_cannot_hold(tmp_path: Path) -> None:
    from cfstest.dirsystem import install
    from cfstest.osimages import os_image

    system = install(tmp_path / "sys", os_image(tmp_path / "v1", "1"))
    before = snapshot(system.root)
    huge = 1 << 41  # 2 TiB, compressed: about 6 TiB of files
    proc = system.cfs("switch", _claiming(tmp_path / "big", huge), check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    repo = system.root / "composefs"
    m = re.fullmatch(
        rf"cfsboot: not enough free space on the filesystem of {re.escape(str(repo))} for"
        rf" importing oci:{re.escape(str(tmp_path / 'big'))}:latest: it needs about"
        r" ([0-9.]+) GiB \(the files of 1 new layer ([0-9.]+) GiB \+ the boot image [0-9.]+ GiB\)"
        r" and 8.0 MiB to spare, [0-9.]+ [MG]iB is free; free space there; `cfsboot gc` removes"
        r" the images and objects no deployment needs\n",
        proc.stderr,
    )
    assert m is not None, proc.stderr
    assert float(m.group(2)) >= huge * 3 / (1 << 30)
    assert snapshot(system.root) == before  # nothing read, nothing written


def test_esp_free_space_through_mtools(tmp_path: Path, fat_tools: None) -> None:
    esp = make_esp(tmp_path, size_mib=40)
    empty = esp_free(esp)
    assert empty is not None and 39 * space.MIB < empty < 40 * space.MIB
    put(esp, "big", b"x" * (3 * space.MIB))
    after = esp_free(esp)
    assert after is not None and empty - after >= 3 * space.MIB
