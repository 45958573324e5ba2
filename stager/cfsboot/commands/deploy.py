"""`cfsboot install|switch|upgrade|finalize-staged|rollback|status|gc`: the deployment lifecycle."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cfsboot.commands.common import opened, sysroot_options
from cfsboot.errors import die
from setuproot.contract import HashAlg

if TYPE_CHECKING:
    from cfsboot.boot.bootloader import Bootloader
    from cfsboot.deploy import install
    from cfsboot.deploy.sysroot import Sysroot
    from cfsboot.image.installconfig import InstallConfig

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# The deployment modules are imported by the commands that use them: every
# `cfsboot` run builds this parser, and most runs need none of them.
log = logging.getLogger(__name__)
BOOTLOADERS = ("systemd-boot", "grub")  # cfsboot.boot.bootloader.BootloaderKind
# cfsboot.oci.reference.SWITCH_TRANSPORTS: bootc's --transport names.
TRANSPORTS = (
    "registry",
    "oci",
    "oci-archive",
    "docker-archive",
    "containers-storage",
    "docker-daemon",
    "dir",
)
STATUS_FORMATS = ("human", "humanreadable", "yaml", "json")  # humanreadable: bootc's name


def _karg_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--karg", action="append", default=[], help="add a kernel argument (repeat)")
    q.add_argument(
        "--karg-delete",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="remove a kernel argument, from the image's kargs.d too: KEY removes every"
        " KEY and KEY=..., KEY=VALUE that one only (repeat; not with a UKI)",
    )


def register(sub: Subparsers) -> None:
    _register_install(sub)
    _register_switch_upgrade(sub)
    _register_lifecycle(sub)


def _register_install(sub: Subparsers) -> None:
    p = sub.add_parser("install", help="install a new system from an image")
    isub = p.add_subparsers(dest="install_command", metavar="SUBCOMMAND", parser_class=type(p))
    isub.required = True
    for name, help_text in (
        ("to-disk", "partition and format a disk (or image file) and install onto it"),
        ("to-filesystem", "install onto a mounted, empty root filesystem"),
    ):
        q = isub.add_parser(name, help=help_text)
        q.add_argument("imgref", metavar="IMGREF")
        q.add_argument("target", metavar="DEVICE|IMAGEFILE" if name == "to-disk" else "DIR")
        _karg_options(q)
        q.add_argument(
            "--bootloader",
            choices=[*BOOTLOADERS, "systemd", "none"],
            help="default: the image's install config, else systemd-boot (systemd: bootc's"
            " name for it; none: no boot loader and no boot entries, the kernel arguments"
            " to boot with are printed)",
        )
        q.add_argument(
            "--insecure",
            action="store_true",
            help="do not require fs-verity (the karg becomes composefs=?DIGEST)",
        )
        q.add_argument("--hash", choices=[a.value for a in HashAlg], default="sha512")
        q.add_argument("--boot-timeout", type=int, help="boot menu timeout in seconds")
        _boot_tries_option(q, "default 0: a first deployment has nothing to fall back to")
        q.add_argument("--quiet", "-q", action="store_true", help="no progress display")
        q.add_argument(
            "--root-ssh-authorized-keys",
            metavar="FILE",
            help="an authorized_keys for root, written into root's home at boot",
        )
        q.add_argument(
            "--stateroot",
            help="only 'default': cfsboot keeps one stateroot (state/os/default)",
        )
        q.add_argument(
            "--no-image-config",
            action="store_true",
            help="ignore the image's /usr/lib/bootc/install/*.toml",
        )
        if name == "to-disk":
            q.add_argument(
                "--filesystem",
                choices=["ext4", "btrfs", "xfs"],  # cfsboot.boot.disk.FILESYSTEMS
                help="the root filesystem (default: the image's install config, else"
                " ext4; xfs needs --insecure)",
            )
            q.add_argument("--root-size", help="size of the root partition (default: the rest)")
            q.add_argument("--root-label", default="root", help="root filesystem label")
            q.add_argument(
                "--size",
                help="create (or grow) IMAGEFILE to this size first (e.g. 8G)",
            )
            q.add_argument(
                "--wipe",
                action="store_true",
                help="overwrite a target that holds a partition table or a filesystem",
            )
            q.set_defaults(func=cmd_install_to_disk)
        else:
            q.add_argument("--esp", help="the mounted ESP (directory)")
            q.add_argument("--boot", help="alias of --esp (the ESP mounted at /boot)")
            q.add_argument("--root-karg", help="e.g. root=UUID=... (default: none)")
            q.add_argument(
                "--replace",
                choices=["wipe", "alongside"],  # cfsboot.deploy.installprep.Replace
                help="a root that is not empty: delete what is there (wipe), or install"
                " next to it, leaving its files alone (alongside)",
            )
            q.set_defaults(func=cmd_install_to_filesystem)


def _register_switch_upgrade(sub: Subparsers) -> None:
    for name, help_text in (
        ("switch", "stage another image to boot next"),
        ("upgrade", "stage the newest version of the booted image"),
    ):
        q = sub.add_parser(name, help=help_text, aliases=["update"] if name == "upgrade" else [])
        if name == "switch":
            q.add_argument(
                "imgref",
                nargs="?",
                metavar="IMGREF",
                help="TRANSPORT:DETAILS (oci:DIR[:TAG], docker://NAME, ...); a bare NAME[:TAG] is"
                " a registry image, as in bootc",
            )
            q.add_argument(
                "--transport",
                choices=TRANSPORTS,
                help="bootc's: IMGREF is then the image without a transport (registry: NAME[:TAG])",
            )
            q.add_argument(
                "--retain",
                action="store_true",
                help="accepted for bootc, changes nothing: bootc drops an ostree ref of the"
                " booted deployment without it, and cfsboot deployments have none (the booted"
                " one stays as the rollback until gc)",
            )
        sysroot_options(q)
        _karg_options(q)
        q.add_argument(
            "--apply", action="store_true", help="reboot when a deployment is staged to boot"
        )
        what = q.add_mutually_exclusive_group()
        what.add_argument(
            "--download-only",
            action="store_true",
            help="stage it, but do not finalize it at shutdown",
        )
        what.add_argument(
            "--from-downloaded",
            action="store_true",
            help="let the download-only staged deployment boot next (fetches nothing)",
        )
        if name == "upgrade":
            what.add_argument(
                "--check",
                action="store_true",
                help="only say whether there is an update (reads no layer)",
            )
            q.add_argument(
                "--tag",
                help="another tag of the image followed (bootc's): it is followed from then on",
            )
        q.add_argument("--arch", help="from a multi-arch image (default: this machine's)")
        _boot_tries_option(q, "default: boot-assessment.toml, else 3")
        q.add_argument("--quiet", "-q", action="store_true")
        q.set_defaults(func=cmd_switch if name == "switch" else cmd_upgrade)


def _boot_tries(text: str) -> int:
    from cfsboot.boot.counting import MAX_TRIES

    if not text.isdigit() or int(text) > MAX_TRIES:
        raise argparse.ArgumentTypeError(f"expected 0 (off) to {MAX_TRIES}, not {text!r}")
    return int(text)


def _boot_tries_option(q: argparse.ArgumentParser, default: str) -> None:
    q.add_argument(
        "--boot-tries",
        type=_boot_tries,
        metavar="N",
        help=f"boots the new deployment gets to reach boot-complete.target before the"
        f" previous one boots again; 0: no boot counting ({default})",
    )


def _register_lifecycle(sub: Subparsers) -> None:
    q = sub.add_parser("finalize-staged", help="make the staged deployment the default (shutdown)")
    sysroot_options(q)
    q.set_defaults(func=cmd_finalize)

    q = sub.add_parser("rollback", help="make the previous deployment the default")
    sysroot_options(q)
    q.add_argument("--apply", action="store_true", help="reboot when done")
    q.set_defaults(func=cmd_rollback)

    q = sub.add_parser("status", help="show the deployments")
    sysroot_options(q)
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument(
        "--format",
        choices=STATUS_FORMATS,
        help="bootc's BootcHost as YAML or JSON, or for people (default: human on a"
        " terminal, else YAML)",
    )
    fmt.add_argument("--json", action="store_true", help="--format json")
    fmt.add_argument("--yaml", action="store_true", help="--format yaml")
    q.add_argument(
        "--format-version",
        type=int,
        metavar="N",
        help="the document's version: 0 and 1 both mean bootc's v1, the only one",
    )
    q.add_argument("--booted", action="store_true", help="only the booted deployment")
    q.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="human output adds soft-reboot, fs-verity and download-only rows",
    )
    q.set_defaults(func=cmd_status)

    q = sub.add_parser("gc", help="remove deployments and data nothing needs")
    sysroot_options(q)
    q.add_argument("--dry-run", action="store_true", help="only say what would go")
    q.add_argument("--keep", type=int, default=0, help="keep this many more older deployments")
    q.set_defaults(func=cmd_gc)


def _reboot(apply: bool) -> None:
    if apply:
        from cfsboot.linux.run import run

        run(["systemctl", "reboot"])


def _reboot_if_staged(apply: bool, sysroot: Sysroot) -> None:
    """--apply of switch and upgrade: reboot when something is staged to boot next."""
    marker = sysroot.staged()
    _reboot(apply and marker is not None and not marker.finalization_locked)


# -- install -------------------------------------------------------------------------------


def _install_options(
    args: argparse.Namespace, config: InstallConfig | None = None
) -> install.InstallOptions:
    """The options from the command line; where it says nothing, the image's install
    config (`config`, read before the import by to-disk) fills in the boot loader."""
    from cfsboot.boot.bootloader import BootloaderKind
    from cfsboot.deploy import install
    from cfsboot.deploy.installprep import Replace

    stateroot = args.stateroot or (config.stateroot if config else None)
    if stateroot not in (None, "default"):
        die(f"stateroot {stateroot!r} is not supported: cfsboot keeps one, 'default'",
            hint="leave out --stateroot, or give --stateroot default")  # fmt: skip
    name = args.bootloader or (config.bootloader if config else None) or BOOTLOADERS[0]
    kind = "systemd-boot" if name == "systemd" else name
    bootloader = None if name == "none" else BootloaderKind(kind)
    keys = None
    if args.root_ssh_authorized_keys:
        try:
            keys = Path(args.root_ssh_authorized_keys).read_bytes()
        except OSError as e:
            die(f"cannot read {args.root_ssh_authorized_keys}: {e.strerror}")
    return install.InstallOptions(
        bootloader=bootloader,
        kargs=tuple(args.karg),
        karg_delete=tuple(args.karg_delete),
        insecure=args.insecure,
        algorithm=HashAlg(args.hash),
        root_karg=getattr(args, "root_karg", None),
        boot_timeout=args.boot_timeout,
        boot_tries=args.boot_tries or 0,
        quiet=args.quiet or not sys.stderr.isatty(),
        root_ssh_keys=keys,
        root_ssh_keys_from=args.root_ssh_authorized_keys or "",
        replace=Replace(args.replace) if getattr(args, "replace", None) else None,
        use_image_config=not args.no_image_config,
        stateroot=args.stateroot,
    )


def _report_install(done: install.Installed) -> None:
    mode = "fs-verity enforced" if done.secure else "fs-verity NOT enforced (composefs=?)"
    if done.entry:
        sys.stderr.write(f"installed {done.entry} ({mode})\n")
    else:
        sys.stderr.write(
            f"installed without a boot loader ({mode}); boot the image's kernel with:"
            f" {' '.join(done.options)}\n"
        )
    print(done.digest)


def cmd_install_to_disk(args: argparse.Namespace) -> int:
    from cfsboot.deploy import install

    target = Path(args.target)
    size = install.parse_size(args.size) if args.size else None
    root_size = install.parse_size(args.root_size) if args.root_size else None
    install.prepare_disk_target(target, size=size, wipe=args.wipe)
    config = None
    if not args.no_image_config and (args.filesystem is None or args.bootloader is None):
        from cfsboot.image.installpeek import peek  # streams the layers: only when needed

        config = peek(args.imgref)
    filesystem = args.filesystem or (config.root_fs_type if config else None) or "ext4"
    done = install.to_disk(
        args.imgref,
        target,
        _install_options(args, config),
        root_size=root_size,
        root_label=args.root_label,
        filesystem=filesystem,
    )
    _report_install(done)
    return 0


def cmd_install_to_filesystem(args: argparse.Namespace) -> int:
    from cfsboot.boot.espfind import open_esp
    from cfsboot.deploy import install

    opts = _install_options(args)
    esp_dir = args.esp or args.boot
    if opts.bootloader is None:
        done = install.to_filesystem(args.imgref, Path(args.target), None, opts)
    else:
        if not esp_dir:
            die("install to-filesystem needs --esp DIR (or --boot DIR)",
                hint="or --bootloader none")  # fmt: skip
        with open_esp(Path(args.target), esp_dir) as esp:
            done = install.to_filesystem(args.imgref, Path(args.target), esp, opts)
    _report_install(done)
    return 0


# -- switch / upgrade --------------------------------------------------------------------


def _stage(
    args: argparse.Namespace, sysroot: Sysroot, bl: Bootloader, imgref: str, *, switching: bool
) -> int:
    from cfsboot.deploy.stage import stage
    from cfsboot.deploy.target import import_target

    target = import_target(
        sysroot, imgref, quiet=args.quiet or not sys.stderr.isatty(), arch=args.arch
    )
    result = stage(
        sysroot,
        bl,
        target,
        extra_kargs=args.karg,
        karg_delete=args.karg_delete,
        download_only=args.download_only,
        boot_tries=args.boot_tries,
        retry_failed=args.command == "switch",
        switching=switching,
    )
    sys.stderr.write(f"{result.message}\n")
    print(result.digest)
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    from cfsboot.boot.kargs import check_karg_deletes
    from cfsboot.oci.reference import canonical, switch_reference

    check_karg_deletes(args.karg_delete)
    if args.from_downloaded:
        if args.imgref is not None:
            die("switch --from-downloaded takes no IMGREF: it fetches nothing")
        return cmd_upgrade(args)
    if args.imgref is None:
        die("switch needs an IMGREF (or --from-downloaded)", hint="see cfsboot switch --help")
    imgref = canonical(switch_reference(args.imgref, args.transport))
    with opened(args) as (sysroot, bl):
        following = _following(sysroot, bl)
        if following is not None and following[1] == imgref:
            # bootc: the same reference is no change (nothing is fetched); what it
            # names now is `upgrade`'s to fetch.
            sys.stderr.write(
                f"image specification is unchanged: {imgref} is what deployment"
                f" {following[0][:12]}… follows; `cfsboot upgrade` fetches a newer version of it\n"
            )
            rc = 0
        else:
            rc = _stage(args, sysroot, bl, imgref, switching=True)
    _reboot_if_staged(args.apply, sysroot)
    return rc


def _following(sysroot: Sysroot, bl: Bootloader) -> tuple[str, str] | None:
    """The deployment upgrade starts from (staged, else booted) and the reference it follows."""
    from cfsboot.deploy.target import current_deployment

    staged = sysroot.staged()
    for depl in (staged.depl_id if staged else None, current_deployment(sysroot, bl)):
        if depl is None:
            continue
        origin = sysroot.origin(depl)
        if origin is not None:
            return depl, origin.image
    return None


def _followed(sysroot: Sysroot, bl: Bootloader) -> tuple[str, str]:
    following = _following(sysroot, bl)
    if following is None:
        die("the booted deployment has no origin (image reference) to upgrade from",
            hint="use cfsboot switch IMGREF")  # fmt: skip
    return following


def _check(sysroot: Sysroot, depl: str, imgref: str, arch: str | None) -> None:
    from cfsboot.deploy.target import check_update

    found = check_update(sysroot, depl, imgref, arch=arch)
    short = found.config_digest[:19] + "…"
    if not found.available:
        print(f"no update: {imgref} still names the deployed image (config {short})")
        return
    version = f" (version {found.version})" if found.version else ""
    print(f"update available: {imgref}{version}")
    print(f"  config {found.config_digest}")
    if found.current_config_digest is None:
        print(f"  (deployment {depl[:12]}… has no config on record to compare with)")


def cmd_upgrade(args: argparse.Namespace) -> int:
    from cfsboot.boot.kargs import check_karg_deletes
    from cfsboot.deploy.stage import unlock_staged
    from cfsboot.oci.reference import parse, with_tag

    if getattr(args, "tag", None) is not None and args.from_downloaded:
        die("--tag and --from-downloaded do not go together: the latter fetches nothing")
    check_karg_deletes(args.karg_delete)
    with opened(args) as (sysroot, bl):
        if args.from_downloaded:
            sys.stderr.write(f"{unlock_staged(sysroot, bl)}\n")
            rc = 0
        else:
            depl, imgref = _followed(sysroot, bl)
            if args.tag is not None:
                imgref = str(with_tag(parse(imgref), args.tag))
            if args.check:
                _check(sysroot, depl, imgref, args.arch)
                return 0
            rc = _stage(args, sysroot, bl, imgref, switching=False)
    _reboot_if_staged(args.apply, sysroot)
    return rc


# -- finalize / rollback -----------------------------------------------------------------


def cmd_finalize(args: argparse.Namespace) -> int:
    from cfsboot.deploy.stage import finalize
    from cfsboot.deploy.sysroot import Sysroot

    sysroot = Sysroot(args.sysroot, run_dir=args.run_dir)
    staged = sysroot.staged()
    if staged is None:
        log.info("no staged deployment")
        return 0
    sys.stderr.write(f"finalizing the staged deployment {staged.depl_id[:12]}…\n")
    sys.stderr.flush()
    with opened(args) as (sysroot, bl):
        msg = finalize(sysroot, bl)
    sys.stderr.write(f"{msg}\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from cfsboot.deploy.stage import rollback

    with opened(args) as (sysroot, bl):
        msg = rollback(sysroot, bl)
    sys.stderr.write(f"{msg}\n")
    _reboot(args.apply)
    return 0


# -- status / gc -------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from cfsboot.deploy import status
    from cfsboot.deploy.fsck.run import warn_problems

    if args.format_version not in (None, 0, 1):
        die(
            f"unsupported format version {args.format_version}",
            hint="0 and 1 both mean bootc's v1, the only version there is",
        )
    with opened(args, write=False) as (sysroot, bl):
        warn_problems(sysroot, bl)  # a broken state is reported, not tripped on
        doc = status.host_status(sysroot, bl)
    if args.booted:
        doc = status.only_booted(doc)
    fmt = args.format or ("json" if args.json else "yaml" if args.yaml else None)
    if fmt is None:
        fmt = "human" if sys.stdout.isatty() else "yaml"
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "yaml":
        print(status.to_yaml(doc))
    else:
        sys.stdout.write(status.human(doc, verbose=args.verbose))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from cfsboot.deploy import gc
    from cfsboot.deploy.fsck.run import warn_problems

    with opened(args) as (sysroot, bl):
        warn_problems(sysroot, bl)
        report = gc.collect(sysroot, bl, keep=args.keep, dry_run=args.dry_run)
    print(report.summary(dry_run=args.dry_run))
    return 0
