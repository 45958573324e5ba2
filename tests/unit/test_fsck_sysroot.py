"""`cfsboot fsck` on a whole physical root: the state's and the ESP's checks and repairs.

Each test breaks one thing on a root made of plain directories (cfstest.sysroots:
three deployments D1 < D2 < D3, D3 the default, each with its own kernel) and
asserts the exact problem, what --repair does about it, and what it leaves alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cfsboot.boot.bootloader import BootloaderKind, SystemdBoot
from cfsboot.boot.esp import DirEsp
from cfsboot.boot.loadervars import next_boot
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.fsck.report import FsckReport
from cfsboot.deploy.fsck.run import fsck_sysroot
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.image.importer import import_image
from cfsboot.image.info import image_stream
from cfstest.cli import run as cfsboot
from cfstest.fssnapshot import snapshot
from cfstest.ocibuild import build_layout
from cfstest.osimages import os_entries, os_image
from cfstest.pe import make_pe
from cfstest.sysroots import DirSysroot, make_sysroot


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("images")
    return {
        "v1": os_image(base / "v1", "1", kernel="k1"),
        "v2": os_image(base / "v2", "2", kernel="k2"),
        "v3": os_image(base / "v3", "3", kernel="k3"),
        "b1": os_image(base / "b1", "1", kernel="kb", etc_mode="bind"),
    }


@pytest.fixture
def s(tmp_path: Path, refs: dict[str, str]) -> DirSysroot:
    return make_sysroot(tmp_path / "s", [refs["v1"], refs["v2"], refs["v3"]])


def fsck(s: DirSysroot, *, repair: bool = False) -> FsckReport:
    return fsck_sysroot(s.root, esp=str(s.esp), run_dir=s.run, do_repair=repair)


def found(report: FsckReport) -> list[tuple[str, str]]:
    return sorted((p.code, p.path) for p in report.problems)


def kdir(s: DirSysroot, d: str) -> Path:
    return s.esp / "EFI/Linux" / f"bootc_composefs-{d}"


def sd(d: str) -> str:
    return f"state/deploy/{d}"


def test_a_clean_root(s: DirSysroot) -> None:
    out = cfsboot("fsck", *s.args())
    assert out.stdout.splitlines()[1:] == [
        f"state {s.root}: 3 deployment(s)",
        f"esp {s.esp}: systemd-boot, 3 entries",
        out.stdout.splitlines()[-1],
    ]
    assert out.stdout.splitlines()[-1].startswith("fsck: no problems (")


# -- the state ---------------------------------------------------------------------------


def test_origin_missing_or_unreadable(s: DirSysroot) -> None:
    d1, d2, _ = s.digests
    (s.state(d1) / f"{d1}.origin").unlink()
    (s.state(d2) / f"{d2}.origin").write_text("[boot]\nboot_type = bls\n")
    report = fsck(s, repair=True)
    by_code = {p.code: p for p in report.problems}
    assert found(report) == [("deployment-bad-origin", sd(d2)), ("deployment-no-origin", sd(d1))]
    assert by_code["deployment-no-origin"].message == (
        f"no origin file ({d1[:16]}….origin): upgrade cannot tell which image it follows"
    )
    assert by_code["deployment-bad-origin"].message == (
        f"{s.state(d2) / (d2 + '.origin')} has no [origin] container-image-reference"
    )
    assert report.repaired == [] and report.exit_code == 1


def test_a_deployment_whose_image_is_gone_gets_it_back(s: DirSysroot) -> None:
    d1 = s.digests[0]
    os.unlink(s.repo / "images" / d1)
    s.object(d1).unlink()
    report = fsck(s)
    assert found(report) == [
        ("deployment-no-image", sd(d1)),
        ("tag-dangling", f"images/refs/deploy/{d1}"),
    ]
    origin = s.sysroot().origin(d1)
    assert origin is not None
    assert {p.repair for p in report.problems} == {f"fetch {origin.image} again"}
    fixed = fsck(s, repair=True)
    assert fixed.exit_code == 0, fixed.problems
    assert (s.repo / "images" / d1).resolve() == s.object(d1)


@pytest.mark.parametrize(("mode", "remove", "left"), [("overlay", "etc/work", "etc/work")])
def test_overlay_etc_dirs(s: DirSysroot, mode: str, remove: str, left: str) -> None:
    d1 = s.digests[0]
    (s.state(d1) / remove).rmdir()
    [p] = fsck(s).problems
    assert (p.code, p.path) == ("deployment-no-etc", sd(d1))
    assert p.message == f"its /etc is mounted in {mode} mode but {sd(d1)}/{left} is missing"


def test_bind_mode_etc_dir(tmp_path: Path, refs: dict[str, str]) -> None:
    s = make_sysroot(tmp_path / "s", [refs["b1"]])
    [d] = s.digests
    shutil.rmtree(s.state(d) / "etc")
    [p] = fsck(s).problems
    assert p.message == f"its /etc is mounted in bind mode but {sd(d)}/etc is missing"


def test_var_link_and_shared_var(s: DirSysroot) -> None:
    d1 = s.digests[0]
    (s.state(d1) / "var").unlink()
    (s.root / "state/os/default/var").rmdir()
    report = fsck(s)
    assert found(report) == [
        ("deployment-var-link", sd(d1)),
        ("shared-var-missing", "state/os/default/var"),
    ]
    assert report.problems[0].message == (
        "var is not a link to ../../os/default/var (the shared /var)"
    )


def test_state_leftovers_are_removed_strangers_are_not(s: DirSysroot) -> None:
    d1 = s.digests[0]
    tmp = s.root / f"state/deploy/.{d1[:16]}.tmp-4242"
    (tmp / "etc").mkdir(parents=True)
    (s.root / ".cfsboot-etc-4242").mkdir()
    (s.root / "state/os/default/.var.tmp-4242").mkdir()
    (s.root / "state/deploy/README").write_text("?")
    report = fsck(s, repair=True)
    assert sorted(report.repaired) == [
        "removed .cfsboot-etc-4242",
        f"removed state/deploy/.{d1[:16]}.tmp-4242",
        "removed state/os/default/.var.tmp-4242",
    ]
    assert found(report) == [("unexpected-entry", "state/deploy/README")]
    assert not tmp.exists() and (s.root / "state/deploy/README").exists()


def test_a_deployment_no_entry_boots_is_a_note(s: DirSysroot) -> None:
    d1, d2, d3 = s.digests
    bl = s.bootloader()
    bl.write_menu([m for m in bl.menu() if m.deployment != d1])
    report = fsck(s)
    assert report.exit_code == 0
    notes = sorted((n.code, n.path) for sec in report.sections for n in sec.notes)
    assert notes == [
        ("boot-files-unused", f"EFI/Linux/bootc_composefs-{d1}"),
        ("deployment-not-in-menu", sd(d1)),
    ]
    assert "  note: " + sd(d1) + ": no boot entry boots it" in cfsboot("fsck", *s.args()).stdout


# -- the staged marker -------------------------------------------------------------------


def test_a_staged_deployment_is_clean(tmp_path: Path, refs: dict[str, str]) -> None:
    s = make_sysroot(tmp_path / "s", [refs["v1"]], staged=refs["v2"])
    assert fsck(s).exit_code == 0


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (b"garbage", "the marker is not valid JSON"),
        (json.dumps({"depl_id": "ab" * 64}).encode(), f"names deployment {'ab' * 8}…, which has"),
    ],
)
def test_a_marker_that_names_nothing_goes_with_its_staged_menu(
    tmp_path: Path, refs: dict[str, str], marker: bytes, message: str
) -> None:
    s = make_sysroot(tmp_path / "s", [refs["v1"]], staged=refs["v2"])
    marker_path = s.run / "composefs/staged-deployment"
    marker_path.write_bytes(marker)
    report = fsck(s)
    [p] = [p for p in report.problems if p.path == str(marker_path)]
    assert p.message.startswith(message)
    assert p.repair == "remove the marker and the staged menu"
    fixed = fsck(s, repair=True)
    assert fixed.repaired == ["removed the staged-deployment marker", "removed the staged menu"]
    assert not marker_path.exists() and not (s.esp / "loader/entries.staged").exists()
    assert fixed.exit_code == 0


def test_a_staged_menu_without_marker_goes(tmp_path: Path, refs: dict[str, str]) -> None:
    s = make_sysroot(tmp_path / "s", [refs["v1"]], staged=refs["v2"])
    (s.run / "composefs/staged-deployment").unlink()
    [p] = fsck(s).problems
    assert (p.code, p.path) == ("staged-menu-without-marker", "loader/entries.staged")
    fixed = fsck(s, repair=True)
    assert fixed.repaired == ["removed the staged menu without a marker"]
    assert fixed.exit_code == 0 and not (s.esp / "loader/entries.staged").exists()


def test_with_a_deployment_staged_the_menus_are_left_alone(
    tmp_path: Path, refs: dict[str, str]
) -> None:
    s = make_sysroot(tmp_path / "s", [refs["v1"], refs["v2"]], staged=refs["v3"])
    d1 = s.digests[0]
    shutil.rmtree(s.state(d1))
    report = fsck(s, repair=True)
    dangling = [p for p in report.problems if p.code == "entry-dangling"]
    assert [p.subject for p in dangling] == [f"live:{d1}", f"staged:{d1}"]
    assert all(p.repair is None for p in dangling) and report.repaired == []


# -- the ESP -----------------------------------------------------------------------------


def test_an_entry_without_its_deployment_is_removed(s: DirSysroot) -> None:
    d1, d2, d3 = s.digests
    entries = s.esp / "loader/entries"
    before = {p.name: p.read_bytes() for p in entries.iterdir()}
    shutil.rmtree(s.state(d1))
    [p] = fsck(s).problems
    assert (p.code, p.path, p.repair) == ("entry-dangling", "loader/entries", "remove the entry")
    assert p.message == (
        f"the boot menu entry for deployment {d1[:16]}… boots a deployment that does not"
        f" exist (no state/deploy/{d1[:16]}…)"
    )
    fixed = fsck(s, repair=True)
    assert fixed.repaired == [f"removed the boot entries of {d1[:16]}…"]
    assert [m.deployment for m in s.menu()] == [d3, d2]
    # One file removed; the others, the default's included, keep their names and bytes.
    after = {p.name: p.read_bytes() for p in entries.iterdir()}
    assert after == {n: t for n, t in before.items() if d1.encode() not in t}


def test_the_default_entry_is_never_removed(s: DirSysroot) -> None:
    d3 = s.digests[2]
    shutil.rmtree(s.state(d3))
    report = fsck(s, repair=True)
    assert found(report) == [
        ("default-unbootable", "loader/entries"),
        ("entry-dangling", "loader/entries"),
    ]
    assert all(p.repair is None for p in report.problems)
    assert [m.deployment for m in s.menu()][0] == d3
    unbootable = next(p for p in report.problems if p.code == "default-unbootable")
    assert unbootable.message == (
        f"the default entry (deployment {d3[:16]}…) cannot boot: its deployment does not exist"
    )


def test_stray_entries_are_reported_foreign_ones_are_not(s: DirSysroot) -> None:
    entries = s.esp / "loader/entries"
    (entries / "bootc_junk.conf").write_bytes(b"\xff\xfe junk")
    (entries / "bootc_plain.conf").write_text("title Plain\nlinux /vmlinuz\noptions rw\n")
    (entries / "debian.conf").write_text("title Debian\nlinux /vmlinuz\noptions rw\n")
    report = fsck(s, repair=True)
    assert found(report) == [
        ("entry-stray", "loader/entries/bootc_junk.conf"),
        ("entry-stray", "loader/entries/bootc_plain.conf"),
    ]
    messages = [p.message for p in report.problems]
    assert messages == [
        "named like a cfsboot entry but is not UTF-8 text; it is ignored",
        "named like a cfsboot entry but boots no composefs deployment (no composefs="
        " argument, no bootc UKI); it is ignored",
    ]
    assert (entries / "bootc_junk.conf").exists()


@pytest.mark.parametrize("which", ["vmlinuz", "initrd"])
def test_missing_boot_files_are_copied_again(s: DirSysroot, which: str) -> None:
    d1 = s.digests[0]
    path = kdir(s, d1) / which
    good = path.read_bytes()
    path.unlink()
    [p] = fsck(s).problems
    rel = f"EFI/Linux/bootc_composefs-{d1}/{which}"
    assert (p.code, p.path) == ("boot-file-missing", rel)
    assert p.repair == "copy them again from the deployment's image"
    fixed = fsck(s, repair=True)
    assert fixed.repaired == [
        f"copied the boot files of {d1[:16]}… again: EFI/Linux/bootc_composefs-{d1}"
    ]
    assert path.read_bytes() == good and fixed.exit_code == 0


def test_boot_files_are_copied_from_the_image_without_its_import_record(s: DirSysroot) -> None:
    """The record (lost here; none for an image cfsboot did not import) only lists the boot
    files: the image's own tree has the kernel, and the origin's boot digest vouches for it."""
    d1 = s.digests[0]
    (s.repo / "streams" / image_stream(d1)).unlink()
    path = kdir(s, d1) / "vmlinuz"
    good = path.read_bytes()
    path.unlink()
    fixed = fsck(s, repair=True)
    assert (fixed.repaired, fixed.not_repaired) == (
        [f"copied the boot files of {d1[:16]}… again: EFI/Linux/bootc_composefs-{d1}"],
        [],
    )
    assert path.read_bytes() == good and fixed.exit_code == 0


def test_boot_files_with_the_wrong_content_are_copied_again(s: DirSysroot) -> None:
    d2 = s.digests[1]
    initrd = kdir(s, d2) / "initrd"
    good = initrd.read_bytes()
    initrd.write_bytes(b"another initrd")
    [p] = fsck(s).problems
    assert (p.code, p.path) == ("boot-file-wrong", f"EFI/Linux/bootc_composefs-{d2}")
    assert p.message.startswith("its content (boot digest ")
    assert p.message.endswith(f"…) is not what deployment {d2[:16]}… records ({p.message[-18:]}")
    assert fsck(s, repair=True).exit_code == 0
    assert initrd.read_bytes() == good


def test_an_entry_on_another_deployments_kernel_is_judged_by_its_own(s: DirSysroot) -> None:
    """D1's entry boots D2's kernel directory (a hand edit): the directory is right for D2,
    checked first, and wrong for D1, whose origin records another boot digest. Copying
    D1's kernel there would break D2: it is left for a person."""
    d1, d2, _ = s.digests
    entry = next((s.esp / "loader/entries").glob("bootc_testos-1-*.conf"))
    entry.write_text(entry.read_text().replace(f"bootc_composefs-{d1}", f"bootc_composefs-{d2}"))
    assert [m.artifact for m in s.menu()][1:] == [_rel_kdir(d2)] * 2
    before = snapshot(kdir(s, d2))
    report = fsck(s, repair=True)
    [p] = report.problems
    assert (p.code, p.path, p.subject, p.repair) == (
        "boot-file-wrong",
        _rel_kdir(d2),
        d1,
        None,
    )
    origin = s.sysroot().origin(d1)
    assert origin is not None and origin.boot_digest is not None
    assert p.message.endswith(
        f"is not what deployment {d1[:16]}… records ({origin.boot_digest[:16]}…)"
    )
    assert (report.repaired, report.exit_code) == ([], 1)
    assert snapshot(kdir(s, d2)) == before


def test_the_default_deployments_boot_files_are_not_touched(s: DirSysroot) -> None:
    d3 = s.digests[2]
    (kdir(s, d3) / "vmlinuz").unlink()
    report = fsck(s, repair=True)
    assert found(report) == [
        ("boot-file-missing", f"EFI/Linux/bootc_composefs-{d3}/vmlinuz"),
        ("default-unbootable", "loader/entries"),
    ]
    assert all(p.repair is None for p in report.problems)
    assert not (kdir(s, d3) / "vmlinuz").exists()


def test_esp_leftovers_are_recovered(s: DirSysroot) -> None:
    (s.esp / "loader/.entries.cfsboot-tmp-0123").write_bytes(b"half")
    loader = s.esp / "loader"
    (loader / ".loader.conf.cfsboot-new").write_bytes(b"timeout 3\n")
    (loader / "loader.conf").rename(loader / ".loader.conf.cfsboot-old")
    report = fsck(s)
    assert found(report) == [
        ("leftover", "loader/.entries.cfsboot-tmp-0123"),
        ("leftover", "loader/.loader.conf.cfsboot-new"),
        ("leftover", "loader/.loader.conf.cfsboot-old"),
    ]
    assert all(p.repair == "finish or undo the interrupted write" for p in report.problems)
    fixed = fsck(s, repair=True)
    assert fixed.exit_code == 0
    # An mtools replace that died between its renames is rolled forward.
    assert fixed.repaired == [
        "recovered interrupted ESP writes: removed loader/.entries.cfsboot-tmp-0123;"
        " renamed loader/.loader.conf.cfsboot-new to loader/loader.conf;"
        " removed loader/.loader.conf.cfsboot-old"
    ]
    assert (loader / "loader.conf").read_bytes() == b"timeout 3\n"
    assert sorted(os.listdir(loader)) == ["entries", "loader.conf"]


def test_grub_menu(tmp_path: Path, refs: dict[str, str]) -> None:
    s = make_sysroot(tmp_path / "s", [refs["v1"], refs["v2"]], kind=BootloaderKind.GRUB)
    d1, d2 = s.digests
    assert fsck(s).exit_code == 0
    shutil.rmtree(s.state(d1))
    [p] = fsck(s).problems
    assert (p.code, p.path, p.repair) == ("entry-dangling", "EFI/BOOT/grub.cfg", "remove the entry")
    assert fsck(s, repair=True).exit_code == 0
    assert [m.deployment for m in s.menu()] == [d2]


def test_a_missing_boot_loader_is_reported_not_repaired(
    tmp_path: Path, refs: dict[str, str]
) -> None:
    sd_boot = make_sysroot(tmp_path / "sd", [refs["v1"]])
    (sd_boot.esp / "EFI/systemd/systemd-bootx64.efi").unlink()
    assert fsck(sd_boot).exit_code == 0  # the removable path still starts it
    (sd_boot.esp / "EFI/BOOT/BOOTX64.EFI").unlink()
    grub = make_sysroot(tmp_path / "grub", [refs["v1"]], kind=BootloaderKind.GRUB)
    (grub.esp / "EFI/BOOT/BOOTX64.EFI").unlink()
    lines = {}
    for s in (sd_boot, grub):
        report = fsck(s, repair=True)
        assert (report.exit_code, report.repaired, report.not_repaired) == (1, [], [])
        [p] = report.problems
        assert (p.code, p.repair) == ("bootloader-missing", None)
        lines[s.kind] = p.line()
    assert lines == {
        BootloaderKind.SYSTEMD_BOOT: "EFI/systemd/systemd-bootx64.efi: the systemd-boot boot"
        " loader is missing (neither EFI/systemd/systemd-bootx64.efi nor EFI/BOOT/BOOTX64.EFI):"
        " the firmware has nothing to start (bootctl install, or copy the image's"
        " /usr/lib/systemd/boot/efi/systemd-bootx64.efi to both)",
        BootloaderKind.GRUB: "EFI/BOOT/BOOTX64.EFI: the grub boot loader is missing"
        " (no EFI/BOOT/BOOTX64.EFI): the firmware has nothing to start (copy the image's"
        " /usr/lib/grub/x86_64-efi/monolithic/grubx64.efi there)",
    }


# -- the booted deployment ----------------------------------------------------------------


def test_repair_never_touches_the_booted_deployment(
    s: DirSysroot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D2 is booted (not the default): its entry, boot files and state stay as they are."""
    d1, d2, d3 = s.digests
    monkeypatch.setattr(Sysroot, "booted", lambda self: d2)
    (kdir(s, d2) / "initrd").write_bytes(b"damaged")
    (kdir(s, d1) / "initrd").write_bytes(b"damaged")  # D1's is repaired: repairs do run
    (s.state(d2) / f"{d2}.origin").unlink()
    booted_before = (snapshot(kdir(s, d2)), snapshot(s.state(d2)), _entry_text(s, d2))
    report = fsck(s, repair=True)
    assert report.repaired == [f"copied the boot files of {d1[:16]}… again: {_rel_kdir(d1)}"]
    assert (snapshot(kdir(s, d2)), snapshot(s.state(d2)), _entry_text(s, d2)) == booted_before
    # Its state directory gone: its entry points at nothing, and is still kept.
    shutil.rmtree(s.state(d2))
    report = fsck(s, repair=True)
    assert [p.subject for p in report.problems if p.code == "entry-dangling"] == [f"live:{d2}"]
    assert report.repaired == [] and _entry_text(s, d2) == booted_before[2]


def _rel_kdir(d: str) -> str:
    return f"EFI/Linux/bootc_composefs-{d}"


def _entry_text(s: DirSysroot, d: str) -> bytes:
    entries = s.esp / "loader/entries"
    [text] = [p.read_bytes() for p in entries.iterdir() if d.encode() in p.read_bytes()]
    return text


# -- UKIs ------------------------------------------------------------------------------


def _uki_image(path: Path, version: str, *, sealed: str | None = None) -> str:
    """An image whose UKI seals composefs=?DIGEST of the image itself (or `sealed`)."""
    plain = os_image(path.with_name(path.name + "-plain"), version, kargs=None)
    d = sealed or import_image(plain, None).image_digest
    uki = make_pe(
        [
            (b".osrel", f'NAME="UKI OS"\nVERSION_ID={version}\n'.encode()),
            (b".cmdline", f"rw composefs=?{d}".encode()),
            (b".linux", b"KERNEL" + version.encode() * 1000),
            (b".initrd", b"INITRD" + version.encode() * 500),
        ]
    )
    build_layout(path, [os_entries(version, kargs=None, uki=uki)])
    return f"oci:{path}:latest"


def test_ukis_missing_or_sealed_for_another_image(tmp_path: Path) -> None:
    refs = [_uki_image(tmp_path / f"u{v}", v) for v in ("1", "2")]
    s = make_sysroot(tmp_path / "s", refs)
    u1, u2 = s.digests
    assert fsck(s).exit_code == 0
    uki1 = s.esp / f"EFI/Linux/bootc/bootc_composefs-{u1}.efi"
    good = uki1.read_bytes()
    uki1.unlink()
    [p] = fsck(s).problems
    assert (p.code, p.path) == ("boot-file-missing", f"EFI/Linux/bootc/bootc_composefs-{u1}.efi")
    assert p.message == f"missing (the UKI of deployment {u1[:16]}…)"
    assert fsck(s, repair=True).exit_code == 0 and uki1.read_bytes() == good
    other = _uki_image(tmp_path / "other", "1", sealed="ab" * 64)
    uki1.write_bytes(_uki_of(other, tmp_path))
    [p] = fsck(s).problems
    assert (p.code, p.repair) == ("boot-file-wrong", "copy them again from the deployment's image")
    assert p.message == (
        f"/EFI/Linux/bootc/bootc_composefs-{u1}.efi: the UKI has the wrong composefs= digest"
        f" (is {'ab' * 64}, should be {u1}); rebuild the UKI from this image (was the image"
        " changed after sealing?)"
    )
    assert fsck(s, repair=True).exit_code == 0 and uki1.read_bytes() == good
    assert [m.deployment for m in s.menu()] == [u2, u1]


def _uki_of(ref: str, tmp: Path) -> bytes:
    """The UKI an image built by _uki_image carries (read back through a repository)."""
    repo = Repository.init(tmp / "uki-repo", insecure=True)
    result = import_image(ref, repo, tag="")
    [f] = result.boot.ukis
    assert f.digest is not None
    return (repo.path / "objects" / f.digest[:2] / f.digest[2:]).read_bytes()


def test_a_menu_that_cannot_be_read_is_exit_2(tmp_path: Path, refs: dict[str, str]) -> None:
    s = make_sysroot(tmp_path / "s", [refs["v1"]], kind=BootloaderKind.GRUB)
    (s.esp / "EFI/BOOT/grub.cfg").write_bytes(b"\xff not a menu")
    out = cfsboot("fsck", *s.args(), check=False)
    assert out.returncode == 2
    assert (
        f"esp {s.esp}: could not check: EFI/BOOT/grub.cfg on the ESP is not UTF-8 text"
        " (not cfsboot's menu)\n"
    ) in out.stdout
    assert out.stdout.splitlines()[-1].startswith("fsck: could not check everything; ")
    assert "note:" not in out.stdout  # without a menu, nothing is said about what it boots


# -- what systemd-boot reads: entry names, loader.conf's default ------------------------


def test_loader_conf_default_picks_the_entry_that_is_judged(s: DirSysroot) -> None:
    d2 = s.digests[1]
    shutil.rmtree(s.state(d2))
    conf = s.esp / "loader/loader.conf"
    # systemd-boot folds case on both sides and matches the id without its counter.
    conf.write_text("timeout 5\ndefault 'BOOTC_TESTOS-2-*.CONF'\n")
    (s.esp / "loader/entries/bootc_testos-2-1.conf").rename(
        s.esp / "loader/entries/bootc_testos-2-1+2-1.conf"
    )
    report = fsck(s)
    assert found(report) == [
        ("default-unbootable", "loader/entries"),
        ("entry-dangling", "loader/entries"),
    ]
    unbootable = next(p for p in report.problems if p.code == "default-unbootable")
    assert unbootable.message == (
        f"the default entry (deployment {d2[:16]}…) cannot boot: its deployment does not exist"
    )
    # `@saved` needs EFI variables cfsboot does not read: the first entry, D3, is the default.
    conf.write_text("timeout 5\ndefault @saved\n")
    assert found(fsck(s)) == [("entry-dangling", "loader/entries")]


def test_a_default_only_a_type2_uki_matches_is_not_judged(s: DirSysroot) -> None:
    """loader.conf's `default` names a UKI directly in EFI/Linux (a Type #2 entry, another
    system's): systemd-boot boots it, so cfsboot's first entry is not the default to judge."""
    shutil.rmtree(s.state(s.digests[2]))  # D3, first in menu order, cannot boot
    uki = s.esp / "EFI/Linux/Other-OS+3.efi"
    uki.write_bytes(b"MZ")
    (s.esp / "loader/loader.conf").write_text("timeout 5\ndefault other-os.efi\n")
    # As loadervars (status's nextBoot) reads the same menu.
    chosen = next_boot(SystemdBoot(DirEsp(s.esp)), None).chosen.entry
    assert chosen is not None and chosen.id == "other-os.efi"
    assert found(fsck(s)) == [("entry-dangling", "loader/entries")]
    # Without the UKI the `default` matches nothing: D3's entry, the first, is judged.
    uki.unlink()
    assert found(fsck(s)) == [
        ("default-unbootable", "loader/entries"),
        ("entry-dangling", "loader/entries"),
    ]


def test_leftover_entry_files_are_not_menu_entries(s: DirSysroot) -> None:
    d1, d2, d3 = s.digests
    entries = s.esp / "loader/entries"
    text = (entries / "bootc_testos-1-0.conf").read_text()
    # What a crash leaves: hidden or suffixed temp names, one of them cfsboot's own. Each
    # would be the default if read (its sort key comes first), and boots D1.
    leftover = text.replace("sort-key bootc-testos-", "sort-key a-")
    assert leftover != text
    for name in (
        ".bootc_testos-9-1.conf",
        "bootc_testos-9-1.conf.tmp",
        ".bootc_testos-9-1.conf.cfsboot-tmp-0a1b2c",
    ):
        (entries / name).write_text(leftover)
    assert [m.deployment for m in s.menu()] == [d3, d2, d1]
    report = fsck(s)
    assert found(report) == [
        ("leftover", "loader/entries/.bootc_testos-9-1.conf.cfsboot-tmp-0a1b2c")
    ]
    shutil.rmtree(s.state(d3))
    # The default judged is D3's entry, not the hidden one that boots D1.
    assert ("default-unbootable", "loader/entries") in found(fsck(s))
