"""bootc's flags on an installed system (`install to-filesystem`, root and ESP as directories).

switch to an image another deployment already is (bootc's test-43-switch-same-digest),
switch --transport and --retain, --karg-delete on install, switch and upgrade, upgrade
--tag, and status --format/--format-version/--booted/-v with its JSON checked against
bootc's host-v1 schema (cfstest.bootcschema). Registry references (bare names):
test_registry.py; usr-overlay: test_usroverlay.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cfsboot.image.importer import import_image
from cfstest import bootcschema
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System, install
from cfstest.ocibuild import build_layout, tar_chunks
from cfstest.osimages import os_entries, os_image
from cfstest.pe import make_pe

pytestmark = [pytest.mark.integration]


def digest(ref: str) -> str:
    return import_image(ref, None).image_digest


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("img")
    out = {
        "v1": os_image(base / "v1", "1"),
        "v2": os_image(base / "v2", "2", kernel="k2"),
        "v3": os_image(base / "v3", "3", kernel="k3"),
    }
    # The same images under other names: other layouts, the same bytes.
    for v in ("v1", "v2"):
        shutil.copytree(base / v, base / f"{v}-again")
        out[f"{v}-again"] = f"oci:{base / v}-again:latest"
    return out


def _no_staging(sys_: System, menu: list[str]) -> None:
    assert not (sys_.run / "composefs/staged-deployment").exists()
    assert not (sys_.esp / "loader/entries.staged").exists()
    assert sys_.menu() == menu


def test_switch_to_a_deployed_digest_is_refused(tmp_path: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp_path, refs["v1"])
    d1, d2 = digest(refs["v1"]), digest(refs["v2"])
    states = sorted(p.name for p in (sys_.root / "state/deploy").iterdir())

    # Another name, the same composefs digest as the booted deployment (bootc's test 43).
    out = sys_.cfs("switch", refs["v1-again"], "-q", check=False)
    line = one_line_error(out)
    assert line == (
        f"cfsboot: {refs['v1-again']} has the same composefs digest ({d1[:12]}…) as the booted"
        " deployment: nothing to switch to; it is running now; `cfsboot upgrade` fetches what"
        " the booted deployment follows"
    )
    _no_staging(sys_, [d1])
    assert sorted(p.name for p in (sys_.root / "state/deploy").iterdir()) == states

    # The same as the staged one, download-only or not.
    sys_.cfs("switch", refs["v2"], "--download-only", "-q")
    out = sys_.cfs("switch", refs["v2-again"], "-q", check=False)
    assert one_line_error(out).endswith(
        "as the staged deployment: nothing to switch to; it is staged download-only;"
        " `cfsboot upgrade --from-downloaded` lets it boot next"
    )
    out = sys_.cfs("switch", "--from-downloaded")  # bootc's switch has it too
    assert out.stderr == f"staged deployment {d2[:12]}… unlocked; it boots next\n"
    out = sys_.cfs("switch", refs["v2-again"], "-q", check=False)
    assert one_line_error(out).endswith("as the staged deployment: nothing to switch to;"
                                        " it boots next already")  # fmt: skip
    marker = json.loads((sys_.run / "composefs/staged-deployment").read_text())
    assert marker == {"depl_id": d2, "finalization_locked": False}

    # The same as the rollback deployment, once v2 is the default.
    sys_.cfs("finalize-staged")
    out = sys_.cfs("switch", refs["v1-again"], "-q", check=False)
    assert one_line_error(out) == (
        f"cfsboot: {refs['v1-again']} has the same composefs digest ({d1[:12]}…) as the"
        " rollback deployment: nothing to switch to; it is in the boot menu; `cfsboot rollback`"
        " makes the previous deployment the default"
    )
    _no_staging(sys_, [d2, d1])
    # upgrade to what is deployed is no error: nothing new (bootc).
    out = sys_.cfs("upgrade", "-q")
    assert out.stderr == f"no changes: {refs['v2']} ({d2[:12]}…) is the booted deployment\n"
    # An older one behind the rollback: `cfsboot rollback` would not bring it back.
    d3 = digest(refs["v3"])
    sys_.cfs("switch", refs["v3"], "-q")
    sys_.cfs("finalize-staged")
    out = sys_.cfs("switch", refs["v1-again"], "-q", check=False)
    assert one_line_error(out) == (
        f"cfsboot: {refs['v1-again']} has the same composefs digest ({d1[:12]}…) as the other"
        " deployment: nothing to switch to; it is in the boot menu behind the rollback one,"
        " the only one `cfsboot rollback` brings back; `cfsboot gc` removes it (`cfsboot"
        " unpin` it first if pinned), then switch deploys it anew"
    )
    _no_staging(sys_, [d3, d2, d1])


def test_switch_transport_and_retain(tmp_path: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp_path, refs["v1"])
    d2 = digest(refs["v2"])
    path = refs["v2"].removeprefix("oci:")  # /…/v2:latest
    out = sys_.cfs("switch", "--transport", "oci", path, "--retain", "-q")
    assert out.stdout == f"{d2}\n"
    origin = (sys_.root / "state/deploy" / d2 / f"{d2}.origin").read_text()
    assert f"container-image-reference = ostree-unverified-image:{refs['v2']}\n" in origin
    # --retain changes nothing in cfsboot: the booted deployment stays as it was.
    sys_.cfs("finalize-staged")
    assert sys_.menu() == [d2, digest(refs["v1"])]
    # The same image named two ways is the same reference: no change.
    same = sys_.cfs("switch", refs["v2"], "-q")
    assert same.stderr.startswith(f"image specification is unchanged: {refs['v2']} is what")
    # The image's own transport, said again with --transport: the same reference.
    both = sys_.cfs("switch", "--transport", "oci", refs["v2"], "-q")
    assert both.stderr.startswith(f"image specification is unchanged: {refs['v2']} is what")
    other = sys_.cfs("switch", "--transport", "registry", refs["v2"], check=False)
    one_line_error(other, contains="names transport oci and --transport registry names another")


def _options(sys_: System, staged: bool = False) -> list[list[str]]:
    d = "loader/entries.staged" if staged else "loader/entries"
    return [list(e.options) for e in sys_.entries(d)]


def test_karg_delete_install_switch_upgrade(tmp_path: Path, refs: dict[str, str]) -> None:
    # kargs.d of the test images: console=ttyS0,115200.
    root, esp = tmp_path / "root", tmp_path / "esp"
    root.mkdir()
    esp.mkdir()
    out = cfsboot(
        "install", "to-filesystem", refs["v1"], root, "--esp", esp, "-q", "--insecure",
        "--karg", "quiet", "--karg", "foo=bar", "--karg", "foo=baz",
        "--karg-delete", "console", "--karg-delete", "foo=bar", "--karg-delete", "nosmt",
    )  # fmt: skip
    # One note for the delete that matched nothing; the others went quietly.
    notes = [line for line in out.stderr.splitlines() if "--karg-delete" in line]
    assert notes == ["WARNING: --karg-delete nosmt: the entry has no such kernel argument"]
    sys_ = System(root, esp, tmp_path / "run")
    d1, d2, d3 = digest(refs["v1"]), digest(refs["v2"]), digest(refs["v3"])
    assert _options(sys_) == [["rw", "quiet", "foo=baz", f"composefs=?{d1}"]]

    # v2 in a layout of this test's own: upgrade replaces it with v3 below.
    layout = tmp_path / "os"
    shutil.copytree(Path(refs["v2"].removeprefix("oci:").rsplit(":", 1)[0]), layout)
    sys_.cfs("switch", f"oci:{layout}:latest", "--karg-delete", "quiet", "--karg", "debug", "-q")
    # kargs.d is the same in v2: console stays deleted, not added back.
    assert _options(sys_, staged=True)[0] == ["rw", "foo=baz", f"composefs=?{d2}", "debug"]
    sys_.cfs("finalize-staged")

    # upgrade: the same, on the image the booted deployment follows (v2's layout, now v3).
    shutil.rmtree(layout)
    build_layout(layout, [os_entries("3", kernel="k3")])
    assert digest(f"oci:{layout}:latest") == d3
    sys_.cfs("upgrade", "--karg-delete", "foo=baz", "-q")
    assert _options(sys_, staged=True)[0] == ["rw", f"composefs=?{d3}", "debug"]

    bad = sys_.cfs("upgrade", "--karg-delete", "composefs", check=False)
    one_line_error(bad, contains="--karg-delete composefs: the composefs karg names the image")


def test_karg_delete_refused_for_a_uki(tmp_path: Path) -> None:
    plain = os_image(tmp_path / "u-plain", "1", kargs=None)
    uki = make_pe([(b".cmdline", f"rw composefs=?{digest(plain)}".encode()),
                   (b".linux", b"KERNEL" * 100), (b".initrd", b"INITRD" * 100)])  # fmt: skip
    ref = os_image(tmp_path / "u", "1", kargs=None, uki=uki)
    (tmp_path / "root").mkdir()
    (tmp_path / "esp").mkdir()
    out = cfsboot(
        "install", "to-filesystem", ref, tmp_path / "root", "--esp", tmp_path / "esp",
        "--insecure", "--karg-delete", "rw", check=False,
    )  # fmt: skip
    assert one_line_error(out) == (
        "cfsboot: kernel arguments cannot be added to or deleted from a UKI"
        " (its command line is sealed)"
    )


def test_upgrade_tag(tmp_path: Path) -> None:
    """bootc's test-39-upgrade-tag: another tag of the image followed, then followed."""
    layout = tmp_path / "os"
    lay = build_layout(layout, [os_entries("1")], tag="1")
    lay.add_image([lay.add_layer(tar_chunks(os_entries("2", kernel="k2")))], tag="2")
    one, two = f"oci:{layout}:1", f"oci:{layout}:2"
    d1, d2 = digest(one), digest(two)
    sys_ = install(tmp_path / "s", one)

    out = sys_.cfs("upgrade", "--check", "--tag", "2")
    assert out.stdout.splitlines()[0] == f"update available: {two}"
    out = sys_.cfs("upgrade", "--tag", "2", "-q")
    assert out.stdout == f"{d2}\n"
    staged = sys_.status()["status"]["staged"]["image"]["image"]
    assert staged == {"image": f"{layout}:2", "transport": "oci"}
    sys_.cfs("finalize-staged")
    # From now on :2 is followed.
    out = sys_.cfs("upgrade", "-q")
    assert out.stderr == f"no changes: {two} ({d2[:12]}…) is the booted deployment\n"
    # Back to :1: it is the rollback deployment, nothing new (bootc: skipped).
    out = sys_.cfs("upgrade", "--tag", "1", "-q")
    assert out.stderr.startswith(f"no changes: {one} ({d1[:12]}…) is the rollback deployment")
    missing = sys_.cfs("upgrade", "--tag", "3", "-q", check=False)
    one_line_error(missing, contains="3")
    bad = sys_.cfs("upgrade", "--tag", "a:b", check=False)
    one_line_error(bad, contains="invalid tag 'a:b'")


def test_status_formats(tmp_path: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp_path, refs["v1"])
    d1, d2 = digest(refs["v1"]), digest(refs["v2"])
    sys_.cfs("switch", refs["v2"], "-q", "--download-only")

    doc = json.loads(sys_.cfs("status", "--format", "json").stdout)
    assert json.loads(sys_.cfs("status", "--json").stdout) == doc
    assert bootcschema.unknown(doc) == []
    s = doc["status"]
    assert (s["type"], s["usrOverlay"]) == ("bootcHost", None)
    assert (s["staged"]["composefs"]["verity"], s["booted"]["composefs"]["verity"]) == (d2, d1)
    for version in ("0", "1"):
        again = sys_.cfs("status", "--format", "json", "--format-version", version).stdout
        assert json.loads(again) == doc

    yaml = sys_.cfs("status", "--format", "yaml").stdout
    assert yaml == sys_.cfs("status", "--yaml").stdout == sys_.cfs("status").stdout  # no tty
    assert "  type: bootcHost\n" in yaml and "  usrOverlay: null\n" in yaml

    booted = json.loads(sys_.cfs("status", "--booted", "--json").stdout)
    assert bootcschema.unknown(booted) == []
    assert booted["status"]["staged"] is None and booted["status"]["rollback"] is None
    assert booted["status"]["booted"] == s["booted"]

    human = sys_.cfs("status", "--format", "human").stdout
    assert sys_.cfs("status", "--format", "humanreadable").stdout == human
    lines = human.splitlines()
    assert lines[0] == f"  Staged image: oci:{refs['v2'].removeprefix('oci:')}"
    assert f"        Verity: {d2}" in lines
    assert "   Soft-reboot: no" not in lines
    verbose = sys_.cfs("status", "--format", "human", "-v").stdout.splitlines()
    assert "      FsVerity: Not Enforced" in verbose
    assert " Download-only: yes" in verbose
    only = sys_.cfs("status", "--format", "human", "--booted").stdout
    assert only.splitlines()[0] == f"● Booted image: oci:{refs['v1'].removeprefix('oci:')}"
    assert "Staged" not in only


PREPARE_ROOT = "[composefs]\nenabled = yes\n[etc]\ntransient = true\n"


def test_image_prepare_root_conf(tmp_path: Path) -> None:
    """An image made for ostree-era bootc: its prepare-root.conf says how /etc is mounted,
    unless it has a setup-root-conf.toml too (ours wins)."""
    ostree = {"usr/lib/ostree/prepare-root.conf": PREPARE_ROOT.encode()}
    sys_ = install(tmp_path / "a", os_image(tmp_path / "ostree-era", "1", extra=ostree))
    [d] = os.listdir(sys_.root / "state/deploy")
    # Transient /etc: nothing of /etc is kept in the deployment's state.
    assert sorted(os.listdir(sys_.root / "state/deploy" / d)) == [f"{d}.origin", "var"]
    both = os_image(tmp_path / "both", "1", extra=ostree, etc_mode="bind")
    sys_ = install(tmp_path / "b", both)
    [d] = os.listdir(sys_.root / "state/deploy")
    assert (sys_.root / "state/deploy" / d / "etc/hostname").read_text() == "testos\n"


def test_entry_flags_with_nothing_to_stage_say_so(tmp_path: Path, refs: dict[str, str]) -> None:
    """--karg, --karg-delete, --karg-style and --boot-tries change a new entry only: with
    nothing new to stage they did nothing, and said nothing about it."""
    sys_ = install(tmp_path, refs["v1"])
    before = _options(sys_)
    out = sys_.cfs("upgrade", "--karg", "quiet", "--karg-delete", "console")
    assert out.stderr.splitlines()[1:] == [
        "WARNING: --karg, --karg-delete: nothing new was staged, so no boot entry changed"
        " (they apply to a new deployment only)"
    ]
    out = sys_.cfs("switch", refs["v1"], "--boot-tries", "2")
    assert out.stderr.splitlines()[1:] == [
        "WARNING: --boot-tries: nothing new was staged, so no boot entry changed (it applies"
        " to a new deployment only)"
    ]
    assert _options(sys_) == before
    assert sys_.cfs("upgrade").stderr.count("WARNING") == 0
