"""Collect an image's boot resources before /boot is emptied for the boot image.

Only collects (paths, sizes, object digests or inline content); parsing UKI
sections and kargs.d TOML belongs to the boot-entry code.

Locations (composefs-boot `get_boot_resources`, plus bootc's kargs.d):
- kernels: /usr/lib/modules/KVER/vmlinuz with /usr/lib/modules/KVER/initramfs.img
- UKIs: /boot/EFI/Linux/*.efi and /usr/lib/modules/KVER/*.efi
- kernel arguments: /usr/lib/bootc/kargs.d/*.toml
Symlinks are resolved inside the image tree only (never on the host).
"""

from __future__ import annotations

from dataclasses import dataclass

from cfsboot.jsondoc import Fields

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Any

    from cfsboot.composefs.tree import Inode

MAX_SYMLINK_HOPS = 16


@dataclass(frozen=True)
class BootFile:
    path: str  # absolute path in the image
    size: int
    digest: str | None  # object hex digest (external file), None when inline
    content: bytes | None = None  # inline content (64 bytes or less)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size}
        if self.digest is not None:
            d["object"] = self.digest
        if self.content is not None:
            d["content"] = self.content.decode("latin-1")
        return d

    @classmethod
    def from_json(cls, f: Fields) -> BootFile:
        content = f.opt_str("content")
        try:
            raw = None if content is None else content.encode("latin-1")
        except UnicodeEncodeError:
            raise f.error("content is not latin-1 text") from None
        return cls(f.req_str("path"), f.req_int("size"), f.opt_str("object"), raw)


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: BootFile
    initramfs: BootFile | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "vmlinuz": self.vmlinuz.to_json(),
            "initramfs": self.initramfs.to_json() if self.initramfs else None,
        }

    @classmethod
    def from_json(cls, f: Fields) -> Kernel:
        initramfs = f.opt_obj("initramfs")
        return cls(
            f.req_str("version"),
            BootFile.from_json(f.req_obj("vmlinuz")),
            None if initramfs is None else BootFile.from_json(initramfs),
        )


@dataclass(frozen=True)
class BootResources:
    kernels: tuple[Kernel, ...] = ()
    ukis: tuple[BootFile, ...] = ()
    kargs: tuple[BootFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kernels": [k.to_json() for k in self.kernels],
            "ukis": [u.to_json() for u in self.ukis],
            "kargs": [k.to_json() for k in self.kargs],
        }

    @classmethod
    def from_json(cls, obj: object, what: str = "boot resources") -> BootResources:
        """The inverse of to_json; a DocumentError (one line) when `obj` is not one."""
        f = Fields(obj, what)

        def files(key: str) -> tuple[BootFile, ...]:
            return tuple(
                BootFile.from_json(Fields(x, f"{what}: {key}[{i}]"))
                for i, x in enumerate(f.opt_list(key))
            )

        kernels = tuple(
            Kernel.from_json(Fields(k, f"{what}: kernels[{i}]"))
            for i, k in enumerate(f.opt_list("kernels"))
        )
        return cls(kernels, files("ukis"), files("kargs"))


def _resolve(root: Inode, path: bytes) -> tuple[bytes, Inode] | None:
    """Follow symlinks inside the tree; the absolute path and inode, or None."""
    # The tree's module (compiled, with typing) is for scanning: status reads the results.
    from cfsboot.composefs.tree import split_path

    comps = split_path(path)
    hops = 0
    i = 0
    node = root
    done: list[bytes] = []
    while i < len(comps):
        c = comps[i]
        i += 1
        if c == b"..":
            if done:
                done.pop()
            node = _at(root, done) or root
            continue
        if node.children is None or c not in node.children:
            return None
        child = node.children[c]
        if child.is_symlink():
            hops += 1
            if hops > MAX_SYMLINK_HOPS or child.payload is None:
                return None
            target = split_path(child.payload)
            if child.payload.startswith(b"/"):
                done = []
            comps = done + target + comps[i:]
            done, i, node = [], 0, root
            continue
        done.append(c)
        node = child
    return b"/" + b"/".join(done), node


def _at(root: Inode, comps: list[bytes]) -> Inode | None:
    node = root
    for c in comps:
        if node.children is None or c not in node.children:
            return None
        node = node.children[c]
    return node


def _file(root: Inode, path: bytes) -> BootFile | None:
    found = _resolve(root, path)
    if found is None or not found[1].is_reg():
        return None
    real, node = found
    digest = node.digest.hex() if node.digest is not None else None
    return BootFile(real.decode(errors="surrogateescape"), node.size, digest, node.content)


def _dir(root: Inode, path: bytes) -> Inode | None:
    found = _resolve(root, path)
    if found is None or not found[1].is_dir():
        return None
    return found[1]


def _files(root: Inode, dirpath: bytes, suffix: bytes) -> list[BootFile]:
    d = _dir(root, dirpath)
    out: list[BootFile] = []
    if d is None or d.children is None:
        return out
    for name in sorted(d.children):
        if name.endswith(suffix):
            f = _file(root, dirpath + b"/" + name)
            if f is not None:
                out.append(f)
    return out


def scan(root: Inode) -> BootResources:
    kernels: list[Kernel] = []
    ukis: list[BootFile] = _files(root, b"/boot/EFI/Linux", b".efi")
    modules = _dir(root, b"/usr/lib/modules")
    if modules is not None and modules.children is not None:
        for kver in sorted(modules.children):
            base = b"/usr/lib/modules/" + kver
            if _dir(root, base) is None:
                continue
            vmlinuz = _file(root, base + b"/vmlinuz")
            if vmlinuz is not None:
                initrd = _file(root, base + b"/initramfs.img")
                kernels.append(Kernel(kver.decode(errors="surrogateescape"), vmlinuz, initrd))
            ukis.extend(_files(root, base, b".efi"))
    kargs = _files(root, b"/usr/lib/bootc/kargs.d", b".toml")
    return BootResources(tuple(kernels), tuple(ukis), tuple(kargs))
