"""The test OS as OCI image layouts (variants v1, v2, uki), built with buildah, cached.

Built the way an image author builds (examples/debian/Containerfile): buildah
(containers-storage with the vfs driver, chroot isolation) runs
``containers/testos.Containerfile`` over the base image, which installs the
cfsboot Debian package (``make deb``'s recipe, built from the same sources)
with the variant's files; the package's postinst builds the initramfs with the
cfsboot dracut module, and the build ends with ``cfsboot container lint``.
Each image has two layers (uki three), all but the first small:

1. the base rootfs (``testos.ensure_base_rootfs``, /dev empty, imported with
   ``podman import`` as ``localhost/cfsboot/testos-base:ROOTFSKEY``): the same
   blob in every variant, so importing v2 after v1 reads one layer only;
2. the package and the variant's files (``oslayer.layer_files``: the guest check
   scenarios, an empty /etc/fstab, systemd-networkd with DHCP, the host's
   registry marked insecure, kargs.d, os-release, a dracut configuration for a
   trimmed initramfs), /boot emptied;
3. (``uki`` only) ``containers/testos-uki.Containerfile``: a UKI of v2 built by
   ``cfsboot container ukify`` in a first stage, whose .cmdline holds
   ``composefs=<digest of v2>``, copied to /boot/EFI/Linux in the second.
   /boot is emptied in the boot image, so this layer leaves the digest unchanged
   (checked here).

The images are pushed (zstd) to ``CACHE/testos/oci-KEY/VARIANT`` (an OCI layout
tagged VARIANT) with ``VARIANT.json`` (digests, sizes) beside it; KEY hashes the
rootfs key, the sources and this recipe. Builds work on a snapshot of the
sources and go to a temporary name renamed into place. The containers-storage
images of older keys are removed.

Runnable as ``PYTHONPATH=tests python vm-tests/osimage.py [--variant v1] [--cache DIR]``.
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
from oslayer import KARGS, ROOT_LABEL, Variant

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Bump when the recipe changes in a way the hashed inputs below do not show.
RECIPE_VERSION = "2"
UKI_CMDLINE_ROOT = f"root=LABEL={ROOT_LABEL}"
# Hashed into the cache key: everything that ends up in the images, and how.
SOURCES = (
    "pyproject.toml",
    "stager",
    "setup-root",
    "dracut-module",
    "debian",
    "vm-tests/guest",
    "vm-tests/containers",
    "vm-tests/osimage.py",
    "vm-tests/oslayer.py",
    "vm-tests/testos.py",
    "vm-tests/diskimage.py",
    "vm-tests/images.py",
)
CONTAINERS = "vm-tests/containers"
BASE_REPO = "localhost/cfsboot/testos-base"
IMAGE_REPO = "localhost/cfsboot/testos"
# Kept in the cache (the newest, counting the current one); older ones are removed.
KEEP_BUILDS = 4
REF_NAME = "org.opencontainers.image.ref.name"


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
    # v2 that never passes its health check: tried the tries its own
    # boot-assessment.toml gives it (2), then the machine boots v1 again (scenario 8).
    "v2bad": Variant("v2bad", "13.2", failing_health_check=True, boot_tries=2),
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
# cache key


def sources_digest(repo: Path = REPO) -> str:
    """Hash of every source file that goes into (or shapes) the images."""
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
        "variants": {k: v.__dict__ for k, v in sorted(VARIANTS.items())},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


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
    ):
        key = cache_key(repo=src)
        top = oci_dir(cache_dir, key)
        top.mkdir(parents=True, exist_ok=True)
        inputs = _Inputs(rootfs, top, key, src)
        for v in variants:
            images_[v] = _load(top, v) or _build_variant(VARIANTS[v], inputs)
        _prune(cache_dir / "testos", keep=(top,))
        _prune_storage(key)
    return images_


@dataclass
class _Inputs:
    """What one ensure_images() call builds from (one snapshot, one package)."""

    rootfs: Path
    top: Path
    key: str
    src: Path
    _deb: Path | None = None

    def deb(self) -> Path:
        """The cfsboot package of the snapshot, built once."""
        if self._deb is None:
            self._deb = build_deb(self.src)
        return self._deb

    def tag(self, variant: str) -> str:
        return f"{IMAGE_REPO}:{self.key}-{variant}"


def _build_variant(spec: Variant, inputs: _Inputs) -> OsImage:
    if spec.uki_of is None:
        return _build(spec, inputs)
    base = _load(inputs.top, spec.uki_of) or _build(VARIANTS[spec.uki_of], inputs)
    return _build_uki(spec, base, inputs)


@contextmanager
def snapshot_sources(repo: Path = REPO) -> Iterator[Path]:
    """A private copy of SOURCES (same relative paths), to hash and build from.

    Its parent directory is private too: dpkg-buildpackage writes the package there.
    """
    with tempfile.TemporaryDirectory(prefix="cfsboot-osimage-src.") as tmp:
        root = Path(tmp) / "src"
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
    """Remove all but the newest oci-* directories (never those in keep)."""
    older = sorted(
        (p for p in testos_dir.glob("oci-*") if p.is_dir() and p not in keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in older[max(KEEP_BUILDS - 1, 0) :]:
        shutil.rmtree(old, ignore_errors=True)


def _prune_storage(key: str) -> None:
    """Remove the test OS images of other keys from containers-storage (vfs: full copies)."""
    proc = subprocess.run(
        ["buildah", "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        env=container_env(),
        check=False,
    )
    old = [n for n in proc.stdout.split() if n.startswith(f"{IMAGE_REPO}:")]
    old = [n for n in old if not n.removeprefix(f"{IMAGE_REPO}:").startswith(f"{key}-")]
    if old:
        subprocess.run(["buildah", "rmi", *old], capture_output=True, env=container_env())


# ---------------------------------------------------------------------------
# building with the package and buildah


def container_env() -> dict[str, str]:
    """buildah and podman as CI runs them as root: vfs storage, chroot isolation."""
    return {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def build_deb(src: Path) -> Path:
    """`dpkg-buildpackage -b` in src (as `make deb` does); the .deb, in src's parent."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    _run(["dpkg-buildpackage", "-b", "-us", "-uc"], env=env, cwd=src)
    debs = sorted(src.parent.glob("cfsboot_*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"dpkg-buildpackage in {src} made {debs}, expected one cfsboot_*.deb")
    return debs[0]


def ensure_base_image(rootfs: Path) -> str:
    """The base rootfs in containers-storage (`podman import`, /dev empty); its name."""
    name = f"{BASE_REPO}:{rootfs.name.removeprefix('rootfs-')}"
    env = container_env()
    exists = ["podman", "image", "exists", name]
    if subprocess.run(exists, env=env, capture_output=True, check=False).returncode == 0:
        return name
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--exclude=./dev/*", "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert tar.stdout is not None
    proc = subprocess.run(
        ["podman", "import", "--quiet", "-", name],
        stdin=tar.stdout,
        capture_output=True,
        env=env,
        check=False,
    )
    tar.stdout.close()
    if tar.wait() != 0 or proc.returncode != 0:
        raise RuntimeError(f"podman import of {rootfs} failed: {proc.stderr.decode().strip()}")
    return name


def buildah_bud(
    containerfile: Path, context: Path, tag: str, build_args: Mapping[str, str]
) -> None:
    argv = ["buildah", "bud", "--quiet", "--file", str(containerfile), "--tag", tag]
    for k, v in build_args.items():
        argv += ["--build-arg", f"{k}={v}"]
    _run([*argv, str(context)], env=container_env())


def push(tag: str, layout: Path, name: str) -> None:
    """The image into an OCI layout (zstd layers) tagged name."""
    _run(
        [
            "buildah",
            "push",
            "--quiet",
            "--format",
            "oci",
            "--compression-format",
            "zstd",
            tag,
            f"oci:{layout}:{name}",
        ],
        env=container_env(),
    )


def dracut_conf() -> bytes:
    """A trimmed, host-independent initramfs (testos.py's flags), as dracut.conf.d says it."""
    return (
        "# vm-tests: what a virtio guest needs, measured in the toolchain notes.\n"
        f'omit_dracutmodules+=" {testos.DRACUT_OMIT} "\n'
        f'add_drivers+=" {testos.DRACUT_DRIVERS} "\n'
    ).encode()


def _build(variant: Variant, inputs: _Inputs) -> OsImage:
    started = time.monotonic()
    timings: dict[str, float] = {}
    base = ensure_base_image(inputs.rootfs)
    deb = inputs.deb()
    timings["deb_and_base"] = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix=f".build-{variant.name}.", dir=inputs.top) as tmp:
        scratch = Path(tmp)
        context = scratch / "context"
        (context / "overlay").mkdir(parents=True)
        files = oslayer.layer_files(variant, inputs.rootfs, inputs.src / "vm-tests" / "guest")
        files[oslayer.DRACUT_CONF] = (dracut_conf(), 0o644)
        oslayer.write_tree(context / "overlay", files, inputs.rootfs)
        os.link(deb, context / "cfsboot.deb")
        t = time.monotonic()
        containerfile = inputs.src / CONTAINERS / "testos.Containerfile"
        tag = inputs.tag(variant.name)
        args = {"BASE": base, "VARIANT": variant.name, "PACKAGES": " ".join(variant.packages)}
        buildah_bud(containerfile, context, tag, args)
        timings["buildah_bud"] = time.monotonic() - t
        t = time.monotonic()
        out = scratch / "layout"
        push(tag, out, variant.name)
        timings["push"] = time.monotonic() - t
        return _publish(variant, out, inputs, started, timings)


def _build_uki(variant: Variant, base: OsImage, inputs: _Inputs) -> OsImage:
    started = time.monotonic()
    timings: dict[str, float] = {}
    os_tag = inputs.tag(base.variant)
    env = container_env()
    if subprocess.run(["buildah", "inspect", os_tag], env=env, capture_output=True).returncode:
        # A cached layout whose image left containers-storage: bring it back.
        pulled = _run(["buildah", "pull", "--quiet", base.ref], env=env).stdout.decode().split()
        _run(["buildah", "tag", pulled[-1], os_tag], env=env)
    with tempfile.TemporaryDirectory(prefix=f".build-{variant.name}.", dir=inputs.top) as tmp:
        scratch = Path(tmp)
        context = scratch / "context"
        context.mkdir()
        t = time.monotonic()
        containerfile = inputs.src / CONTAINERS / "testos-uki.Containerfile"
        uki = Path(uki_path(base.variant)).name
        buildah_bud(containerfile, context, inputs.tag(variant.name), {"OS": os_tag, "UKI": uki})
        timings["buildah_bud"] = time.monotonic() - t
        out = scratch / "layout"
        push(inputs.tag(variant.name), out, variant.name)
        # /boot is emptied in the boot image: the UKI layer must leave the digest as it is.
        image = _publish(variant, out, inputs, started, timings, expect_id=base.image_id)
        sealed = read_uki(extract_uki(image, scratch / "uki")).check_composefs(base.image_id)
        assert sealed.digest == base.image_id
        return image


def _publish(
    variant: Variant,
    out: Path,
    inputs: _Inputs,
    started: float,
    timings: dict[str, float],
    expect_id: str | None = None,
) -> OsImage:
    """Compute the image's digest, write VARIANT.json, rename the layout into place.

    expect_id: the digest it must have (else nothing is published).
    """
    t = time.monotonic()
    image_id = compute_id(f"oci:{out}:{variant.name}", src=inputs.src)
    timings["compute_id"] = time.monotonic() - t
    if expect_id is not None and image_id != expect_id:
        raise RuntimeError(
            f"{variant.name}: the boot image digest is {image_id}, expected {expect_id}"
            " (an added layer changed more than /boot?)"
        )
    manifest_digest, layers = _layers(out, variant.name)
    info = {
        "variant": variant.name,
        "manifest_digest": manifest_digest,
        "image_id": image_id,
        "kernel": testos.kernel_version(inputs.rootfs),
        "layers": layers,
        "build_seconds": round(time.monotonic() - started, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    top = inputs.top
    (top / f"{variant.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    final = top / variant.name
    shutil.rmtree(final, ignore_errors=True)
    os.rename(out, final)
    testos._fsync_dir(top)
    loaded = _load(top, variant.name)
    assert loaded is not None
    return loaded


def _layers(layout: Path, tag: str) -> tuple[str, list[dict[str, Any]]]:
    """The manifest digest and the layers (digest, diff_id, size, media_type) of tag."""
    index = json.loads((layout / "index.json").read_text())
    digest = next(
        m["digest"] for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag
    )
    manifest = _manifest(layout, tag)
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    diff_ids = config["rootfs"]["diff_ids"]
    layers = [
        {
            "media_type": d["mediaType"],
            "digest": d["digest"],
            "size": d["size"],
            "diff_id": diff_id,
        }
        for d, diff_id in zip(manifest["layers"], diff_ids, strict=True)
    ]
    return digest, layers


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


# ---------------------------------------------------------------------------
# the UKI variant


def uki_cmdline(image_id: str) -> str:
    """The UKI's sealed command line: the digest, the image's kargs.d, the root."""
    return " ".join([f"composefs={image_id}", *KARGS, UKI_CMDLINE_ROOT])


def uki_path(of: str) -> str:
    return f"/boot/EFI/Linux/cfsboot-testos-{of}.efi"


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
            # Whiteouts (.wh.NAME) only delete from lower layers: not files of this one.
            members = (m for m in tf if not Path(m.name).name.startswith(".wh."))
            # Our own layers, trusted; `filter` only where tarfile has it (PEP 706: Python
            # 3.11.4, and Debian's 3.11.2 without its backport would refuse the argument).
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=members, **extra)
    return dest


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get(REF_NAME) == tag:
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
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=None if env is None else dict(env),
        cwd=cwd,
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
    parser.add_argument(
        "--base-image",
        metavar="NAME",
        help="only tag the base rootfs in containers-storage as NAME (make base-image)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("osimage: not root, skipping the test OS build (chroot and mounts)")
        return 0
    if args.base_image:
        base = ensure_base_image(testos.ensure_base_rootfs(args.cache))
        _run(["podman", "tag", base, args.base_image], env=container_env())
        print(f"{args.base_image}: {base}")
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
