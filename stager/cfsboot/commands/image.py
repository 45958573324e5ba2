"""`cfsboot image import|compute-id|list|inspect`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, TypedDict

from cfsboot.errors import die
from cfsboot.image.xattrfilter import XattrFilter
from setuproot.contract import DEFAULT_SYSROOT, REPO_DIR, HashAlg

if TYPE_CHECKING:
    from cfsboot.composefs.repository import Repository

# The import pipeline and the repository are imported by the commands that use them:
# `cfsboot --help` builds this parser too.
DEFAULT_REPO = f"{DEFAULT_SYSROOT}/{REPO_DIR}"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("image", help="import OCI images and compute their boot image digest")
    isub = p.add_subparsers(dest="image_command", metavar="SUBCOMMAND", parser_class=type(p))
    isub.required = True

    def common(q: argparse.ArgumentParser, *, repo: bool = True) -> None:
        if repo:
            q.add_argument(
                "--repo", default=DEFAULT_REPO, help=f"repository (default {DEFAULT_REPO})"
            )

    def source(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "imgref", metavar="IMGREF", help="oci:DIR[:TAG], oci-archive:FILE, docker://…"
        )
        q.add_argument(
            "--arch",
            help="architecture to pick from a multi-arch image (default: this machine's, as OCI"
            " names it: amd64 on x86_64)",
        )
        q.add_argument(
            "--src-tls-verify",
            type=tls_bool,
            metavar="BOOL",
            help="for registries: false allows plain HTTP and unverified certificates"
            " (default: verify, unless registries.conf marks the registry `insecure`)",
        )
        q.add_argument(
            "--xattrs",
            choices=[str(x) for x in XattrFilter],
            default=str(XattrFilter.ALLOWLIST),
            help="which xattrs the image keeps (composefs-rs's modes)",
        )

    q = isub.add_parser("import", help="import an image into the repository; prints its digest")
    source(q)
    common(q)
    q.add_argument("--tag", help="name to keep the image under (default: IMGREF)")
    q.add_argument("--init", action="store_true", help="create the repository if it does not exist")
    q.add_argument(
        "--hash", choices=[a.value for a in HashAlg], default="sha512", help="with --init"
    )
    q.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    q.set_defaults(func=cmd_import)

    q = isub.add_parser("compute-id", help="print the boot image digest without a repository")
    source(q)
    q.add_argument(
        "--hash",
        choices=[a.value for a in HashAlg],
        default="sha512",
        help="fs-verity algorithm (that of the repository it will live in)",
    )
    q.set_defaults(func=cmd_compute_id)

    q = isub.add_parser("list", help="list the tagged images")
    common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)

    q = isub.add_parser("inspect", help="show an imported image (by tag, reference or digest)")
    q.add_argument("image", metavar="IMGREF|DIGEST")
    common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_inspect)


def tls_bool(text: str) -> bool:
    """argparse type for skopeo-style booleans (`--src-tls-verify=false`)."""
    value = {"true": True, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return value


def _open_repo(path: str, *, init: bool = False, alg: str = "sha512") -> Repository:
    from cfsboot.composefs.repository import Repository

    if init and not os.path.exists(os.path.join(path, "meta.json")):
        return Repository.init(path, algorithm=HashAlg(alg))
    return Repository.open(path)


def cmd_import(args: argparse.Namespace) -> int:
    from cfsboot.image.importer import Progress, import_image

    repo = _open_repo(args.repo, init=args.init, alg=args.hash)
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    result = import_image(
        args.imgref,
        repo,
        arch=args.arch,
        tag=args.tag,
        xattrs=XattrFilter(args.xattrs),
        progress=progress,
        tls_verify=args.src_tls_verify,
    )
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write(
            f"{result.layers_read} layers read, {result.layers_reused} already present, "
            f"{result.objects_written} new objects ({result.bytes_written / 1e6:.1f} MB)\n"
        )
    print(result.image_digest)
    return 0


def cmd_compute_id(args: argparse.Namespace) -> int:
    from cfsboot.image.importer import import_image

    result = import_image(
        args.imgref,
        None,
        algorithm=HashAlg(args.hash),
        arch=args.arch,
        xattrs=XattrFilter(args.xattrs),
        tls_verify=args.src_tls_verify,
    )
    print(result.image_digest)
    return 0


def _image_size(repo: Repository, image_hex: str) -> int:
    try:
        return os.stat(repo.image_path(image_hex)).st_size
    except OSError:
        return 0


def _objects_size(repo: Repository, image_hex: str) -> tuple[int, int]:
    """(objects, bytes) of the file objects the image references, as they are on disk."""
    from cfsboot.composefs.erofs.reader import read_image
    from cfsboot.composefs.tree import walk

    fd = os.open(repo.image_path(image_hex), os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        tree = read_image(f.read())
    digests = {node.digest.hex() for _, node in walk(tree) if node.digest is not None}
    size = 0
    for d in digests:
        try:
            size += os.stat(repo.object_path(d)).st_blocks * 512
        except FileNotFoundError:
            pass
    return len(digests), size


class ImageRow(TypedDict):
    """One line of `image list` (--json prints these as they are)."""

    tag: str
    image: str  # the boot image's digest (hex)
    reference: str | None  # None: not imported by cfsboot, or its record is damaged
    manifest_digest: str | None
    size: int  # of the EROFS image only


def _rows(repo: Repository) -> list[ImageRow]:
    from cfsboot.image.info import read_image_info

    rows: list[ImageRow] = []
    for name, image_hex in repo.tags().items():
        info = read_image_info(repo, image_hex)
        rows.append(
            {
                "tag": name,
                "image": image_hex,
                "reference": info.reference if info is not None else None,
                "manifest_digest": info.manifest_digest if info is not None else None,
                "size": _image_size(repo, image_hex),
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    from cfsboot.composefs.repository import Repository

    repo = Repository.open(args.repo)
    rows = _rows(repo)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['tag']}\t{r['image']}\t{r['manifest_digest'] or '-'}")
    return 0


def _resolve(repo: Repository, what: str) -> str:
    from cfsboot.image.importer import default_tag

    if len(what) == repo.algorithm.hex_len and all(c in "0123456789abcdef" for c in what):
        if not repo.has_image(what):
            die(f"repository {repo.path} has no image {what}")
        return what
    tags = repo.tags()
    for name in (what, default_tag(what)):
        if name in tags:
            return tags[name]
    die(f"no image tagged {what!r} in {repo.path}", hint="see cfsboot image list")


def cmd_inspect(args: argparse.Namespace) -> int:
    from cfsboot.composefs.repository import Repository
    from cfsboot.image.info import config_stream, load_image_info
    from cfsboot.jsondoc import parse_object

    repo = Repository.open(args.repo)
    image_hex = _resolve(repo, args.image)
    info = load_image_info(repo, image_hex)
    if info is None:
        die(f"image {image_hex} was not imported by cfsboot (no import record)")
    config_raw = repo.read_stream(config_stream(info.config_digest))
    # Shown as it is (--json), so read as a plain JSON object; the platform line reads two keys.
    config = parse_object(config_raw, f"config {info.config_digest}") if config_raw else None
    n_objects, objects_size = _objects_size(repo, image_hex)
    out = {
        "image": image_hex,
        **{k: v for k, v in info.to_json().items() if k != "format"},
        "config": config,
        "image_size": _image_size(repo, image_hex),
        "objects": n_objects,
        "objects_size": objects_size,
        "size_on_disk": _image_size(repo, image_hex) + objects_size,
        "tags": sorted(n for n, h in repo.tags().items() if h == image_hex),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"image:           {image_hex}")
    print(f"reference:       {info.reference}")
    print(f"tags:            {', '.join(out['tags']) or '-'}")
    print(f"manifest digest: {info.manifest_digest}")
    print(f"config digest:   {info.config_digest}")
    if config is not None:
        print(f"platform:        {config.get('os')}/{config.get('architecture')}")
    print(
        f"size on disk:    {out['size_on_disk']} bytes (image {out['image_size']},"
        f" + {n_objects} objects {objects_size}, which other images may share)"
    )
    print("layers:")
    for layer in info.layers:
        print(f"  {layer.diff_id}  {layer.size or '-'} bytes  {layer.media_type}")
    boot = info.boot
    print("boot entries:" + ("" if boot.kernels or boot.ukis or boot.kargs else " none found"))
    for k in boot.kernels:
        initrd = k.initramfs.path if k.initramfs else "-"
        print(f"  kernel {k.version}: {k.vmlinuz.path} initramfs {initrd}")
    for u in boot.ukis:
        print(f"  uki {u.path}")
    for a in boot.kargs:
        print(f"  kargs {a.path}")
    return 0
