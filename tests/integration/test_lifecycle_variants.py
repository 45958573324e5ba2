"""Lifecycle variants on `install to-filesystem` (root and ESP as plain directories).

GRUB's generated menu, UKIs, bind-mode /etc with its three-way merge and the
conflict check at staging time, upgrade, other systems' entries on the ESP,
and the refusals users can hit.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfsboot.boot.counting import GrubEnv
from cfsboot.boot.grub import GrubMenu
from cfsboot.image.importer import import_image
from cfstest import bootorder, grubmenu
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System, install
from cfstest.ocibuild import build_layout
from cfstest.osimages import os_entries, os_image
from cfstest.pe import make_pe

pytestmark = [pytest.mark.integration]


def digest(ref: str) -> str:
    return import_image(ref, None).image_digest


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("img")
    return {
        "v1": os_image(base / "v1", "1"),
        "v2": os_image(base / "v2", "2", kernel="k2"),
        "b1": os_image(base / "b1", "1", etc={"app.conf": b"default 1\n"}, etc_mode="bind"),
        "b2": os_image(
            base / "b2",
            "2",
            etc={"app.conf": b"default 2\n", "fresh.conf": b"new in 2\n"},
            etc_mode="bind",
        ),
        # /etc/conf.d becomes a file in b3: a locally added dir there cannot be merged.
        "b3": os_image(base / "b3", "3", etc={"conf.d": b"now a file\n"}, etc_mode="bind"),
    }


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def _grub_deployments(menu: grubmenu.GrubMenu) -> list[str | None]:
    """Deployments in GRUB's menu order; the first is the one GRUB boots by default."""
    assert menu.default is menu.entries[0]
    return [bootorder.composefs_digest(e.options) for e in menu.entries]


def test_grub_menu_lifecycle(tmp: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp, refs["v1"], "--bootloader", "grub", "--boot-timeout", "0")
    d1, d2 = digest(refs["v1"]), digest(refs["v2"])
    assert (sys_.esp / "EFI/BOOT/BOOTX64.EFI").read_bytes().startswith(b"")
    assert not (sys_.esp / "loader").exists()
    text = (sys_.esp / "EFI/BOOT/grub.cfg").read_text()
    menu = grubmenu.grub_menu(text)
    assert menu.settings["timeout"] == "0"
    assert _grub_deployments(menu) == [d1]
    assert f"set default=cfsboot-{d1}" in text
    e = menu.entries[0]
    assert e.linux == f"/EFI/Linux/bootc_composefs-{d1}/vmlinuz"
    assert f"composefs=?{d1}" in e.options

    # No boot counting here: grubmenu models no GRUB variables (the counting code is
    # run by cfstest.grubsim in tests/unit/test_bootcount.py).
    sys_.cfs("switch", refs["v2"], "-q", "--boot-tries", "0")
    staged = grubmenu.grub_menu((sys_.esp / "EFI/BOOT/grub.cfg.staged").read_text())
    assert _grub_deployments(staged) == [d2, d1]
    assert _grub_deployments(grubmenu.grub_menu(text)) == [d1]
    sys_.cfs("finalize-staged")
    live = grubmenu.grub_menu((sys_.esp / "EFI/BOOT/grub.cfg").read_text())
    assert _grub_deployments(live) == [d2, d1]
    assert not (sys_.esp / "EFI/BOOT/grub.cfg.staged").exists()
    assert sorted(os.listdir(sys_.esp / "EFI/Linux")) == sorted(
        [f"bootc_composefs-{d1}", f"bootc_composefs-{d2}"]
    )
    assert sys_.status()["status"]["booted"]["composefs"]["bootloader"] == "grub"
    sys_.cfs("rollback")
    live = grubmenu.grub_menu((sys_.esp / "EFI/BOOT/grub.cfg").read_text())
    assert _grub_deployments(live) == [d1, d2]


def _uki_image(path: Path, version: str, *, sealed: str | None = None) -> str:
    """An image whose UKI seals composefs=?DIGEST of the image itself (or `sealed`)."""
    plain = path.with_name(path.name + "-plain")
    ref_plain = os_image(plain, version, kargs=None)
    d = sealed or digest(ref_plain)
    osrel = f'NAME="UKI OS"\nPRETTY_NAME="UKI OS {version}"\nVERSION_ID={version}\n'
    uki = make_pe(
        [
            (b".osrel", osrel.encode()),
            (b".cmdline", f"rw composefs=?{d} console=ttyS0".encode()),
            (b".linux", b"KERNEL" + version.encode() * 1000),
            (b".initrd", b"INITRD" + version.encode() * 500),
        ]
    )
    build_layout(path, [os_entries(version, kargs=None, uki=uki)])
    return f"oci:{path}:latest"


def test_uki_entries(tmp: Path) -> None:
    u1 = _uki_image(tmp / "u1", "1")
    u2 = _uki_image(tmp / "u2", "2")
    d1, d2 = digest(u1), digest(u2)
    # /boot is emptied in the boot image: the UKI does not change the digest it seals.
    assert d1 == digest(f"oci:{tmp / 'u1-plain'}:latest")
    sys_ = install(tmp / "s", u1)
    [e] = sys_.entries()
    assert e.efi == f"/EFI/Linux/bootc/bootc_composefs-{d1}.efi"
    assert e.title == "UKI OS 1 1" and not e.options
    assert (sys_.esp / e.efi.lstrip("/")).read_bytes()[:2] == b"MZ"
    sys_.cfs("switch", u2, "-q")
    sys_.cfs("finalize-staged")
    assert sys_.menu() == [d2, d1]
    st = sys_.status()["status"]
    assert st["booted"]["composefs"]["bootType"] == "Uki"
    assert st["booted"]["composefs"]["missingVerityAllowed"] is True

    bad = _uki_image(tmp / "bad", "3", sealed="ab" * 64)
    out = sys_.cfs("switch", bad, "-q", check=False)
    assert out.returncode == 1
    assert "the UKI has the wrong composefs= digest" in out.stderr
    assert not (sys_.esp / "loader/entries.staged").exists()
    out = sys_.cfs("switch", u1, "--karg", "quiet", "-q", check=False)
    assert out.returncode == 1


def test_bind_mode_three_way_merge(tmp: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp, refs["b1"])
    d1, d2 = digest(refs["b1"]), digest(refs["b2"])
    etc1 = sys_.root / "state/deploy" / d1 / "etc"
    # A full copy of the image's /etc (bootc's layout).
    assert (etc1 / "app.conf").read_text() == "default 1\n"
    assert (etc1 / "hostname").read_text() == "testos\n"
    (etc1 / "local.conf").write_text("mine\n")  # added locally
    (etc1 / "hostname").write_text("my-host\n")  # changed locally
    (etc1 / "os-release-version").unlink()  # deleted locally
    sys_.cfs("switch", refs["b2"], "-q")
    etc2 = sys_.root / "state/deploy" / d2 / "etc"
    assert (etc2 / "hostname").read_text() == "testos\n"  # pristine until finalize
    sys_.cfs("finalize-staged")
    assert (etc2 / "local.conf").read_text() == "mine\n"
    assert (etc2 / "hostname").read_text() == "my-host\n"
    assert not (etc2 / "os-release-version").exists()
    assert (etc2 / "app.conf").read_text() == "default 2\n"  # untouched: the new default
    assert (etc2 / "fresh.conf").read_text() == "new in 2\n"


def test_unmergeable_etc_is_refused_at_staging(tmp: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp, refs["b1"])
    d1, d3 = digest(refs["b1"]), digest(refs["b3"])
    (sys_.root / "state/deploy" / d1 / "etc/conf.d").mkdir()
    (sys_.root / "state/deploy" / d1 / "etc/conf.d/x.conf").write_text("local\n")
    out = sys_.cfs("switch", refs["b3"], "-q", check=False)
    line = one_line_error(out)
    assert line.startswith("cfsboot: local changes to /etc conflict with the new image:")
    assert "conf.d" in line and "nothing was staged" in line
    assert not (sys_.root / "state/deploy" / d3).exists()
    assert not (sys_.esp / "loader/entries.staged").exists()
    assert not (sys_.run / "composefs/staged-deployment").exists()
    assert sys_.menu() == [d1]


def _config_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / mdigest[7:]).read_text())
    return str(manifest["config"]["digest"])


def test_upgrade_follows_the_reference(tmp: Path) -> None:
    img = tmp / "img"
    ref = os_image(img, "1")
    sys_ = install(tmp / "s", ref)
    d1 = digest(ref)
    out = sys_.cfs("upgrade", "--check", check=False)
    assert (out.returncode, out.stdout[:9]) == (77, "no update")
    nothing = sys_.cfs("upgrade", "-q")
    assert nothing.stderr == f"no changes: {ref} ({d1[:12]}…) is the booted deployment\n"
    # A new version under the same reference.
    shutil.rmtree(img)
    os_image(img, "2")
    d2 = digest(ref)
    out = sys_.cfs("upgrade", "--check")
    lines = out.stdout.splitlines()
    assert lines[0] == f"update available: {ref}"
    assert lines[1] == f"  config {_config_digest(img)}"
    # Fetched to be compared, not staged: no marker, no deployment; status records it.
    assert not (sys_.run / "composefs/staged-deployment").exists()
    assert sys_.menu() == [d1]
    booted = sys_.status()["status"]["booted"]
    assert booted["cachedUpdate"]["image"] == {"image": f"{img}:latest", "transport": "oci"}
    assert "Update: " in sys_.cfs("status", "--format", "human").stdout
    sys_.cfs("upgrade", "-q")
    # Staged, the update is no longer one to fetch (bootc: the pull drops the cached one).
    status = sys_.status()["status"]
    assert (status["booted"]["cachedUpdate"], status["staged"]["cachedUpdate"]) == (None, None)
    assert "Update: " not in sys_.cfs("status", "--format", "human").stdout
    sys_.cfs("finalize-staged")
    assert sys_.menu() == [d2, d1]


def test_foreign_entries_are_kept(tmp: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp, refs["v1"])
    d1, d2 = digest(refs["v1"]), digest(refs["v2"])
    other = sys_.esp / "loader/entries/other-os.conf"
    other.write_text("title Other OS\nlinux /other/vmlinuz\nsort-key zzz\n")
    sys_.cfs("switch", refs["v2"], "-q")
    sys_.cfs("finalize-staged")
    assert other.read_text().startswith("title Other OS")
    assert sys_.menu() == [d2, d1, "other-os.conf"]
    sys_.cfs("rollback")
    assert sys_.menu() == [d1, d2, "other-os.conf"]
    sys_.cfs("gc")
    assert other.exists()


def test_refusals(tmp: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp, refs["v1"])
    again = cfsboot(
        "install", "to-filesystem", refs["v1"], sys_.root, "--esp", sys_.esp, check=False
    )
    assert again.returncode == 1 and "already has a composefs repository" in again.stderr
    out = sys_.cfs("fsverity", "enable-repo", check=False)
    # This host's kernel has no fs-verity: the repository cannot be made secure here.
    one_line_error(out, contains="does not support fs-verity")
    missing = sys_.cfs("switch", f"oci:{tmp}/nope:latest", "-q", check=False)
    one_line_error(missing)


def test_download_only_then_from_downloaded(tmp: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp, refs["v1"])
    d1, d2 = digest(refs["v1"]), digest(refs["v2"])
    marker = sys_.run / "composefs/staged-deployment"
    nothing = sys_.cfs("upgrade", "--from-downloaded", check=False)
    one_line_error(nothing, contains="no staged deployment to apply")

    sys_.cfs("switch", refs["v2"], "--download-only", "-q")
    assert json.loads(marker.read_text()) == {"depl_id": d2, "finalization_locked": True}
    assert sys_.status()["status"]["staged"]["downloadOnly"] is True
    # Shutdown leaves a download-only deployment staged and the menu as it was.
    assert "download-only: not finalized" in sys_.cfs("finalize-staged").stderr
    assert sys_.menu() == [d1] and marker.exists()

    out = sys_.cfs("upgrade", "--from-downloaded")
    assert "unlocked; it boots next" in out.stderr
    assert json.loads(marker.read_text())["finalization_locked"] is False
    assert "not download-only" in sys_.cfs("upgrade", "--from-downloaded").stderr
    # Locked again by upgrade --download-only (it follows the staged image), unlocked by a
    # plain upgrade: bootc's rule for an update that is already staged.
    out = sys_.cfs("upgrade", "--download-only", "-q")
    locked = f"{refs['v2']} ({d2[:12]}…) is staged, now download-only: not finalized at shutdown"
    assert out.stderr == f"{locked}\n"
    assert json.loads(marker.read_text())["finalization_locked"] is True
    # switch to what is staged changes nothing (the same reference), lock included.
    assert "image specification is unchanged" in sys_.cfs("switch", refs["v2"]).stderr
    assert json.loads(marker.read_text())["finalization_locked"] is True
    out = sys_.cfs("upgrade", "-q")
    assert out.stderr == f"{refs['v2']} ({d2[:12]}…) is staged, unlocked; it boots next\n"
    assert json.loads(marker.read_text())["finalization_locked"] is False
    out = sys_.cfs("upgrade", "-q")
    assert out.stderr == f"update already staged: {refs['v2']} ({d2[:12]}…) (it boots next)\n"
    sys_.cfs("finalize-staged")
    assert sys_.menu() == [d2, d1] and not marker.exists()

    both = sys_.cfs("upgrade", "--check", "--from-downloaded", check=False)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def _grub_counter(sys_: System, d: str) -> tuple[str, str | None]:
    """(key, grubenv value) of deployment d's entry in the live GRUB menu."""
    live = GrubMenu.parse((sys_.esp / "EFI/BOOT/grub.cfg").read_text())
    [entry] = [e for e in live.entries if e.deployment == d]
    assert entry.counter is not None, f"{d[:12]} is not on trial"
    env = GrubEnv.parse((sys_.esp / "EFI/BOOT/grubenv").read_bytes())
    return entry.counter[0], env.get(entry.counter[0])


def test_grub_boot_counting_and_upgrade_skips_a_failed_image(tmp: Path) -> None:
    """GRUB: install on trial, bless, an upgrade that fails its tries (GRUB's counts, done
    here in grubenv) falls back; upgrade then does not stage the failed image again."""
    img = tmp / "img"
    ref = os_image(img, "1")
    sys_ = install(tmp / "s", ref, "--bootloader", "grub", "--boot-tries", "2")
    d1 = digest(ref)
    key1, value = _grub_counter(sys_, d1)
    assert value == "0"
    trial = sys_.status()["status"]["booted"]["cfsboot"]["bootAssessment"]
    assert (trial["state"], trial["triesLeft"], trial["triesDone"]) == ("pending", 2, 0)
    out = sys_.cfs("bless", "--deployment", d1)
    assert out.stderr.strip() == f"EFI/BOOT/grubenv: {key1} = good"
    assert sys_.status()["status"]["booted"]["cfsboot"]["bootAssessment"] is None
    shutil.rmtree(img)
    os_image(img, "2")
    d2 = digest(ref)
    sys_.cfs("upgrade", "-q", "--boot-tries", "1")
    sys_.cfs("finalize-staged")
    key2, value = _grub_counter(sys_, d2)
    assert value == "0"
    # GRUB boots v2 once (its menu entry counts the try in grubenv); the boot fails.
    env_path = sys_.esp / "EFI/BOOT/grubenv"
    env = GrubEnv.parse(env_path.read_bytes())
    env_path.write_bytes(env.with_counters({**dict(env.counters), key2: "1"}).render())
    st = sys_.status()["status"]
    assert st["booted"]["composefs"]["verity"] == d1  # offline: what GRUB boots by default
    assessed = st["cfsboot"]["bootAssessment"]
    assert (assessed["fallback"], assessed["failedDeployment"], assessed["triesUsed"]) == (
        True,
        d2,
        1,
    )
    out = sys_.cfs("upgrade", "-q")
    assert out.stderr.strip().endswith(
        f"({d2[:12]}…) failed its boot assessment (1 tries): not staged again;"
        " `cfsboot switch` to it retries it"
    )
    assert not (sys_.esp / "EFI/BOOT/grub.cfg.staged").exists()
    # rollback to it is an admin's choice: a new trial under a new key.
    assert "gets a new trial" in sys_.cfs("rollback").stderr
    key3, value = _grub_counter(sys_, d2)
    assert key3 != key2 and value == "0"
