"""`cfsboot image …` commands, and other transports through skopeo."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cfsboot.cli import main
from cfsboot.composefs.repository import Repository
from cfsboot.errors import CfsbootError
from cfsboot.image.importer import Progress, import_image
from cfsboot.oci import skopeo
from cfstest.ocibuild import Entry, build_layout
from cfstest.ocirepo import base_layer, layout
from setuproot.contract import HashAlg

LAYERS = [
    [
        *base_layer(),
        Entry("usr/lib/modules", "dir"),
        Entry("usr/lib/modules/6.1.0", "dir"),
        Entry("usr/lib/modules/6.1.0/vmlinuz", data=b"K" * 5000),
        Entry("usr/bin/app", data=b"a" * 1000),
    ]
]


@pytest.fixture(autouse=True)
def _skopeo_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry images here go through skopeo (its `run` faked): cfsboot's own client
    is tested in test_registry_client.py."""
    monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", "skopeo")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_list_inspect_compute_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = layout(tmp_path / "img", LAYERS)
    repo = str(tmp_path / "repo")
    rc, out, err = _run(
        capsys, "image", "import", ref, "--repo", repo, "--init", "--hash", "sha256"
    )
    assert (rc, err) == (0, "")  # not a terminal: no progress display
    digest = out.strip()
    assert len(digest) == 64 and Repository.open(repo).has_image(digest)

    rc, out, _ = _run(capsys, "image", "compute-id", ref, "--hash", "sha256")
    assert (rc, out) == (0, digest + "\n")

    rc, out, _ = _run(capsys, "image", "import", ref, "--repo", repo, "--tag", "os/v1", "--quiet")
    assert (rc, out) == (0, digest + "\n")

    rc, out, _ = _run(capsys, "image", "list", "--repo", repo, "--json")
    rows = json.loads(out)
    assert [(r["tag"], r["image"], r["reference"]) for r in rows] == [
        (ref.replace("/", "%2F"), digest, ref),
        ("os/v1", digest, ref),
    ]
    rc, out, _ = _run(capsys, "image", "list", "--repo", repo)
    assert out.splitlines()[1].startswith(f"os/v1\t{digest}\tsha256:")

    for what in (digest, "os/v1", ref):
        rc, out, _ = _run(capsys, "image", "inspect", what, "--repo", repo, "--json")
        info = json.loads(out)
        assert info["image"] == digest
        assert info["boot"]["kernels"][0]["vmlinuz"]["path"] == "/usr/lib/modules/6.1.0/vmlinuz"
        assert info["objects"] == 2 and info["objects_size"] >= 6000
        assert info["config"]["architecture"] == "amd64"
    rc, out, _ = _run(capsys, "image", "inspect", "os/v1", "--repo", repo)
    assert "kernel 6.1.0: /usr/lib/modules/6.1.0/vmlinuz initramfs -" in out

    rc, _, err = _run(capsys, "image", "inspect", "nope", "--repo", repo)
    assert (rc, err) == (1, f"cfsboot: no image tagged 'nope' in {repo}; see cfsboot image list\n")


def test_missing_repository_and_bad_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = layout(tmp_path / "img", LAYERS)
    rc, _, err = _run(capsys, "image", "import", ref, "--repo", str(tmp_path / "none"))
    assert rc == 1
    assert err.startswith(f"cfsboot: no composefs repository at {tmp_path}/none")
    Repository.init(tmp_path / "repo", insecure=True)
    rc, _, err = _run(
        capsys, "image", "import", ref, "--repo", str(tmp_path / "repo"), "--tag", "a/../b"
    )
    assert (rc, err) == (1, "cfsboot: invalid tag name 'a/../b'; use names like NAME or DIR/NAME\n")


def test_bad_reference(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "image", "compute-id", "quay.io/x:1")
    assert rc == 1
    assert err.startswith("cfsboot: image reference 'quay.io/x:1' has no known transport; use oci:")


def test_progress_on_a_terminal(tmp_path: Path) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    ref = layout(tmp_path / "img", LAYERS)
    import_image(ref, None, progress=Progress(True, out))
    text = out.getvalue()
    assert "layer 1/1 " in text and "MB/s" in text and "building the boot image" in text
    assert text.endswith("\r\x1b[K")


def test_skopeo_transports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: Sequence[str], **kw: Any) -> None:
        calls.append(list(argv))
        arch = argv[2] if argv[1] == "--override-arch" else "amd64"
        dest = argv[-1].removeprefix("oci:").rsplit(":", 1)[0]
        build_layout(Path(dest), [LAYERS[0]], tag="image", arch=arch)

    monkeypatch.setattr(skopeo, "run", fake_run)
    direct = import_image(layout(tmp_path / "img", LAYERS), None).image_digest
    via = import_image("docker://registry.example/os:1", None, arch="arm64")
    assert via.image_digest == direct
    import_image("containers-storage:localhost/os:1", None)
    import_image("dir:/srv/os", None)
    assert [c[:-1] for c in calls] == [
        ["skopeo", "--override-arch", "arm64", "copy", "--quiet", "docker://registry.example/os:1"],
        ["skopeo", "copy", "--quiet", "containers-storage:localhost/os:1"],
        ["skopeo", "copy", "--quiet", "dir:/srv/os"],
    ]
    for c in calls:
        assert c[-1].startswith("oci:/var/tmp/cfsboot-pull-") and c[-1].endswith(":image")
        assert not Path(c[-1][4:].rsplit(":", 1)[0]).exists()  # the temporary copy is gone


def test_missing_skopeo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CfsbootError) as e:
        import_image("docker://registry.example/os:1", None)
    assert str(e.value) == "skopeo not found; apt-get install skopeo"


def test_registry_without_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--src-tls-verify=false reaches a plain-HTTP registry (the VM test's local one); without
    the option skopeo decides (registries.conf `insecure = true`), and its settings get through."""
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(argv: Sequence[str], **kw: Any) -> None:
        calls.append((list(argv), dict(kw.get("env") or {})))
        build_layout(Path(argv[-1].removeprefix("oci:").rsplit(":", 1)[0]), LAYERS, tag="image")

    monkeypatch.setattr(skopeo, "run", fake_run)
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", "/etc/cfsboot-test/registries.conf")
    monkeypatch.setenv("SOME_SECRET", "not for skopeo")
    ref = "docker://localhost:5000/os:1"
    rc, out, err = _run(capsys, "image", "compute-id", ref, "--src-tls-verify=false")
    assert (rc, err) == (0, "") and len(out.strip()) == 128
    rc, _, _ = _run(capsys, "image", "compute-id", ref, "--src-tls-verify", "TRUE")
    rc, _, _ = _run(capsys, "image", "compute-id", ref)
    argvs = [argv[:-1] for argv, _ in calls]
    assert argvs == [
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://localhost:5000/os:1"],
        ["skopeo", "copy", "--quiet", "--src-tls-verify=true", "docker://localhost:5000/os:1"],
        ["skopeo", "copy", "--quiet", "docker://localhost:5000/os:1"],
    ]
    assert all(
        env == {"CONTAINERS_REGISTRIES_CONF": "/etc/cfsboot-test/registries.conf"}
        for _, env in calls
    )
    with pytest.raises(SystemExit) as exc:
        main(["image", "import", ref, "--src-tls-verify=no"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected true or false, not 'no'" in err


def test_quiet_on_a_terminal_and_default_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cfsboot.cli import build_parser

    assert build_parser().parse_args(["image", "list"]).repo == "/sysroot/composefs"
    assert build_parser().parse_args(["image", "import", "oci:x"]).repo == "/sysroot/composefs"
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    ref = layout(tmp_path / "img", LAYERS)
    repo = str(tmp_path / "repo")
    rc, out, err = _run(capsys, "image", "import", ref, "--repo", repo, "--init", "--quiet")
    assert (rc, err) == (0, "") and len(out.strip()) == 128
    rc, out, err = _run(capsys, "image", "import", ref, "--repo", repo)
    assert rc == 0 and "layer 1/1 " in err  # progress on a terminal without --quiet
    assert "0 layers read, 1 already present, 0 new objects" in err


def _served(layout_dir: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest and the raw config of the one image of a layout."""
    index = json.loads((layout_dir / "index.json").read_text())
    blobs = layout_dir / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    return manifest, (blobs / manifest["config"]["digest"][7:]).read_bytes()


def test_skopeo_skips_the_layers_the_repository_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing v2 after v1 through skopeo: config and layer list first (`skopeo inspect`),
    then an empty stand-in for the shared base layer's blob in the copy's layout, which
    skopeo leaves as it is and the import never reads; the image is the one v2 makes."""
    top = {v: [Entry("usr/lib/v", data=v.encode() * 100)] for v in ("1", "2")}
    layouts = {v: tmp_path / f"v{v}" for v in top}
    for v, path in layouts.items():
        build_layout(path, [LAYERS[0], top[v]], tag="image")
    calls: list[list[str]] = []
    stand_ins: list[tuple[str, int]] = []
    pulled_under: list[Path] = []

    class Done:
        def __init__(self, stdout: bytes) -> None:
            self.stdout = stdout

    def fake_run(argv: Sequence[str], **kw: Any) -> Done:
        calls.append(list(argv))
        served = layouts[argv[-2 if "copy" in argv else -1].rsplit(":", 1)[1]]
        manifest, config = _served(served)
        if "--config" in argv:
            return Done(config)
        if "--raw" in argv:
            return Done(json.dumps(manifest).encode())
        dest = Path(argv[-1].removeprefix("oci:").rsplit(":", 1)[0])
        pulled_under.append(dest.parent)
        for blob in sorted(dest.rglob("*")) if dest.exists() else []:
            if blob.is_file():
                stand_ins.append((blob.name, blob.stat().st_size))
        for src in served.rglob("*"):  # what skopeo does: blobs already there stay as they are
            out = dest / src.relative_to(served)
            if src.is_dir():
                out.mkdir(parents=True, exist_ok=True)
            elif not out.exists():
                out.write_bytes(src.read_bytes())
        return Done(b"")

    monkeypatch.setattr(skopeo, "run", fake_run)
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    first = import_image("docker://registry.example/os:1", repo)
    assert (first.layers_read, first.layers_reused, stand_ins) == (2, 0, [])
    calls.clear()
    second = import_image("docker://registry.example/os:2", repo)
    src = "docker://registry.example/os:2"
    assert [c[:-1] if c[1] == "copy" else c for c in calls] == [
        ["skopeo", "inspect", "--config", "--raw", src],
        ["skopeo", "inspect", "--raw", src],
        ["skopeo", "copy", "--quiet", src],
    ]
    # A fresh repository's pull: size unknown, on the disk; v2's top layer: in memory.
    assert pulled_under == [Path("/var/tmp"), Path("/run")]
    base_blob = _served(layouts["2"])[0]["layers"][0]["digest"][7:]
    assert stand_ins == [(base_blob, 0)]
    assert (second.layers_read, second.layers_reused) == (1, 1)
    direct = import_image(f"oci:{layouts['2']}:image", None, algorithm=HashAlg.SHA256)
    assert second.image_digest == direct.image_digest


def test_a_layer_list_that_does_not_pair_with_the_config_skips_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layouts = {v: tmp_path / f"v{v}" for v in ("1", "2")}
    for v, path in layouts.items():
        build_layout(path, [LAYERS[0], [Entry("usr/lib/v", data=v.encode())]], tag="image")

    class Done:
        def __init__(self, stdout: bytes) -> None:
            self.stdout = stdout

    copied_into: list[list[Path]] = []

    def fake_run(argv: Sequence[str], **kw: Any) -> Done:
        served = layouts[argv[-2 if "copy" in argv else -1].rsplit(":", 1)[1]]
        manifest, config = _served(served)
        if "--config" in argv:
            return Done(config)
        if "--raw" in argv:  # a multi-arch index: no layers, so skopeo's Layers are asked for
            return Done(json.dumps({"manifests": []}).encode())
        if "--no-tags" in argv:
            return Done(json.dumps({"Layers": [manifest["layers"][0]["digest"]]}).encode())
        dest = Path(argv[-1].removeprefix("oci:").rsplit(":", 1)[0])
        copied_into.append(sorted(dest.rglob("*")) if dest.exists() else [])
        shutil.copytree(served, dest, dirs_exist_ok=True)
        return Done(b"")

    monkeypatch.setattr(skopeo, "run", fake_run)
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    import_image("docker://registry.example/os:1", repo)
    second = import_image("docker://registry.example/os:2", repo)
    assert copied_into == [[], []]  # no stand-in: skopeo fetches every layer
    assert (second.layers_read, second.layers_reused) == (1, 1)  # the record is used all the same


def test_a_pull_goes_to_memory_when_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """/run when what is fetched takes at most a quarter of its free space, else /var/tmp."""
    import os

    from cfsboot.image import importer

    class Vfs:
        f_bavail = 1000
        f_frsize = 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Vfs())
    assert importer.pull_dir(1000 * 4096 // 4) == "/run"
    assert importer.pull_dir(1000 * 4096 // 4 + 1) == "/var/tmp"
    assert importer.pull_dir(None) == "/var/tmp"

    def missing(path: str) -> os.statvfs_result:
        raise FileNotFoundError(path)

    monkeypatch.setattr(os, "statvfs", missing)
    assert importer.pull_dir(1) == "/var/tmp"


def test_a_policy_that_asks_more_sends_a_registry_image_to_skopeo(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CFSBOOT_REGISTRY_CLIENT=auto: a signature policy (the user's, read before /etc's)
    that asks more than insecureAcceptAnything means skopeo, and --debug says why."""
    calls: list[list[str]] = []

    def fake_run(argv: Sequence[str], **kw: Any) -> None:
        calls.append(list(argv))
        build_layout(Path(argv[-1].removeprefix("oci:").rsplit(":", 1)[0]), LAYERS, tag="image")

    monkeypatch.setattr(skopeo, "run", fake_run)
    monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", "auto")
    monkeypatch.setenv("HOME", str(tmp_path))
    policy = tmp_path / ".config/containers/policy.json"
    policy.parent.mkdir(parents=True)
    policy.write_text(json.dumps({"default": [{"type": "reject"}]}))
    caplog.set_level("INFO", logger="cfsboot.image.importer")
    rc, out, _ = _run(capsys, "--debug", "image", "compute-id", "docker://reg.example/os:1")
    assert rc == 0 and len(out.strip()) == 128
    assert [c[:-1] for c in calls] == [["skopeo", "copy", "--quiet", "docker://reg.example/os:1"]]
    assert [r.getMessage() for r in caplog.records if r.name == "cfsboot.image.importer"] == [
        f"docker://reg.example/os:1: skopeo: {policy} asks more than "
        "insecureAcceptAnything for reg.example/os:1"
    ]
