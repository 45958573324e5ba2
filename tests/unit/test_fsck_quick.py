"""status and gc on a broken state: each problem is a warning line, and the command still works.

They run fsck's cheap part first (no object or boot file is read). The broken
states are bootc's "corrupted state resilience" ones (a stray BLS entry, /run/composefs
gone, a deleted .origin) and a few more (an image gone, a kernel gone, a damaged record).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cfstest.cli import run as cfsboot
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

HINT = "WARNING: `cfsboot fsck` checks everything, `cfsboot fsck --repair` fixes what is safe\n"


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("images")
    return [os_image(base / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3, 4)]


@pytest.fixture
def s(tmp_path: Path, refs: list[str]) -> DirSysroot:
    return make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])


def status(s: DirSysroot) -> tuple[dict[str, object], str]:
    out = cfsboot("status", "--json", *s.args())
    doc: dict[str, object] = json.loads(out.stdout)
    return doc, out.stderr


def gc(s: DirSysroot) -> subprocess.CompletedProcess[str]:
    return cfsboot("gc", *s.args())


def test_a_clean_state_has_no_warnings(s: DirSysroot) -> None:
    assert status(s)[1] == ""


def test_stray_and_foreign_entries(s: DirSysroot) -> None:
    entries = s.esp / "loader/entries"
    (entries / "bootc_junk.conf").write_bytes(b"\xff junk")
    (entries / "bootc_plain.conf").write_text("title Plain\nlinux /vmlinuz\n")
    (entries / "debian.conf").write_text("title Debian\nlinux /vmlinuz\n")
    doc, err = status(s)
    assert err == (
        "WARNING: loader/entries/bootc_junk.conf: named like a cfsboot entry but is not UTF-8"
        " text; it is ignored\n"
        "WARNING: loader/entries/bootc_plain.conf: named like a cfsboot entry but boots no"
        " composefs deployment (no composefs= argument, no bootc UKI); it is ignored\n" + HINT
    )
    assert doc["kind"] == "BootcHost"
    out = gc(s)
    assert out.stderr == err and out.stdout.startswith("gc removed 0 deployment(s)")
    assert (entries / "debian.conf").exists() and (entries / "bootc_junk.conf").exists()


def test_run_composefs_gone_mid_switch(s: DirSysroot) -> None:
    shutil.rmtree(s.run / "composefs")
    doc, err = status(s)
    assert err == (
        "WARNING: loader/entries.staged: a staged menu without the staged-deployment marker:"
        " nothing will finalize it (left by an interrupted or forgotten staging)\n" + HINT
    )
    assert doc["status"]["staged"] is None  # type: ignore[index]
    out = gc(s)
    assert out.stdout.startswith("gc removed 1 deployment(s), 1 boot file set(s)")
    assert not (s.esp / "loader/entries.staged").exists()
    assert status(s)[1] == ""


def test_a_deleted_origin_is_one_warning(s: DirSysroot) -> None:
    d3 = s.digests[2]  # the staged one (bootc's test deletes the staged .origin)
    (s.state(d3) / f"{d3}.origin").unlink()
    doc, err = status(s)
    assert err == (
        f"WARNING: state/deploy/{d3}: no origin file ({d3[:16]}….origin): upgrade cannot tell"
        " which image it follows\n" + HINT
    )
    assert doc["status"]["staged"]["image"]["image"]["image"]  # type: ignore[index]
    assert gc(s).returncode == 0


def test_a_deployment_without_its_image(s: DirSysroot) -> None:
    d1 = s.digests[0]
    (s.repo / "images" / d1).unlink()
    s.object(d1).unlink()
    _doc, err = status(s)
    assert err.splitlines() == [
        f"WARNING: images/refs/deploy/{d1}: names image {d1[:32]}…, which is missing",
        f"WARNING: state/deploy/{d1}: its image is not in the repository",
        HINT.rstrip("\n"),
    ]
    out = gc(s)
    assert out.stdout.splitlines()[1] == (
        f"  note: image {d1[:16]}… cannot be read ([Errno 2] No such file or directory:"
        f" '{s.object(d1)}'): streams and objects were not collected (`cfsboot fsck` says more)"
    )


def test_a_tag_that_names_no_digest(s: DirSysroot) -> None:
    (s.repo / "images/refs/mine").symlink_to("../nothing")
    _doc, err = status(s)
    assert err.splitlines() == [
        "WARNING: images/refs/mine: links to '../nothing', which names no image (not a digest)",
        HINT.rstrip("\n"),
    ]


def test_an_entry_whose_kernel_is_gone(s: DirSysroot) -> None:
    d1 = s.digests[0]
    (s.esp / f"EFI/Linux/bootc_composefs-{d1}/vmlinuz").unlink()
    _doc, err = status(s)
    assert err == (
        f"WARNING: EFI/Linux/bootc_composefs-{d1}/vmlinuz: missing (the kernel or initrd of"
        f" deployment {d1[:16]}…)\n" + HINT
    )
    assert gc(s).returncode == 0


def test_gc_collects_nothing_a_damaged_record_might_need(s: DirSysroot) -> None:
    sysroot = s.sysroot()
    before = sorted(p.name for p in (s.repo / "objects").rglob("*") if p.is_file())
    bl = s.bootloader()
    bl.discard_staged()
    (s.run / "composefs/staged-deployment").unlink()  # the v3 deployment is now gc's
    layer = next((s.repo / "streams").glob("cfsboot-layer-*"))
    layer.resolve().write_bytes(b"not a record")
    out = gc(s)
    assert "streams and objects were not collected (`cfsboot fsck` says more)" in out.stdout
    assert "  note: the layer record sha256:" in out.stdout
    assert sorted(p.name for p in (s.repo / "objects").rglob("*") if p.is_file()) == before
    assert sysroot.deployment_dirs() == sorted(s.digests[:2])


def test_a_damaged_marker_is_one_warning(s: DirSysroot) -> None:
    marker = s.run / "composefs/staged-deployment"
    marker.write_bytes(b"garbage")
    out = gc(s)
    ignoring = [ln for ln in out.stderr.splitlines() if "ignoring the staged-deployment" in ln]
    assert ignoring == [
        f"WARNING: ignoring the staged-deployment marker: {marker} is not valid JSON"
        " (Expecting value: line 1 column 1 (char 0))"
    ], out.stderr


@pytest.mark.parametrize("keep", ["-1", "x"])
def test_gc_refuses_a_negative_keep(s: DirSysroot, keep: str) -> None:
    before = sorted(s.sysroot().deployment_dirs())
    out = cfsboot("gc", "--keep", keep, *s.args(), check=False)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "cfsboot gc: argument --keep: expected a number of deployments (0 or more),"
        f" not {keep!r} (see --help)\n"
    )
    assert sorted(s.sysroot().deployment_dirs()) == before


def test_a_damaged_meta_json_status_shows_the_deployments_gc_refuses(s: DirSysroot) -> None:
    """status shows what the state and the ESP say (the image's version, date and
    architecture are the repository's: unknown); gc, which writes the repository, stops."""
    meta = s.repo / "meta.json"
    meta.write_bytes(b"garbage")
    why = f"{meta} is not valid JSON (Expecting value: line 1 column 1 (char 0))"
    doc, err = status(s)
    assert err == f"WARNING: {s.repo}: {why}\n" + HINT
    st = doc["status"]
    d1, d2, d3 = s.digests
    assert st["staged"]["composefs"]["verity"] == d3  # type: ignore[index]
    assert st["booted"]["composefs"]["verity"] == d2  # type: ignore[index]
    image = st["booted"]["image"]  # type: ignore[index]
    ref = s.sysroot().origin(d2).image  # type: ignore[union-attr]
    assert image["image"] == {"image": ref.removeprefix("oci:"), "transport": "oci"}
    assert (image["version"], image["timestamp"], image["architecture"]) == (None, None, "")
    out = cfsboot("gc", *s.args(), check=False)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", f"cfsboot: {why}\n")
    assert meta.read_bytes() == b"garbage" and s.sysroot().deployment_dirs() == sorted(s.digests)


def test_gc_says_entries_wait_for_the_staged_deployment(tmp_path: Path, refs: list[str]) -> None:
    """Three live entries and one staged: gc would drop the oldest, but the live menu is
    finalize's to replace, so it is kept and gc says why."""
    s = make_sysroot(tmp_path / "s", refs[:3], staged=refs[3])
    out = gc(s)
    assert out.stdout.splitlines() == [
        "gc removed 0 deployment(s), 0 boot file set(s), 0 image(s), 0 stream(s),"
        " 0 object(s) (0.0 MiB)",
        "  note: a deployment is staged: entries are pruned after it is finalized",
    ]
    assert s.sysroot().deployment_dirs() == sorted(s.digests)
