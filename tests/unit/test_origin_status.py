"""The .origin file (bootc's keys and reference spelling), the staged marker, and status output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfsboot.boot.boottype import BootType
from cfsboot.deploy.origin import (
    Origin,
    OriginError,
    from_origin_reference,
    to_origin_reference,
)
from cfsboot.deploy.status import human, image_reference, to_yaml
from cfsboot.deploy.sysroot import StagedDeployment, running_deployment

D = "ab" * 64


@pytest.mark.parametrize(
    ("imgref", "origin"),
    [
        (
            "docker://quay.io/fedora/fedora-bootc:41",
            "ostree-unverified-image:registry:quay.io/fedora/fedora-bootc:41",
        ),
        ("oci:/srv/img:v1", "ostree-unverified-image:oci:/srv/img:v1"),
        (
            "containers-storage:localhost/x",
            "ostree-unverified-image:containers-storage:localhost/x",
        ),
    ],
)
def test_reference_spelling_round_trips(imgref: str, origin: str) -> None:
    assert to_origin_reference(imgref) == origin
    assert from_origin_reference(origin) == imgref


def test_signed_and_plain_references_are_read() -> None:
    assert from_origin_reference("ostree-image-signed:registry:q.io/x") == "docker://q.io/x"
    assert from_origin_reference("ostree-remote-image:fedora:registry:q.io/x") == "docker://q.io/x"
    assert from_origin_reference("oci:/a:b") == "oci:/a:b"


def test_origin_serialises_like_bootc() -> None:
    o = Origin("docker://q.io/os:1", BootType.BLS, "c0" * 32, "sha256:" + "d1" * 32)
    assert o.serialise() == (
        "[origin]\n"
        "container-image-reference = ostree-unverified-image:registry:q.io/os:1\n"
        "\n[boot]\nboot_type = bls\n"
        f"digest = {'c0' * 32}\n"
        f"\n[image]\nmanifest_digest = sha256:{'d1' * 32}\n"
    )
    assert Origin.parse(o.serialise()) == o


def test_unknown_keys_survive_a_rewrite() -> None:
    text = (
        "[origin]\ncontainer-image-reference = ostree-unverified-image:oci:/x\n"
        "[boot]\nboot_type = uki\n[custom]\npinned = yes\n"
    )
    o = Origin.parse(text)
    assert o.boot_type is BootType.UKI and o.boot_digest is None
    again = Origin.parse(o.with_image("oci:/y").serialise())
    assert again.extra == (("custom", "pinned", "yes"),) and again.image == "oci:/y"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[boot]\nboot_type = bls\n", "has no [origin] container-image-reference"),
        (
            "[origin]\ncontainer-image-reference = oci:/x\n[boot]\nboot_type = pxe\n",
            "unknown [boot] boot_type 'pxe'",
        ),
        ("not ini", "cannot read x.origin"),
    ],
)
def test_bad_origins_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(OriginError, match=message.replace("[", r"\[")) as e:
        Origin.parse(text, name="x.origin")
    assert "\n" not in str(e.value)


def test_staged_marker_is_bootc_json() -> None:
    s = StagedDeployment(D, finalization_locked=True)
    assert json.loads(s.to_json()) == {"depl_id": D, "finalization_locked": True}
    assert StagedDeployment.from_json(s.to_json(), name="m") == s
    assert StagedDeployment.from_json(b'{"depl_id": "nothex"}', name="m") is None
    assert StagedDeployment.from_json(b"garbage", name="m") is None


def test_running_deployment_needs_karg_and_composefs_root(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    mountinfo = tmp_path / "mountinfo"
    root_line = f"25 1 0:22 / / ro,relatime shared:1 - overlay composefs:{D} ro,lowerdir+=x\n"
    cmdline.write_text(f"root=UUID=x rw composefs={D}\n")
    mountinfo.write_text(root_line)
    assert running_deployment(str(cmdline), str(mountinfo)) == D
    mountinfo.write_text("25 1 8:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n")
    assert running_deployment(str(cmdline), str(mountinfo)) is None
    cmdline.write_text("root=UUID=x rw\n")
    mountinfo.write_text(root_line)
    assert running_deployment(str(cmdline), str(mountinfo)) is None


def test_image_reference_is_bootcs() -> None:
    assert image_reference("docker://q.io/x:1") == {"image": "q.io/x:1", "transport": "registry"}
    assert image_reference("oci:/a:b") == {"image": "/a:b", "transport": "oci"}


def test_yaml_quotes_what_yaml_would_misread() -> None:
    doc: dict[str, object] = {
        "a": None,
        "b": True,
        "c": "sha256:abc",
        "d": "plain",
        "e": "13",
        "f": [],
        "g": {"h": [1, {"i": "yes"}]},
    }
    assert to_yaml(doc) == (
        'a: null\nb: true\nc: "sha256:abc"\nd: plain\ne: "13"\nf: []\ng:\n  h:\n    - 1\n'
        '    - i: "yes"'
    )


def test_human_output_names_each_slot() -> None:
    image = {
        "image": {"image": "q.io/x:1"},
        "imageDigest": "sha256:aa",
        "architecture": "amd64",
        "version": "1.0",
        "timestamp": None,
    }
    cfs = {"verity": D, "bootType": "Bls", "bootloader": "systemd", "missingVerityAllowed": False}
    entry = {"image": image, "downloadOnly": False, "composefs": cfs}
    # Only the keys human() reads: a whole BootcHost is what the integration tests check.
    text = human(
        {"status": {"booted": entry, "staged": None, "rollback": entry, "rollbackQueued": True}}  # type: ignore[typeddict-item]
    )
    assert "● Booted image: q.io/x:1" in text
    assert "  Rollback image: q.io/x:1" in text
    assert "fs-verity Enforced" in text
    assert text.rstrip().endswith("Rollback queued: the rollback deployment boots next.")


def test_human_output_tells_of_an_automatic_rollback() -> None:
    cfs = {"verity": D, "bootType": "Bls", "bootloader": "grub", "missingVerityAllowed": True}
    failed = {
        "state": "failed",
        "triesLeft": 0,
        "triesDone": 2,
        "lastFailure": {"time": "t", "failed": ["health check 50-x exited with status 1"]},
    }
    good = {
        "image": None,
        "downloadOnly": False,
        "composefs": cfs,
        "cfsboot": {"bootAssessment": None},
    }
    bad = {**good, "cfsboot": {"bootAssessment": failed}}
    host = {"fallback": True, "failedDeployment": D, "triesUsed": 2, "message": "it failed"}
    doc = {
        "status": {
            "booted": good,
            "staged": None,
            "rollback": bad,
            "rollbackQueued": False,
            "cfsboot": {"bootAssessment": host},
        }
    }
    text = human(doc)  # type: ignore[arg-type]
    assert "    Assessment: failed, 2 tries used, not tried again\n" in text
    assert "                last failure: health check 50-x exited with status 1\n" in text
    assert text.rstrip().endswith("Automatic rollback: it failed.")
    assert text.count("Assessment:") == 1
