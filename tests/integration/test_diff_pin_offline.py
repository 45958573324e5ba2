"""diff, pin/unpin and the offline check on systems installed into directories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cfsboot.deploy.origin import Origin
from cfsboot.image.importer import import_image
from cfstest import cli, gates
from cfstest.cli import one_line_error
from cfstest.dirsystem import install
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration]


def _status(*packages: tuple[str, str]) -> bytes:
    return "\n".join(
        f"Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n"
        for name, v in packages
    ).encode()


def digest(ref: str) -> str:
    return import_image(ref, None).image_digest


def test_diff_between_images_and_deployments(tmp_path: Path) -> None:
    v1 = os_image(
        tmp_path / "v1",
        "1",
        extra={"var/lib/dpkg/status": _status(("bash", "5.2-1"), ("gone", "1.0"))},
    )
    v2 = os_image(
        tmp_path / "v2",
        "2",
        kernel="k2",
        kargs='kargs = ["console=ttyS0,115200", "quiet"]\n',
        extra={
            "var/lib/dpkg/status": _status(("bash", "5.2-2"), ("curl", "8.1-1")),
            "usr/share/added": b"new\n",
        },
    )
    d1, d2 = digest(v1), digest(v2)
    sys_ = install(tmp_path / "s", v1)
    out = sys_.cfs("diff", v2, "--json")
    doc = json.loads(out.stdout)
    assert doc["from"] == {
        "deployment": d1,
        "image": d1,
        "reference": v1,
        "kernel": "6.12.0-test",
    }
    assert doc["to"] == {"deployment": None, "image": d2, "reference": v2, "kernel": "6.12.0-test"}
    assert doc["files"] == {
        "added": ["/usr/share/added"],
        "removed": [],
        "changed": [
            "/etc/os-release-version",
            "/usr/lib/bootc/kargs.d/10-test.toml",
            "/usr/lib/modules/6.12.0-test/initramfs.img",
            "/usr/lib/modules/6.12.0-test/vmlinuz",
            "/usr/lib/os-release",
            "/usr/share/version",
            "/var/lib/dpkg/status",
        ],
    }
    assert doc["packages"] == {
        "added": [{"name": "curl", "version": "8.1-1"}],
        "removed": [{"name": "gone", "version": "1.0"}],
        "upgraded": [{"name": "bash", "from": "5.2-1", "to": "5.2-2"}],
        "downgraded": [],
    }
    assert doc["kargs"] == {"added": ["quiet"], "removed": []}
    # Nothing was staged.
    assert not (sys_.run / "composefs/staged-deployment").exists()
    assert sys_.menu() == [d1]

    # Once staged, the deployments compare the same way (the other way round here).
    sys_.cfs("switch", v2, "-q")
    human = sys_.cfs("diff", "staged", "booted").stdout.splitlines()
    assert human[0] == f"from deployment staged ({d2[:12]}…) {v2}"
    assert human[1] == f"  to deployment booted ({d1[:12]}…) {v1}"
    assert human[2:5] == ["files: 0 added, 1 removed, 7 changed", "  - /usr/share/added",
                          "  ~ /etc/os-release-version"]  # fmt: skip
    tail = human[human.index("packages: 1 added, 1 removed, 0 upgraded, 1 downgraded") :]
    assert tail == [
        "packages: 1 added, 1 removed, 0 upgraded, 1 downgraded",
        "  + gone 1.0",
        "  - curl 8.1-1",
        "  v bash 5.2-2 -> 5.2-1",
        "kernel: 6.12.0-test (unchanged)",
        "kernel arguments:",
        "  - quiet",
    ]
    bad = sys_.cfs("diff", "oci:/nonexistent:x", "no-such", check=False)
    assert one_line_error(bad) == (
        "cfsboot: FROM must be a deployment, not 'oci:/nonexistent:x'; an image goes in TO"
    )


def test_pinned_deployments_stay(tmp_path: Path) -> None:
    refs = [os_image(tmp_path / f"v{n}", str(n)) for n in range(1, 5)]
    ids = [digest(r) for r in refs]
    sys_ = install(tmp_path / "s", refs[0])
    sys_.cfs("pin", ids[0][:8])
    for ref in refs[1:]:
        sys_.cfs("switch", ref, "-q")
        sys_.cfs("finalize-staged")
    assert sys_.menu() == [ids[3], ids[2], ids[1], ids[0]]
    status = sys_.status()["status"]
    assert [e["pinned"] for e in status["otherDeployments"]] == [False, True]
    assert [e["composefs"]["verity"] for e in status["otherDeployments"]] == [ids[1], ids[0]]
    # gc keeps the booted, the rollback and the pinned one; v2 goes.
    sys_.cfs("gc")
    assert sys_.menu() == [ids[3], ids[2], ids[0]]
    assert sorted(p.name for p in (sys_.root / "state/deploy").iterdir()) == sorted(
        [ids[3], ids[2], ids[0]]
    )
    out = sys_.cfs("unpin", ids[0])
    assert out.stderr == (
        f"unpinned deployment {ids[0][:12]}…: gc may remove it once it is not needed\n"
    )
    sys_.cfs("gc")
    assert sys_.menu() == [ids[3], ids[2]]


def _can_unshare_net() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def test_offline_upgrade_says_so_at_once(tmp_path: Path) -> None:
    """In a network namespace of its own (no route at all, lo down) upgrade asks netlink,
    says why and exits 75 before skopeo is run."""
    if not _can_unshare_net():
        gates.missing_capability("unshare -n does not work here (needs CAP_SYS_ADMIN)")
    sys_ = install(tmp_path / "s", os_image(tmp_path / "v1", "1"))
    path = next((sys_.root / "state/deploy").glob("*/*.origin"))
    origin = Origin.parse(path.read_text(), name=str(path))
    path.write_text(origin.with_image("docker://10.0.2.2:5000/os:2").serialise())
    opts = ("--sysroot", sys_.root, "--esp", sys_.esp, "--run-dir", sys_.run)
    for extra in ((), ("--check",)):
        args = ["unshare", "-n", *cli.argv("upgrade", "-q", *extra, *opts)]
        proc = subprocess.run(args, capture_output=True, text=True, env=cli.ENV)
        assert (proc.returncode, proc.stderr) == (75, "cfsboot: offline: no route to 10.0.2.2\n")
