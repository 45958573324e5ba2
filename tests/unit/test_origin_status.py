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
from cfsboot.deploy.status import image_reference
from cfsboot.deploy.statusdoc import BootcHost, BootEntry
from cfsboot.deploy.statusformat import human, only_booted, to_yaml
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


@pytest.mark.parametrize(
    "text",
    # YAML 1.1's other types (PyYAML read a version "2024-01-01" as a date, "on" as true).
    [
        "2024-01-01",
        "2024-1-1 10:00",
        "on",
        "Off",
        "y",
        "N",
        "0x1F",
        "0b101",
        "0o17",
        "1_000",
        "12:30",
        ".inf",
        "-.inf",
        ".nan",
        "<<",
        "=",
    ],  # fmt: skip
)
def test_yaml_quotes_yaml_1_1_implicit_types(text: str) -> None:
    assert to_yaml({"version": text}) == f'version: "{text}"'


@pytest.mark.parametrize("text", ["006730aef57c2ecf", "ed9fa81b", "1.2.3", "42.20250101.0"])
def test_yaml_leaves_plain_what_is_a_string(text: str) -> None:
    assert to_yaml({"version": text}) == f"version: {text}"


def _entry(ref: str, transport: str, digest: str, version: str | None, created: str | None,
           **kw: object) -> BootEntry:  # fmt: skip
    e: BootEntry = {
        "image": {
            "image": {"image": ref, "transport": transport},
            "version": version,
            "timestamp": created,
            "imageDigest": digest,
            "architecture": "amd64",
        },
        "cachedUpdate": None,
        "incompatible": False,
        "pinned": False,
        "softRebootCapable": False,
        "downloadOnly": False,
        "store": None,
        "ostree": None,
        "composefs": {
            "verity": D[:16],
            "bootType": "Bls",
            "bootloader": "systemd",
            "bootDigest": None,
            "missingVerityAllowed": False,
        },
        "cfsboot": {"bootAssessment": None},
    }
    e.update(kw)  # type: ignore[typeddict-item]
    return e


def _host() -> BootcHost:
    staged = _entry("/srv/os", "oci", "sha256:cc", None, "2024-08-07T12:00:00.123456789Z")
    staged["downloadOnly"] = True
    staged["composefs"]["missingVerityAllowed"] = True
    other = _entry("q.io/x:0", "registry", "sha256:bb", None, None)
    other["pinned"] = True
    return {
        "apiVersion": "org.containers.bootc/v1",
        "kind": "BootcHost",
        "metadata": {"name": "host"},
        "spec": {"image": {"image": "/srv/os", "transport": "oci"}, "bootOrder": "default"},
        "status": {
            "staged": staged,
            "booted": _entry(
                "q.io/x:1", "registry", "sha256:aa", "1.0", "2024-08-07T14:00:00+02:00"
            ),
            "rollback": None,
            "otherDeployments": [other],
            "rollbackQueued": False,
            "type": "bootcHost",
            "usrOverlay": {"accessMode": "readWrite", "persistence": "transient"},
            "cfsboot": {
                "bootAssessment": {
                    "fallback": False,
                    "failedDeployment": None,
                    "triesUsed": None,
                    "message": None,
                },
                "nextBoot": {"deployment": D, "entry": None, "override": None},
            },
        },
    }


def test_human_output_is_bootcs_layout() -> None:
    # bootc's rows (crates/lib/src/status.rs): registry images without their transport,
    # others with it; Version with the timestamp in UTC to the second, or Timestamp alone;
    # Pinned; /usr overlay on the booted one. cfsboot adds Verity and Boot type.
    assert human(_host()) == (
        "  Staged image: oci:/srv/os\n"
        "        Digest: sha256:cc (amd64)\n"
        "        Verity: abababababababab\n"
        "     Timestamp: 2024-08-07T12:00:00Z\n"
        "     Boot type: Bls (systemd-boot)\n"
        "\n"
        "● Booted image: q.io/x:1\n"
        "        Digest: sha256:aa (amd64)\n"
        "        Verity: abababababababab\n"
        "       Version: 1.0 (2024-08-07T12:00:00Z)\n"
        "     Boot type: Bls (systemd-boot)\n"
        "  /usr overlay: transient, read/write\n"
        "\n"
        "   Other image: q.io/x:0\n"
        "        Digest: sha256:bb (amd64)\n"
        "        Verity: abababababababab\n"
        "     Boot type: Bls (systemd-boot)\n"
        "        Pinned: yes\n"
    )


def test_human_verbose_rows() -> None:
    text = human(_host(), verbose=True)
    staged, booted, _other = text.split("\n\n")
    assert staged.splitlines()[-3:] == [
        "   Soft-reboot: no",
        "      FsVerity: Not Enforced",
        " Download-only: yes",
    ]
    assert booted.splitlines()[-2:] == ["   Soft-reboot: no", "      FsVerity: Enforced"]


def test_human_rollback_queued_and_no_image() -> None:
    host = _host()
    booted = host["status"]["booted"]
    assert booted is not None
    booted["image"] = None
    host["status"]["staged"] = None
    host["status"]["otherDeployments"] = []
    host["status"]["rollback"] = _entry("q.io/x:0", "registry", "sha256:bb", "0", None)
    host["status"]["rollbackQueued"] = True
    assert human(host) == (
        "● Booted composefs\n"
        "            Verity: abababababababab\n"
        "         Boot type: Bls (systemd-boot)\n"
        "      /usr overlay: transient, read/write\n"
        "\n"
        "  Rollback image: q.io/x:0\n"
        "          Digest: sha256:bb (amd64)\n"
        "          Verity: abababababababab\n"
        "         Version: 0\n"
        "       Boot type: Bls (systemd-boot)\n"
        "\n"
        "Rollback queued: the rollback deployment boots next.\n"
    )


def test_booted_only_and_nothing() -> None:
    host = only_booted(_host())
    s = host["status"]
    assert (s["staged"], s["rollback"], "otherDeployments" in s) == (None, None, False)
    assert s["booted"] == _host()["status"]["booted"]
    assert (s["type"], s["usrOverlay"]) == ("bootcHost", _host()["status"]["usrOverlay"])
    assert host["spec"] == _host()["spec"]
    # The document left is still bootc's: the keys of the whole one, in order.
    assert list(s) == [k for k in _host()["status"] if k != "otherDeployments"]
    s["booted"] = None
    assert human(host) == "System is not deployed via cfsboot (no deployments).\n"


def test_human_output_tells_of_an_automatic_rollback() -> None:
    host = _host()
    s = host["status"]
    s["staged"], s["otherDeployments"], s["usrOverlay"] = None, [], None
    bad = _entry("q.io/x:0", "registry", "sha256:bb", "0", None)
    bad["cfsboot"] = {
        "bootAssessment": {
            "state": "failed",
            "triesLeft": 0,
            "triesDone": 2,
            "lastFailure": {"time": "t", "failed": ["health check 50-x exited with status 1"]},
        }
    }
    s["rollback"] = bad
    s["cfsboot"] = {
        "bootAssessment": {
            "fallback": True,
            "failedDeployment": D,
            "triesUsed": 2,
            "message": "it failed",
        },
        "nextBoot": {"deployment": D, "entry": None, "override": None},
    }
    text = human(host)
    assert "      Assessment: failed, 2 tries used, not tried again\n" in text
    assert "    Last failure: health check 50-x exited with status 1\n" in text
    assert text.rstrip().endswith("Automatic rollback: it failed.")
    assert text.count("Assessment:") == 1


def test_human_output_shows_a_cached_update() -> None:
    host = _host()
    booted = host["status"]["booted"]
    assert booted is not None
    new = _entry("q.io/x:1", "registry", "sha256:dd", "1.1", None)["image"]
    booted["cachedUpdate"] = new
    lines = human(host).split("\n\n")[1].splitlines()
    assert lines[4:6] == [
        "     Boot type: Bls (systemd-boot)",
        "        Update: 1.1 available (cfsboot upgrade)",
    ]
    assert new is not None
    booted["cachedUpdate"] = {**new, "version": None}
    assert "        Update: sha256:dd available (cfsboot upgrade)" in human(host).splitlines()
