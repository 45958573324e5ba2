"""The test OS as OCI image layouts (variants v1, v2, uki), cached.

Each layout has two layers (uki three), all but the first small:

1. the base rootfs (``testos.ensure_base_rootfs``, /dev emptied as in any
   container image): the same blob, hence the same bytes, in every variant, so
   importing v2 after v1 reads one layer only;
2. what makes it a cfsboot test OS (``oslayer.py``): the stager (``cfsboot`` and ``setuproot``
   in python3's dist-packages, ``/usr/bin/cfsboot``) and its systemd units, the
   dracut module with a freshly frozen setup-root, the kernel and a dracut
   initramfs at /usr/lib/modules/KVER/{vmlinuz,initramfs.img}, the guest check
   framework, an empty /etc/fstab, systemd-networkd with DHCP, the host's
   registry marked insecure, kargs.d, and the variant's own files;
3. (``uki`` only) /boot/EFI/Linux/cfsboot-testos-v1.efi, a UKI built with
   ukify over v1 whose .cmdline holds ``composefs=<digest of v1>``. /boot is
   emptied in the boot image, so this layer leaves the digest unchanged.

Every variant is built inside an overlay of the pristine rootfs (which is
never modified) and cached as ``CACHE/testos/oci-KEY/VARIANT`` (an OCI layout
tagged VARIANT) with ``VARIANT.json`` (digests, sizes) beside it; KEY hashes
the rootfs key, the stager, setup-root, dracut module and guest sources and
this recipe. The base layer is packed once per rootfs into
``CACHE/testos/base-layer-ROOTFSKEY-COMPRESSION/`` and hard-linked into the
layouts. Builds go to a temporary name and are renamed into place.

Runnable as ``python vm-tests/osimage.py [--variant v1] [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

import diskimage
import images
import oslayer
import testos
from cfsboot.boot.uki import read_uki
from cfstest import cli
from cfstest import ocibuild as build
from oslayer import KARGS, ROOT_LABEL, Variant

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Bump when the recipe changes in a way the hashed inputs below do not show.
RECIPE_VERSION = "1"
COMPRESSION = build.Compression.ZSTD
UKI_CMDLINE_ROOT = f"root=LABEL={ROOT_LABEL}"
# Hashed into the cache key: everything that ends up in the cfsboot layer, and how.
SOURCES = (
    "stager/cfsboot",
    "stager/systemd",
    "setup-root",
    "dracut-module",
    "vm-tests/guest",
    "vm-tests/osimage.py",
    "vm-tests/oslayer.py",
    "vm-tests/testos.py",
    "vm-tests/diskimage.py",
    "vm-tests/images.py",
)
# Kept in the cache (the newest, counting the current one); older ones are removed.
KEEP_BUILDS = 4
KEEP_BASE_LAYERS = 2


VARIANTS: dict[str, Variant] = {
    "v1": Variant("v1", "13.1"),
    "v2": Variant("v2", "13.2"),
    # On v2, not v1: the VM test switches a v1 system to it (same digest as v1 would be
    # "already booted").
    "uki": Variant("uki", "13.2", uki_of="v2"),
    # Debian's SELinux policy, booted permissive: the boot image carries the labels the
    # policy gives (cfsboot labels it at import), so restorecon finds nothing to do.
    "selinux": Variant(
        "selinux",
        "13.1",
        packages=("selinux-policy-default",),
        kargs=("security=selinux", "selinux=1", "enforcing=0"),
    ),
}
# The variants every VM test session builds; the others are built by the tests that use them.
DEFAULT_VARIANTS = ("v1", "v2", "uki")


@dataclass(frozen=True)
class OsImage:
    """A built variant: its layout and what the tests compare against."""

    variant: str
    layout: Path
    manifest_digest: str
    image_id: str  # `cfsboot image compute-id` (sha512): the composefs= digest
    kernel: str
    layers: tuple[dict[str, Any], ...]  # digest, diff_id, size, media_type

    @property
    def ref(self) -> str:
        """The image reference cfsboot and skopeo read it by."""
        return f"oci:{self.layout}:{self.variant}"


# ---------------------------------------------------------------------------
# cache key and layout


def sources_digest(repo: Path = REPO) -> str:
    """Hash of every source file that goes into (or shapes) the cfsboot layer."""
    h = hashlib.sha256()
    for top in SOURCES:
        for path in _files_under(repo / top):
            rel = path.relative_to(repo).as_posix()
            executable = os.stat(path).st_mode & 0o111 != 0
            h.update(f"{rel}\0{int(executable)}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        return
    for p in sorted(path.rglob("*")):
        if oslayer.skipped(p.relative_to(path)) or not p.is_file():
            continue
        yield p


def cache_key(rootfs_key: str | None = None, repo: Path = REPO) -> str:
    """Hash of every input of the OCI layouts (all variants share it)."""
    inputs = {
        "rootfs": rootfs_key or testos.cache_key(),
        "sources": sources_digest(repo),
        "recipe": RECIPE_VERSION,
        "compression": str(COMPRESSION),
        # setup-root is frozen with the host's python3 binary (setup-root/freeze.py).
        "freeze_python": _freeze_python_version(),
        "variants": {k: v.__dict__ for k, v in sorted(VARIANTS.items())},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _freeze_python_version() -> str:
    python = Path(os.environ.get("CFSBOOT_FREEZE_PYTHON", "/usr/bin/python3"))
    try:
        st = python.resolve().stat()
    except OSError:
        return "missing"
    return f"{python.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def oci_dir(cache_dir: Path = testos.DEFAULT_CACHE, key: str | None = None) -> Path:
    """CACHE/testos/oci-KEY: the layouts of the current inputs."""
    return cache_dir / "testos" / f"oci-{key or cache_key()}"


def ensure(variant: str, cache_dir: Path = testos.DEFAULT_CACHE) -> Path:
    """The OCI layout of variant (tagged with its name), building it first if absent."""
    return ensure_images((variant,), cache_dir)[variant].layout


def ensure_images(
    variants: Sequence[str] = tuple(VARIANTS), cache_dir: Path = testos.DEFAULT_CACHE
) -> dict[str, OsImage]:
    """The built variants (layouts and digests), all from the same sources.

    What is missing is built from a snapshot of the sources (others may be editing
    the tree meanwhile), so the key always names what was built.
    """
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown test OS variant {v!r} (one of {', '.join(VARIANTS)})")
    rootfs = testos.ensure_base_rootfs(cache_dir)
    found = {v: _load(oci_dir(cache_dir), v) for v in variants}
    if all(found.values()):
        return {v: image for v, image in found.items() if image is not None}
    images_: dict[str, OsImage] = {}
    with (
        testos._locked(cache_dir / "testos" / ".oci.lock"),
        snapshot_sources() as src,
        tempfile.TemporaryDirectory(prefix="cfsboot-osimage-frozen.") as frozen_dir,
    ):
        top = oci_dir(cache_dir, cache_key(repo=src))
        top.mkdir(parents=True, exist_ok=True)
        inputs = _Inputs(rootfs, top, cache_dir, src, Path(frozen_dir))
        for v in variants:
            images_[v] = _load(top, v) or _build_variant(VARIANTS[v], inputs)
        _prune(cache_dir / "testos", keep=(top, base_layer_dir(rootfs, cache_dir)))
    return images_


@dataclass
class _Inputs:
    """What one ensure_images() call builds from (one snapshot, one frozen setup-root)."""

    rootfs: Path
    top: Path
    cache_dir: Path
    src: Path
    frozen_dir: Path
    _frozen: Path | None = None

    def frozen(self) -> Path:
        """setup-root, frozen once: its zip carries timestamps, and v1 and v2 must only
        differ where the recipe says they do."""
        if self._frozen is None:
            self._frozen = oslayer.freeze_setup_root(self.frozen_dir, self.src)
        return self._frozen


def _build_variant(spec: Variant, inputs: _Inputs) -> OsImage:
    if spec.uki_of is None:
        return _build(spec, inputs)
    base = _load(inputs.top, spec.uki_of) or _build(VARIANTS[spec.uki_of], inputs)
    return _build_uki(spec, base, inputs)


@contextmanager
def snapshot_sources(repo: Path = REPO) -> Iterator[Path]:
    """A private copy of SOURCES (same relative paths), to hash and build from."""
    with tempfile.TemporaryDirectory(prefix="cfsboot-osimage-src.") as tmp:
        root = Path(tmp)
        for top in SOURCES:
            for path in _files_under(repo / top):
                dest = root / path.relative_to(repo)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
        yield root


def _load(top: Path, variant: str) -> OsImage | None:
    info_path = top / f"{variant}.json"
    layout = top / variant
    if not (layout / "index.json").exists() or not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    return OsImage(
        variant,
        layout,
        info["manifest_digest"],
        info["image_id"],
        info["kernel"],
        tuple(info["layers"]),
    )


def _prune(testos_dir: Path, keep: Sequence[Path]) -> None:
    """Remove all but the newest oci-* and base-layer-* directories (never those in keep)."""
    for pattern, count in (("oci-*", KEEP_BUILDS), ("base-layer-*", KEEP_BASE_LAYERS)):
        older = sorted(
            (p for p in testos_dir.glob(pattern) if p.is_dir() and p not in keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in older[max(count - 1, 0) :]:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------
# the base layer


def base_layer(rootfs: Path, cache_dir: Path) -> tuple[Path, build.Descriptor]:
    """The packed base rootfs (one blob per rootfs and compression) and its descriptor."""
    top = base_layer_dir(rootfs, cache_dir)
    desc_path = top / "layer.json"
    if not desc_path.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{top.name}.", dir=top.parent))
        try:
            # A scratch layout only for its streaming compressor; the blob is kept alone.
            scratch = build.Layout(tmp / "layout")
            desc = scratch.add_layer(build.tar_chunks(base_entries(rootfs)), COMPRESSION)
            os.replace(tmp / "layout" / "blobs" / "sha256" / desc.digest[7:], tmp / "blob")
            shutil.rmtree(tmp / "layout")
            (tmp / "layer.json").write_text(json.dumps(_desc_json(desc), indent=2) + "\n")
            os.rename(tmp, top)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    d = json.loads(desc_path.read_text())
    return top / "blob", build.Descriptor(d["media_type"], d["digest"], d["size"], d["diff_id"])


def base_layer_dir(rootfs: Path, cache_dir: Path) -> Path:
    key = rootfs.name.removeprefix("rootfs-")
    return cache_dir / "testos" / f"base-layer-{key}-{COMPRESSION}"


def base_entries(rootfs: Path) -> Iterator[build.Entry]:
    """The rootfs as tar members, with /dev empty (devtmpfs is mounted there at boot)."""
    for entry in build.entries_from_directory(rootfs):
        path = entry.path if isinstance(entry.path, bytes) else os.fsencode(entry.path)
        if path.startswith(b"dev/"):
            continue
        yield entry


def _desc_json(desc: build.Descriptor) -> dict[str, Any]:
    return {
        "media_type": desc.media_type,
        "digest": desc.digest,
        "size": desc.size,
        "diff_id": desc.diff_id,
    }


def _link_blob(src: Path, layout: Path, digest: str) -> None:
    dest = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _build(variant: Variant, inputs: _Inputs) -> OsImage:
    rootfs, top, src = inputs.rootfs, inputs.top, inputs.src
    started = time.monotonic()
    timings: dict[str, float] = {}
    base_blob, base_desc = base_layer(rootfs, inputs.cache_dir)
    timings["base_layer"] = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix=f".build-{variant.name}.", dir=top) as tmp:
        scratch = Path(tmp)
        layer = scratch / "layer"
        layer.mkdir()
        t = time.monotonic()
        oslayer.build_cfsboot_layer(variant, rootfs, layer, scratch, inputs.frozen(), src)
        timings["cfsboot_layer"] = time.monotonic() - t
        t = time.monotonic()
        out = scratch / "layout"
        layout = build.Layout(out)
        _link_blob(base_blob, out, base_desc.digest)
        small = layout.add_layer(build.tar_chunks(build.entries_from_directory(layer)), COMPRESSION)
        descs = [base_desc, small]
        timings["pack"] = time.monotonic() - t
        if variant.packages:
            t = time.monotonic()
            packages = scratch / "packages"
            oslayer.build_packages_layer(variant, rootfs, layer, packages)
            entries = build.entries_from_directory(packages)
            descs.append(layout.add_layer(build.tar_chunks(entries), COMPRESSION))
            timings["packages"] = time.monotonic() - t
        layout.add_image(descs, config=image_config(variant), tag=variant.name)
        return _publish(variant, out, top, rootfs, descs, started, timings, src)


def image_config(variant: Variant) -> dict[str, Any]:
    return {
        "config": {
            "Labels": {
                "containers.bootc": "1",
                "org.opencontainers.image.version": variant.name,
                "org.opencontainers.image.title": "cfsboot test OS",
            }
        }
    }


def _publish(
    variant: Variant,
    out: Path,
    top: Path,
    rootfs: Path,
    layers: Sequence[build.Descriptor],
    started: float,
    timings: dict[str, float],
    src: Path,
    expect_id: str | None = None,
) -> OsImage:
    """Compute the image's digest, write VARIANT.json, rename the layout into place.

    expect_id: the digest it must have (else nothing is published).
    """
    t = time.monotonic()
    image_id = compute_id(f"oci:{out}:{variant.name}", src=src)
    timings["compute_id"] = time.monotonic() - t
    if expect_id is not None and image_id != expect_id:
        raise RuntimeError(
            f"{variant.name}: the boot image digest is {image_id}, expected {expect_id}"
            " (an added layer changed more than /boot?)"
        )
    index = json.loads((out / "index.json").read_text())
    info = {
        "variant": variant.name,
        "manifest_digest": index["manifests"][0]["digest"],
        "image_id": image_id,
        "kernel": testos.kernel_version(rootfs),
        "layers": [_desc_json(d) for d in layers],
        "build_seconds": round(time.monotonic() - started, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    (top / f"{variant.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    final = top / variant.name
    shutil.rmtree(final, ignore_errors=True)
    os.rename(out, final)
    testos._fsync_dir(top)
    loaded = _load(top, variant.name)
    assert loaded is not None
    return loaded


# ---------------------------------------------------------------------------
# the UKI variant


def uki_cmdline(image_id: str) -> str:
    return " ".join([f"composefs={image_id}", UKI_CMDLINE_ROOT, *KARGS])


def uki_path(of: str) -> str:
    return f"/boot/EFI/Linux/cfsboot-testos-{of}.efi"


def ukify_argv(kver: str, cmdline: str, output: str) -> list[str]:
    modules = f"/usr/lib/modules/{kver}"
    return [
        "ukify",
        "build",
        f"--linux={modules}/vmlinuz",
        f"--initrd={modules}/initramfs.img",
        f"--cmdline={cmdline}",
        "--os-release=@/usr/lib/os-release",
        f"--uname={kver}",
        f"--output={output}",
    ]


def _build_uki(variant: Variant, base: OsImage, inputs: _Inputs) -> OsImage:
    rootfs, top, src = inputs.rootfs, inputs.top, inputs.src
    started = time.monotonic()
    timings: dict[str, float] = {}
    kver = base.kernel
    with tempfile.TemporaryDirectory(prefix=f".build-{variant.name}.", dir=top) as tmp:
        scratch = Path(tmp)
        tree = scratch / "tree"
        extract_layer(base.layout, base.variant, len(base.layers) - 1, tree)
        t = time.monotonic()
        inner = "/var/tmp/cfsboot-uki.efi"
        upper = scratch / "upper"
        testos.run_in_overlay(
            rootfs, ukify_argv(kver, uki_cmdline(base.image_id), inner), upper=upper, layers=(tree,)
        )
        timings["ukify"] = time.monotonic() - t
        layer = scratch / "layer"
        dest = layer / uki_path(base.variant).lstrip("/")
        dest.parent.mkdir(parents=True)
        shutil.move(upper / inner.lstrip("/"), dest)
        os.chmod(dest, 0o644)
        read_uki(dest).check_composefs(base.image_id)  # what ukify sealed is what we asked
        oslayer.normalise(layer, rootfs)
        t = time.monotonic()
        out = scratch / "layout"
        layout = build.Layout(out)
        descs = [_descriptor(d) for d in base.layers]
        for d in descs:
            _link_blob(base.layout / "blobs" / "sha256" / d.digest[7:], out, d.digest)
        uki = layout.add_layer(build.tar_chunks(build.entries_from_directory(layer)), COMPRESSION)
        layout.add_image([*descs, uki], config=image_config(variant), tag=variant.name)
        timings["pack"] = time.monotonic() - t
        # /boot is emptied in the boot image: the UKI layer must leave the digest as it is.
        return _publish(
            variant, out, top, rootfs, [*descs, uki], started, timings, src, base.image_id
        )


def _descriptor(d: Mapping[str, Any]) -> build.Descriptor:
    return build.Descriptor(d["media_type"], d["digest"], d["size"], d["diff_id"])


def extract_layer(layout: Path, tag: str, index: int, dest: Path) -> Path:
    """Unpack layer `index` of the image tagged `tag` in layout (one of ours) into dest."""
    manifest = _manifest(layout, tag)
    desc = manifest["layers"][index]
    blob = layout / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
    dest.mkdir(parents=True, exist_ok=True)
    with open(blob, "rb") as raw:
        if desc["mediaType"].endswith("+zstd"):
            stream: Any = zstandard.ZstdDecompressor().stream_reader(raw)
            mode = "r|"
        else:
            stream, mode = raw, "r|*"
        with tarfile.open(fileobj=stream, mode=mode) as tf:  # type: ignore[call-overload]
            tf.extractall(dest, filter="fully_trusted")
    return dest


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get(build.REF_NAME) == tag:
            digest = m["digest"].removeprefix("sha256:")
            result: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest).read_text())
            return result
    raise KeyError(f"{layout} has no image tagged {tag}")


def extract_uki(image: OsImage, dest: Path) -> Path:
    """Unpack the UKI layer of a uki variant into dest; the UKI's path there."""
    spec = VARIANTS[image.variant]
    if spec.uki_of is None:
        raise ValueError(f"variant {image.variant} has no UKI layer")
    extract_layer(image.layout, image.variant, len(image.layers) - 1, dest)
    return dest / uki_path(spec.uki_of).lstrip("/")


def ext4_guest(image: OsImage, workdir: Path, rootfs: Path | None = None) -> images.Ext4Guest:
    """The variant's tree on a plain ext4 root (no composefs), booted with its own kernel
    and initramfs: to try the test OS itself before `cfsboot install` puts it on a disk.
    The initramfs's setup-root unit does nothing without a composefs= argument."""
    rootfs = rootfs or testos.ensure_base_rootfs()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    layers: list[Path] = []
    for i in range(1, len(image.layers)):
        layers.insert(0, extract_layer(image.layout, image.variant, i, workdir / f"layer{i}"))
    modules = layers[-1] / "usr/lib/modules" / image.kernel
    guest_dir = workdir / "boot"
    guest_dir.mkdir(exist_ok=True)
    kernel = shutil.copy2(modules / "vmlinuz", guest_dir / "vmlinuz")
    initrd = shutil.copy2(modules / "initramfs.img", guest_dir / "initramfs.img")
    root = diskimage.ext4_root_image(
        rootfs,
        workdir / "root.ext4",
        size_mib=images.ROOT_MIB,
        label=ROOT_LABEL,
        layers=layers,
    )
    for layer in layers:
        shutil.rmtree(layer)
    return images.Ext4Guest(
        rootfs, Path(kernel), Path(initrd), root, {"ext4": time.monotonic() - started}
    )


# ---------------------------------------------------------------------------
# running things


def compute_id(ref: str, *args: str, env: Mapping[str, str] | None = None, src: Path = REPO) -> str:
    """`cfsboot image compute-id [args] ref` (sha512, the default of new repositories)."""
    proc = _run(cli.argv("image", "compute-id", *args, ref), env=cli.environ(env, src=src))
    return proc.stdout.decode().strip()


def _run(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=None if env is None else dict(env),
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"{' '.join(argv[:4])} … failed with exit code {proc.returncode}: "
            f"{lines[-1] if lines else '(no output)'}"
        )
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or find) the test OS OCI layouts.")
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), help="(repeatable; default: all)"
    )
    parser.add_argument("--cache", type=Path, default=testos.DEFAULT_CACHE, help="cache directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("osimage: not root, skipping the test OS build (chroot and mounts)")
        return 0
    started = time.monotonic()
    try:
        built = ensure_images(args.variant or tuple(VARIANTS), args.cache)
    except RuntimeError as exc:
        print(f"osimage: {exc}", file=sys.stderr)
        return 1
    for name, image in built.items():
        sizes = " + ".join(f"{layer['size'] / 1e6:.1f}" for layer in image.layers)
        print(f"{name}: {image.ref} ({sizes} MB, composefs={image.image_id[:16]}…)")
    print(f"{time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
