"""`cfsboot install to-disk|to-filesystem`: a new system from an image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cfsboot.commands.common import boot_tries_option, karg_options, karg_style
from cfsboot.errors import die
from setuproot.contract import HashAlg

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.deploy import install
    from cfsboot.image.installconfig import InstallConfig

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

BOOTLOADERS = ("systemd-boot", "grub")  # cfsboot.boot.bootloader.BootloaderKind


def register(sub: Subparsers) -> None:
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
        karg_options(q)
        q.add_argument(
            "--bootloader",
            choices=[*BOOTLOADERS, "systemd", "none"],
            help="default: the image's install config, else systemd-boot (systemd: bootc's"
            " name for it; none: no boot loader and no boot entries, the kernel arguments"
            " to boot with are printed)",
        )
        q.add_argument(
            "--insecure",
            "--allow-missing-verity",  # bootc's name
            action="store_true",
            dest="insecure",
            help="do not require fs-verity (the karg becomes composefs=?DIGEST)",
        )
        q.add_argument(
            "--composefs-backend",
            action="store_true",
            help="accepted for bootc, changes nothing: composefs is cfsboot's only backend",
        )
        q.add_argument("--hash", choices=[a.value for a in HashAlg], default="sha512")
        q.add_argument("--boot-timeout", type=int, help="boot menu timeout in seconds")
        boot_tries_option(q, "default 0: a first deployment has nothing to fall back to")
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
            _to_disk_options(q)
            q.set_defaults(func=cmd_install_to_disk)
        else:
            _to_filesystem_options(q)
            q.set_defaults(func=cmd_install_to_filesystem)


def _to_disk_options(q: argparse.ArgumentParser) -> None:
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
    q.add_argument(
        "--block-setup",
        choices=["direct", "tpm2-luks"],  # bootc's; cfsboot.image.installconfig
        help="direct only (the default): cfsboot sets up no LUKS",
    )
    q.add_argument(
        "--via-loopback",
        action="store_true",
        help="accepted for bootc, changes nothing: an image file is always"
        " installed through a loop device",
    )


def _to_filesystem_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--esp", help="the mounted ESP (directory)")
    q.add_argument("--boot", help="alias of --esp (the ESP mounted at /boot)")
    spec = q.add_mutually_exclusive_group()
    spec.add_argument("--root-karg", help="e.g. root=UUID=... (default: none)")
    spec.add_argument(
        "--root-mount-spec",
        metavar="SPEC",
        help='bootc\'s: --root-karg root=SPEC ("": no root= argument)',
    )
    for flag in ("--acknowledge-destructive", "--skip-finalize"):
        q.add_argument(
            flag,
            action="store_true",
            help="accepted for bootc, changes nothing: cfsboot waits for no"
            " confirmation and leaves nothing to finalize",
        )
    q.add_argument(
        "--replace",
        choices=["wipe", "alongside"],  # cfsboot.deploy.installprep.Replace
        help="a root that is not empty: delete what is there (wipe), or install"
        " next to it, leaving its files alone (alongside)",
    )


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
        if not keys.strip():  # here, before to-disk touches the disk
            die(f"{args.root_ssh_authorized_keys} has no keys")
    return install.InstallOptions(
        bootloader=bootloader,
        kargs=tuple(args.karg),
        karg_delete=tuple(args.karg_delete),
        insecure=args.insecure,
        algorithm=HashAlg(args.hash),
        root_karg=_root_karg(args),
        boot_timeout=args.boot_timeout,
        boot_tries=args.boot_tries or 0,
        quiet=args.quiet or not sys.stderr.isatty(),
        root_ssh_keys=keys,
        root_ssh_keys_from=args.root_ssh_authorized_keys or "",
        replace=Replace(args.replace) if getattr(args, "replace", None) else None,
        use_image_config=not args.no_image_config,
        stateroot=args.stateroot,
        karg_style=karg_style(args),
    )


def _root_karg(args: argparse.Namespace) -> str | None:
    """to-filesystem's root= argument: --root-karg, or bootc's --root-mount-spec."""
    spec = getattr(args, "root_mount_spec", None)
    if spec is not None:
        return f"root={spec}" if spec else ""
    karg: str | None = getattr(args, "root_karg", None)
    return karg


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

    if args.block_setup not in (None, "direct"):
        die(f"--block-setup {args.block_setup} is not supported: cfsboot sets up no LUKS",
            hint="leave it out, or give --block-setup direct")  # fmt: skip
    target = Path(args.target)
    size = install.parse_size(args.size) if args.size else None
    root_size = install.parse_size(args.root_size) if args.root_size else None
    install.check_disk_target(target, size=size, wipe=args.wipe)
    # Everything that can refuse the install does so before the disk is touched: the
    # image must be there (a mistyped reference must not cost a wiped disk).
    config = None
    if not args.no_image_config and (args.filesystem is None or args.bootloader is None):
        from cfsboot.image.installconfig import check_block
        from cfsboot.image.installpeek import peek  # streams the layers: only when needed

        config = peek(args.imgref)
        check_block(config)  # before the disk is touched (the import checks it again)
    else:
        from cfsboot.image.importer import fetch_config

        fetch_config(args.imgref)
    opts = _install_options(args, config)
    filesystem = args.filesystem or (config.root_fs_type if config else None) or "ext4"
    created = install.make_image_file(target, size)
    try:
        done = install.to_disk(
            args.imgref,
            target,
            opts,
            root_size=root_size,
            root_label=args.root_label,
            filesystem=filesystem,
        )
    except BaseException:
        if created:  # a half-installed file would need --wipe the next time
            target.unlink(missing_ok=True)
        raise
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
