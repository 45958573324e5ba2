"""The physical root a command works on: repository, deployment state, staged marker, booted digest.

On a booted cfsboot system the physical root is `/sysroot` (setup-root keeps it
there), the booted deployment is named by the `composefs=` karg and by the
source of the `/` mount (`composefs:HEX`; the mount wins, as in bootc), and the
staged marker lives in `/run/composefs/`. With `--sysroot DIR` the same
commands work on a mounted disk image: nothing is booted from it, so the
deployment of the current default boot entry stands in for the booted one,
and the marker lives in a run directory of its own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cfsboot.composefs.repository import Repository
from cfsboot.deploy.origin import Origin, OriginError
from cfsboot.errors import CfsbootError, die
from cfsboot.jsondoc import DocumentError, Fields, parse_object
from cfsboot.linux import mountinfo
from cfsboot.linux.fsutil import fsync_dir, write_file_atomic
from cfsboot.linux.lazylog import getLogger
from setuproot.contract import (
    DEFAULT_SYSROOT,
    DEPLOY_VAR_LINK_TARGET,
    ORIGIN_SUFFIX,
    REPO_DIR,
    SHARED_VAR_DIR,
    STAGED_DEPLOYMENT_MARKER,
    STATE_DEPLOY_DIR,
    KargError,
    image_path,
    parse_cmdline,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.boot.bootloader import Bootloader, MenuEntry
    from cfsboot.boot.esp import Esp
    from cfsboot.boot.loadervars import LoaderVars

log = getLogger(__name__)  # imports logging when it logs (lazylog)

_HEX_RE = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")
# The marker relative to the run directory (/run on a booted system).
MARKER_RELPATH = STAGED_DEPLOYMENT_MARKER.removeprefix("/run/")


@dataclass(frozen=True)
class StagedDeployment:
    """/run/composefs/staged-deployment, bootc's JSON."""

    depl_id: str
    finalization_locked: bool = False

    def to_json(self) -> bytes:
        doc = {"depl_id": self.depl_id, "finalization_locked": self.finalization_locked}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, *, name: str) -> StagedDeployment:
        """The marker in `data`; a DocumentError (one line naming `name`) when it is not one."""
        f = Fields(parse_object(data, name), name)
        depl = f.req_str("depl_id")
        locked = f.bool_or("finalization_locked", False)
        if not _HEX_RE.fullmatch(depl):
            raise f.error(f"depl_id {depl[:40]!r} is not a deployment id")
        return cls(depl, locked)

    @classmethod
    def from_json(cls, data: bytes, *, name: str) -> StagedDeployment | None:
        """The marker in `data`; None (with a warning naming `name`) when it is not one."""
        try:
            return cls.parse(data, name=name)
        except DocumentError as e:
            log.warning("ignoring the staged-deployment marker: %s", e)
            return None


def running_deployment(
    cmdline_path: str = "/proc/cmdline", mountinfo_path: str = "/proc/self/mountinfo"
) -> str | None:
    """The deployment this machine booted (None when / is not a cfsboot composefs root)."""
    try:
        with open(cmdline_path) as f:
            if not parse_cmdline(f.read()):
                return None
    except (OSError, KargError):
        return None
    source = _root_mount_source(mountinfo_path)
    for prefix in ("composefs:", "transient:composefs:", "transient:composefs="):
        if source and source.startswith(prefix):
            digest = source[len(prefix) :].lstrip("?")
            if _HEX_RE.fullmatch(digest):
                return digest
    # A composefs karg without a composefs / means setup-root did not run: not booted from it.
    return None


def _root_mount_source(mountinfo_path: str) -> str | None:
    try:
        root = mountinfo.mounted_at("/", mountinfo.read(mountinfo_path))
    except OSError:
        return None
    return root.source if root else None


class Sysroot:
    """One physical root (a booted system's /sysroot, or a mounted disk)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run_dir: Path | None = None,
        read_once: bool = False,
        efivars_dir: Path | None = None,
    ) -> None:
        """read_once: for a reader that writes nothing (`cfsboot status`, which asks for the
        same state from each part of its report): each origin, the staged marker and the
        booted deployment are read once, and writing them raises.

        efivars_dir: where the firmware's variables are (efivarfs; tests pass a directory
        of their own); read only when this is the running system (`loader_efivars`)."""
        self.path = Path(path)
        self.efivars_dir = efivars_dir
        self.read_once = read_once
        self._origins: dict[str, Origin | OriginError | None] = {}
        self._marker: list[StagedDeployment | None] = []  # the one read, when read_once
        self._marker_warned: set[str] = set()  # what was said about a damaged marker
        self._booted: list[str | None] = []
        self._loader_vars: dict[Esp, LoaderVars | None] = {}  # by ESP, when read_once
        if not self.path.is_dir():
            die(f"{self.path} is not a directory", hint="pass the physical root with --sysroot")
        self.live = (
            _same_file(self.path, Path(DEFAULT_SYSROOT)) and running_deployment() is not None
        )
        if run_dir is None:
            run_dir = Path("/run") if self.live else _offline_run_dir(self.path)
        self.run_dir = run_dir
        # Deployments whose missing or bad origin was already reported (warned once only).
        self.origin_reported: set[str] = set()

    def __repr__(self) -> str:
        return f"Sysroot({str(self.path)!r}{', live' if self.live else ''})"

    # -- paths -----------------------------------------------------------------------

    @property
    def repo_path(self) -> Path:
        return self.path / REPO_DIR

    @cached_property
    def repo(self) -> Repository:
        return Repository.open(self.repo_path)

    @property
    def deploy_root(self) -> Path:
        return self.path / STATE_DEPLOY_DIR

    @property
    def shared_var(self) -> Path:
        return self.path / SHARED_VAR_DIR

    def deploy_dir(self, depl: str) -> Path:
        return self.deploy_root / depl

    def has_image(self, digest: str) -> bool:
        """Whether the repository has image `digest`, asked as setup-root asks it (its name
        in images/ exists): of an entry naming several, it boots the first one there."""
        return os.path.lexists(self.path / image_path(digest))

    def attach(self, bl: Bootloader) -> Bootloader:
        """`bl`, reading its menus as this root boots them (see `has_image`)."""
        bl.has_image = self.has_image
        return bl

    def origin_path(self, depl: str) -> Path:
        return self.deploy_dir(depl) / f"{depl}{ORIGIN_SUFFIX}"

    @property
    def marker_path(self) -> Path:
        return self.run_dir / MARKER_RELPATH

    # -- deployments -----------------------------------------------------------------

    def deployment_dirs(self) -> list[str]:
        """Deployment ids with a state directory (complete ones: temp names are skipped)."""
        try:
            names = os.listdir(self.deploy_root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _HEX_RE.fullmatch(n))

    def origin(self, depl: str) -> Origin | None:
        """A deployment's origin; None (with a warning) when missing or unreadable."""
        found = self.origin_or_error(depl)
        if isinstance(found, Origin):
            return found
        warn = log.warning if depl not in self.origin_reported else log.debug
        if found is None:
            warn("no origin file for deployment %s (%s)", depl, self.origin_path(depl))
        else:
            warn("%s", found)
        self.origin_reported.add(depl)
        return None

    def origin_or_error(self, depl: str) -> Origin | OriginError | None:
        """A deployment's origin, what is wrong with its file, or None when there is none.

        A read_once root reads and parses each file once for status and the checks
        it runs first (cfsboot.deploy.fsck).
        """
        if not self.read_once:
            return self._read_origin(depl)
        if depl not in self._origins:
            self._origins[depl] = self._read_origin(depl)
        return self._origins[depl]

    def _read_origin(self, depl: str) -> Origin | OriginError | None:
        path = self.origin_path(depl)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            return OriginError(f"{path} is not UTF-8 text: not an origin file")
        except OSError as e:
            return OriginError(f"cannot read {path}: {e.strerror or e}")
        try:
            return Origin.parse(text, name=str(path))
        except OriginError as e:
            return e

    def write_origin(self, depl: str, origin: Origin) -> None:
        self._writing()
        write_file_atomic(self.origin_path(depl), origin.serialise().encode(), mode=0o644)

    def var_link_target(self) -> str:
        return DEPLOY_VAR_LINK_TARGET

    # -- the staged marker -------------------------------------------------------------

    def staged(self) -> StagedDeployment | None:
        if not self.read_once:
            return self._read_staged()
        if not self._marker:
            self._marker.append(self._read_staged())
        return self._marker[0]

    def _read_staged(self) -> StagedDeployment | None:
        try:
            data = self.marker_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return StagedDeployment.parse(data, name=str(self.marker_path))
        except DocumentError as e:
            # Once per root: a command asks for the marker several times (gc: three).
            if str(e) not in self._marker_warned:
                self._marker_warned.add(str(e))
                log.warning("ignoring the staged-deployment marker: %s", e)
            return None

    def write_staged(self, staged: StagedDeployment) -> None:
        self._writing()
        self.marker_path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.marker_path, staged.to_json(), mode=0o644)

    def clear_staged(self) -> None:
        self._writing()
        try:
            self.marker_path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.marker_path.parent)

    def staged_entry(self, bl: Bootloader) -> MenuEntry | None:
        """The staged deployment's entry, download-only or not: the marker's deployment
        first in `bl`'s staged menu (as finalize takes it); None when either is missing or
        they disagree (e.g. a finalize killed after it swapped the menus: the staged name
        then holds the old live menu)."""
        marker = self.staged()
        if marker is None or not bl.has_staged():
            return None
        first = next(iter(bl.menu(staged=True)), None)
        return first if first is not None and first.deployment == marker.depl_id else None

    def staged_next(self, bl: Bootloader) -> MenuEntry | None:
        """The staged entry when it boots next: finalize makes it the default at shutdown
        (cfsboot.deploy.stage.finalize: not download-only, its state directory there);
        None when the live menu's default boots next. Status, fsck and the lifecycle
        commands' warning all ask this."""
        marker = self.staged()
        if marker is None or marker.finalization_locked:
            return None
        entry = self.staged_entry(bl)
        if entry is None or not self.deploy_dir(entry.deployment).is_dir():
            return None
        return entry

    # -- booted ------------------------------------------------------------------------

    def booted(self) -> str | None:
        """The deployment running now, if this physical root is the one the machine booted."""
        if not self.live:
            return None
        if not self.read_once:
            return running_deployment()
        if not self._booted:
            self._booted.append(running_deployment())
        return self._booted[0]

    def loader_efivars(self) -> Path | None:
        """The efivarfs directory whose boot loader variables (LoaderEntryDefault, ...)
        apply to this root's next boot: the host's, when this root is the running system;
        None for another root (a disk image boots on other firmware)."""
        if not self.live:
            return None
        if self.efivars_dir is not None:
            return self.efivars_dir
        from cfsboot.linux.efivars import EFIVARS

        return EFIVARS

    def loader_vars(self, bl: Bootloader) -> LoaderVars | None:
        """systemd-boot's variables that choose what `bl` boots next (LoaderEntryOneShot,
        LoaderEntryDefault, LoaderEntryLastBooted: cfsboot.boot.loadervars); None when none
        apply (GRUB, or a root that is not the running system), and none are read when
        `bl`'s ESP is not the one systemd-boot was loaded from (--esp naming another:
        loadervars.loaded_from). A read_once root reads them once: status's quick check
        and its nextBoot share one read."""
        from cfsboot.boot.bootloader import BootloaderKind

        efivars_dir = self.loader_efivars()
        if efivars_dir is None or bl.kind is not BootloaderKind.SYSTEMD_BOOT:
            return None
        if self.read_once and bl.esp in self._loader_vars:
            return self._loader_vars[bl.esp]
        from cfsboot.boot.loadervars import read_loader_vars

        lv = read_loader_vars(efivars_dir, bl.esp)
        if self.read_once:
            self._loader_vars[bl.esp] = lv
        return lv

    def _writing(self) -> None:
        if self.read_once:
            raise CfsbootError(f"{self.path} is open read-only here (a bug: report it)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _offline_run_dir(path: Path) -> Path:
    """A run directory of its own for a sysroot that is not booted (keyed on its path)."""
    key = str(path.resolve()).strip("/").replace("/", "-") or "root"
    return Path("/run/cfsboot/offline") / key
