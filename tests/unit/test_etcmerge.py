"""/etc merge without privileges: files, symlinks, dirs, modes, user.* xattrs, fifos.

Owners, devices, trusted.*/security.* xattrs and whiteouts need root and are in
tests/integration/test_etcmerge_root.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cfsboot.deploy.etcmerge import (
    Conflict,
    EtcMergeConflict,
    MergeReport,
    carry_upper,
    find_conflicts,
    find_upper_conflicts,
    merge,
)
from cfsboot.errors import CfsbootError
from cfsboot.linux.fsutil import TEMP_MARKER
from cfstest.fssnapshot import snapshot

MTIME = 1_600_000_000_123_456_789


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path, Path]:
    """pristine, current and new as three equal copies of a small /etc."""
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    (pristine / "hostname").write_text("image\n")
    (pristine / "motd").write_text("welcome\n")
    (pristine / "ssh").mkdir()
    (pristine / "ssh/sshd_config").write_text("PermitRootLogin no\n")
    (pristine / "ssh/ssh_config").write_text("Host *\n")
    (pristine / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (pristine / "ssl/certs").mkdir(parents=True)
    (pristine / "ssl/certs/ca.pem").write_text("CA\n")
    os.setxattr(pristine / "motd", "user.tag", b"one")
    copies = []
    for name in ("current", "new"):
        shutil.copytree(pristine, tmp_path / name, symlinks=True)
        copies.append(tmp_path / name)
    return pristine, copies[0], copies[1]


def test_untouched_file_takes_the_new_default(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    (new / "motd").write_text("welcome to v2\n")
    (current / "motd").touch()  # mtime alone is not a change
    report = merge(pristine, current, new)
    assert (new / "motd").read_text() == "welcome to v2\n"
    assert report == MergeReport()


def test_local_modification_wins_with_its_metadata(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    (new / "ssh/sshd_config").write_text("PermitRootLogin prohibit-password\n")
    (current / "ssh/sshd_config").write_text("PermitRootLogin yes\n")
    os.chmod(current / "ssh/sshd_config", 0o600)
    os.setxattr(current / "ssh/sshd_config", "user.local", b"1")
    os.utime(current / "ssh/sshd_config", ns=(MTIME, MTIME))
    report = merge(pristine, current, new)
    assert report == MergeReport(modified=("ssh/sshd_config",))
    after = snapshot(new, mtimes=True)["ssh/sshd_config"]
    assert after == snapshot(current, mtimes=True)["ssh/sshd_config"]
    assert after[-1] == MTIME
    assert not [p for p in os.listdir(new / "ssh") if "cfsboot-tmp" in p]


def test_local_deletion_stays_deleted_even_when_new_changed_it(
    trees: tuple[Path, Path, Path],
) -> None:
    pristine, current, new = trees
    (current / "motd").unlink()
    (new / "motd").write_text("new default\n")
    shutil.rmtree(current / "ssh")
    (new / "ssh/new_in_v2").write_text("x\n")  # a removed dir goes with what v2 put in it
    report = merge(pristine, current, new)
    assert not (new / "motd").exists()
    assert not (new / "ssh").exists()
    assert report.removed == ("motd", "ssh", "ssh/ssh_config", "ssh/sshd_config")


def test_new_files_of_the_new_image_appear(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    (new / "ssh/sshd_config.d").mkdir()
    (new / "ssh/sshd_config.d/10-v2.conf").write_text("v2\n")
    (current / "hostname").write_text("myhost\n")
    merge(pristine, current, new)
    assert (new / "ssh/sshd_config.d/10-v2.conf").read_text() == "v2\n"
    assert (new / "hostname").read_text() == "myhost\n"


def test_locally_added_tree_is_copied(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    d = current / "myapp"
    (d / "conf.d").mkdir(parents=True)
    (d / "conf.d/a.conf").write_bytes(b"\x00binary\xff")
    (d / "link").symlink_to("conf.d/a.conf")
    (d / "dangling").symlink_to("/nonexistent")
    os.mkfifo(d / "pipe", 0o640)
    (d / "empty").mkdir()
    os.chmod(d / "conf.d", 0o750)
    os.utime(d / "conf.d", ns=(MTIME, MTIME))
    report = merge(pristine, current, new)
    want = {k: v for k, v in snapshot(current, mtimes=True).items() if k.startswith("myapp")}
    got = {k: v for k, v in snapshot(new, mtimes=True).items() if k.startswith("myapp")}
    assert got == want
    assert report.added == tuple(sorted(want))
    assert report.modified == report.removed == ()


def test_metadata_only_changes_are_carried(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    os.chmod(current / "hostname", 0o4755)  # setuid is part of the mode
    os.setxattr(current / "ssh/ssh_config", "user.added", b"x")
    os.removexattr(current / "motd", "user.tag")
    os.chmod(current / "ssh", 0o700)
    (new / "ssh/v2_file").write_text("stays\n")
    report = merge(pristine, current, new)
    assert report.modified == ("hostname", "motd", "ssh", "ssh/ssh_config")
    got = snapshot(new)
    assert got["hostname"][0] == "-rwsr-xr-x"
    assert got["ssh/ssh_config"][4] == [("user.added", b"x")]
    assert got["motd"][4] == []
    assert got["ssh"][0] == "drwx------"
    assert (new / "ssh/v2_file").read_text() == "stays\n"


def test_symlink_retarget_and_type_change(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    (current / "localtime").unlink()
    (current / "localtime").symlink_to("/usr/share/zoneinfo/Europe/Paris")
    (current / "hostname").unlink()
    (current / "hostname").symlink_to("/run/hostname")
    (new / "localtime").unlink()
    (new / "localtime").symlink_to("../usr/share/zoneinfo/UTC")
    merge(pristine, current, new)
    assert os.readlink(new / "localtime") == "/usr/share/zoneinfo/Europe/Paris"
    assert os.readlink(new / "hostname") == "/run/hostname"


def test_missing_parents_are_created_with_local_metadata(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    os.chmod(current / "ssh", 0o711)
    (current / "ssh/ssh_config").write_text("local\n")
    shutil.rmtree(new / "ssh")  # the new image dropped the directory
    merge(pristine, current, new)
    assert snapshot(new)["ssh"][0] == "drwx--x--x"
    assert sorted(os.listdir(new / "ssh")) == ["ssh_config"]


def test_a_deletion_below_a_new_symlink_is_not_followed(
    trees: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    pristine, current, new = trees
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ca.pem").write_text("not ours\n")
    (current / "ssl/certs/ca.pem").unlink()
    shutil.rmtree(new / "ssl/certs")
    (new / "ssl/certs").symlink_to(elsewhere)
    assert find_conflicts(pristine, current, new) == []
    merge(pristine, current, new)
    assert (elsewhere / "ca.pem").read_text() == "not ours\n"
    assert os.readlink(new / "ssl/certs") == str(elsewhere)


def _conflict_case(trees: tuple[Path, Path, Path], case: str) -> None:
    pristine, current, new = trees
    if case == "file-dir":  # edited locally, a directory in v2
        (current / "motd").write_text("local\n")
        (new / "motd").unlink()
        (new / "motd").mkdir()
        (new / "motd/10-v2").write_text("x\n")
    elif case == "dir-file":  # a local directory, a file in v2
        (current / "myapp").mkdir()
        (current / "myapp/local.conf").write_text("x\n")
        (new / "myapp").write_text("v2 made this a file\n")
    else:  # composefs-rs #335: a local certificate, the directory is a symlink in v2
        (current / "ssl/certs/local.pem").write_text("mine\n")
        shutil.rmtree(new / "ssl/certs")
        (new / "ssl/certs").symlink_to("/usr/share/ca-certificates")


@pytest.mark.parametrize(
    ("case", "path", "reason"),
    [
        ("file-dir", "motd", "/etc/motd is a file here but a directory in the new image"),
        ("dir-file", "myapp", "/etc/myapp is a directory here but a file in the new image"),
        (
            "dir-symlink",
            "ssl/certs",
            "/etc/ssl/certs is a directory with local changes here "
            "(/etc/ssl/certs/local.pem) but a symlink in the new image",
        ),
    ],
)
def test_conflicts_are_found_and_nothing_is_written(
    trees: tuple[Path, Path, Path], case: str, path: str, reason: str
) -> None:
    pristine, current, new = trees
    _conflict_case(trees, case)
    assert find_conflicts(pristine, current, new) == [Conflict(path, reason)]
    before = snapshot(new, mtimes=True)
    with pytest.raises(EtcMergeConflict) as exc:
        merge(pristine, current, new)
    assert isinstance(exc.value, CfsbootError)
    assert reason in str(exc.value) and "\n" not in str(exc.value)
    assert snapshot(new, mtimes=True) == before


def test_a_locally_modified_dir_where_the_new_image_has_a_symlink(
    trees: tuple[Path, Path, Path],
) -> None:
    pristine, current, new = trees
    os.chmod(current / "ssl/certs", 0o700)
    shutil.rmtree(new / "ssl/certs")
    (new / "ssl/certs").symlink_to("/usr/share/ca-certificates")
    want = "/etc/ssl/certs is a directory here but a symlink in the new image"
    assert [c.reason for c in find_conflicts(pristine, current, new)] == [want]


def test_merge_is_idempotent(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    (current / "motd").write_text("local\n")
    (current / "hostname").unlink()
    (current / "added").mkdir()
    (current / "added/f").write_text("f\n")
    os.chmod(current / "ssh", 0o700)
    first = merge(pristine, current, new)
    once = snapshot(new, mtimes=True)
    assert merge(pristine, current, new) == first
    assert snapshot(new, mtimes=True) == once


def test_leftovers_of_an_interrupted_merge_are_cleaned(trees: tuple[Path, Path, Path]) -> None:
    pristine, current, new = trees
    (current / "motd").write_text("local\n")
    (new / f".motd{TEMP_MARKER}0123456789ab").write_text("half\n")
    (current / f".kept{TEMP_MARKER}0123456789ab").write_text("the admin's own\n")
    merge(pristine, current, new)
    assert sorted(p for p in os.listdir(new) if TEMP_MARKER in p) == [
        f".kept{TEMP_MARKER}0123456789ab"
    ]


# --- overlay mode without privileges (whiteouts and opaque dirs: integration) ---------------


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """old_upper (empty), old_lower, new_lower (a copy of old_lower), new_upper (absent)."""
    old_lower = tmp_path / "old_lower"
    (old_lower / "ssh").mkdir(parents=True)
    (old_lower / "ssh/sshd_config").write_text("v1\n")
    (old_lower / "motd").write_text("v1\n")
    (old_lower / "conf").write_text("v1\n")
    shutil.copytree(old_lower, tmp_path / "new_lower", symlinks=True)
    (tmp_path / "old_upper").mkdir()
    return tmp_path / "old_upper", old_lower, tmp_path / "new_lower", tmp_path / "new_upper"


def _copy_up(lower: Path, upper: Path, rel: str) -> None:
    """What overlayfs copy-up leaves in the upper dir: parents and the file, metadata kept."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        d = "/".join(parts[:i])
        (upper / d).mkdir(exist_ok=True)
        shutil.copystat(lower / d, upper / d)
    shutil.copy2(lower / rel, upper / rel)


def test_upper_copy_up_without_change_is_not_carried(
    layers: tuple[Path, Path, Path, Path],
) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    _copy_up(old_lower, old_upper, "ssh/sshd_config")
    os.utime(old_upper / "ssh/sshd_config", ns=(MTIME, MTIME))  # touch
    _copy_up(old_lower, old_upper, "motd")
    (old_upper / "motd").write_text("local\n")
    (new_lower / "ssh/sshd_config").write_text("v2\n")
    report = carry_upper(old_upper, old_lower, new_lower, new_upper)
    assert report == MergeReport(modified=("motd",), dropped=("ssh/sshd_config",))
    assert sorted(os.listdir(new_upper)) == ["motd"]
    assert (new_upper / "motd").read_text() == "local\n"
    assert not [p for p in os.listdir(new_upper.parent) if "cfsboot-tmp" in p]


def test_upper_changes_are_carried_with_metadata(layers: tuple[Path, Path, Path, Path]) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    _copy_up(old_lower, old_upper, "ssh/sshd_config")
    os.chmod(old_upper / "ssh/sshd_config", 0o600)
    os.utime(old_upper / "ssh/sshd_config", ns=(MTIME, MTIME))
    (old_upper / "added.d").mkdir()
    (old_upper / "added.d/x.conf").write_text("x\n")
    (old_upper / "link").symlink_to("motd")
    os.mkfifo(old_upper / "pipe")
    os.setxattr(old_upper / "added.d/x.conf", "user.k", b"v")
    os.chmod(new_lower / "ssh", 0o750)  # v2 changed the untouched parent
    report = carry_upper(old_upper, old_lower, new_lower, new_upper)
    assert report.added == ("added.d", "added.d/x.conf", "link", "pipe")
    assert report.modified == ("ssh/sshd_config",)
    got, old = snapshot(new_upper, mtimes=True), snapshot(old_upper, mtimes=True)
    for rel in ("ssh/sshd_config", "added.d", "added.d/x.conf", "link", "pipe"):
        assert got[rel] == old[rel], rel
    assert got["ssh"][0] == "drwxr-x---"  # the new image's metadata, not the copy-up's


def test_leftovers_of_an_interrupted_carry_are_cleaned(
    layers: tuple[Path, Path, Path, Path],
) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    stale = new_upper.parent / f".new_upper{TEMP_MARKER}0123456789ab"
    (stale / "half").mkdir(parents=True)
    carry_upper(old_upper, old_lower, new_lower, new_upper)
    assert not stale.exists() and new_upper.is_dir()


def test_new_upper_must_be_empty(layers: tuple[Path, Path, Path, Path]) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    new_upper.mkdir()
    carry_upper(old_upper, old_lower, new_lower, new_upper)  # an empty one is fine
    (new_upper / "stray").write_text("x\n")
    with pytest.raises(CfsbootError, match="is not an empty directory"):
        carry_upper(old_upper, old_lower, new_lower, new_upper)


def test_upper_file_over_a_new_directory_conflicts(
    layers: tuple[Path, Path, Path, Path],
) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    _copy_up(old_lower, old_upper, "conf")
    (old_upper / "conf").write_text("local\n")
    (new_lower / "conf").unlink()
    (new_lower / "conf").mkdir()
    (old_upper / "ssh").mkdir()
    (old_upper / "ssh/local").write_text("x\n")
    shutil.rmtree(new_lower / "ssh")
    (new_lower / "ssh").symlink_to("/usr/etc/ssh")
    assert [c.reason for c in find_upper_conflicts(old_upper, old_lower, new_lower)] == [
        "/etc/conf is a file here but a directory in the new image",
        "/etc/ssh is a directory with local changes here (/etc/ssh/local) "
        "but a symlink in the new image",
    ]
    with pytest.raises(EtcMergeConflict, match="and 1 more"):
        carry_upper(old_upper, old_lower, new_lower, new_upper)
    assert not new_upper.exists()
    assert not [p for p in os.listdir(new_upper.parent) if "cfsboot-tmp" in p]


def test_upper_file_replacing_a_directory_on_purpose_is_carried(
    layers: tuple[Path, Path, Path, Path],
) -> None:
    old_upper, old_lower, new_lower, new_upper = layers
    (old_upper / "ssh").write_text("the admin replaced the directory\n")
    (new_lower / "ssh/v2").write_text("x\n")
    assert find_upper_conflicts(old_upper, old_lower, new_lower) == []
    assert carry_upper(old_upper, old_lower, new_lower, new_upper).modified == ("ssh",)
    assert (new_upper / "ssh").read_text() == "the admin replaced the directory\n"
