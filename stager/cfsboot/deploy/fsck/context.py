"""What the state and ESP checks look at, read once: menus, marker, origins, images."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.origin import Origin, OriginError
from cfsboot.deploy.sysroot import Sysroot

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.composefs.tree import Inode


@dataclass
class Context:
    """One physical root as the checks see it.

    `images` is None when the repository could not be read (nothing is then said
    about deployments' images); `trees` holds the parsed images of deployments
    (deep checks only); `protected` is what --repair never touches: the booted
    deployment and, on a root that is not running, the default one standing in
    for it (as status and gc have it).
    """

    sysroot: Sysroot
    repo: Repository | None
    bl: Bootloader | None
    deep: bool
    images: Collection[str] | None = None
    trees: Mapping[str, Inode] = field(default_factory=dict)
    protected: frozenset[str] = frozenset()
    live: list[MenuEntry] = field(default_factory=list)
    staged_menu: list[MenuEntry] = field(default_factory=list)

    def origin(self, depl: str) -> Origin | OriginError | None:
        """The deployment's origin, the error reading it, or None when there is no file."""
        return self.sysroot.origin_or_error(depl)

    def good_origin(self, depl: str) -> Origin | None:
        o = self.origin(depl)
        return o if isinstance(o, Origin) else None

    def has_state(self, depl: str) -> bool:
        return self.sysroot.deploy_dir(depl).is_dir()

    @property
    def staged_pending(self) -> bool:
        """A staged deployment waits for finalize (marker and staged menu both there)."""
        return self.bl is not None and self.bl.has_staged() and self.sysroot.marker_path.exists()
