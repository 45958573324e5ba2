"""cfsboot's SELinux labels against libselinux's, and its regex translation against PCRE2.

The oracle is a Debian trixie chroot with selinux-policy-default installed
(`make setup`, tests/reftools/selinux-oracle.sh): its own libselinux
(selabel_lookup_raw with SELABEL_OPT_PATH on the text policy) labels every
path of two real trixie trees, that chroot itself and the test OS rootfs,
plus paths made from every rule of the policy, in every file type; cfsboot's
`fcontexts.Policy`, built from the same files, must give the same label to
each. Its libpcre2-8 then matches a corpus of patterns the way libselinux
compiles them (`^REGEX$`, PCRE2_DOTALL), and the Python translation must
agree on every subject.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfsboot.image import fcontexts
from cfsboot.image.pcre import Untranslatable, translate
from cfstest.gates import missing_capability
from cfstest.modload import load_file
from cfstest.selinux_edge import CTX, EDGE_CASES, EDGE_FILES
from conftest import CACHE, REPO_ROOT

pytestmark = [pytest.mark.integration]

ORACLE = CACHE / "selinux-oracle"
POLICY = "/srv/cfsboot-policy/"
KEY_MODES = (
    stat.S_IFREG,
    stat.S_IFDIR,
    stat.S_IFLNK,
    stat.S_IFBLK,
    stat.S_IFCHR,
    stat.S_IFIFO,
    stat.S_IFSOCK,
)

# Runs under the chroot's python3: its libselinux labels "MODE PATH" records (NUL-separated).
LABEL_SCRIPT = r"""
import ctypes, sys
lib = ctypes.CDLL("libselinux.so.1", use_errno=True)
class Opt(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("value", ctypes.c_char_p)]
lib.selabel_open.restype = ctypes.c_void_p
lib.selabel_open.argtypes = [ctypes.c_uint, ctypes.POINTER(Opt), ctypes.c_uint]
lib.selabel_lookup_raw.argtypes = [
    ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_int]
lib.freecon.argtypes = [ctypes.c_void_p]
opt = Opt(3, sys.argv[1].encode())  # SELABEL_OPT_PATH
handle = lib.selabel_open(0, ctypes.byref(opt), 1)  # SELABEL_CTX_FILE
if not handle:
    sys.exit("selabel_open failed: errno %d" % ctypes.get_errno())
out = []
for rec in sys.stdin.buffer.read().split(b"\0")[:-1]:
    mode, _, path = rec.partition(b" ")
    con = ctypes.c_void_p()
    if lib.selabel_lookup_raw(handle, ctypes.byref(con), path, int(mode, 8)) == 0:
        out.append(ctypes.string_at(con.value))
        lib.freecon(con)
    elif ctypes.get_errno() == 2:
        out.append(b"")
    else:
        sys.exit("selabel_lookup_raw %r: errno %d" % (path, ctypes.get_errno()))
sys.stdout.buffer.write(b"".join(o + b"\0" for o in out))
"""

# Runs under the chroot's python3: PCRE2 compiles each pattern as libselinux does
# (^PATTERN$, PCRE2_DOTALL) and matches every subject: "E" (no compile), "1", "0".
PCRE_SCRIPT = r"""
import ctypes, json, sys
pcre = ctypes.CDLL("libpcre2-8.so.0")
pcre.pcre2_compile_8.restype = ctypes.c_void_p
pcre.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
pcre.pcre2_match_data_create_from_pattern_8.restype = ctypes.c_void_p
pcre.pcre2_match_data_create_from_pattern_8.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
pcre.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
corpus = json.load(sys.stdin)
subjects = [s.encode("latin-1") for s in corpus["subjects"]]
rows = []
for p in corpus["patterns"]:
    pat = b"^" + p.encode("latin-1") + b"$"
    err, off = ctypes.c_int(), ctypes.c_size_t()
    code = pcre.pcre2_compile_8(pat, len(pat), 0x20, ctypes.byref(err), ctypes.byref(off), None)
    if not code:
        rows.append("E")
        continue
    md = pcre.pcre2_match_data_create_from_pattern_8(code, None)
    rows.append("".join(
        "1" if pcre.pcre2_match_8(code, s, len(s), 0, 0, md, None) >= 0 else "0"
        for s in subjects))
json.dump(rows, sys.stdout)
"""


@pytest.fixture(scope="module")
def oracle() -> Path:
    if not (ORACLE / ".cfsboot-key").exists():
        missing_capability(f"SELinux oracle chroot not found in {ORACLE} (run `make setup`)")
    probe = subprocess.run(["chroot", str(ORACLE), "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        missing_capability("cannot chroot into the SELinux oracle (needs root)")
    return ORACLE


def _in_oracle(
    root: Path, script: str, args: list[str], data: bytes, mnt: Path | None = None
) -> bytes:
    """Run a python3 script in the oracle chroot; mnt: a host directory it sees on /mnt."""
    argv = ["chroot", str(root), "/usr/bin/python3", "-c", script, *args]
    if mnt is not None:
        # A private mount namespace: the cached chroot itself is not touched.
        argv = [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" "$1/mnt" && shift && exec "$@"', str(mnt), str(root), *argv,
        ]  # fmt: skip
    proc = subprocess.run(
        argv,
        input=data,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _libselinux(
    root: Path, entries: list[tuple[bytes, int]], policy: Path | None = None
) -> list[bytes | None]:
    """libselinux's labels, from the oracle's policy or from the files in `policy`."""
    data = b"".join(b"%o %s\0" % (mode, path) for path, mode in entries)
    spec = "/mnt/file_contexts" if policy else POLICY + "file_contexts"
    labels = _in_oracle(root, LABEL_SCRIPT, [spec], data, policy).split(b"\0")[:-1]
    assert len(labels) == len(entries)
    return [label or None for label in labels]


def _policy(root: Path) -> fcontexts.Policy:
    def text(name: str) -> bytes | None:
        path = root / POLICY.lstrip("/") / name
        return path.read_bytes() if path.exists() else None

    return fcontexts.policy_from_files(text, POLICY)


def _tree(top: Path) -> Iterator[tuple[bytes, int]]:
    """(absolute path inside top, st_mode) of every file under top, top included."""
    yield b"/", os.lstat(top).st_mode
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(bytes(top) + rel) as it:
            for entry in it:
                path = rel + b"/" + entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                yield path, mode
                if stat.S_ISDIR(mode):
                    stack.append(path)


def _compare(oracle: Path, entries: list[tuple[bytes, int]]) -> None:
    policy = _policy(oracle)
    ours = [policy.lookup(path, mode) for path, mode in entries]
    theirs = _libselinux(oracle, entries)
    wrong = [
        (path.decode(errors="replace"), oct(mode), a, b)
        for (path, mode), a, b in zip(entries, ours, theirs, strict=True)
        if a != b
    ]
    assert wrong[:20] == [], f"{len(wrong)} of {len(entries)} paths labelled unlike libselinux"


def test_real_trees_get_libselinux_labels(oracle: Path) -> None:
    testos = load_file(REPO_ROOT / "vm-tests" / "testos.py")
    rootfs = testos.ensure_base_rootfs()
    entries = [*_tree(oracle), *_tree(rootfs)]
    assert len(entries) > 20_000  # two whole trixie trees
    _compare(oracle, entries)


def _paths_from_rules(rules: list[fcontexts.Rule]) -> set[bytes]:
    """Paths near every rule: its literal prefix with a few endings, and each literal."""
    paths = set()
    for rule in rules:
        head = re.split(rb"[.^$?*+|\[({\\]", rule.regex, maxsplit=1)[0]
        for tail in (b"", b"x", b"/x", b".so", b"-1.2", b"/a/b", b"/.cache"):
            path = (head + tail).rstrip(b"/") or b"/"
            if path.startswith(b"/") and b"//" not in path:
                paths.add(path)
        literal = fcontexts._simplify(rule.regex)
        if literal is not None and literal.startswith(b"/"):
            paths.add(literal)
    return paths


def test_every_rule_in_every_file_type_gets_libselinux_labels(oracle: Path) -> None:
    policy = _policy(oracle)
    assert len(policy.rules) > 5000
    paths = sorted(_paths_from_rules(policy.rules))
    _compare(oracle, [(path, mode) for path in paths for mode in KEY_MODES])


def test_edge_cases_are_libselinux_answers(oracle: Path, can_mount: None, tmp_path: Path) -> None:
    """tests/unit/test_selabel.py's expectations for its edge-case policy are libselinux's."""
    for name, text in EDGE_FILES.items():
        (tmp_path / name).write_text(text)
    entries = [(path.encode(), mode) for path, mode, _ in EDGE_CASES]
    expected = [None if t is None else CTX.format(t).encode() for _, _, t in EDGE_CASES]
    assert _libselinux(oracle, entries, tmp_path) == expected


# Patterns: what policies write, what pcre.py rewrites, and edge cases of both.
PATTERNS = [
    r"/usr/lib(/.*)?",
    r"/usr/(.*/)?lib(64)?/libfoo\.so.*",
    r"/home/[^/]+/\.cache(/.*)?",
    r"/dev/[shmxv]d[^/]*",
    r"/a?quota\.(user|group)",
    r"/etc/x[0-9]{2}",
    r"/etc/x[0-9]{2,}",
    r"/etc/x[0-9]{,2}",
    r"/etc/x[0-9]{ 1 , 2 }",
    r"/etc/x{",
    r"/etc/x{a}",
    r"/etc/x{1,2,3}",
    r"/etc/x}",
    r"/var/[[:alpha:]]+",
    r"/var/[[:digit:][:upper:]]+",
    r"/var/[^[:space:]]+",
    r"/var/[[:^digit:]]+",
    r"/var/[[:punct:]]",
    r"/var/[[:xdigit:]]+",
    r"/var/[[:word:]-]+",
    r"/var/[]a]",
    r"/var/[^]a]",
    r"/var/[a-]",
    r"/var/[-a]",
    r"/var/[a-c-e]",
    r"/var/[\d-]",
    r"/var/[\]\\]",
    r"/var/[.]",
    r"/var/[\x41-\x43]",
    r"/var/\d+\w*\s?",
    r"/var/\h",
    r"/var/\v",
    r"/var/\N+",
    r"/var/\x41\x{42}\101\o{103}",
    r"/var/\0101\07",
    r"/var/\Qa.b*\E",
    r"/var/a\Z",
    r"/var/a\z",
    r"/var/a$",
    r"/var/a.",
    r"/var/a++",
    r"/var/a*+b",
    r"/var/(?>a+)b",
    r"/var/a+?b",
    r"/var/(?i)abc",
    r"/var/(?i:abc)d",
    r"/var/(a(?i)b|c)",
    r"/var/(?#note)x",
    r"/var/(?=x)x.",
    r"/var/(?!x).",
    r"/var/.(?<=b)",
    r"/var/(a)\1",
    r"/var/(?<n>a)\k<n>",
    r"/a|/b",
    r"/var/\e\cA",
    r"/var/#x",
    r"/var/a\-b\_c\,d",
    r"/var/\R",
]
SUBJECTS = [
    "/usr/lib",
    "/usr/lib/",
    "/usr/lib/x",
    "/usr/share/lib64/libfoo.so.1",
    "/home/u/.cache/x",
    "/home/u/v/.cache",
    "/dev/sda1",
    "/quota.user",
    "/aquota.group",
    "/etc/x12",
    "/etc/x1",
    "/etc/x",
    "/etc/x123",
    "/etc/x{",
    "/etc/x{a}",
    "/etc/x{1,2,3}",
    "/etc/x}",
    "/var/abc",
    "/var/ABC",
    "/var/aBc",
    "/var/aBcd",
    "/var/ab",
    "/var/aB",
    "/var/c",
    "/var/C",
    "/var/12",
    "/var/1A",
    "/var/a b",
    "/var/a\tb",
    "/var/a\n",
    "/var/a\nb",
    "/var/a\r\n",
    "/var/!",
    "/var/-",
    "/var/]",
    "/var/\\",
    "/var/.",
    "/var/a",
    "/var/aa",
    "/var/aab",
    "/var/b",
    "/var/xy",
    "/var/x",
    "/var/ABC",
    "/var/AB",
    "/var/a.b*",
    "/var/#x",
    "/var/a-b_c,d",
    "/var/\x1b\x01",
    "/var/\xa0",
    "/var/\x0b",
    "/var/\x85",
    "/a",
    "/ab",
    "/b",
    "/xb",
    "/ba",
    "/var/ab12_",
    "/var/1",
    "/var/e",
    "/var/ABAC",
    "/var/\x081\x07",
]


def test_translation_matches_like_pcre2(oracle: Path) -> None:
    import json

    corpus = {"patterns": PATTERNS, "subjects": SUBJECTS}
    rows = json.loads(_in_oracle(oracle, PCRE_SCRIPT, [], json.dumps(corpus).encode()))
    refused = []
    for pattern, row in zip(PATTERNS, rows, strict=True):
        raw = pattern.encode("latin-1")
        assert row != "E", f"PCRE2 does not compile {pattern!r}"
        try:
            tr = translate(raw)
        except Untranslatable:
            refused.append(pattern)
            continue
        compiled = re.compile(b"^" + tr.pattern + b"$", re.DOTALL)
        ours = "".join("1" if compiled.search(s.encode("latin-1")) else "0" for s in SUBJECTS)
        assert ours == row, f"{pattern!r} -> {tr.pattern!r}"
    assert refused == []
