"""`cfsboot fsverity digest|measure|enable|enable-repo`: fs-verity digests, like `fsverity`."""

from __future__ import annotations

import argparse
import os
import sys

from cfsboot.commands.common import hash_alg, opened, sysroot_options
from cfsboot.errors import die
from setuproot.contract import HashAlg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fsverity",
        help="fs-verity digests: compute, measure, enable",
        description="fs-verity file digests (4096-byte blocks, no salt), like the fsverity tool.",
    )
    cmds = p.add_subparsers(dest="fsverity_command", metavar="COMMAND", parser_class=type(p))
    cmds.required = True

    d = cmds.add_parser(
        "digest",
        help="compute files' fs-verity digests in userspace",
        description="Print ALG:HEX FILE for each FILE, exactly like `fsverity digest`.",
    )
    _hash_alg_option(d)
    d.add_argument("--compact", action="store_true", help="print only the hex digest")
    d.add_argument("files", nargs="+", metavar="FILE")
    d.set_defaults(func=digest)

    m = cmds.add_parser(
        "measure",
        help="print the fs-verity digests the kernel measures (FS_IOC_MEASURE_VERITY)",
    )
    m.add_argument("files", nargs="+", metavar="FILE")
    m.set_defaults(func=measure)

    e = cmds.add_parser("enable", help="enable fs-verity on files (FS_IOC_ENABLE_VERITY)")
    _hash_alg_option(e)
    e.add_argument("files", nargs="+", metavar="FILE")
    e.set_defaults(func=enable)

    r = cmds.add_parser(
        "enable-repo",
        help="enable fs-verity on every object of an insecure repository and require it at boot",
    )
    sysroot_options(r)
    r.set_defaults(func=enable_repo)


def _hash_alg_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hash-alg",
        type=hash_alg,
        default=HashAlg.SHA256,
        metavar="ALG",
        help="sha256 (default) or sha512",
    )


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        die(f"cannot open {path} for reading: {e.strerror}")


def digest(args: argparse.Namespace) -> int:
    from cfsboot.composefs.fsverity import digest_fd

    alg: HashAlg = args.hash_alg
    for path in args.files:
        fd = _open(path)
        try:
            hexdigest = digest_fd(fd, alg).hex()
        except OSError as e:
            die(f"cannot read {path}: {e.strerror}")
        finally:
            os.close(fd)
        sys.stdout.write(f"{hexdigest}\n" if args.compact else f"{alg}:{hexdigest} {path}\n")
    return 0


def measure(args: argparse.Namespace) -> int:
    from setuproot.verity import NoVerity, VerityUnsupported, measure_verity

    for path in args.files:
        fd = _open(path)
        try:
            alg, raw = measure_verity(fd, path=path)
        except VerityUnsupported:
            die(f"{path}: the filesystem does not support fs-verity")
        except NoVerity:
            die(f"{path} has no fs-verity", hint=f"enable it with: cfsboot fsverity enable {path}")
        except OSError as e:
            die(f"cannot measure {path}: {e.strerror}")
        finally:
            os.close(fd)
        sys.stdout.write(f"{alg}:{raw.hex()} {path}\n")
    return 0


def enable(args: argparse.Namespace) -> int:
    from setuproot.verity import VerityBusy, VerityUnsupported, enable_verity

    for path in args.files:
        fd = _open(path)
        try:
            enable_verity(fd, args.hash_alg, path=path)
        except VerityUnsupported:
            die(f"{path}: the filesystem does not support fs-verity")
        except VerityBusy:
            die(f"cannot enable fs-verity on {path}: it is open for writing")
        except OSError as e:
            die(f"cannot enable fs-verity on {path}: {e.strerror}")
        finally:
            os.close(fd)
    return 0


def enable_repo(args: argparse.Namespace) -> int:
    from cfsboot.deploy.veritymigrate import enable_repo as run_enable

    with opened(args) as (sysroot, bl):
        report = run_enable(sysroot, bl)
    sys.stdout.write(report.summary() + "\n")
    return 0
