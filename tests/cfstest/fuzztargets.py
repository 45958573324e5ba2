"""The fuzz targets: every parser of input cfsboot does not control, read the way cfsboot reads it.

Each target takes raw bytes and goes through the public path the real input takes
(a file in a directory where cfsboot reads it from a file), so that decoding is
fuzzed too. `allowed` is what the target documents: our one-line CfsbootError
family, or the ValueError subclass a stdlib-only parser (setup-root's) raises and
its caller turns into one line.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

from cfsboot.boot.bls import default_entry, parse_entries, sort_entries
from cfsboot.boot.bootloader import GRUB_MENU, SystemdBoot
from cfsboot.boot.esp import DirEsp
from cfsboot.boot.grubloader import Grub
from cfsboot.boot.kargs import check_karg_deletes, delete_kargs
from cfsboot.commands.composefs_info import load_image, ls_lines
from cfsboot.composefs import dumpfile
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.tree import Inode
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError
from cfsboot.image.installconfig import InstallConfig, parse_file
from cfsboot.image.kargsd import KARGS_D, load_kargs_d, split_kargs
from cfsboot.image.osrelease import OsRelease
from cfsboot.oci.dockerarchive import parse_manifest_json
from cfsboot.oci.documents import ImageConfig, Index, Manifest
from cfsboot.oci.tar import entries
from cfstest.fuzzarchive import archive_targets
from cfstest.fuzzesp import esp_targets
from cfstest.fuzzimage import image_targets
from cfstest.fuzzing import Target
from cfstest.fuzzstate import state_targets
from cfstest.ocibuild import Entry, tar_bytes
from setuproot.config import ConfigError, load_config
from setuproot.contract import KargError, parse_cmdline, split_cmdline

DATA = Path(__file__).resolve().parent.parent / "data"
DIGEST = "0" * 62 + "ab"
SHA = "sha256:" + "1" * 64


# --------------------------------------------------------------------------- dumpfile


def _dumpfile(data: bytes, _tmp: Path) -> None:
    root = dumpfile.parse(data)
    dumpfile.parse(dumpfile.dumps(root))  # what we print, we read back


_DUMP_SEEDS = (
    (DATA / "oci_golden.dump").read_bytes(),
    b"/ 0 40755 2 0 0 0 0.0 - - -\n",
    b"/ 4096 40755 3 0 0 0 1.5 - - - user.a=b\n"
    b"/d 0 40700 2 0 0 0 0.0 - - - trusted.overlay.opaque=y\n"
    b"/f 5 100644 1 0 0 0 0.0 - hello -\n"
    b"/h 5 @100644 1 0 0 0 0.0 /f - -\n"
    b"/l 3 120777 1 0 0 0 0.0 /f - -\n"
    b"/c 0 20644 1 0 0 259 0.0 - - -\n",
)


# --------------------------------------------------------------------------- EROFS images


def _image_seeds() -> tuple[bytes, ...]:
    golden = dumpfile.parse((DATA / "oci_golden.dump").read_bytes())
    small = dumpfile.parse(_DUMP_SEEDS[2])
    deep = Inode.directory()
    node = deep
    for _ in range(40):
        child = Inode.directory()
        assert node.children is not None
        node.children[b"d"] = child
        node = child
    return tuple(bytes(build_image(t)) for t in (golden, small, deep))


def _erofs(data: bytes, tmp: Path) -> None:
    path = tmp / "image"
    path.write_bytes(data)
    root = load_image(str(path))  # composefs-info dump and ls
    dumpfile.dumps(root)
    b"".join(ls_lines(root))


# --------------------------------------------------------------------------- tar


def _tar(data: bytes, _tmp: Path) -> None:
    for _entry, body in entries(io.BytesIO(data)):
        while body.read(1 << 16):
            pass


def _tar_seeds() -> tuple[bytes, ...]:
    import tarfile

    plain = tar_bytes(
        [
            Entry("usr/", kind="dir"),
            Entry("usr/f", data=b"hello"),
            Entry("usr/l", kind="symlink", linkname="f"),
            Entry("usr/h", kind="hardlink", linkname="usr/f"),
            Entry("usr/.wh.gone", data=b""),
            Entry("usr/" + "n" * 150, data=b"long name", xattrs={"user.x": b"1"}),
            Entry("usr/" + "g" * 120, data=b"gnu", gnu_longname=True),
        ]
    )
    out = [plain]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            info = tarfile.TarInfo("etc/" + "x" * 120 if fmt != tarfile.USTAR_FORMAT else "etc/x")
            info.size = 3
            info.mtime = 1700000000
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1700000000.5"}
            t.addfile(info, io.BytesIO(b"abc"))
            dev = tarfile.TarInfo("dev/null")
            dev.type = tarfile.CHRTYPE
            dev.devmajor, dev.devminor = 1, 3
            t.addfile(dev)
        out.append(buf.getvalue())
    return tuple(out)


# --------------------------------------------------------------------------- OCI documents


def _oci_docs(data: bytes, _tmp: Path) -> None:
    # Each parser on its own: one refusing must not hide another's crash.
    for parse in (
        lambda: Index.parse(data, "index.json", 1 << 20),
        lambda: Manifest.parse(data, config_limit=1 << 20, layer_limit=1 << 40),
        lambda: ImageConfig.parse(data).layer_ids(),
        lambda: parse_manifest_json(data, "archive.tar"),
    ):
        try:
            parse()
        except CfsbootError:
            pass


_DESC = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": SHA, "size": 10}
_OCI_SEEDS = tuple(
    json.dumps(doc).encode()
    for doc in (
        {"schemaVersion": 2, "manifests": [_DESC | {"annotations": {"a": "b"}}]},
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": SHA,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": SHA,
                    "size": 1,
                }
            ],
            "annotations": {"x": "y"},
        },
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Labels": {"containers.bootc": "1"}},
            "rootfs": {"type": "layers", "diff_ids": [SHA]},
        },
        {"manifests": [_DESC | {"platform": {"architecture": "amd64", "os": "linux"}}]},
        [{"Config": "abc.json", "RepoTags": ["localhost/x:1"], "Layers": ["l/layer.tar"]}],
    )
)


# --------------------------------------------------------------------------- kernel arguments


def _kargs(data: bytes, _tmp: Path) -> None:
    text = data.decode("utf-8", "surrogateescape")
    split_cmdline(text)
    args = split_kargs(text)
    try:
        parse_cmdline(text)
    except KargError:
        pass
    try:
        check_karg_deletes(args)
    except CfsbootError:
        pass
    delete_kargs(args, args[:2])


_KARG_SEEDS = (
    b"root=UUID=1 rw composefs=" + DIGEST.encode() + b" quiet",
    b"composefs.digest=?v1-sha512-12:" + b"a" * 128 + b' foo="a b"',
    b"composefs=?" + b"A" * 128,
)


# --------------------------------------------------------------------------- setup-root config


def _config(data: bytes, tmp: Path) -> None:
    path = tmp / "setup-root-conf.toml"
    path.write_bytes(data)
    load_config(str(path))
    load_config(str(tmp / "missing.toml"), fallback=str(path))  # as prepare-root.conf


_CONFIG_SEEDS = (
    b'[root]\ntransient = false\n[etc]\nmount = "overlay"\ntransient = false\n'
    b'[var]\nmount = "bind"\n',
    b"[etc]\ntransient = true\n",
    b"[etc]\ntransient = true\n[root]\ntransient = false\n",  # prepare-root.conf style
)


# --------------------------------------------------------------------------- .origin


def _origin(data: bytes, tmp: Path) -> None:
    deploy = tmp / "state" / "deploy" / DIGEST
    deploy.mkdir(parents=True, exist_ok=True)
    (deploy / f"{DIGEST}.origin").write_bytes(data)
    origin = Sysroot(tmp, run_dir=tmp / "run").origin(DIGEST)
    if origin is not None:  # a rewrite (switch, upgrade) reads back as the same
        from cfsboot.deploy.origin import Origin

        again = Origin.parse(origin.serialise())
        # Sections other than cfsboot's come back after them: their order means nothing.
        assert replace(again, extra=tuple(sorted(again.extra))) == replace(
            origin, extra=tuple(sorted(origin.extra))
        )


_ORIGIN_SEEDS = (
    b"[origin]\ncontainer-image-reference = ostree-unverified-image:docker://quay.io/a/b:1\n\n"
    b"[boot]\nboot_type = bls\ndigest = " + b"a" * 64 + b"\n\n"
    b"[image]\nmanifest_digest = " + SHA.encode() + b"\n",
    b"[origin]\ncontainer-image-reference = ostree-unverified-image:oci:/srv/img\n"
    b"[x]\nkey = value\n",
)


# --------------------------------------------------------------------------- the ESP


def _bls_entries(data: bytes, tmp: Path) -> None:
    entries_dir = tmp / "esp" / "loader" / "entries"
    entries_dir.mkdir(parents=True, exist_ok=True)
    (entries_dir / "foreign.conf").write_bytes(data)
    (entries_dir / "bootc_debian-13-1.conf").write_bytes(
        data + b"\noptions composefs=" + DIGEST.encode() + b"\n"
    )
    SystemdBoot(DirEsp(tmp / "esp")).menu()
    text = data.decode("utf-8", "replace")
    files = parse_entries([("a.conf", text), ("b+3-1.conf", text)])
    default_entry(sort_entries(files), pattern=text[:20] or None)


_BLS_SEEDS = (
    b"title Debian GNU/Linux 13\nversion 6.12.0\nlinux /vmlinuz\ninitrd /initrd.img\n"
    b"options root=UUID=1 ro quiet\nsort-key debian\nmachine-id 0123\n",
    b"title Windows\nefi /EFI/Microsoft/Boot/bootmgfw.efi\n",
    b"title bootc\nuki /EFI/Linux/bootc_composefs-" + DIGEST.encode() + b".efi\n",
)


def _grub_menu(data: bytes, tmp: Path) -> None:
    esp = tmp / "esp"
    path = esp / GRUB_MENU
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    # The same bytes as the environment block too (GRUB's format: 1024 bytes, a header).
    header = b"# GRUB Environment Block\n"
    env = (header + data.partition(b"\n")[2])[:1024]
    (path.parent / "grubenv").write_bytes(env + b"#" * (1024 - len(env)))
    bl = Grub(DirEsp(esp))
    bl.read_env()
    menu = bl.menu()
    bl.written_order()
    if menu:  # a menu we read, we can write back
        from cfsboot.boot import grub

        grub.GrubMenu.parse(grub.GrubMenu.parse(data.decode()).render())


def _grub_seeds() -> tuple[bytes, ...]:
    from cfsboot.boot import grub

    entry = grub.GrubEntry(
        title="Debian 13",
        deployment=DIGEST,
        fs_uuid="1234-ABCD",
        linux="/EFI/Linux/bootc_composefs-x/vmlinuz",
        initrd=("/EFI/Linux/bootc_composefs-x/initrd",),
        options=("root=UUID=1", f"composefs={DIGEST}"),
    )
    counted = grub.GrubEntry(
        title="UKI", deployment="1" * 64, chainload="/EFI/Linux/x.efi", counter=("k", 3)
    )
    env = b"cfsboot_t_k=1\nsaved_entry=x\n"
    return (
        grub.GrubMenu((entry,)).render().encode(),
        grub.GrubMenu((entry, counted)).render().encode(),
        b"# GRUB Environment Block\n" + env,
        b"menuentry 'Other OS' {\n\tchainloader /EFI/other.efi\n}\n",
    )


# --------------------------------------------------------------------------- image metadata


def _install_config(data: bytes, _tmp: Path) -> None:
    text = data.decode("utf-8", "replace")  # as imagefiles.install_config reads it
    parse_file(text, "usr/lib/bootc/install/00-x.toml", InstallConfig(), arch="x86_64")


_INSTALL_CONFIG_SEEDS = (
    b'[install]\nroot-fs-type = "ext4"\nkargs = ["a=1", "quiet"]\nstateroot = "default"\n'
    b'root-mount-spec = "UUID=1"\nbootloader = "grub"\ndiscoverable-partitions = true\n',
    b'[install.filesystem.root]\ntype = "xfs"\n[install]\nmatch-architectures = ["x86_64"]\n'
    b'block = ["direct"]\n',
)


def _kargs_d(data: bytes, tmp: Path) -> None:
    directory = tmp / KARGS_D
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "10-x.toml").write_bytes(data)
    load_kargs_d(tmp, arch="x86_64")


_KARGS_D_SEEDS = (
    b'kargs = ["console=ttyS0,115200", "quiet splash"]\n',
    b'kargs = ["a=1"]\nmatch-architectures = ["x86_64", "aarch64"]\n',
    b"kargs = []\n",
)


def _os_release(data: bytes, tmp: Path) -> None:
    path = tmp / "usr" / "lib" / "os-release"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    osrel = OsRelease.from_root(tmp)
    osrel.title(DIGEST), osrel.version(DIGEST), osrel.os_id, osrel.boot_label()


_OS_RELEASE_SEEDS = (
    b'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n'
    b'VERSION="13 (trixie)"\nID=debian\nHOME_URL="https://www.debian.org/"\n',
    b'NAME=\'single quoted\'\nID=a\\ b\nVERSION="esc \\" \\$ \\\\ \\`"\n# comment\n',
)


def all_targets() -> list[Target]:
    """Every fuzz target, with its seeds (built here: some need the EROFS writer).

    Every module a target runs is imported at the top of this file or of fuzzimage.py:
    atheris instruments only what is imported while atheris_run.py imports this.
    """
    return [
        Target("dumpfile", _dumpfile, (CfsbootError,), _DUMP_SEEDS, (b" ", b"@", b"=")),
        Target("erofs", _erofs, (CfsbootError,), _image_seeds()),
        Target("tar", _tar, (CfsbootError,), _tar_seeds(), (b"00000000000", b"ustar\0")),
        Target("oci", _oci_docs, (), _OCI_SEEDS, (b"null", b"[]", b"{}", b"1e999", b'"')),
        Target("kargs", _kargs, (), _KARG_SEEDS, (b"composefs=", b"composefs.digest=")),
        Target("setup-root-conf", _config, (ConfigError,), _CONFIG_SEEDS, (b"[etc]", b"=")),
        Target("origin", _origin, (CfsbootError,), _ORIGIN_SEEDS, (b"[origin]", b"%(x)s")),
        Target("bls", _bls_entries, (CfsbootError,), _BLS_SEEDS, (b"+1-2", b"options ")),
        Target("grub-menu", _grub_menu, (CfsbootError,), _grub_seeds(), (b"${", b"}")),
        Target("kargs.d", _kargs_d, (CfsbootError,), _KARGS_D_SEEDS, (b'"""', b"[[")),
        Target("os-release", _os_release, (), _OS_RELEASE_SEEDS, (b"PRETTY_NAME=", b"ID=")),
        Target("install-config", _install_config, (CfsbootError,), _INSTALL_CONFIG_SEEDS),
        *image_targets(),
        *archive_targets(),
        *esp_targets(),
        *state_targets(),
    ]
