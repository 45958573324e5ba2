"""Deployments that follow a registry reference: Debian's docker-registry for real, read by
cfsboot's own client (oci/registry.py) and by skopeo (CFSBOOT_REGISTRY_CLIENT picks).

`switch` and `upgrade` pull the image (streamed by cfsboot's client, or `skopeo copy`);
`upgrade --check` asks the registry for the manifest and config only and compares the
config digest with the one recorded at import. The two clients must give the same
repository. The registry listens on a port of its own so that a VM test's registry
(port 5000) can run at the same time.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from cfsboot.image.importer import fetch_config, import_image
from cfsboot.image.info import image_stream
from cfstest import REPO_ROOT, cli
from cfstest.cli import run as cfsboot
from cfstest.gates import missing_capability
from cfstest.ocibuild import Entry, build_layout
from cfstest.ocirepo import make_repo, snapshot
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


@pytest.fixture(params=["native", "skopeo"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which registry client cfsboot uses, in this process and in the CLI it runs."""
    mode = str(request.param)
    monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", mode)
    monkeypatch.setitem(cli.ENV, "CFSBOOT_REGISTRY_CLIENT", mode)
    return mode


def _config_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(blob.read_text())
    return str(manifest["config"]["digest"])


def test_upgrade_check_reads_only_the_config(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: str
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
        line = cli.one_line_error(bad)
        if client == "native":
            assert line == (
                f"cfsboot: {missing}: manifest nosuchtag not found in registry {reg.address}"
            )
        else:
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
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: str
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
        tag = f"shared{version}-{client}"
        build_layout(layouts[version], [base, os_entries(version)], tag=tag)
        reg.push(layouts[version], tag)
    blobs = {v: [layer["digest"] for layer in _manifest(layouts[v])["layers"]] for v in ("1", "2")}
    assert blobs["1"][0] == blobs["2"][0] and blobs["1"][1] != blobs["2"][1]
    config2 = _manifest(layouts["2"])["config"]["digest"]

    repo = make_repo(tmp_path / "repo")
    log = reg.workdir / "registry.log"
    start = log.stat().st_size
    import_image(reg.ref(f"shared1-{client}"), repo)
    assert set(_fetched_blobs(log, start)) >= set(blobs["1"])  # a fresh repository: every layer

    start = log.stat().st_size
    result = import_image(reg.ref(f"shared2-{client}"), repo)
    assert (result.layers_read, result.layers_reused) == (1, 1)
    fetched = _fetched_blobs(log, start)
    assert blobs["2"][0] not in fetched
    assert blobs["2"][1] in fetched
    assert set(fetched) <= {blobs["2"][1], config2}
    if client == "native":
        assert fetched == [config2, blobs["2"][1]]  # each once, nothing asked twice
    full = import_image(f"oci:{layouts['2']}:{tag}", None, algorithm=repo.algorithm)
    assert result.image_digest == full.image_digest


def _manifest(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    doc: dict[str, Any] = json.loads(blob.read_text())
    return doc


def _skopeo_push_v2s2(reg: Registry, layout: Path, tag: str) -> None:
    """Push an OCI layout as a Docker schema 2 manifest (skopeo converts it)."""
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2"]
    argv += [f"oci:{layout}:same", reg.ref(tag)]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def test_native_and_skopeo_imports_make_the_same_repository(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same image imported by either client: the same files in the repository (records,
    manifest, config, boot image, its ImageInfo, tag), so the same origin and status. A
    Docker schema 2 image is the exception: skopeo converts it to OCI (another manifest and
    config digest), cfsboot keeps both as served, which is what `upgrade --check` sees."""
    home = reg.client_env()["HOME"]
    monkeypatch.setenv("HOME", home)
    v1 = tmp_path / "v1"
    build_layout(v1, [os_entries("1")], tag="same")
    reg.push(v1, "same")
    _skopeo_push_v2s2(reg, v1, "same-v2s2")
    results = {}
    for mode in ("native", "skopeo"):
        monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", mode)
        repo = make_repo(tmp_path / f"repo-{mode}")
        oci = import_image(reg.ref("same"), repo, tag="t")
        files = snapshot(repo.path)
        info = repo.read_stream(image_stream(oci.image_digest))
        v2s2 = import_image(reg.ref("same-v2s2"), repo, tag="t2")
        results[mode] = (oci, files, info, v2s2)
    (oci_n, files_n, info_n, v2s2_n), (oci_s, files_s, info_s, v2s2_s) = results.values()
    assert oci_n.manifest_digest == oci_s.manifest_digest == reg.manifest_digest("same")
    assert (oci_n.image_digest, oci_n.config_digest) == (oci_s.image_digest, oci_s.config_digest)
    assert oci_n.layers == oci_s.layers
    assert files_n == files_s
    assert info_n == info_s
    # A deployment imported through skopeo sees no update when cfsboot's client checks.
    monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", "native")
    assert fetch_config(reg.ref("same"))[0] == oci_s.config_digest

    assert v2s2_n.image_digest == v2s2_s.image_digest == oci_n.image_digest
    # skopeo's copy into an OCI layout converts a schema 2 image to OCI: another manifest
    # and another config digest (the config written again); cfsboot keeps both as served.
    assert v2s2_n.config_digest == oci_n.config_digest != v2s2_s.config_digest
    assert v2s2_n.manifest_digest == reg.manifest_digest("same-v2s2") != v2s2_s.manifest_digest
    assert v2s2_s.manifest_digest != oci_n.manifest_digest
    assert v2s2_n.image_digest == v2s2_s.image_digest == oci_n.image_digest
    # `upgrade --check` asks for the config as served, whichever client asks: it matches
    # what the native import recorded (a skopeo import of a schema 2 image it never did).
    for mode in ("native", "skopeo"):
        monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", mode)
        assert fetch_config(reg.ref("same-v2s2"))[0] == v2s2_n.config_digest
