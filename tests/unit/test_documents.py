"""The JSON documents cfsboot reads and writes: parsed and checked where they come in.

The image infos in tests/data were written by the code before ImageInfo existed
(ImportResult.info() at commit 6e561c9): existing repositories hold exactly
these bytes, so they must read back, and write back byte for byte.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from cfsboot.cli import main
from cfsboot.deploy import statusdoc as status
from cfsboot.deploy.origin import Origin, OriginError
from cfsboot.deploy.sysroot import StagedDeployment
from cfsboot.errors import CfsbootError
from cfsboot.image.importer import import_image
from cfsboot.image.info import (
    ImageInfo,
    LayerInfo,
    image_stream,
    load_image_info,
    read_image_info,
)
from cfsboot.image.transform import XattrFilter
from cfsboot.jsondoc import DocumentError
from cfsboot.oci.documents import Descriptor, ImageConfig, Index, Manifest
from cfsboot.oci.image import open_image
from cfsboot.oci.reference import parse
from cfstest.ocibuild import Entry
from cfstest.ocirepo import base_layer, layout, make_repo
from conftest import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data"
FULL = DATA / "image-info-format1.json"
A, C = "sha256:" + "a1" * 32, "sha256:" + "c3" * 32


@pytest.mark.parametrize("name", ["image-info-format1.json", "image-info-format1-bare.json"])
def test_an_image_info_written_before_reads_and_writes_back_the_same(name: str) -> None:
    data = (DATA / name).read_bytes()
    assert ImageInfo.from_bytes(data, name).to_bytes() == data


def test_an_image_info_reads_every_field() -> None:
    info = ImageInfo.from_bytes(FULL.read_bytes(), "info")
    assert (info.reference, info.tag, info.manifest_digest) == (
        "oci:/srv/os:1",
        "oci:%2Fsrv%2Fos:1",
        A,
    )
    assert info.layers[1] == LayerInfo(None, None, "application/vnd.oci.image.layer.v1.tar", C)
    assert info.xattr_filter is XattrFilter.KEEP_USER and info.erofs_version == 1
    k1, k2 = info.boot.kernels
    assert k1.initramfs is not None and k1.initramfs.digest == "6f" * 64
    assert k2.version == "6.1.0" and k2.initramfs is None
    assert info.boot.ukis[0].path == "/boot/EFI/Linux/os.efi"
    assert info.boot.kargs[1].content == b"\xe9\x00\xff" and info.boot.kargs[1].digest is None


def _mutated(change: Callable[[dict[str, Any]], object]) -> bytes:
    doc = json.loads(FULL.read_bytes())
    change(doc)
    return json.dumps(doc).encode()


BAD_INFOS: dict[str, tuple[bytes, str]] = {
    "not-json": (b"{", "info is not valid JSON"),
    "a-list": (b"[]", "info is not a JSON object"),
    "newer-format": (_mutated(lambda d: d.update(format=2)), "info: format 2 is unknown"),
    "no-config-digest": (_mutated(lambda d: d.pop("config_digest")), "config_digest is missing"),
    "bad-digest": (
        _mutated(lambda d: d.update(manifest_digest="sha256:xyz")),
        "info: manifest_digest has an invalid digest 'sha256:xyz'",
    ),
    "size-as-text": (
        _mutated(lambda d: d["layers"][0].update(size="1234")),
        r"info: layers\[0\]: size is not an integer \('1234'\)",
    ),
    "kernels-not-a-list": (
        _mutated(lambda d: d["boot"].update(kernels={})),
        "info: boot: kernels is not a list",
    ),
    "content-not-latin-1": (
        _mutated(lambda d: d["boot"]["kargs"][0].update(content="\u0100")),
        r"info: boot: kargs\[0\]: content is not latin-1 text",
    ),
    "unknown-xattr-filter": (
        _mutated(lambda d: d.update(xattr_filter="all")),
        "info: unknown xattr_filter 'all'",
    ),
    "no-path": (
        _mutated(lambda d: d["boot"]["ukis"][0].pop("path")),
        r"info: boot: ukis\[0\]: path is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INFOS))
def test_a_bad_image_info_is_one_line_naming_the_field(case: str) -> None:
    data, message = BAD_INFOS[case]
    with pytest.raises(DocumentError, match=message) as e:
        ImageInfo.from_bytes(data, "info")
    assert "\n" not in str(e.value)


def _image(tmp_path: Path) -> str:
    kernel = [Entry("usr/lib/modules", "dir"), Entry("usr/lib/modules/6.1", "dir")]
    kernel += [Entry("usr/lib/modules/6.1/vmlinuz", data=b"k" * 300)]
    kernel += [Entry("usr/lib/modules/6.1/initramfs.img", data=b"i" * 40)]
    return layout(tmp_path / "img", [base_layer(), kernel])


def test_an_import_records_what_it_imported(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    ref = _image(tmp_path)
    result = import_image(ref, repo, tag="t")
    info = load_image_info(repo, result.image_digest)
    assert info is not None
    assert (info.reference, info.tag, info.config_digest) == (ref, "t", result.config_digest)
    assert info.manifest_digest == result.manifest_digest
    assert [(x.digest, x.size, x.diff_id) for x in info.layers] == [
        (x.digest, x.size, x.diff_id) for x in result.layers
    ]
    assert info.boot == result.boot and info.boot.kernels[0].version == "6.1"
    assert load_image_info(repo, "0" * 64) is None


def test_a_damaged_record_warns_in_status_and_fails_inspect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "repo")
    digest = import_image(_image(tmp_path), repo, tag="t").image_digest
    repo.write_stream(image_stream(digest), b'{"format": 1}')
    with caplog.at_level(logging.WARNING):
        assert read_image_info(repo, digest) is None
    assert f"the import record of image {digest}: reference is missing" in caplog.text
    assert main(["image", "inspect", "t", "--repo", str(repo.path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"cfsboot: the import record of image {digest}: reference is missing\n"


# --- OCI documents ----------------------------------------------------------------------------

DESC = {"mediaType": "m", "digest": A, "size": 10}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": True}, "absurd size True"),
        ({"size": 11}, r"absurd size 11 \(limit 10\)"),
        ({"digest": "sha256:AB"}, "has an invalid digest 'sha256:AB'"),
        ({"annotations": {"a": 1}}, "manifest descriptor: annotations: a is not a string"),
        ({"annotations": []}, "annotations is not an object"),
        ({"platform": {"os": "linux"}}, "platform: architecture is missing"),
        ({"mediaType": 5}, "mediaType is not a string"),
    ],
)
def test_a_bad_descriptor_is_one_line(change: dict[str, object], message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        Descriptor.parse({**DESC, **change}, "manifest", 10)


def test_a_descriptor_reads_platform_and_annotations() -> None:
    d = Descriptor.parse(
        {
            **DESC,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        },
        "manifest",
        10,
    )
    assert d.platform is not None and d.platform.runs("arm64") and not d.platform.runs("amd64")
    assert d.ref_name == "v1" and d.blob_name == f"blobs/sha256/{'a1' * 32}"


def test_index_manifest_and_config_are_checked() -> None:
    with pytest.raises(DocumentError, match="index.json lists no images"):
        Index.parse(b'{"manifests": {}}', "index.json", 10)
    with pytest.raises(DocumentError, match="malformed descriptor in index.json"):
        Index.parse(b'{"manifests": [1]}', "index.json", 10)
    with pytest.raises(DocumentError, match="manifest has no config"):
        Manifest.parse(b'{"layers": []}', config_limit=10, layer_limit=10)
    m = Manifest.parse(
        json.dumps({"config": DESC, "layers": [DESC], "annotations": {"k": "v"}}).encode(),
        config_limit=10,
        layer_limit=10,
    )
    assert m.layers[0].digest == A and m.annotations == {"k": "v"}
    config = ImageConfig.parse(
        json.dumps(
            {
                "architecture": "amd64",
                "created": "2024-01-01T00:00:00Z",
                "config": {"Labels": {"org.opencontainers.image.version": "1"}},
                "rootfs": {"type": "layers", "diff_ids": [C]},
            }
        ).encode()
    )
    assert config.layer_ids() == (C,) and config.labels["org.opencontainers.image.version"] == "1"
    assert ImageConfig.parse(b'{"config": {"Labels": null}}').labels == {}
    with pytest.raises(DocumentError, match="config has no rootfs.diff_ids"):
        ImageConfig.parse(b"{}").layer_ids()
    with pytest.raises(DocumentError, match="config: config: Labels: v is not a string"):
        ImageConfig.parse(b'{"config": {"Labels": {"v": 1}}}')
    with pytest.raises(DocumentError, match="config diff_id has an invalid digest"):
        ImageConfig.parse(b'{"rootfs": {"diff_ids": ["x"]}}')


def test_a_malformed_index_entry_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    ref = _image(tmp_path)
    index_path = tmp_path / "img" / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"][0]["annotations"] = ["not", "an", "object"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CfsbootError, match="annotations is not an object"):
        open_image(parse(ref))


def test_a_docker_archive_manifest_with_odd_layers_is_malformed(tmp_path: Path) -> None:
    import tarfile

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"Config": "c.json", "Layers": [1]}]))
    with tarfile.open(tmp_path / "d.tar", "w") as tf:
        tf.add(manifest, "manifest.json")
    with pytest.raises(CfsbootError, match=r"manifest.json in .*d.tar is malformed"):
        open_image(parse(f"docker-archive:{tmp_path}/d.tar"))


# --- the staged marker and the origin ---------------------------------------------------------

D = "ab" * 64


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        (b'{"finalization_locked": true}', "m: depl_id is missing"),
        (f'{{"depl_id": "{D}", "finalization_locked": "yes"}}'.encode(), "is not true or false"),
        (b'{"depl_id": 7}', "depl_id is not a string"),
        (b"[1]", "m is not a JSON object"),
    ],
)
def test_a_bad_staged_marker_is_ignored_with_a_warning(
    data: bytes, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert StagedDeployment.from_json(data, name="m") is None
    assert warning in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[boot]\ndigest = c0ffee\n", r"x.origin: \[boot\] digest 'c0ffee' is not a sha256 hex"),
        ("[image]\nmanifest_digest = c0ffee\n", r"\[image\] manifest_digest 'c0ffee' is not a"),
    ],
)
def test_an_origin_with_a_bad_digest_is_one_line(extra: str, message: str) -> None:
    text = "[origin]\ncontainer-image-reference = oci:/x\n" + extra
    with pytest.raises(OriginError, match=message) as e:
        Origin.parse(text, name="x.origin")
    assert "\n" not in str(e.value)


# --- status: bootc's host-v1 schema -----------------------------------------------------------

# Property names (all, then the required ones) of bootc's docs/src/host-v1.schema.json
# (bootc-dev/bootc at 3359470b), for the definitions `cfsboot status` fills in.
HOST_V1: dict[str, tuple[set[str], set[str]]] = {
    "Host": ({"apiVersion", "kind", "metadata", "spec", "status"}, {"apiVersion", "kind"}),
    "ObjectMeta": ({"annotations", "labels", "name", "namespace"}, set()),
    "HostSpec": ({"bootOrder", "image"}, set()),
    "HostStatus": (
        {
            "booted",
            "otherDeployments",
            "rollback",
            "rollbackQueued",
            "staged",
            "storage",
            "type",
            "usrOverlay",
        },
        set(),
    ),
    "BootEntry": (
        {
            "cachedUpdate",
            "composefs",
            "downloadOnly",
            "image",
            "incompatible",
            "ostree",
            "pinned",
            "softRebootCapable",
            "store",
        },
        {"incompatible", "pinned"},
    ),
    "BootEntryComposefs": (
        {"bootDigest", "bootType", "bootloader", "missingVerityAllowed", "verity"},
        {"verity", "bootType", "bootloader", "missingVerityAllowed"},
    ),
    "ImageStatus": (
        {"architecture", "image", "imageDigest", "timestamp", "version"},
        {"image", "imageDigest", "architecture"},
    ),
    "ImageReference": ({"image", "signature", "transport"}, {"image", "transport"}),
    "FilesystemOverlay": ({"accessMode", "persistence"}, {"accessMode", "persistence"}),
}
OURS: dict[str, Any] = {
    "Host": status.BootcHost,
    "ObjectMeta": status.ObjectMeta,
    "HostSpec": status.HostSpec,
    "HostStatus": status.HostStatus,
    "BootEntry": status.BootEntry,
    "BootEntryComposefs": status.BootEntryComposefs,
    "ImageStatus": status.ImageStatus,
    "ImageReference": status.ImageReference,
    "FilesystemOverlay": status.FilesystemOverlay,
}


# bootc's schema forbids no extra property (no `additionalProperties: false` on these):
# cfsboot's own fields live in one `cfsboot` object, a name bootc does not use.
EXTENSION = "cfsboot"
EXTENDED = {"BootEntry", "HostStatus"}


@pytest.mark.parametrize("name", sorted(HOST_V1))
def test_status_fields_are_bootcs(name: str) -> None:
    properties, required = HOST_V1[name]
    ours = OURS[name]
    keys = ours.__required_keys__ | ours.__optional_keys__
    assert EXTENSION not in properties
    assert keys - {EXTENSION} <= properties
    assert (EXTENSION in keys) == (name in EXTENDED)
    assert required <= ours.__required_keys__


def test_status_enumerations_are_bootcs() -> None:
    hints = get_type_hints(status.BootEntryComposefs)
    assert set(get_args(hints["bootType"])) <= {"Bls", "Uki"}
    assert set(get_args(hints["bootloader"])) <= {"grub", "systemd", "none"}
    assert set(get_args(get_type_hints(status.HostSpec)["bootOrder"])) <= {"default", "rollback"}
    host = get_type_hints(status.HostStatus)
    assert set(get_args(get_args(host["type"])[0])) == {"bootcHost"}  # HostType | None
    overlay = get_type_hints(status.FilesystemOverlay)
    assert set(get_args(overlay["accessMode"])) == {"readOnly", "readWrite"}
    assert set(get_args(overlay["persistence"])) == {"transient", "persistent"}
