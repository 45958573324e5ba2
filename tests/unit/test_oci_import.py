"""Importing OCI images: the rules of layer application, sources, and the golden tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfsboot.composefs import dumpfile
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.tree import lookup
from cfsboot.errors import CfsbootError
from cfsboot.image.importer import import_image
from cfsboot.image.transform import XattrFilter
from cfsboot.linux.arch import oci_arch
from cfstest.ocibuild import (
    Compression,
    Entry,
    Layout,
    tar_chunks,
    write_docker_archive,
    write_oci_archive,
)
from cfstest.ocirepo import base_layer, count_objects, layout, make_repo
from cfstest.reftools import RefTools
from setuproot.contract import HashAlg

DATA = Path(__file__).resolve().parent.parent / "data"
T = 1700000000


def rich_layers() -> list[list[Entry]]:
    """Two layers exercising every rule: the golden image."""
    long_dir = "usr/share/" + "d" * 120
    lower = [
        *base_layer(T),
        Entry("usr/bin/tool", data=b"#!/bin/sh\n" + b"echo tool\n" * 20, mode=0o755, mtime=T),
        Entry("usr/bin/tool-link", "hardlink", linkname="usr/bin/tool", mode=0o755, mtime=T),
        Entry("usr/bin/sh", "symlink", linkname="/bin/dash", mtime=T, mode=0o777),
        Entry(
            "usr/bin/ping",
            data=b"p" * 100,
            mode=0o755,
            mtime=T,
            xattrs={
                "security.capability": b"\x01\x00\x00\x02" + b"\x00" * 16,
                "security.selinux": b"system_u:object_r:bin_t:s0\x00",
                "user.note": b"kept only in keep-user mode",
            },
        ),
        Entry("usr/lib/small", data=b"tiny", mtime=T, uid=1000, gid=1000),
        Entry("usr/lib/empty", data=b"", mtime=T),
        Entry("usr/lib/modules", "dir", mtime=T),
        Entry("usr/lib/modules/6.1.0", "dir", mtime=T),
        Entry("usr/lib/modules/6.1.0/vmlinuz", data=b"K" * 4097, mtime=T),
        Entry("usr/lib/modules/6.1.0/initramfs.img", data=b"I" * 5000, mtime=T),
        Entry("usr/lib/bootc", "dir", mtime=T),
        Entry("usr/lib/bootc/kargs.d", "dir", mtime=T),
        Entry("usr/lib/bootc/kargs.d/10-test.toml", data=b'kargs = ["quiet"]\n', mtime=T),
        Entry(long_dir, "dir", mtime=T),
        Entry(long_dir + "/" + "f" * 200, data=b"long name content " * 5, mtime=T),
        Entry("etc/old", data=b"old config", mtime=T),
        Entry("etc/gone-dir", "dir", mtime=T),
        Entry("etc/gone-dir/file", data=b"x", mtime=T),
        Entry("etc/opaque", "dir", mtime=T),
        Entry("etc/opaque/lower", data=b"hidden by opaque", mtime=T),
        Entry("dev", "dir", mtime=T),
        Entry("dev/null", "char", 0o666, major=1, minor=3, mtime=T),
        Entry("dev/sda", "block", 0o660, major=8, minor=0, mtime=T, gid=6),
        Entry("dev/initctl", "fifo", 0o600, mtime=T),
        Entry("run/lock", "dir", mtime=T),
        Entry("run/lock/stale", data=b"pid", mtime=T),
        Entry("boot/EFI", "dir", mtime=T),
        Entry("boot/EFI/Linux", "dir", mtime=T),
        Entry("boot/EFI/Linux/test.efi", data=b"MZ" + b"u" * 200, mtime=T),
        Entry("sysroot/ostree", "dir", mtime=T),
    ]
    upper = [
        Entry("etc/.wh.old", mtime=T),
        Entry("etc/.wh.gone-dir", mtime=T),
        Entry("etc/opaque", "dir", 0o700, mtime=T + 1),
        Entry("etc/opaque/.wh..wh..opq", mtime=T + 1),
        Entry("etc/opaque/upper", data=b"visible", mtime=T + 1),
        Entry("etc/old", data=b"recreated in the same layer as its whiteout", mtime=T + 1),
        Entry("usr", "dir", 0o755, mtime=T + 5, mtime_nsec=250000000),
        Entry("usr/lib/small", data=b"replaced", mtime=T + 2),
    ]
    return [lower, upper]


def test_golden_tree(tmp_path: Path) -> None:
    ref = layout(tmp_path / "img", rich_layers())
    result = import_image(ref, None, algorithm=HashAlg.SHA256)
    assert result.tree is not None
    dump = dumpfile.dumps(result.tree)
    golden = (DATA / "oci_golden.dump").read_bytes()
    assert dump == golden
    # The digest is that of the V1 image of exactly this tree.
    image = build_image(dumpfile.parse(golden), min_version=1)
    assert result.image_digest == digest_bytes(image, HashAlg.SHA256).hex()
    boot = result.boot
    assert [k.version for k in boot.kernels] == ["6.1.0"]
    assert boot.kernels[0].vmlinuz.path == "/usr/lib/modules/6.1.0/vmlinuz"
    assert boot.kernels[0].initramfs is not None
    assert [u.path for u in boot.ukis] == ["/boot/EFI/Linux/test.efi"]
    assert [(k.path, k.content) for k in boot.kargs] == [
        ("/usr/lib/bootc/kargs.d/10-test.toml", b'kargs = ["quiet"]\n')
    ]


@pytest.mark.conformance
def test_golden_digest_matches_c_mkcomposefs(reftools: RefTools) -> None:
    """C mkcomposefs --min-version=1 of the golden dump has the digest cfsboot computes."""
    out = reftools.run(
        "mkcomposefs",
        "--from-file",
        "--min-version=1",
        "--print-digest-only",
        DATA / "oci_golden.dump",
    )
    assert out.decode().strip() == (DATA / "oci_golden.sha256-id").read_text().strip()


def test_keep_user_xattrs(tmp_path: Path) -> None:
    ref = layout(tmp_path / "img", rich_layers())
    result = import_image(ref, None, algorithm=HashAlg.SHA256, xattrs=XattrFilter.KEEP_USER)
    assert result.tree is not None
    ping = lookup(result.tree, b"/usr/bin/ping")
    assert ping is not None
    assert sorted(ping.xattrs) == [b"security.capability", b"user.note"]


@pytest.mark.parametrize("compression", list(Compression))
def test_compressions_give_the_same_image(tmp_path: Path, compression: Compression) -> None:
    ref = layout(tmp_path / "img", rich_layers(), compression)
    digest = import_image(ref, None, algorithm=HashAlg.SHA256).image_digest
    golden = (DATA / "oci_golden.sha256-id").read_text().strip()
    assert digest == golden


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_multi_frame_layers(tmp_path: Path, compression: Compression) -> None:
    """Concatenated gzip members / zstd frames (zstd:chunked layers are many frames)."""
    import dataclasses
    import gzip
    import hashlib

    import zstandard

    tar = b"".join(tar_chunks(rich_layers()[0]))
    half = len(tar) // 2
    if compression is Compression.GZIP:
        blob = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)
    else:
        z = zstandard.ZstdCompressor()
        blob = z.compress(tar[:half]) + z.compress(tar[half:])
    out = Layout(tmp_path / "img")
    desc = out.add_blob(blob, compression.media_type)
    desc = dataclasses.replace(desc, diff_id="sha256:" + hashlib.sha256(tar).hexdigest())
    out.add_image([desc])
    whole = layout(tmp_path / "whole", [rich_layers()[0]])
    expected = import_image(whole, None, algorithm=HashAlg.SHA256).image_digest
    assert (
        import_image(f"oci:{tmp_path}/img", None, algorithm=HashAlg.SHA256).image_digest == expected
    )


def test_import_equals_compute_id(tmp_path: Path) -> None:
    ref = layout(tmp_path / "img", rich_layers())
    for alg in HashAlg:
        repo = make_repo(tmp_path / f"repo-{alg}", alg)
        imported = import_image(ref, repo)
        assert imported.image_digest == import_image(ref, None, algorithm=alg).image_digest
        assert repo.has_image(imported.image_digest)
        tag = "oci:" + f"{tmp_path}/img".replace("/", "%2F")
        assert repo.tags() == {tag: imported.image_digest}


def test_archives_give_the_same_image(tmp_path: Path) -> None:
    golden = (DATA / "oci_golden.sha256-id").read_text().strip()
    layout(tmp_path / "img", rich_layers())
    write_oci_archive(tmp_path / "img", tmp_path / "img.tar")
    assert import_image(f"oci-archive:{tmp_path}/img.tar", None, algorithm=HashAlg.SHA256)
    r = import_image(f"oci-archive:{tmp_path}/img.tar:latest", None, algorithm=HashAlg.SHA256)
    assert r.image_digest == golden
    write_docker_archive(tmp_path / "docker.tar", rich_layers(), repo_tag="test:1")
    r = import_image(f"docker-archive:{tmp_path}/docker.tar", None, algorithm=HashAlg.SHA256)
    assert r.image_digest == golden
    r = import_image(f"docker-archive:{tmp_path}/docker.tar:test:1", None, algorithm=HashAlg.SHA256)
    assert r.image_digest == golden


def _arch_layout(path: Path) -> Layout:
    out = Layout(path)
    manifests = []
    for arch in ("amd64", "arm64"):
        layer = [*base_layer(), Entry("usr/arch", data=arch.encode() * 30)]
        desc = out.add_layer(tar_chunks(layer), Compression.GZIP)
        manifests.append(out.add_image([desc], arch=arch, tag=None))
    out.add_image_index(manifests, "latest")
    return out


def test_multi_arch_index(tmp_path: Path) -> None:
    _arch_layout(tmp_path / "img")
    ref = f"oci:{tmp_path}/img:latest"
    results = {
        a: import_image(ref, None, algorithm=HashAlg.SHA256, arch=a) for a in ("amd64", "arm64")
    }
    for arch, r in results.items():
        assert r.tree is not None and r.tree.children is not None
        usr = r.tree.children[b"usr"].children
        assert usr is not None
        assert usr[b"arch"].digest == digest_bytes(arch.encode() * 30, HashAlg.SHA256)
    assert results["amd64"].manifest_digest != results["arm64"].manifest_digest
    default = import_image(ref, None, algorithm=HashAlg.SHA256)
    assert default.image_digest == results[oci_arch()].image_digest
    with pytest.raises(CfsbootError, match=r"no image for architecture s390x .*amd64, arm64"):
        import_image(ref, None, arch="s390x")


def test_two_layers_then_a_third_reads_only_the_new_layer(tmp_path: Path) -> None:
    l1 = [*base_layer(), *(Entry(f"usr/lib/f{i}", data=bytes([i]) * 1000) for i in range(20))]
    l2 = [Entry("usr/bin/app", data=b"app" * 100, mode=0o755)]
    l3 = [Entry("usr/lib/f3", data=b"changed" * 100)]
    v1 = layout(tmp_path / "v1", [l1, l2])
    repo = make_repo(tmp_path / "repo")
    r1 = import_image(v1, repo, tag="app")
    assert (r1.layers_read, r1.layers_reused, r1.objects_written) == (2, 0, 21)
    before = count_objects(repo)
    v2 = layout(tmp_path / "v2", [l1, l2, l3])
    # The shared layers' blobs are gone from v2: proof that they are not read again.
    for layer in r1.layers:
        assert layer.digest is not None
        (tmp_path / "v2" / "blobs" / "sha256" / layer.digest[7:]).unlink()
    r2 = import_image(v2, repo, tag="app")
    assert (r2.layers_read, r2.layers_reused, r2.objects_written) == (1, 2, 1)
    # New objects: the changed file, the layer record, manifest, config, image, image info.
    assert count_objects(repo) - before == 6
    assert repo.tags() == {"app": r2.image_digest}
    assert r2.image_digest != r1.image_digest


def test_removed_objects_force_a_reread(tmp_path: Path) -> None:
    ref = layout(tmp_path / "img", [[*base_layer(), Entry("usr/big", data=b"b" * 500)]])
    repo = make_repo(tmp_path / "repo")
    r1 = import_image(ref, repo)
    obj = next(
        p for p in (repo.path / "objects").rglob("*") if p.is_file() and p.stat().st_size == 500
    )
    obj.unlink()
    r2 = import_image(ref, repo)
    assert (r2.layers_read, r2.objects_written) == (1, 1)
    assert r2.image_digest == r1.image_digest and obj.exists()


def test_hardlink_to_a_lower_layer_file(tmp_path: Path) -> None:
    ref = layout(
        tmp_path / "img",
        [
            [*base_layer(), Entry("usr/a", data=b"a" * 100)],
            [Entry("usr/b", "hardlink", linkname="usr/a")],
        ],
    )
    tree = import_image(ref, None, algorithm=HashAlg.SHA256).tree
    assert tree is not None and tree.children is not None
    usr = tree.children[b"usr"].children
    assert usr is not None and usr[b"a"] is usr[b"b"] and usr[b"a"].nlink == 2


def test_missing_parents_are_created(tmp_path: Path) -> None:
    ref = layout(tmp_path / "img", [[Entry("usr/deep/er/file", data=b"x")]])
    tree = import_image(ref, None, algorithm=HashAlg.SHA256).tree
    assert tree is not None
    assert b"/usr/deep/er 0 40755 2 0 0 0 0.0" in dumpfile.dumps(tree)


def _import_peak(tmp_path: Path, size: int, compression: Compression) -> int:
    """The most memory Python allocated at once importing a layer with one `size`-byte file
    (zeros: gzip inflates them 1000:1)."""
    import tracemalloc

    tmp_path.mkdir()
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(size)
    ref = layout(tmp_path / "img", [[*base_layer(), Entry("usr/big", source=big)]], compression)
    repo = make_repo(tmp_path / "repo")
    tracemalloc.start()
    try:
        result = import_image(ref, repo)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.objects_written == 1 and result.bytes_written == size
    return peak


# What an import allocates whatever the layer's size: a chunk of zstd's input or of gzip's
# output (4 MiB) and a few MiB of buffered reads (measured: 4-12 MiB). The read-ahead's
# buffers and the files' (streams.ReadAhead, directio.BufferRing) are mappings of a fixed
# size, which tracemalloc does not see.
IMPORT_MEMORY = 20 << 20


@pytest.mark.parametrize("compression", list(Compression))
def test_layers_are_streamed_not_held_in_memory(tmp_path: Path, compression: Compression) -> None:
    """A layer goes through a fixed amount of memory: 2.5 times the file, not 2 MiB more
    (the allocations left are a few MiB: 1 MiB of noise is a large part of them)."""
    small = _import_peak(tmp_path / "small", 64 << 20, compression)
    large = _import_peak(tmp_path / "large", 160 << 20, compression)
    assert small < IMPORT_MEMORY, f"peak {small / 2**20:.1f} MiB for a 64 MiB layer"
    assert large < small + (2 << 20), f"peak {small >> 20} MiB for 64 MiB, {large >> 20} for 160"


def test_symlinks_are_stored_not_followed(tmp_path: Path) -> None:
    """Targets pointing anywhere (outside the root, at missing files) are kept verbatim, and
    a later entry through a symlinked directory is refused rather than followed."""
    links = {
        "usr/up": "../../../../etc/shadow",
        "usr/abs": "/etc/passwd",
        "usr/dangling": "nothing/here",
        "usr/self": "self",
    }
    ref = layout(
        tmp_path / "img",
        [[*base_layer(), *(Entry(p, "symlink", linkname=t, mode=0o777) for p, t in links.items())]],
    )
    tree = import_image(ref, None, algorithm=HashAlg.SHA256).tree
    assert tree is not None and tree.children is not None
    usr = tree.children[b"usr"].children
    assert usr is not None
    for path, target in links.items():
        node = usr[path.split("/")[1].encode()]
        assert node.is_symlink() and node.payload == target.encode() and node.size == len(target)
    through = layout(
        tmp_path / "through",
        [
            [*base_layer(), Entry("usr/etc", "symlink", linkname="/etc")],
            [Entry("usr/etc/passwd", data=b"x")],
        ],
    )
    with pytest.raises(CfsbootError, match="a parent is not a directory"):
        import_image(through, None, algorithm=HashAlg.SHA256)


def test_object_digests_either_side_of_the_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files hashed whole on a worker thread and files hashed chunk by chunk while they
    stream (bigger than MEMORY_OBJECT_MAX, lowered here to keep the test small) get the
    kernel's digest, with and without a repository, and the same content twice is one
    object."""
    from cfsboot.image import objectsink
    from cfsboot.image.objectsink import CHUNK

    MEMORY_OBJECT_MAX = 4 << 20  # noqa: N806
    monkeypatch.setattr(objectsink, "MEMORY_OBJECT_MAX", MEMORY_OBJECT_MAX)
    sizes = [65, 4096, MEMORY_OBJECT_MAX, MEMORY_OBJECT_MAX + 1, 3 * CHUNK + MEMORY_OBJECT_MAX + 7]
    pattern = bytes(range(251))  # a prime period: no two blocks alike across files
    blobs = {f"usr/f{i}": (bytes([i]) + pattern * (n // 251 + 1))[:n] for i, n in enumerate(sizes)}
    blobs["usr/again"] = blobs["usr/f4"]
    ref = layout(tmp_path / "img", [[*base_layer(), *(Entry(p, data=b) for p, b in blobs.items())]])
    repo = make_repo(tmp_path / "repo")
    stored = import_image(ref, repo)
    computed = import_image(ref, None, algorithm=repo.algorithm)
    assert stored.image_digest == computed.image_digest
    assert stored.objects_written == len(sizes) and stored.bytes_written == sum(sizes)
    assert stored.tree is not None and stored.tree.children is not None
    usr = stored.tree.children[b"usr"].children
    assert usr is not None
    for path, data in blobs.items():
        node = usr[path.split("/")[1].encode()]
        assert node.digest == digest_bytes(data, repo.algorithm), path
        assert repo.object_path(node.digest.hex()).read_bytes() == data


def test_objects_written_counts_only_new_contents(tmp_path: Path) -> None:
    """The writer threads find what the repository has: another image's layer with the
    same files, and a file twice, write (and count) only what is new."""
    shared = {"usr/a": b"a" * 5000, "usr/b": b"b" * 7000}
    first = layout(
        tmp_path / "one", [[*base_layer(), *(Entry(p, data=d) for p, d in shared.items())]]
    )
    files = {**shared, "usr/c": b"c" * 9000, "usr/c-again": b"c" * 9000}
    second = layout(
        tmp_path / "two", [[*base_layer(T + 5), *(Entry(p, data=d) for p, d in files.items())]]
    )
    repo = make_repo(tmp_path / "repo")
    r1 = import_image(first, repo)
    assert (r1.objects_written, r1.bytes_written) == (2, 12000)
    r2 = import_image(second, repo)
    assert (r2.layers_read, r2.objects_written, r2.bytes_written) == (1, 1, 9000)


@pytest.mark.parametrize("compression", list(Compression))
def test_bytes_read_counts_every_byte_of_the_layer_blobs(
    tmp_path: Path, compression: Compression
) -> None:
    """Including the bytes read to tell the compression, before the progress counted."""
    ref = layout(tmp_path / "img", rich_layers(), compression)
    blobs = tmp_path / "img" / "blobs" / "sha256"
    index = json.loads((tmp_path / "img" / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    sizes = [layer["size"] for layer in manifest["layers"]]
    assert sizes == [(blobs / layer["digest"][7:]).stat().st_size for layer in manifest["layers"]]
    result = import_image(ref, make_repo(tmp_path / "repo"))
    assert result.bytes_read == sum(sizes)
