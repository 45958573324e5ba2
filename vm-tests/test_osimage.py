"""The test OS as OCI images (osimage.py), the local registry (registry.py) and the
per-boot scenario choice through fw_cfg. The `vm` tests build or read the cached
images (root, the base rootfs); the others need nothing."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from types import ModuleType

import pytest

import diskimage
import images
import osimage
import oslayer
import qemu
import registry
from cfsboot.boot.uki import read_uki
from cfsboot.composefs.repository import Repository
from cfsboot.image.importer import import_image
from cfstest import cli

HERE = Path(__file__).resolve().parent

NETWORKD_INSTALL = """[Unit]
Description=Network Configuration

[Install]
WantedBy=multi-user.target
Also=systemd-networkd.socket
Alias=dbus-org.freedesktop.network1.service
"""


def test_enable_links_follow_the_install_section() -> None:
    links = oslayer.enable_links("systemd-networkd.service", NETWORKD_INSTALL)
    target = "/usr/lib/systemd/system/systemd-networkd.service"
    assert links == {
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service": target,
        "/etc/systemd/system/dbus-org.freedesktop.network1.service": target,
    }


def test_enable_links_lists_resets_and_templates() -> None:
    text = (
        "[Install]\nWantedBy=a.target b.target\nWantedBy=\nWantedBy=c.target\n"
        "RequiredBy=d.target\nDefaultInstance=x\n"
    )
    assert oslayer.enable_links("foo@.service", text) == {
        "/etc/systemd/system/c.target.wants/foo@x.service": "/usr/lib/systemd/system/foo@.service",
        "/etc/systemd/system/d.target.requires/foo@x.service": (
            "/usr/lib/systemd/system/foo@.service"
        ),
    }
    assert oslayer.enable_links("bar@.service", "[Install]\nWantedBy=a.target\n") == {}
    assert oslayer.enable_links("plain.service", "[Service]\nExecStart=/bin/true\n") == {}


def test_os_release_of_a_variant(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_ID="13"\nID=debian\n'
    )
    text = oslayer.os_release(tmp_path, osimage.VARIANTS["v2"])
    fields = dict(line.split("=", 1) for line in text.splitlines())
    assert fields["ID"] == "debian"
    assert fields["VERSION_ID"] == '"13.2"'
    assert fields["IMAGE_VERSION"] == "v2"


def test_uki_cmdline() -> None:
    digest = "ab" * 64
    assert osimage.uki_cmdline(digest) == (
        f"composefs={digest} rw console=ttyS0,115200 quiet panic=-1 systemd.gpt_auto=0"
        " root=LABEL=cfsroot"
    )


def test_cache_key_follows_the_sources(tmp_path: Path) -> None:
    with osimage.snapshot_sources() as src:
        key = osimage.cache_key("rootfs", src)
        assert osimage.cache_key("rootfs", src) == key
        assert osimage.cache_key("other-rootfs", src) != key
        cache = src / "stager/cfsboot/__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / "x.cpython-311.pyc").write_bytes(b"litter")
        assert osimage.cache_key("rootfs", src) == key
        module = src / "stager/cfsboot/__init__.py"
        module.write_text(module.read_text() + "# changed\n")
        assert osimage.cache_key("rootfs", src) != key
        assert not (src / "vm-tests/test_osimage.py").exists()  # tests are not inputs


def test_fw_cfg_option_doubles_commas() -> None:
    assert qemu.fw_cfg_option("opt/cfsboot/check", "a,b") == ("name=opt/cfsboot/check,string=a,,b")
    with pytest.raises(ValueError, match="bad fw_cfg item name"):
        qemu.fw_cfg_option("cfsboot/check", "a")


def test_qemu_argv_fw_cfg_and_network(tmp_path: Path) -> None:
    config = qemu.VmConfig(
        disks=(qemu.Disk(tmp_path / "d.raw"),),
        kernel=tmp_path / "vmlinuz",
        fw_cfg=images.fw_cfg_checks(("smoke", "testos"), poweroff=False),
        network=True,
    )
    argv = qemu.qemu_argv(config, verdict_file=tmp_path / "v.txt")
    i = argv.index("-fw_cfg")
    assert argv[i : i + 4] == [
        "-fw_cfg",
        "name=opt/cfsboot/check,string=smoke,,testos",
        "-fw_cfg",
        "name=opt/cfsboot/check.poweroff,string=0",
    ]
    assert argv[argv.index("-nic") + 1] == "user,model=virtio-net-pci"
    plain = qemu.qemu_argv(qemu.VmConfig(disks=(), kernel=tmp_path / "k"), verdict_file=Path("v"))
    assert "-fw_cfg" not in plain and "-nic" not in plain


def _guest_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cfsboot_check", HERE / "guest/cfsboot_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guest_reads_settings_from_fw_cfg_first(tmp_path: Path) -> None:
    runner = _guest_runner()
    args = runner.cmdline("root=LABEL=x cfsboot.check=smoke cfsboot.check.poweroff=0")
    by_name = str(tmp_path)
    # No fw_cfg items: the kernel command line decides.
    assert runner.scenario_names(runner.setting("check", "", args, by_name)) == ["smoke"]
    assert runner.setting("check.poweroff", "1", args, by_name) == "0"
    item = tmp_path / "opt/cfsboot/check"
    item.mkdir(parents=True)
    (item / "raw").write_bytes(b"testos,registry")
    assert runner.scenario_names(runner.setting("check", "", args, by_name)) == [
        "testos",
        "registry",
    ]
    assert runner.setting("check.poweroff", "1", {}, by_name) == "1"
    assert runner.scenario_names(" a, b ,,c ") == ["a", "b", "c"]


def test_check_unit_runs_for_fw_cfg_or_cmdline() -> None:
    unit = (HERE / "guest/cfsboot-check.service").read_text()
    assert "ConditionKernelCommandLine=|cfsboot.check" in unit
    assert (
        f"ConditionPathExists=|/sys/firmware/qemu_fw_cfg/by_name/{images.FW_CFG_CHECK}/raw" in unit
    )
    assert "After=multi-user.target modprobe@qemu_fw_cfg.service" in unit


def test_registry_config(tmp_path: Path) -> None:
    text = registry.config_yaml(tmp_path)
    assert f"rootdirectory: {tmp_path}\n" in text
    assert "addr: 127.0.0.1:5000\n" in text
    assert registry.registries_conf() == (
        '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n'
    )


# --- the built images (root, cached base rootfs) ---------------------------


@pytest.mark.vm
def test_variants_share_their_layers(test_os: dict[str, osimage.OsImage]) -> None:
    v1, v2, uki = test_os["v1"], test_os["v2"], test_os["uki"]
    assert v1.layers[0] == v2.layers[0] == uki.layers[0]
    assert len(v1.layers) == len(v2.layers) == 2
    assert uki.layers[:2] == v2.layers and len(uki.layers) == 3
    assert v1.layers[1] != v2.layers[1]
    # /boot is emptied in the boot image: the UKI layer leaves the digest as it is.
    assert uki.image_id == v2.image_id != v1.image_id
    assert osimage.compute_id(uki.ref) == v2.image_id
    sizes = {
        name: [f"{layer['size'] / 1e6:.1f} MB" for layer in image.layers]
        for name, image in test_os.items()
    }
    print(f"\nlayer sizes: {sizes}")


@pytest.mark.vm
def test_v1_and_v2_differ_where_intended(
    test_os: dict[str, osimage.OsImage], tmp_path: Path
) -> None:
    trees = {v: osimage.extract_layer(test_os[v].layout, v, 1, tmp_path / v) for v in ("v1", "v2")}
    differ: set[str] = set()

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        for name in (*cmp.left_only, *cmp.right_only):
            differ.add(f"{prefix}{name}")
        # By content: the variants' files have the same sizes and mtimes.
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, False)
        differ.update(f"{prefix}{name}" for name in (*mismatch, *errors))
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(trees["v1"], trees["v2"]), "/")
    kver = test_os["v1"].kernel
    # dpkg's log has the time of the install in it.
    differ = {p for p in differ if not p.startswith("/var/log/")}
    # The initramfs differs too: dracut writes the image's os-release into it.
    assert differ == {
        "/etc/cfsboot-test/version",
        "/etc/cfsboot-test/only-v1",
        "/etc/cfsboot-test/only-v2",
        "/usr/lib/os-release",
        "/usr/share/cfsboot-test/version",
        f"/usr/lib/modules/{kver}/initramfs.img",
    }
    tree = trees["v1"]
    assert (tree / "etc/fstab").read_text().startswith("#")
    launcher = tree / "usr/bin/cfsboot"
    assert os.access(launcher, os.X_OK) and "cfsboot.cli" in launcher.read_text()
    site = tree / "usr/lib/python3/dist-packages"
    assert (site / "cfsboot/cli.py").is_file()
    assert (site / "setuproot/contract.py").is_file()
    # Byte-compiled by the package's postinst (py3compile): a read-only /usr never compiles.
    assert list((site / "cfsboot/__pycache__").glob("cli.cpython-3*.pyc"))
    assert (tree / "usr/lib/cfsboot/freeze.py").is_file()
    assert (tree / "usr/lib/dracut/modules.d/90cfsboot/module-setup.sh").is_file()
    assert (tree / "var/lib/dpkg/info/cfsboot.list").is_file()
    conf = tree / "etc/containers/registries.conf.d/50-cfsboot-test-registry.conf"
    assert 'location = "10.0.2.2:5000"' in conf.read_text()
    assert os.readlink(tree / "etc/systemd/system/getty-static.service") == "/dev/null"
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    assert {p.name for p in wants.iterdir()} >= {
        "cfsboot-check.service",
        "systemd-networkd.service",
    }
    for unit in sorted((oslayer.REPO / "stager/systemd").glob("*.service")):
        assert (tree / "usr/lib/systemd/system" / unit.name).read_bytes() == unit.read_bytes()
    shadow = (tree / "etc/shadow").read_text().splitlines()
    assert any(line.startswith("root::") for line in shadow)
    files, _ = diskimage.check_unit_files()
    for path in files:
        assert (tree / path.lstrip("/")).is_file(), path


@pytest.mark.vm
def test_import_v1_then_v2_reads_one_layer(
    test_os: dict[str, osimage.OsImage], tmp_path: Path
) -> None:
    repo_path = tmp_path / "repo"
    v1, v2 = test_os["v1"], test_os["v2"]
    repo = Repository.init(repo_path, insecure=True)  # the host has no fs-verity
    started = time.monotonic()
    first = import_image(v1.ref, repo, tag="v1")
    v1_seconds = time.monotonic() - started
    assert (first.layers_read, first.layers_reused) == (2, 0)
    assert first.image_digest == v1.image_id
    started = time.monotonic()
    second = import_image(v2.ref, repo, tag="v2")
    v2_seconds = time.monotonic() - started
    assert (second.layers_read, second.layers_reused) == (1, 1)
    assert second.image_digest == v2.image_id

    proc = cli.run("image", "inspect", "v1", "--repo", repo_path, "--json")
    info = json.loads(proc.stdout)
    kver = v1.kernel
    assert [k["version"] for k in info["boot"]["kernels"]] == [kver]
    kernel = info["boot"]["kernels"][0]
    assert kernel["vmlinuz"]["path"] == f"/usr/lib/modules/{kver}/vmlinuz"
    assert kernel["initramfs"]["path"] == f"/usr/lib/modules/{kver}/initramfs.img"
    assert info["boot"]["ukis"] == []
    assert [k["path"] for k in info["boot"]["kargs"]] == [oslayer.KARGS_FILE]
    print(
        f"\nimport v1: {v1_seconds:.1f} s ({first.objects_written} objects, "
        f"{first.bytes_written / 1e6:.0f} MB); v2 after v1: {v2_seconds:.1f} s "
        f"({second.objects_written} objects, {second.bytes_written / 1e6:.1f} MB)"
    )


@pytest.mark.vm
def test_uki_seals_the_digest_of_its_image(
    test_os: dict[str, osimage.OsImage], tmp_path: Path
) -> None:
    image = test_os["uki"]
    uki = read_uki(osimage.extract_uki(image, tmp_path))
    [karg] = uki.composefs_kargs()
    assert karg.digest == osimage.compute_id(image.ref) == image.image_id
    assert uki.cmdline is not None and f"root=LABEL={images.ROOT_LABEL}" in uki.cmdline
    assert uki.uname == image.kernel
    assert 'VERSION_ID="13.2"' in (uki.osrel or "")
    assert {".linux", ".initrd", ".cmdline", ".osrel"} <= {s.name for s in uki.sections}


@pytest.mark.vm
def test_registry_round_trip(
    test_os: dict[str, osimage.OsImage], local_registry: registry.Registry, registry_v2: str
) -> None:
    v2 = test_os["v2"]
    # Pushed as it is: the registry serves the layout's own manifest.
    assert registry_v2 == v2.manifest_digest == local_registry.manifest_digest("v2")
    ref = local_registry.ref("v2")
    started = time.monotonic()
    assert osimage.compute_id(ref, "--src-tls-verify=false") == v2.image_id
    seconds = time.monotonic() - started
    # Or told by registries.conf, as the guest is (bookworm's skopeo reads $HOME's drop-ins).
    assert osimage.compute_id(ref, env=local_registry.client_env()) == v2.image_id
    print(f"\ncompute-id through the registry: {seconds:.1f} s")


@pytest.mark.vm
def test_fw_cfg_picks_the_scenarios(
    test_os: dict[str, osimage.OsImage],
    local_registry: registry.Registry,
    registry_v2: str,
    results_dir: Path,
    tmp_path: Path,
) -> None:
    """One boot of the v1 tree on ext4 (its own kernel and initramfs), the scenarios named
    only through fw_cfg: the runner finds them there, the stager runs on the guest's
    python3, DHCP works and skopeo in the guest reads the host's registry."""
    guest = osimage.ext4_guest(test_os["v1"], tmp_path / "guest")
    checks = ("testos", "registry")
    config = images.direct_config(
        guest, tmp_path / "root.qcow2", (), fw_cfg=checks, network=True, timeout=300
    )
    assert "cfsboot.check" not in config.append
    result = qemu.boot(config, results_dir)
    shutil.rmtree(tmp_path / "guest")
    config.disks[0].path.unlink()
    qemu.check_passed(result, checks)
    assert result.report.begun == checks
    data = result.report.data
    assert data["testos"]["variant"] == "v1"
    assert data["testos"]["version_id"] == "13.1"
    assert data["testos"]["python"] == "3.13"
    assert data["testos"]["address"] == "10.0.2.15"
    assert data["registry"]["digest"] == registry_v2
    print(f"\nfw_cfg boot: QEMU wall {result.wall_seconds:.1f} s, log {result.serial_log}")
