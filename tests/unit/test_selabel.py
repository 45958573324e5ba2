"""SELinux labelling of the boot image (cfsboot.image.selabel) and the PCRE2 translation.

The edge-case policy (cfstest.selinux_edge) pins where libselinux's rules differ from
plain last-match-wins; tests/integration/test_selabel_oracle.py asks libselinux
itself for the same cases, so the expectations here are libselinux's.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from cfsboot.composefs import dumpfile
from cfsboot.composefs.tree import Inode, lookup
from cfsboot.errors import CfsbootError
from cfsboot.image import fcontexts, selabel
from cfsboot.image.importer import import_image
from cfsboot.image.pcre import Untranslatable, translate
from cfsboot.image.transform import transform_for_boot, transform_for_oci
from cfstest.ocibuild import Entry
from cfstest.ocirepo import base_layer, layout, make_repo
from cfstest.selinux_edge import CTX, EDGE_CASES, EDGE_FILES
from setuproot.contract import HashAlg

REG, DIR, LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK


def edge_policy() -> fcontexts.Policy:
    return fcontexts.policy_from_files(
        lambda name: EDGE_FILES[name].encode() if name in EDGE_FILES else None, "/fc/"
    )


@pytest.mark.parametrize(("path", "mode", "expected"), EDGE_CASES)
def test_edge_cases(path: str, mode: int, expected: str | None) -> None:
    label = edge_policy().lookup(path.encode(), mode)
    assert label == (None if expected is None else CTX.format(expected).encode())


def test_rule_count_and_order() -> None:
    policy = edge_policy()
    assert len(policy.rules) == 17
    last = policy.rules[-1]
    assert (last.source, last.lineno, last.order, last.kind) == (
        "/fc/file_contexts.local",
        2,
        (2, 2),
        fcontexts.Kind.ALL,
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/usr", "/fc/file_contexts:1: a rule needs a regex and a context"),
        ("/usr -x ctx", "/fc/file_contexts:1: invalid file type '-x'"),
        ("/usr/\xe9 ctx", "/fc/file_contexts:1: non-ASCII characters (libselinux refuses"),
        (
            "/usr/(?R) ctx",
            "/fc/file_contexts:1: regex '/usr/(?R)' uses a recursion or subroutine call '(?R', "
            "which Python's re cannot express",
        ),
        (
            "/usr/[[:foo:]] ctx",
            "/fc/file_contexts:1: regex '/usr/[[:foo:]]' uses the unknown POSIX class "
            "'[:foo:]', which Python's re cannot express",
        ),
    ],
)
def test_policy_errors_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(CfsbootError) as e:
        fcontexts.policy_from_files(
            lambda name: line.encode("latin-1") if name == "file_contexts" else None, "/fc/"
        )
    assert str(e.value).startswith("SELinux policy " + message)


def test_regex_python_cannot_compile_is_refused_when_used() -> None:
    policy = fcontexts.policy_from_files(
        lambda name: b"/usr/(?<=a+)b ctx\n" if name == "file_contexts" else None, "/fc/"
    )
    with pytest.raises(CfsbootError, match=r"^SELinux policy /fc/file_contexts:1: regex "):
        policy.lookup(b"/usr/ab", REG)


@pytest.mark.parametrize(
    ("pcre", "python"),
    [
        (rb"/usr/lib(/.*)?", rb"/usr/lib(/.*)?"),
        (rb"/a[[:alpha:]_]", rb"/a[A-Za-z_]"),
        (rb"/a[^[:space:]]", rb"/a[^\t\n\x0b\x0c\r ]"),
        (rb"/a[]-]", rb"/a[\x5d\x2d]"),
        (rb"/a\Z", rb"/a(?=\n?\Z)"),
        (rb"/a\z", rb"/a\Z"),
        (rb"/a{,2}b{ 1 , 3 }c{x}", rb"/a{0,2}b{1,3}c\{x\}"),
        (rb"/a(?i)b|c", rb"/a(?i:b)|(?i:c)"),
        (rb"/\Q.*\E\x{41}\e", rb"/\x2e\x2aA\x1b"),
        (rb"/a*+(?>b)", rb"/a*+(?>b)"),
        (rb"/(?<n>a)\k<n>", rb"/(?P<n>a)(?P=n)"),
    ],
)
def test_translations(pcre: bytes, python: bytes) -> None:
    assert translate(pcre).pattern == python


@pytest.mark.parametrize(
    ("pcre", "construct"),
    [
        (rb"/(?R)", "a recursion or subroutine call '(?R'"),
        (rb"/(?|a)", "a branch reset group '(?|'"),
        (rb"/(?(1)a|b)", "a conditional group '(?('"),
        (rb"/(*SKIP)", "a backtracking verb or start option '(*'"),
        (rb"/\p{L}", "the escape '\\p'"),
        (rb"/a\K", "the escape '\\K'"),
        (rb"/(?x)a", "the option setting '(?x'"),
        (rb"/[[:^alpha:]]", "the negated POSIX class '[:^alpha:]'"),
        (rb"/[a", "a character class without its closing ']'"),
    ],
)
def test_refused_constructs(pcre: bytes, construct: str) -> None:
    with pytest.raises(Untranslatable) as e:
        translate(pcre)
    assert e.value.args[0] == construct


# -- the boot image -------------------------------------------------------------------

POLICY_TYPE = "tpolicy"
CONFIG = (
    b"# This file controls the state of SELinux on the system (a comment long enough to\n"
    b"# make the file an object of the repository, not inline content).\n"
    b"SELINUX=permissive\nSELINUXTYPE=" + POLICY_TYPE.encode() + b"\n"
)
FILE_CONTEXTS = "\n".join(
    [
        f"/.*\t{CTX.format('default_t')}",
        f"/\t-d\t{CTX.format('root_t')}",
        f"/usr(/.*)?\t{CTX.format('usr_t')}",
        f"/usr/bin(/.*)?\t{CTX.format('bin_t')}",
        f"/usr/lib(/.*)?\t{CTX.format('lib_t')}",
        f"/etc(/.*)?\t{CTX.format('etc_t')}",
        "/run(/.*)?\t<<none>>",
    ]
).encode()
T = 1700000000


def policy_layer() -> list[Entry]:
    fc = f"etc/selinux/{POLICY_TYPE}/contexts/files"
    return [
        Entry("etc/selinux", "dir", mtime=T),
        Entry("etc/selinux/config", data=CONFIG, mtime=T),
        Entry(f"etc/selinux/{POLICY_TYPE}", "dir", mtime=T),
        Entry(f"etc/selinux/{POLICY_TYPE}/contexts", "dir", mtime=T),
        Entry(fc, "dir", mtime=T),
        Entry(f"{fc}/file_contexts", data=FILE_CONTEXTS, mtime=T),
        Entry(f"{fc}/file_contexts.subs_dist", data=b"/bin /usr/bin\n", mtime=T),
        Entry("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o755, mtime=T),
        Entry("usr/lib/shared", data=b"shared", mtime=T),
        Entry("usr/bin/shared", "hardlink", linkname="usr/lib/shared", mtime=T),
        Entry("usr/lib/shared2", "hardlink", linkname="usr/lib/shared", mtime=T),
        Entry("bin", "symlink", 0o777, linkname="usr/bin", mtime=T),
        Entry(
            "etc/stale",
            data=b"x",
            mtime=T,
            xattrs={"security.selinux": b"unconfined_u:object_r:container_file_t:s0\0"},
        ),
    ]


LABELLED_DUMP = [
    f"/ 0 40755 7 0 0 0 {T}.0 - - - security.selinux={CTX.format('root_t')}",
    f"/bin 7 120777 1 0 0 0 {T}.0 usr/bin - - security.selinux={CTX.format('bin_t')}",
    f"/boot 0 40755 2 0 0 0 {T}.0 - - - security.selinux={CTX.format('default_t')}",
    f"/etc 0 40755 3 0 0 0 {T}.0 - - - security.selinux={CTX.format('etc_t')}",
]


def test_import_labels_from_the_image_policy(tmp_path: Path) -> None:
    ref = layout(tmp_path / "img", [base_layer(T), policy_layer()])
    result = import_image(ref, None, algorithm=HashAlg.SHA256)
    tree = result.tree
    assert tree is not None
    lines = dumpfile.dumps(tree).decode().splitlines()
    assert lines[:4] == LABELLED_DUMP
    assert f"/run 0 40755 2 0 0 0 {T}.0 - - -" in lines  # <<none>>: no label
    assert f"/etc/stale 1 100644 1 0 0 0 {T}.0 - x - security.selinux={CTX.format('etc_t')}" in (
        lines
    )

    def label(path: bytes) -> bytes | None:
        node = lookup(tree, path)
        assert node is not None
        return node.xattrs.get(b"security.selinux")

    assert label(b"usr/bin/tool") == CTX.format("bin_t").encode()
    # The hardlinked file: /usr/bin/shared (first in sorted order) keeps the inode and
    # gets bin_t; /usr/lib/shared and /usr/lib/shared2 (lib_t) share one new inode.
    shared = [lookup(tree, p) for p in (b"usr/bin/shared", b"usr/lib/shared", b"usr/lib/shared2")]
    assert [n.xattrs[b"security.selinux"] for n in shared if n] == [
        CTX.format(t).encode() for t in ("bin_t", "lib_t", "lib_t")
    ]
    assert shared[0] is not shared[1] and shared[1] is not shared[2]
    assert [n.nlink for n in shared if n] == [1, 1, 1]

    # An import into a repository gives the same image, and so does one that reuses the layers.
    repo = make_repo(tmp_path / "repo")
    assert import_image(ref, repo).image_digest == result.image_digest
    assert import_image(ref, repo, tag="again").layers_reused == 2
    assert import_image(ref, repo, tag="again").image_digest == result.image_digest


def test_no_policy_no_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layer = [e for e in policy_layer() if "file_contexts" not in str(e.path)]
    ref = layout(tmp_path / "img", [base_layer(T), layer])
    with caplog.at_level(logging.WARNING):
        result = import_image(ref, None, algorithm=HashAlg.SHA256)
    assert result.tree is not None
    assert b"security.selinux" not in dumpfile.dumps(result.tree)
    assert caplog.messages == [
        f"/etc/selinux/config names the SELinux policy {POLICY_TYPE}, but "
        f"/etc/selinux/{POLICY_TYPE}/contexts/files/file_contexts is missing: not labelling"
    ]


def _tree_with(config: bytes) -> Inode:
    root = Inode.directory(0o755)
    for name in (b"boot", b"sysroot"):
        root.children[name] = Inode.directory(0o755)  # type: ignore[index]
    usr = root.children[b"usr"] = Inode.directory(0o755)  # type: ignore[index]
    usr.children[b"f"] = Inode(mode=REG | 0o644, xattrs={b"security.selinux": b"x"})  # type: ignore[index]
    etc = root.children[b"etc"] = Inode.directory(0o755)  # type: ignore[index]
    sel = etc.children[b"selinux"] = Inode.directory(0o755)  # type: ignore[index]
    sel.children[b"config"] = Inode(mode=REG | 0o644, content=config, size=len(config))  # type: ignore[index]
    return root


@pytest.mark.parametrize("config", [b"SELINUX=enforcing\n", b"#SELINUXTYPE=x\n", b"SELINUXTYPE=\n"])
def test_config_without_a_policy_type_leaves_the_tree_alone(config: bytes) -> None:
    root = _tree_with(config)
    transform_for_oci(root)
    before = dumpfile.dumps(root)
    transform_for_boot(root)
    assert dumpfile.dumps(root) == before


@pytest.mark.parametrize(
    ("config", "name"),
    [(b"SELINUXTYPE=targeted\n", "targeted"), (b" selinuxtype = mls \n", "mls"), (b"x\n", None)],
)
def test_policy_type(config: bytes, name: str | None) -> None:
    assert selabel.policy_type(config) == name


def test_is_policy_file() -> None:
    yes = [b"etc/selinux/config", b"etc/selinux/t/contexts/files/file_contexts.subs_dist"]
    no = [b"etc/selinux/t/contexts/files/file_contexts.bin", b"etc/selinux/t/config", b"x"]
    assert [selabel.is_policy_file(p) for p in yes + no] == [True, True, False, False, False]
