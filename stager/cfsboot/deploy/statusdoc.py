"""bootc's host-v1 schema (docs/src/host-v1.schema.json), the parts cfsboot fills in,
as the types of the document `cfsboot status` prints (cfsboot.deploy.status).

Keys and their order are the JSON's: status builds these dicts as they are printed.
A module of its own: typing is for type checkers, tests and `upgrade --check`, not
for every status run (status imports this module for type checking only).
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from cfsboot.deploy.usroverlay import FilesystemOverlay as FilesystemOverlay  # host-v1's


class ImageReference(TypedDict):
    image: str
    transport: str


class ImageStatus(TypedDict):
    image: ImageReference
    version: str | None
    timestamp: str | None
    # The schema requires both strings: "" when unknown (bootc writes "" too), e.g. a
    # deployment whose manifest digest was not recorded, a config without an architecture.
    imageDigest: str
    architecture: str


class BootEntryComposefs(TypedDict):
    verity: str
    bootType: Literal["Bls", "Uki"]
    bootloader: Literal["systemd", "grub", "none"]
    bootDigest: str | None
    missingVerityAllowed: bool


class FailureRecord(TypedDict):
    time: str | None
    failed: list[str]  # one line per check or unit that failed


class EntryAssessment(TypedDict):
    state: Literal["pending", "failed"]
    triesLeft: int
    triesDone: int
    lastFailure: FailureRecord | None


class BootEntryCfsboot(TypedDict):
    """cfsboot's own fields of a BootEntry (not in bootc's schema, which allows them)."""

    bootAssessment: EntryAssessment | None  # None: not on trial (blessed, or not counted)


class HostAssessment(TypedDict):
    fallback: bool  # the booted deployment runs because the default one failed its trial
    failedDeployment: str | None
    triesUsed: int | None
    message: str | None


class BootOverride(TypedDict):
    """An EFI variable of systemd-boot's that makes another entry boot than cfsboot's."""

    variable: str  # LoaderEntryOneShot, LoaderEntryDefault or LoaderEntryLastBooted
    value: str  # what it holds (an entry id or a glob)
    cfsbootDeployment: str | None  # what would boot without it (cfsboot's choice)
    message: str  # one line: the variable, the entry it names, what clears it


class NextBoot(TypedDict):
    """What the boot loader starts next (after finalize, when a deployment is staged)."""

    deployment: str | None  # the cfsboot deployment; None: another system's entry, or none
    entry: str | None  # systemd-boot's entry id (file name without counter); None on GRUB
    override: BootOverride | None  # None: cfsboot's choice boots


class HostStatusCfsboot(TypedDict):
    """cfsboot's own fields of the HostStatus."""

    bootAssessment: HostAssessment
    nextBoot: NextBoot


class BootEntry(TypedDict):
    image: ImageStatus | None
    cachedUpdate: ImageStatus | None  # what `upgrade --check` last found (updatecache)
    incompatible: bool
    pinned: bool
    softRebootCapable: bool
    downloadOnly: bool
    store: None
    ostree: None
    composefs: BootEntryComposefs
    cfsboot: BootEntryCfsboot


class HostStatus(TypedDict):
    staged: BootEntry | None
    booted: BootEntry | None
    rollback: BootEntry | None
    otherDeployments: NotRequired[list[BootEntry]]  # left out when empty, as bootc does
    rollbackQueued: bool
    type: Literal["bootcHost"] | None
    usrOverlay: FilesystemOverlay | None
    cfsboot: HostStatusCfsboot


class HostSpec(TypedDict):
    image: ImageReference | None
    bootOrder: Literal["default", "rollback"]


class ObjectMeta(TypedDict):
    name: str


class BootcHost(TypedDict):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: HostSpec
    status: HostStatus


class Others(TypedDict, total=False):
    """HostStatus's optional part: status adds it only when there are other deployments."""

    otherDeployments: list[BootEntry]
