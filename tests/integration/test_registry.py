"""Deployments that follow a registry reference: skopeo and Debian's docker-registry for real.

`switch` and `upgrade` pull through `skopeo copy`; `upgrade --check` asks the registry
for the manifest and config only (`skopeo inspect --config --raw`) and compares the
config digest with the one recorded at import. The registry listens on a port of its
own so that a VM test's registry (port 5000) can run at the same time.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from cfsboot.image.importer import fetch_config, import_image
from cfstest import REPO_ROOT, cli
from cfstest.cli import run as cfsboot
from cfstest.gates import missing_capability
from cfstest.ocibuild import Entry, build_layout
from cfstest.ocirepo import make_repo
from cfstest.osimages import os_entries, os_image

if TYPE_CHECKING:  # loaded from vm-tests/ at run time (_registry_module)
    from registry import Registry

pytestmark = [pytest.mark.integration]
PORT = 5055


def _registry_module() -> ModuleType:
    if "registry" in sys.modules:  # vm-tests' conftest got there first
        return sys.modules["registry"]
    spec = importlib.util.spec_from_file_location("registry", REPO_ROOT / "vm-tests/registry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["registry"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = _registry_module()
    for tool in ("skopeo", registry.BINARY):
        if shutil.which(tool) is None:
            missing_capability(f"{tool} not installed (run `make setup`)")
    workdir = tmp_path_factory.mktemp("registry")
    with registry.running(workdir, port=PORT, access_log=True) as running:
        yield running


def _config_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(blob.read_text())
    return str(manifest["config"]["digest"])


def test_upgrade_check_reads_only_the_config(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = reg.client_env()["HOME"]
    monkeypatch.setitem(cli.ENV, "HOME", home)
    monkeypatch.setenv("HOME", home)
    v1 = tmp_path / "v1"
    v2 = tmp_path / "v2"
    os_image(v1, "1")
    os_image(v2, "2")
    reg.push(v1, "latest")
    ref = reg.ref("latest")

    # The registry hands out the config the layout holds, byte for byte.
    digest, config = fetch_config(ref)
    assert digest == _config_digest(v1)
    assert config.diff_ids
    d1 = import_image(ref, None).image_digest
    assert d1 == import_image(f"oci:{v1}:latest", None).image_digest

    root, esp, run = tmp_path / "root", tmp_path / "esp", tmp_path / "run"
    root.mkdir()
    esp.mkdir()
    cfsboot("install", "to-filesystem", ref, root, "--esp", esp, "-q")
    opts = ("--sysroot", root, "--esp", esp, "--run-dir", run)
    none = cfsboot("upgrade", "--check", *opts, check=False)
    assert none.returncode == 77  # cfsboot.deploy.updates.NO_UPDATE
    assert none.stdout.startswith(f"no update: {ref} still names the deployed image")

    # A new version under the same tag: the check sees it, fetches it to say what it
    # changes and records it as cachedUpdate, and stages nothing.
    reg.push(v2, "latest")
    lines = cfsboot("upgrade", "--check", *opts).stdout.splitlines()
    assert lines[:2] == [f"update available: {ref}", f"  config {_config_digest(v2)}"]
    # os-release, /usr/share/version and /etc/os-release-version differ (cfstest.osimages).
    assert "files: 0 added, 0 removed, 3 changed" in lines
    assert not (run / "composefs/staged-deployment").exists()
    booted = json.loads(cfsboot("status", "--json", *opts).stdout)["status"]["booted"]
    assert booted["cachedUpdate"]["imageDigest"] == reg.manifest_digest("latest")

    cfsboot("upgrade", "-q", *opts)
    cfsboot("finalize-staged", *opts)
    image = json.loads(cfsboot("status", "--json", *opts).stdout)["status"]["booted"]["image"]
    assert image["image"]["transport"] == "registry"
    assert image["imageDigest"] == reg.manifest_digest("latest")
    assert cfsboot("upgrade", "--check", *opts, check=False).stdout.startswith("no update")

    # A tag the registry does not know: one line on stderr, non-zero, nothing staged.
    missing = reg.ref("nosuchtag")
    for bad in (
        cfsboot("switch", missing, "-q", *opts, check=False),
        cfsboot("image", "compute-id", missing, check=False),
    ):
        cli.one_line_error(bad)
        assert "skopeo" in bad.stderr
    assert not (run / "composefs/staged-deployment").exists()


def test_bare_names_transport_and_upgrade_tag(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bootc's forms against a registry: `switch NAME[:TAG]` and `--transport registry`,
    the same image under another tag refused (test-43), `upgrade --tag` (test-39)."""
    home = reg.client_env()["HOME"]
    monkeypatch.setitem(cli.ENV, "HOME", home)
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    layout = build_layout(v1, [os_entries("1")], tag="v1")
    layout.add_to_index(layout.index[0], "same")  # the same image, another name
    build_layout(v2, [os_entries("2", kernel="k2")], tag="v2")
    for path, tag in ((v1, "v1"), (v1, "same"), (v2, "v2")):
        reg.push(path, tag)
    name = reg.ref("v1").removeprefix("docker://").rsplit(":", 1)[0]  # HOST:PORT/REPO
    d1 = import_image(f"oci:{v1}:v1", None).image_digest
    d2 = import_image(f"oci:{v2}:v2", None).image_digest

    root, esp, run = tmp_path / "root", tmp_path / "esp", tmp_path / "run"
    root.mkdir()
    esp.mkdir()
    cfsboot("install", "to-filesystem", reg.ref("v1"), root, "--esp", esp, "-q")
    opts = ("--sysroot", root, "--esp", esp, "--run-dir", run)

    # A bare name is a registry image: the booted reference, no change.
    out = cfsboot("switch", f"{name}:v1", *opts)
    assert out.stderr.startswith(f"image specification is unchanged: {reg.ref('v1')} is what")
    out = cfsboot("switch", "--transport", "registry", f"{name}:v1", *opts)
    assert out.stderr.startswith("image specification is unchanged")
    # Another tag of the same bytes: the booted composefs digest, refused.
    same = cfsboot("switch", f"{name}:same", "-q", *opts, check=False)
    assert cli.one_line_error(same).startswith(
        f"cfsboot: {reg.ref('same')} has the same composefs digest ({d1[:12]}…) as the booted"
    )
    assert not (run / "composefs/staged-deployment").exists()

    check = cfsboot("upgrade", "--check", "--tag", "v2", *opts).stdout
    assert check.splitlines()[0] == f"update available: {reg.ref('v2')}"
    assert cfsboot("upgrade", "--tag", "v2", "-q", *opts).stdout == f"{d2}\n"
    staged = json.loads(cfsboot("status", "--json", *opts).stdout)["status"]["staged"]
    assert staged["image"]["image"] == {"image": f"{name}:v2", "transport": "registry"}
    cfsboot("finalize-staged", *opts)
    out = cfsboot("upgrade", "-q", *opts)
    assert out.stderr == f"no changes: {reg.ref('v2')} ({d2[:12]}…) is the booted deployment\n"


def _fetched_blobs(log: Path, start: int) -> list[str]:
    """The blob digests the registry served (GET, 200) since byte `start` of its access log."""
    out = []
    with open(log, "rb") as f:
        f.seek(start)
        for line in f.read().decode(errors="replace").splitlines():
            if '"GET /v2/' in line and "/blobs/" in line and '" 200 ' in line:
                out.append(line.split("/blobs/", 1)[1].split()[0])
    return out


def test_an_import_fetches_only_the_layers_the_repository_lacks(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2 shares v1's base layer: importing v2 after v1 fetches its config and its top layer
    (skopeo finds the base blob's stand-in and skips it), and the image is the one a full
    import of v2 makes."""
    home = reg.client_env()["HOME"]
    monkeypatch.setenv("HOME", home)
    base = [Entry("usr", "dir"), Entry("usr/share", "dir")] + [
        Entry(f"usr/share/f{i}", data=bytes([i]) * 5000) for i in range(20)
    ]
    layouts = {}
    for version in ("1", "2"):
        layouts[version] = tmp_path / f"v{version}"
        build_layout(layouts[version], [base, os_entries(version)], tag=f"shared{version}")
        reg.push(layouts[version], f"shared{version}")
    blobs = {v: [layer["digest"] for layer in _manifest(layouts[v])["layers"]] for v in ("1", "2")}
    assert blobs["1"][0] == blobs["2"][0] and blobs["1"][1] != blobs["2"][1]
    config2 = _manifest(layouts["2"])["config"]["digest"]

    repo = make_repo(tmp_path / "repo")
    log = reg.workdir / "registry.log"
    start = log.stat().st_size
    import_image(reg.ref("shared1"), repo)
    assert set(_fetched_blobs(log, start)) >= set(blobs["1"])  # a fresh repository: every layer

    start = log.stat().st_size
    result = import_image(reg.ref("shared2"), repo)
    assert (result.layers_read, result.layers_reused) == (1, 1)
    fetched = _fetched_blobs(log, start)
    assert blobs["2"][0] not in fetched
    assert blobs["2"][1] in fetched
    assert set(fetched) <= {blobs["2"][1], config2}
    full = import_image(f"oci:{layouts['2']}:shared2", None, algorithm=repo.algorithm)
    assert result.image_digest == full.image_digest


def _manifest(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    doc: dict[str, Any] = json.loads(blob.read_text())
    return doc
