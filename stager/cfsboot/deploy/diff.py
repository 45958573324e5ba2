"""`cfsboot diff`: what changes between two deployments, or a deployment and an image.

Files: both EROFS images are read back from the repository (the composefs
reader) and compared path by path: a file changed when its type, mode,
owner, device number, size, xattrs or content (the inline bytes, the object's
fs-verity digest, a symlink's target) differ; a directory when its type, mode,
owner or xattrs do (its entries are paths of their own). Modification times are left
out: a rebuilt image stamps files whose content did not change.
Packages: each image's `/var/lib/dpkg/status`, versions ordered as dpkg
orders them. Kernel: the newest kernel with an initramfs, or the UKI's file.
Kernel arguments: a deployment's are its boot entry's (a UKI's are sealed in
it); an image's are those an upgrade from FROM would give it. The composefs
karg names the image and always differs: it is left out.

Nothing is staged and no deployment is written; an image reference is
imported into the repository (new layers only, untagged: a later switch or
upgrade reuses it, gc removes it when nothing does).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import Any

from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.boot.kargs import upgrade_kargs
from cfsboot.boot.uki import parse_uki
from cfsboot.composefs.tree import Inode
from cfsboot.deploy.entries import composefs_karg
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.image import dpkg, imagefiles
from cfsboot.image.bootscan import BootResources
from cfsboot.image.info import read_image_info

_KARG_PREFIXES = ("composefs=", "composefs.digest=")


@dataclass(frozen=True)
class Side:
    """One end of a diff: an image, as deployed (deployment set) or as an upgrade would get it."""

    label: str  # what the user named: a deployment (with its slot) or an image reference
    image: str  # the composefs image digest
    deployment: str | None
    reference: str | None
    tree: Inode
    boot: BootResources
    kargs: tuple[str, ...] | None  # None: not known (no boot entry)

    @property
    def kernel(self) -> str | None:
        k = imagefiles.newest_kernel(self.boot)
        if k is not None:
            return k.version
        if self.boot.ukis:
            return "UKI " + self.boot.ukis[0].path.rsplit("/", 1)[-1]
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "image": self.image,
            "reference": self.reference,
            "kernel": self.kernel,
        }


@dataclass
class Diff:
    old: Side
    new: Side
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    pkgs_added: list[dpkg.Package] = field(default_factory=list)
    pkgs_removed: list[dpkg.Package] = field(default_factory=list)
    upgraded: list[tuple[str, str, str]] = field(default_factory=list)  # name, from, to
    downgraded: list[tuple[str, str, str]] = field(default_factory=list)
    kargs_added: list[str] = field(default_factory=list)
    kargs_removed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def moved(rows: list[tuple[str, str, str]]) -> list[dict[str, str]]:
            return [{"name": n, "from": a, "to": b} for n, a, b in rows]

        return {
            "from": self.old.to_json(),
            "to": self.new.to_json(),
            "files": {"added": self.added, "removed": self.removed, "changed": self.changed},
            "packages": {
                "added": [{"name": p.name, "version": p.version} for p in self.pkgs_added],
                "removed": [{"name": p.name, "version": p.version} for p in self.pkgs_removed],
                "upgraded": moved(self.upgraded),
                "downgraded": moved(self.downgraded),
            },
            "kernel": {"from": self.old.kernel, "to": self.new.kernel},
            "kargs": {"added": self.kargs_added, "removed": self.kargs_removed},
        }

    def human(self, *, files: bool = True) -> str:
        """For people: counts, then each package and karg; each file too unless `files` is False."""
        lines = [f"from {self.old.label}", f"  to {self.new.label}"]
        lines.append(
            f"files: {len(self.added)} added, {len(self.removed)} removed,"
            f" {len(self.changed)} changed"
        )
        if files:
            for mark, paths in (("+", self.added), ("-", self.removed), ("~", self.changed)):
                lines += [f"  {mark} {p}" for p in paths]
        lines.append(
            f"packages: {len(self.pkgs_added)} added, {len(self.pkgs_removed)} removed,"
            f" {len(self.upgraded)} upgraded, {len(self.downgraded)} downgraded"
        )
        lines += [f"  + {p.name} {p.version}" for p in self.pkgs_added]
        lines += [f"  - {p.name} {p.version}" for p in self.pkgs_removed]
        lines += [f"  ^ {n} {a} -> {b}" for n, a, b in self.upgraded]
        lines += [f"  v {n} {a} -> {b}" for n, a, b in self.downgraded]
        old_k, new_k = self.old.kernel, self.new.kernel
        lines.append(
            f"kernel: {old_k} (unchanged)" if old_k == new_k else f"kernel: {old_k} -> {new_k}"
        )
        if self.kargs_added or self.kargs_removed:
            lines.append("kernel arguments:")
            lines += [f"  + {a}" for a in self.kargs_added]
            lines += [f"  - {a}" for a in self.kargs_removed]
        else:
            lines.append("kernel arguments: unchanged")
        return "\n".join(lines) + "\n"


def _flatten(tree: Inode) -> dict[str, Inode]:
    """Every path below the root (no recursion)."""
    out: dict[str, Inode] = {}
    stack: list[tuple[bytes, Inode]] = [(b"", tree)]
    while stack:
        path, node = stack.pop()
        for name, child in (node.children or {}).items():
            sub = path + b"/" + name
            out[sub.decode("utf-8", errors="surrogateescape")] = child
            if child.children is not None:
                stack.append((sub, child))
    return out


def _identity(n: Inode) -> tuple[object, ...]:
    if stat.S_ISDIR(n.mode):
        # A directory's size is the image format's (its entries'), not something set.
        return (n.mode, n.uid, n.gid, sorted(n.xattrs.items()))
    content: object = None
    if stat.S_ISREG(n.mode):
        content = n.digest if n.digest is not None else (n.content or b"")
    elif stat.S_ISLNK(n.mode):
        content = n.payload
    return (n.mode, n.uid, n.gid, n.rdev, n.size, sorted(n.xattrs.items()), content)


def file_changes(old: Inode, new: Inode) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) paths between two image trees, sorted."""
    a, b = _flatten(old), _flatten(new)
    added = sorted(p for p in b if p not in a)
    removed = sorted(p for p in a if p not in b)
    changed = sorted(p for p in a if p in b and _identity(a[p]) != _identity(b[p]))
    return added, removed, changed


def _packages(sysroot: Sysroot, tree: Inode) -> dict[str, dpkg.Package]:
    data = imagefiles.read_file(sysroot.repo, tree, dpkg.STATUS_PATH)
    return dpkg.parse_status(data.decode("utf-8", errors="replace")) if data else {}


def diff(sysroot: Sysroot, old: Side, new: Side) -> Diff:
    d = Diff(old, new)
    d.added, d.removed, d.changed = file_changes(old.tree, new.tree)
    pa, pb = _packages(sysroot, old.tree), _packages(sysroot, new.tree)
    d.pkgs_added = [pb[n] for n in sorted(pb) if n not in pa]
    d.pkgs_removed = [pa[n] for n in sorted(pa) if n not in pb]
    for name in sorted(set(pa) & set(pb)):
        va, vb = pa[name].version, pb[name].version
        order = dpkg.compare(va, vb)
        if order < 0:
            d.upgraded.append((name, va, vb))
        elif order > 0:
            d.downgraded.append((name, va, vb))
    if old.kargs is not None and new.kargs is not None:
        d.kargs_added = [k for k in new.kargs if k not in old.kargs]
        d.kargs_removed = [k for k in old.kargs if k not in new.kargs]
    return d


def _plain_kargs(args: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a for a in args if not a.startswith(_KARG_PREFIXES))


def _uki_kargs(sysroot: Sysroot, boot: BootResources) -> tuple[str, ...] | None:
    for uki in boot.ukis:
        cmdline = parse_uki(imagefiles.bootfile_bytes(sysroot.repo, uki)).cmdline
        return _plain_kargs((cmdline or "").split())
    return None


def _entry(bl: Bootloader, depl: str) -> MenuEntry | None:
    for staged in (False, True):
        found = next((m for m in bl.menu(staged=staged) if m.deployment == depl), None)
        if found is not None:
            return found
    return None


def deployment_side(sysroot: Sysroot, bl: Bootloader, depl: str, label: str) -> Side:
    """A deployment as it boots: its image, and its entry's kernel arguments."""
    info = read_image_info(sysroot.repo, depl)
    boot = info.boot if info is not None else BootResources()
    origin = sysroot.origin(depl) if sysroot.deploy_dir(depl).is_dir() else None
    entry = _entry(bl, depl)
    kargs = _uki_kargs(sysroot, boot) if boot.ukis else None
    if kargs is None and entry is not None:
        kargs = _plain_kargs(entry.options)
    return Side(
        label=label,
        image=depl,
        deployment=depl,
        reference=origin.image if origin is not None else info.reference if info else None,
        tree=imagefiles.image_tree(sysroot.repo, depl),
        boot=boot,
        kargs=kargs,
    )


def image_side(sysroot: Sysroot, bl: Bootloader, digest: str, reference: str, base: Side) -> Side:
    """An imported image as an upgrade from `base` would boot it (kargs.d applied)."""
    info = read_image_info(sysroot.repo, digest)
    boot = info.boot if info is not None else BootResources()
    kargs = _uki_kargs(sysroot, boot)
    if kargs is None and base.kargs is not None:
        args = upgrade_kargs(
            base.kargs,
            old_kargs_d=imagefiles.kargs_d(sysroot.repo, base.boot),
            new_kargs_d=imagefiles.kargs_d(sysroot.repo, boot),
            composefs=composefs_karg(sysroot, digest),
        )
        kargs = _plain_kargs(args)
    return Side(
        label=f"{reference} ({digest[:12]}…)",
        image=digest,
        deployment=None,
        reference=reference,
        tree=imagefiles.image_tree(sysroot.repo, digest),
        boot=boot,
        kargs=kargs,
    )
