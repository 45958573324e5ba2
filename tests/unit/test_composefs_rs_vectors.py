"""Results composefs-rs's own tests state for known inputs, reproduced by cfsboot.

Each vector names the composefs-rs test it comes from (composefs/composefs-rs,
read at v0.9.x). The inputs are rebuilt here and the expected values are
theirs: a digest, a list of paths, labels. The EROFS digests of composefs-rs's
`empty` and `simple` trees (tests/mkfs.rs test_erofs_digest_stability) are
pinned in test_erofs_writer.py, its fs-verity vectors in test_fsverity.py.
"""

from __future__ import annotations

import stat

import pytest

from cfsboot.composefs import dumpfile, fsverity
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.tree import Inode, lookup, walk
from cfsboot.image import fcontexts, selabel
from cfsboot.image.transform import transform_for_boot
from cfsboot.oci.apply import LayerRecord, Op, RecordEntry, build_tree, whiteout_of
from setuproot.contract import HashAlg

# -- crates/composefs/tests/mkfs.rs: test_vs_mkcomposefs_min_version_1 -----------------

# crates/composefs/tests/special_v1.dump (C's special_v1.dump without its inline-large entries).
SPECIAL_V1 = (
    b"/ 4096 40555 2 0 0 0 1633950376.0 - - - trusted.foo1=bar-1 user.foo2=bar-2\n"
    b"/blockdev 0 60777 1 0 0 107690 1633950376.0 - - - trusted.bar=bar-2\n"
    b"/chardev 0 20777 1 0 0 10769 1633950376.0 - - - trusted.foo=bar-2\n"
    b"/escaped-xattr 0 100777 1 0 0 0 1633950376.0 - - - trusted.overlay.redirect=/foo\\n"
    b" user.overlay.redirect=/foo\\n user.foo=bar-2\n"
    b"/fifo 0 10777 1 0 0 0 1633950376.0 - - - trusted.bar=bar-2\n"
    b"/inline 15 100777 1 0 0 0 1633950376.0 - FOOBAR\\nINAFILE\\n - user.foo=bar-2\n"
    b"/whiteout 0 20777 1 0 0 0 1633950376.0 - - - trusted.foo=bar-2\n"
)
SPECIAL_V1_DIGEST = "b1c78c25db8638be5b9b483472d32ee9624d8d32ded626a91cd536116e8df97c"


def test_special_v1_image_digest() -> None:
    image = build_image(dumpfile.parse(SPECIAL_V1), min_version=1)
    assert fsverity.digest_bytes(image, HashAlg.SHA256).hex() == SPECIAL_V1_DIGEST


# -- crates/composefs-oci/src/image.rs: process_entry whiteout tests ---------------------
# composefs-rs applies each entry in turn to one tree; here the entries before the
# first whiteout are a lower layer and the rest an upper one, as in a real image.


def _layer(paths: list[str]) -> LayerRecord:
    entries = []
    for path in paths:
        raw = path.strip("/").encode()
        wo = whiteout_of(raw)
        if wo is not None:
            entries.append(wo)
        elif path.endswith("/"):
            entries.append(RecordEntry(Op.DIR, raw, 0o755))
        else:
            entries.append(RecordEntry(Op.FILE, raw, 0o644))
    return LayerRecord("sha256:" + "0" * 64, "sha256", entries)


def _paths(layers: list[list[str]]) -> list[str]:
    return [p.decode() for p, _ in walk(build_tree(_layer(ps) for ps in layers))]


WHITEOUTS = {
    # test_process_entry (directories are written with a trailing slash here)
    "process_entry": (
        [["/a/", "b/", "c/", "/a/b", "/a/c", "/b/a", "/b/c", "/c/a", "/c/c"],
         [".wh.a", "/b/.wh..wh..opq", "/c/.wh.c"]],
        ["/", "/b", "/c", "/c/a"],
    ),
    "whiteout_file_removes_entry": (
        [["/etc/", "/etc/hosts", "/etc/passwd"], ["/etc/.wh.hosts"]],
        ["/", "/etc", "/etc/passwd"],
    ),
    "whiteout_nonexistent_file_is_noop": (
        [["/etc/", "/etc/hosts"], ["/etc/.wh.nosuchfile"]],
        ["/", "/etc", "/etc/hosts"],
    ),
    "whiteout_directory": (
        [["/usr/", "/usr/local/", "/usr/local/bin", "/etc/"], ["/usr/.wh.local"]],
        ["/", "/etc", "/usr"],
    ),
    "whiteout_in_root_directory": (
        [["/mydir/", "/toplevel"], ["/.wh.toplevel", ".wh.mydir"]],
        ["/"],
    ),
    "whiteout_in_nested_directory": (
        [["/a/", "/a/b/", "/a/b/c/", "/a/b/c/deep"], ["/a/b/c/.wh.deep"]],
        ["/", "/a", "/a/b", "/a/b/c"],
    ),
    "opaque_whiteout_clears_directory": (
        [["/etc/", "/etc/hosts", "/etc/passwd", "/etc/resolv.conf"], ["/etc/.wh..wh..opq"]],
        ["/", "/etc"],
    ),
    "opaque_whiteout_then_add_new_entries": (
        [["/etc/", "/etc/old_config", "/etc/another_old"],
         ["/etc/.wh..wh..opq", "/etc/new_config", "/etc/new_other"]],
        ["/", "/etc", "/etc/new_config", "/etc/new_other"],
    ),
    "multiple_whiteouts_in_single_layer": (
        [["/usr/", "/usr/a", "/usr/b", "/usr/c", "/usr/d"], ["/usr/.wh.a", "/usr/.wh.c"]],
        ["/", "/usr", "/usr/b", "/usr/d"],
    ),
    "whiteout_across_multiple_directories": (
        [["/a/", "/b/", "/a/file1", "/a/file2", "/b/file1", "/b/file2"],
         ["/a/.wh.file1", "/b/.wh.file2"]],
        ["/", "/a", "/a/file2", "/b", "/b/file1"],
    ),
    "opaque_whiteout_with_subdirectories": (
        [["/parent/", "/parent/child/", "/parent/child/deep", "/parent/sibling"],
         ["/parent/.wh..wh..opq"]],
        ["/", "/parent"],
    ),
    "whiteout_unusual_name_dot_wh_dot": (
        [["/d/", "/d/real_file"], ["/d/.wh..wh."]],
        ["/", "/d", "/d/real_file"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(WHITEOUTS))
def test_whiteouts(name: str) -> None:
    layers, expected = WHITEOUTS[name]
    assert _paths(layers) == expected


# -- crates/composefs-boot/src/selabel.rs: its unit tests ----------------------------------
# A tree with /etc/selinux/config (SELINUXTYPE=targeted) and the policy files, plus the
# test's own entries (a dumpfile), labelled by the boot transform.

SELINUX_CONFIG = b"SELINUX=enforcing\nSELINUXTYPE=targeted\n"


def _labelled(file_contexts: bytes, dump: str, extra: dict[str, bytes] | None = None) -> Inode:
    head = (
        "/ 0 40755 2 0 0 0 0.0 - - -\n/boot 0 40755 2 0 0 0 0.0 - - -\n"
        "/sysroot 0 40755 2 0 0 0 0.0 - - -\n"
    )
    lines = [
        line for line in dump.splitlines() if line.split(" ", 1)[0] not in ("/boot", "/sysroot")
    ]
    if not any(ln.startswith("/usr ") for ln in lines):
        lines.insert(0, "/usr 0 40755 2 0 0 0 0.0 - - -")
    root = dumpfile.parse((head + "\n".join(lines) + "\n").encode())
    sel = _mkdirs(root, b"etc/selinux")
    assert sel.children is not None
    sel.children[b"config"] = Inode(stat.S_IFREG | 0o644, content=SELINUX_CONFIG)
    files = _mkdirs(root, b"etc/selinux/targeted/contexts/files")
    assert files.children is not None
    for name, data in {"file_contexts": file_contexts, **(extra or {})}.items():
        files.children[name.encode()] = Inode(stat.S_IFREG | 0o644, content=data)
    transform_for_boot(root)
    return root


def _mkdirs(root: Inode, path: bytes) -> Inode:
    node = root
    for name in path.split(b"/"):
        assert node.children is not None
        node = node.children.setdefault(name, Inode.directory(0o755))
    return node


def _label(root: Inode, path: str) -> str | None:
    node = lookup(root, path.encode())
    assert node is not None, path
    value = node.xattrs.get(selabel.XATTR)
    return None if value is None else value.decode()


def _ctx(t: str, user: str = "system_u") -> str:
    return f"{user}:object_r:{t}:s0"


def test_selabel_applies_correct_labels() -> None:
    fc = (
        b"/\t\tsystem_u:object_r:root_t:s0\n/usr\t\tsystem_u:object_r:usr_t:s0\n"
        b"/usr/bin(/.*)?\t\tsystem_u:object_r:bin_t:s0\n/etc(/.*)?\t\tsystem_u:object_r:etc_t:s0\n"
    )
    dump = (
        "/etc 0 40755 2 0 0 0 0.0 - - -\n"
        "/etc/hostname 9 100644 1 0 0 0 0.0 - testhost\\n -\n"
        "/usr 0 40755 2 0 0 0 1000.0 - - -\n/usr/bin 0 40755 2 0 0 0 1000.0 - - -\n"
        "/usr/bin/hello 21 100755 1 0 0 0 0.0 - #!/bin/sh\\necho\\x20hello\\n -\n"
    )
    root = _labelled(fc, dump)
    assert [_label(root, p) for p in ("/", "/usr", "/usr/bin", "/usr/bin/hello", "/etc")] == [
        _ctx("root_t"), _ctx("usr_t"), _ctx("bin_t"), _ctx("bin_t"), _ctx("etc_t")
    ]  # fmt: skip
    assert _label(root, "/etc/hostname") == _ctx("etc_t")


def test_selabel_type_specific_labels() -> None:
    fc = (
        b"/var(/.*)?\t\tsystem_u:object_r:var_t:s0\n"
        b"/var/log(/.*)? -d system_u:object_r:var_log_dir_t:s0\n"
        b"/var/log(/.*)? -- system_u:object_r:var_log_t:s0\n"
        b"/var/log(/.*)? -l system_u:object_r:var_log_link_t:s0\n"
    )
    dump = (
        "/var 0 40755 2 0 0 0 0.0 - - -\n/var/log 0 40755 2 0 0 0 0.0 - - -\n"
        "/var/log/messages 10 100644 1 0 0 0 0.0 - 0123456789 -\n"
        "/var/log/current 4 120777 1 0 0 0 0.0 /var/log/messages - -\n"
    )
    root = _labelled(fc, dump)
    assert [_label(root, p) for p in ("/var", "/var/log", "/var/log/messages")] == [
        _ctx("var_t"), _ctx("var_log_dir_t"), _ctx("var_log_t")
    ]  # fmt: skip
    assert _label(root, "/var/log/current") == _ctx("var_log_link_t")


def test_selabel_subs_aliases() -> None:
    dump = (
        "/home 0 40755 2 0 0 0 0.0 - - -\n/home/user.txt 5 100644 1 0 0 0 0.0 - hello -\n"
        "/srv 0 40755 2 0 0 0 0.0 - - -\n/srv/home 0 40755 2 0 0 0 0.0 - - -\n"
        "/srv/home/data.txt 5 100644 1 0 0 0 0.0 - world -\n"
    )
    root = _labelled(
        b"/home(/.*)?\t\tsystem_u:object_r:home_t:s0\n",
        dump,
        {"file_contexts.subs": b"/srv/home /home\n"},
    )
    paths = ("/home", "/home/user.txt", "/srv/home", "/srv/home/data.txt")
    assert [_label(root, p) for p in paths] == [_ctx("home_t")] * 4


def test_selabel_none_context() -> None:
    dump = (
        "/tmp 0 40755 2 0 0 0 0.0 - - -\n/tmp/scratch.txt 5 100644 1 0 0 0 0.0 - hello -\n"
        "/tmp/private 0 40755 2 0 0 0 0.0 - - -\n"
        "/tmp/private/secret.txt 6 100644 1 0 0 0 0.0 - secret -\n"
    )
    fc = b"/tmp(/.*)?\t\tsystem_u:object_r:tmp_t:s0\n/tmp/private(/.*)?\t\t<<none>>\n"
    root = _labelled(fc, dump)
    paths = ("/tmp", "/tmp/scratch.txt", "/tmp/private", "/tmp/private/secret.txt")
    assert [_label(root, p) for p in paths] == [_ctx("tmp_t"), _ctx("tmp_t"), None, None]


def test_selabel_local_overrides() -> None:
    dump = (
        "/opt 0 40755 2 0 0 0 0.0 - - -\n/opt/readme.txt 7 100644 1 0 0 0 0.0 - default -\n"
        "/opt/custom 0 40755 2 0 0 0 0.0 - - -\n/opt/custom/app 3 100755 1 0 0 0 0.0 - app -\n"
    )
    root = _labelled(
        b"/opt(/.*)?\t\tsystem_u:object_r:opt_t:s0\n",
        dump,
        {"file_contexts.local": b"/opt/custom(/.*)?\t\tsystem_u:object_r:custom_t:s0\n"},
    )
    paths = ("/opt", "/opt/readme.txt", "/opt/custom", "/opt/custom/app")
    assert [_label(root, p) for p in paths] == [
        _ctx("opt_t"), _ctx("opt_t"), _ctx("custom_t"), _ctx("custom_t")
    ]  # fmt: skip


def test_selabel_device_and_fifo_labels() -> None:
    fc = (
        b"/dev(/.*)?\t\tsystem_u:object_r:device_t:s0\n"
        b"/dev(/.*)? -b system_u:object_r:fixed_disk_device_t:s0\n"
        b"/dev(/.*)? -c system_u:object_r:tty_device_t:s0\n"
        b"/dev(/.*)? -p system_u:object_r:fifo_t:s0\n"
    )
    dump = (
        "/dev 0 40755 2 0 0 0 0.0 - - -\n/dev/sda 0 60660 1 0 0 2049 0.0 - - -\n"
        "/dev/tty0 0 20666 1 0 0 1024 0.0 - - -\n/dev/initctl 0 10644 1 0 0 0 0.0 - - -\n"
    )
    root = _labelled(fc, dump)
    assert [_label(root, p) for p in ("/dev", "/dev/sda", "/dev/tty0", "/dev/initctl")] == [
        _ctx("device_t"), _ctx("fixed_disk_device_t"), _ctx("tty_device_t"), _ctx("fifo_t")
    ]  # fmt: skip


def test_selabel_breaks_hardlinks_with_different_labels() -> None:
    fc = (
        b"/(/.*)?\t\tsystem_u:object_r:default_t:s0\n/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n"
        b"/opt(/.*)?\tsystem_u:object_r:opt_t:s0\n"
    )
    dump = (
        "/opt 0 40755 2 0 0 0 0.0 - - -\n/usr 0 40755 2 0 0 0 0.0 - - -\n"
        "/usr/bin 0 40755 2 0 0 0 0.0 - - -\n/usr/bin/foo 5 100644 2 0 0 0 0.0 - hello -\n"
        "/opt/foo 0 @120000 - - - - 0.0 /usr/bin/foo - -\n"
    )
    root = _labelled(fc, dump)
    assert (_label(root, "/usr/bin/foo"), _label(root, "/opt/foo")) == (
        _ctx("usr_t"),
        _ctx("opt_t"),
    )
    assert lookup(root, b"usr/bin/foo") is not lookup(root, b"opt/foo")


def test_selabel_no_hardlinks_after_labeling_bootable_layout() -> None:
    fc = (
        b"/(/.*)?  system_u:object_r:default_t:s0\n/usr(/.*)?  system_u:object_r:usr_t:s0\n"
        b"/usr/lib(/.*)?  system_u:object_r:lib_t:s0\n"
        b"/usr/share(/.*)?  system_u:object_r:usr_t:s0\n"
    )
    dump = "/usr 0 40755 2 0 0 0 0.0 - - -\n/usr/lib 0 40755 2 0 0 0 0.0 - - -\n"
    for pkg, size in (("pkgA", 674), ("pkgB", 674), ("pkgC", 1024)):
        dump += f"/usr/lib/{pkg} 0 40755 2 0 0 0 0.0 - - -\n"
        dump += f"/usr/lib/{pkg}/COPYING {size} 100644 2 0 0 0 0.0 - - {'ab' * 32}\n"
    dump += "/usr/share 0 40755 2 0 0 0 0.0 - - -\n/usr/share/licenses 0 40755 2 0 0 0 0.0 - - -\n"
    for pkg in ("pkgA", "pkgB", "pkgC"):
        dump += f"/usr/share/licenses/{pkg} 0 40755 2 0 0 0 0.0 - - -\n"
        dump += (
            f"/usr/share/licenses/{pkg}/COPYING 0 @120000 - - - - 0.0 /usr/lib/{pkg}/COPYING - -\n"
        )
    root = _labelled(fc, dump)
    for pkg in ("pkgA", "pkgB", "pkgC"):
        lib, share = f"/usr/lib/{pkg}/COPYING", f"/usr/share/licenses/{pkg}/COPYING"
        assert (_label(root, lib), _label(root, share)) == (_ctx("lib_t"), _ctx("usr_t"))
    leaves = [n for _, n in walk(root) if n.children is None]
    assert len({id(n) for n in leaves}) == len(leaves)  # no hardlink left


def test_selabel_pcre2_lookarounds() -> None:
    fc = (
        b"/(/.*)?\t\tsystem_u:object_r:default_t:s0\n/opt(/.*)?\t\tsystem_u:object_r:opt_t:s0\n"
        b"/opt/(?=protected).*\t\tsystem_u:object_r:protected_t:s0\n"
        b"/srv(/.*)?\t\tsystem_u:object_r:srv_t:s0\n"
        b"/srv/(?!backup).*\t\tsystem_u:object_r:srv_public_t:s0\n"
    )
    dump = (
        "/opt 0 40755 2 0 0 0 0.0 - - -\n/opt/other_file 5 100644 1 0 0 0 0.0 - world -\n"
        "/opt/protected_data 5 100644 1 0 0 0 0.0 - hello -\n/srv 0 40755 2 0 0 0 0.0 - - -\n"
        "/srv/backup_2024 5 100644 1 0 0 0 0.0 - world -\n"
        "/srv/website 5 100644 1 0 0 0 0.0 - hello -\n"
    )
    root = _labelled(fc, dump)
    paths = ("/opt/protected_data", "/opt/other_file", "/srv/website", "/srv/backup_2024")
    assert [_label(root, p) for p in paths] == [
        _ctx("protected_t"), _ctx("opt_t"), _ctx("srv_public_t"), _ctx("srv_t")
    ]  # fmt: skip


def test_selabel_replaces_stale_labels() -> None:
    stale = "security.selinux=unconfined_u:object_r:container_file_t:s0:c0,c1"
    dump = (
        f"/usr 0 40755 2 0 0 0 0.0 - - - {stale}\n/usr/lib 0 40755 2 0 0 0 0.0 - - - {stale}\n"
        f"/usr/lib/readme.txt 5 100644 1 0 0 0 0.0 - hello - {stale}\n"
    )
    fc = b"/(/.*)?\t\tsystem_u:object_r:default_t:s0\n/usr(/.*)?\t\tsystem_u:object_r:usr_t:s0\n"
    root = _labelled(fc, dump)
    assert [_label(root, p) for p in ("/usr", "/usr/lib", "/usr/lib/readme.txt")] == [
        _ctx("usr_t")
    ] * 3


def test_selabel_hybrid_lookaround_priority() -> None:
    """matcher tests hybrid_lookaround_priority: lookaround rules among plain ones."""
    rules = [
        (r"/(.*)?", "default_t"),
        (r"/usr(.*)?", "usr_t"),
        (r"/usr/bin/(?!bad).*", "bin_ok_t"),
        (r"/usr/bin/good", "bin_good_t"),
        (r"/etc/(?!shadow).*", "etc_public_t"),
        (r"/etc/hostname", "hostname_t"),
    ]
    fc = "".join(f"{r} {_ctx(t)}\n" for r, t in rules).encode()
    policy = fcontexts.policy_from_files(lambda n: fc if n == "file_contexts" else None, "/")
    cases = [
        ("/etc/hostname", "hostname_t"),
        ("/etc/passwd", "etc_public_t"),
        ("/etc/shadow", "default_t"),
        ("/usr/bin/good", "bin_good_t"),
        ("/usr/bin/hello", "bin_ok_t"),
        ("/usr/bin/bad", "usr_t"),
    ]
    got = [policy.lookup(p.encode(), stat.S_IFREG) for p, _ in cases]
    assert got == [_ctx(t).encode() for _, t in cases]
