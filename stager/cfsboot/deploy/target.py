"""The image a deployment is made from: imported or read back from the repository."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cfsboot.errors import die
from cfsboot.image.info import read_image_info

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.boot.bootloader import Bootloader
    from cfsboot.composefs.tree import Inode
    from cfsboot.deploy.sysroot import Sysroot
    from cfsboot.image.bootscan import BootResources
    from cfsboot.image.osrelease import OsRelease
    from setuproot.config import Config

# `cfsboot status` imports this module for current_deployment: what reading an image's
# tree and configuration needs is imported by the functions that read them.

# Tags (images/refs/deploy/ID) that keep deployed images alive; gc owns them.
DEPLOY_TAG_PREFIX = "deploy/"
VERSION_LABEL = "org.opencontainers.image.version"


@dataclass(frozen=True)
class Target:
    """An image in the repository, with what deploying it needs."""

    digest: str
    reference: str
    manifest_digest: str | None
    tree: Inode
    boot: BootResources
    config: Config
    osrel: OsRelease


def deployment_tag(digest: str) -> str:
    return f"{DEPLOY_TAG_PREFIX}{digest}"


def target_from_repo(sysroot: Sysroot, digest: str, *, reference: str | None = None) -> Target:
    """A deployment's image as the repository holds it (its tree read from the EROFS)."""
    from cfsboot.image import imagefiles
    from cfsboot.image.bootscan import BootResources
    from setuproot.config import resolve_etc

    repo = sysroot.repo
    if not repo.has_image(digest):
        die(f"repository {repo.path} has no image {digest}")
    info = read_image_info(repo, digest)
    tree = imagefiles.image_tree(repo, digest)
    # As setup-root boots it: an image that names no /etc mode gets the one its state
    # directory is laid out for (bind, for a deployment bootc wrote).
    state_etc = str(sysroot.deploy_dir(digest) / "etc")
    return Target(
        digest=digest,
        reference=reference or (info.reference if info is not None else ""),
        manifest_digest=info.manifest_digest if info is not None else None,
        tree=tree,
        boot=info.boot if info is not None else BootResources(),
        config=resolve_etc(imagefiles.setup_root_config(repo, tree), state_etc),
        osrel=imagefiles.os_release(repo, tree),
    )


def follow_etc_mode(target: Target, booted: Target) -> Target:
    """`target` with the booted deployment's /etc mode when its image names none.

    An image that says nothing keeps the mode the system already uses, so its
    local /etc changes can be carried (bootc's bind on a disk bootc installed).
    """
    from setuproot.config import Config

    c = target.config
    if c.etc_set or c.etc is booted.config.etc:
        return target
    config = Config(c.root_transient, booted.config.etc, c.var, False)
    return replace(target, config=config)


def import_target(
    sysroot: Sysroot, imgref: str, *, quiet: bool = True, arch: str | None = None
) -> Target:
    """Import `imgref` into the sysroot's repository (new layers only) and describe it."""
    from cfsboot.image import imagefiles
    from cfsboot.image.importer import Progress, import_image  # the pipeline: only when importing
    from cfsboot.oci.reference import canonical
    from cfsboot.oci.reference import parse as parse_ref

    imgref = canonical(parse_ref(imgref))
    repo = sysroot.repo
    # No tag of the reference's own: deployments are kept alive by deployment tags (gc).
    result = import_image(imgref, repo, arch=arch, tag="", progress=Progress(not quiet))
    repo.tag(deployment_tag(result.image_digest), result.image_digest)
    return Target(
        digest=result.image_digest,
        reference=imgref,
        manifest_digest=result.manifest_digest,
        tree=result.tree,
        boot=result.boot,
        config=imagefiles.setup_root_config(repo, result.tree),
        osrel=imagefiles.os_release(repo, result.tree),
    )


@dataclass(frozen=True)
class UpdateCheck:
    """What `upgrade --check` found: the image the reference names now, against ours."""

    reference: str
    config_digest: str
    current_config_digest: str | None  # None: the deployment predates the record
    version: str | None

    @property
    def available(self) -> bool:
        return self.config_digest != self.current_config_digest


def check_update(
    sysroot: Sysroot, depl: str, imgref: str, *, arch: str | None = None
) -> UpdateCheck:
    """Whether `imgref` now names another image than deployment `depl` was made from.

    Reads the manifest and the config only (no layer, nothing written): the config
    digest covers the layers' diff IDs, so an unchanged one means an unchanged image.
    """
    from cfsboot.image.importer import fetch_config

    digest, config = fetch_config(imgref, arch=arch)
    info = read_image_info(sysroot.repo, depl)
    current = info.config_digest if info is not None else None
    return UpdateCheck(imgref, digest, current, config.labels.get(VERSION_LABEL))


def current_deployment(sysroot: Sysroot, bl: Bootloader) -> str | None:
    """The booted deployment; offline, the one the live menu boots by default."""
    booted = sysroot.booted()
    if booted is not None:
        return booted
    menu = bl.menu()
    return menu[0].deployment if menu else None
